"""Student training: losses, schedules, resume, modes, stage outputs, results tables."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from prism_hpc.config.load import config_from_dict, deep_merge
from prism_hpc.errors import UserError
from prism_hpc.metrics.results import aggregate, results_csv, results_markdown, write_results
from prism_hpc.stages.train import TrainStage
from prism_hpc.store.rundir import student_dir
from prism_hpc.train import losses, schedules
from prism_hpc.train.checkpoint import load_checkpoint
from prism_hpc.train.ema import ModelEMA
from prism_hpc.train.evaluate import EvalData
from prism_hpc.train.loop import StopTraining, TrainHooks
from prism_hpc.train.student import param_groups
from prism_hpc.train.trainer import train_student
from prism_hpc.workflow import TaskEnv
from tests.helpers import BASE, make_run, run_relabel

torch.set_num_threads(1)


# --------------------------------------------------------------------------- losses
def test_losses_match_hand_computation():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    # CE by hand: -log softmax
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    ce1 = -math.log(math.e / (1 + math.e))
    assert losses.ce(s, y).item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    # mixed CE: lam * CE(y) + (1 - lam) * CE(y_b)
    yb = torch.tensor([1, 0])
    ce0b = -math.log(1 / (math.exp(2) + 1))
    ce1b = -math.log(1 / (1 + math.e))
    mixed = 0.7 * (ce0 + ce1) / 2 + 0.3 * (ce0b + ce1b) / 2
    assert losses.ce(s, y, yb, 0.7).item() == pytest.approx(mixed, rel=1e-6)
    # mse_gt: mean over all 4 elements of (s - t)^2 = (1 + 1 + 0 + 4) / 4 = 1.5, + 0.1 CE
    assert losses.mse_gt(s, t, y, 0.1).item() == pytest.approx(1.5 + 0.1 * (ce0 + ce1) / 2)

    # soft CE at T = 2: q = softmax(t / 2), -sum q log softmax(s / 2), * T^2
    def sm(v):
        e = [math.exp(u) for u in v]
        return [u / sum(e) for u in e]

    total = kl_total = 0.0
    for si, ti in zip(s.tolist(), t.tolist(), strict=True):
        q = sm([u / 2 for u in ti])
        p = sm([u / 2 for u in si])
        total += -sum(qi * math.log(pi) for qi, pi in zip(q, p, strict=True))
        kl_total += sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    assert losses.soft_ce(s, t, 2.0).item() == pytest.approx(4 * total / 2, rel=1e-6)
    assert losses.kl(s, t, 2.0).item() == pytest.approx(4 * kl_total / 2, rel=1e-5)
    assert losses.kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        losses.student_loss("kl", s, None, y)


# --------------------------------------------------------------------------- schedules
def test_ssrs_matches_hand_values_at_300_epochs():
    E, z = 300, 2.5
    assert schedules.ssrs(0, E, z) == pytest.approx(1.0)
    # e = 125: 0.5 (1 + cos(pi * 125 / 750)) = 0.5 (1 + cos(pi / 6))
    assert schedules.ssrs(125, E, z) == pytest.approx(0.5 * (1 + math.sqrt(3) / 2))
    # e = 250 = 5E/6 is still on the cosine branch: 0.5 (1 + cos(pi / 3)) = 0.75
    assert schedules.ssrs(250, E, z) == pytest.approx(0.75)
    # then the official linear tail 0.75 (1 - e / E): a jump from 0.75 to 0.1225
    assert schedules.ssrs(251, E, z) == pytest.approx(0.75 * 49 / 300)
    assert schedules.ssrs(299, E, z) == pytest.approx(0.0025)
    assert schedules.ssrs(250, E, z) - schedules.ssrs(251, E, z) > 0.6
    assert schedules.cosine(150, E) == pytest.approx(0.5)
    assert schedules.lr_factor("ssrs", 250, E, z) == schedules.ssrs(250, E, z)


@pytest.mark.parametrize("zeta", [1.5, 2.5, 4.0])
def test_ssrs_continuous_has_no_jump(zeta):
    E = 300
    values = [schedules.ssrs_continuous(e, E, zeta) for e in range(E + 1)]
    steps = [abs(a - b) for a, b in itertools.pairwise(values)]
    assert max(steps) < 0.02
    assert values[250] == pytest.approx(schedules.ssrs(250, E, zeta))
    assert values[E] == pytest.approx(0.0)
    # just past the switch the continuous form stays near the cosine branch's end value
    switch = schedules.ssrs(250, E, zeta)
    assert values[251] == pytest.approx(switch * 49 / 50)
    # finely sampled around 5E/6: the left and right limits agree
    left = schedules.ssrs_continuous(250 - 1e-9, E, zeta)
    right = schedules.ssrs_continuous(250 + 1e-9, E, zeta)
    assert left == pytest.approx(right, abs=1e-6)


# --------------------------------------------------------------------------- small parts
def test_weight_decay_only_on_matrices_and_ema():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    decay, no_decay = param_groups(model, 0.01)
    assert [p.ndim for p in decay["params"]] == [4]
    assert sorted(p.ndim for p in no_decay["params"]) == [1, 1, 1]
    assert no_decay["weight_decay"] == 0.0
    ema = ModelEMA(model, 0.9)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    before = ema.module[0].weight.clone()
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * before + 0.1 * model[0].weight)


def test_hard_label_mode_needs_ce():
    cfg = config_from_dict(deep_merge(BASE, {"relabel": {"mode": "none"}}))
    with pytest.raises(UserError, match="students.loss: ce"):
        TrainStage().items(cfg)
    ok = config_from_dict(deep_merge(BASE, {"relabel": {"mode": "none"},
                                            "students": {"loss": "ce"}}))  # fmt: skip
    assert [i.key for i in TrainStage().items(ok)] == ["resnet18-seed0"]


# --------------------------------------------------------------------------- resume
def _same_metrics(a: dict, b: dict) -> None:
    assert a["evals"] == b["evals"]
    assert a["final"] == b["final"] and a["best"] == b["best"]
    assert a["train"] == b["train"]


def test_resume_after_kill_gives_identical_metrics(tmp_path):
    cfg, run_dir = make_run(tmp_path, students={"ema": 0.9, "grad_accum": 2})
    run_relabel(cfg, run_dir)
    eval_data = EvalData(cfg, cfg.students.eval_limit)
    env = TaskEnv(run_dir, log=lambda m: None)
    hooks = TrainHooks(eval_data=eval_data)
    whole = train_student(cfg, env, "resnet18", 0, tmp_path / "a", hooks)
    assert [e["epoch"] for e in whole["evals"]] == [1, 2, 3]
    with pytest.raises(StopTraining):
        train_student(cfg, env, "resnet18", 0, tmp_path / "b",
                      TrainHooks(eval_data=eval_data, stop_after_epoch=1))  # fmt: skip
    assert load_checkpoint(tmp_path / "b" / "ckpt.pt")["epoch"] == 1
    resumed = train_student(cfg, env, "resnet18", 0, tmp_path / "b", hooks)
    _same_metrics(whole, resumed)
    a = load_checkpoint(tmp_path / "a" / "ckpt.pt")
    b = load_checkpoint(tmp_path / "b" / "ckpt.pt")
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)


def test_online_and_hard_label_modes_train(tmp_path):
    cfg, run_dir = make_run(tmp_path, relabel={"mode": "online"},
                            students={"epochs": 2, "eval_every": 5})  # fmt: skip
    eval_data = EvalData(cfg, 100)
    env, hooks = TaskEnv(run_dir, log=lambda s: None), TrainHooks(eval_data=eval_data)
    m = train_student(cfg, env, "resnet18", 1, tmp_path / "on", hooks)
    assert [e["epoch"] for e in m["evals"]] == [2]  # only the end with eval_every > epochs
    assert m["relabel_mode"] == "online" and 0 <= m["final"]["top1"] <= 1
    hard = config_from_dict(deep_merge(BASE, {
        "relabel": {"mode": "none"},
        "students": {"loss": "ce", "epochs": 2, "optimizer": "sgd", "lr": 0.01,
                     "schedule": "cosine", "ce_target": "mixed"},
    }))  # fmt: skip
    h = train_student(hard, env, "resnet18", 0, tmp_path / "hard", hooks)
    assert h["loss"] == "ce" and h["final"]["top5"] >= h["final"]["top1"]


def test_train_stage_writes_outputs_and_results(tmp_path):
    cfg, run_dir = make_run(tmp_path, relabel={"storage": "topk", "topk": 4},
                            students={"epochs": 1, "seeds": [0, 1], "eval_limit": 100})  # fmt: skip
    run_relabel(cfg, run_dir)
    stage = TrainStage()
    assert stage.checkpointable and stage.depends_on == ("relabel",)
    items = stage.items(cfg)
    assert [i.key for i in items] == ["resnet18-seed0", "resnet18-seed1"]
    env = TaskEnv(run_dir=run_dir, log=lambda m: None)
    for item in items:
        stage.run(cfg, item, env)
        assert stage.is_done(run_dir, item)
    out = student_dir(run_dir, "resnet18", 1)
    assert stage.marker_path(run_dir, items[1]) == out / ".done"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["storage"] == "topk" and metrics["ipc"] == 2 and metrics["wall_seconds"] > 0
    assert write_results([run_dir], tmp_path) == [tmp_path / "results.md", tmp_path / "results.csv"]
    from prism_hpc.metrics.runs import read_results_csv, read_students

    students, notes = read_students(run_dir)  # the report's reader understands metrics.json
    assert len(students) == 2 and not notes and 0 <= students[0].top1 <= 100
    assert read_results_csv(tmp_path)[0]["n"] == 2
    md = (tmp_path / "results.md").read_text()
    assert "| Method | resnet18 IPC 2 |" in md and "±" in md
    assert (tmp_path / "results.csv").read_text().startswith("method,arch,ipc,n,top1_mean")


def test_results_table_statistics():
    def row(method, arch, ipc, seed, top1):
        acc = {"top1": top1, "top5": 0.9}
        return {"method": method, "arch": arch, "ipc": ipc, "seed": seed, "final": acc,
                "best": acc}  # fmt: skip

    rows = [row("PRISM", "resnet18", 10, s, v) for s, v in [(0, 0.40), (1, 0.42), (2, 0.44)]]
    rows += [row("PRISM", "resnet50", 10, 0, 0.5), row("SRe2L", "resnet18", 10, 0, 0.2)]
    agg = aggregate(rows)
    first = agg[0]
    assert (first["method"], first["arch"], first["n"]) == ("PRISM", "resnet18", 3)
    assert first["top1_mean"] == pytest.approx(42.0)
    assert first["top1_std"] == pytest.approx(2.0)  # sample std of 40, 42, 44
    md = results_markdown(agg)
    assert "| Method | resnet18 IPC 10 | resnet50 IPC 10 |" in md
    assert "| PRISM | 42.0 ± 2.0 | 50.0 |" in md
    assert "| SRe2L | 20.0 | - |" in md
    assert "PRISM,resnet18,10,3,42.00,2.00" in results_csv(agg)


# --------------------------------------------------------------------------- DDP (gloo, CPU)
def _ddp_worker(rank, world, port, cfg_dict, run_dir, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        cfg = config_from_dict(cfg_dict)
        env = TaskEnv(run_dir, rank=rank, world_size=world, log=lambda m: None)
        train_student(cfg, env, "resnet18", 0, out)
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_matches_grad_accumulation(tmp_path):
    """2 gloo ranks without sync BN, each half of every batch == 1 process with 2
    micro-batches (weights); online labels: the ensemble's norms are all-reduced."""
    import torch.multiprocessing as mp

    from prism_hpc.hpc.distributed import free_port

    # SGD, not Adam: Adam hides a wrong loss scale, SGD does not
    extra = {"relabel": {"mode": "online"},
             "students": {"epochs": 1, "eval_limit": 50, "optimizer": "sgd", "lr": 0.05,
                          "sync_bn": False}}  # fmt: skip
    _cfg, run_dir = make_run(tmp_path, **extra)
    cfg_dict = deep_merge(BASE, extra)
    mp.start_processes(_ddp_worker, args=(2, free_port(), cfg_dict, run_dir, tmp_path / "ddp"),
                       nprocs=2, start_method="spawn")  # fmt: skip
    single = config_from_dict(deep_merge(cfg_dict, {"students": {"grad_accum": 2}}))
    train_student(single, TaskEnv(run_dir, log=lambda m: None), "resnet18", 0, tmp_path / "one")
    a = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")["model"]
    b = load_checkpoint(tmp_path / "one" / "ckpt.pt")["model"]
    weights = [k for k, v in a.items() if v.is_floating_point() and "running" not in k]
    worst = max((a[k] - b[k]).abs().max().item() for k in weights)
    print("ddp vs accumulation, worst weight diff", worst)
    assert worst < 1e-5, worst
    assert F.mse_loss(a["fc.weight"], b["fc.weight"]).item() < 1e-10


def test_eval_loader_path_matches_in_memory():
    cfg = config_from_dict(deep_merge(BASE, {}))
    mem = EvalData(cfg, 64)
    loader = EvalData(cfg, 64)
    loader._pixels = None  # the ImageFolder path: a DataLoader over the source
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    mean, std = torch.tensor([0.3]), torch.tensor([0.35])
    from prism_hpc.train.evaluate import evaluate

    a = evaluate(model, mem, mean, std, torch.device("cpu"))
    b = evaluate(model, loader, mean, std, torch.device("cpu"))
    assert a == b and 0 <= a["top1"] <= a["top5"] <= 1
