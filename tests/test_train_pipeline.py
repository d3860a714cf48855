"""The student input pipeline (DataLoader over plans + stored labels), the MAE loss, progress
files, evaluation of a checkpoint without training, and `status` showing students' epochs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prism_hpc.config.load import config_from_dict, deep_merge
from prism_hpc.errors import UserError
from prism_hpc.relabel.augment import build_batch
from prism_hpc.stages.train import TrainStage
from prism_hpc.store.distilled import DistilledSet
from prism_hpc.store.rundir import student_dir
from prism_hpc.store.softlabels import SoftLabelReader
from prism_hpc.train import losses
from prism_hpc.train.checks import student_pairs
from prism_hpc.train.data import StepBatches, rank_pieces, step_loader
from prism_hpc.train.evaluate import EvalData
from prism_hpc.train.loop import TrainHooks
from prism_hpc.train.trainer import evaluate_checkpoint, train_student
from prism_hpc.workflow import TaskEnv
from tests.helpers import BASE, make_run, run_relabel

torch.set_num_threads(1)


def test_mae_gt_matches_hand_computation():
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    ce = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    # |s - t| = 1, 1, 0, 2: mean 1.0; + 0.05 CE (the paper's GT 0.05 row)
    assert losses.mae_gt(s, t, y, 0.05).item() == pytest.approx(1.0 + 0.05 * ce, rel=1e-6)
    assert losses.student_loss("mae_gt", s, t, y, ce_weight=0.1).item() == pytest.approx(
        1.0 + 0.1 * ce, rel=1e-6
    )
    cfg = config_from_dict(deep_merge(BASE, {"relabel": {"mode": "none"},
                                         "students": {"loss": "mae_gt"}}))  # fmt: skip
    with pytest.raises(UserError, match="needs soft labels"):
        TrainStage().items(cfg)


@pytest.mark.parametrize("world", [1, 2])
def test_loader_items_are_the_replayed_batches_bit_for_bit(tmp_path, world):
    """Every rank's item equals the whole-batch replay (build_batch) at its positions, and
    the soft labels are the stored rows of those positions; over ranks each image once."""
    cfg, run_dir = make_run(tmp_path, students={"epochs": 2, "grad_accum": 2})
    run_relabel(cfg, run_dir)
    distilled = DistilledSet(run_dir / "distilled.h5")
    reader = SoftLabelReader(cfg, run_dir, distilled)
    for rank in range(world):
        data = StepBatches(cfg, run_dir, distilled, 1, rank, world)  # resume at epoch 1
        assert len(data) == data.num_batches == 3  # 20 images, batch 8: 8 + 8 + 4
        items = list(step_loader(data, workers=1, prefetch=2, pin=False))
        stored = reader.epoch(1)
        for b, item in enumerate(items):
            plan = stored.plan
            assert (item["epoch"], item["batch"]) == (1, b)
            rows = plan.order[plan.batch_slice(b)]
            x, perm, lam = build_batch(distilled.images(rows), plan, b, distilled.mean,
                                       distilled.std)  # fmt: skip
            pos = torch.cat([torch.from_numpy(p) for p in rank_pieces(len(rows), 2, world, rank)])
            assert item["sizes"] == [len(p) for p in rank_pieces(len(rows), 2, world, rank)]
            assert torch.equal(item["x"], x[pos]) and item["lam"] == lam
            assert torch.equal(item["y"], torch.from_numpy(distilled.labels)[rows][pos])
            assert torch.equal(item["y_b"], torch.from_numpy(distilled.labels)[rows][perm][pos])
            assert torch.equal(item["soft"], stored.soft_labels(b)[pos])
    reader.close()


def test_progress_file_log_lines_and_status(tmp_path):
    cfg, run_dir = make_run(tmp_path, relabel={"mode": "online"},
                            students={"epochs": 2, "eval_every": 5, "log_every": 1,
                                      "workers": 0})  # fmt: skip
    lines: list[str] = []
    out = student_dir(run_dir, "resnet18", 0)
    shown: list[dict] = []
    m = train_student(cfg, TaskEnv(run_dir, log=lines.append, progress=shown.append),
                      "resnet18", 0, out, TrainHooks(eval_data=EvalData(cfg, 50)))  # fmt: skip
    # the display callback: each progress line, then the end of each epoch
    assert [d["epoch"] for d in shown] == ["0+1/3", "0+2/3", 1, "1+1/3", "1+2/3", 2]
    step_lines = [s for s in lines if " step " in s]
    assert len(step_lines) == 2 * 2  # steps 1 and 2 of 3 in each epoch (the 3rd ends it)
    assert "epoch 0/2 step 1/3 loss" in step_lines[0] and " img/s ETA " in step_lines[0]
    assert any("epoch 2/2 loss" in s and "top-1" in s for s in lines)
    info = json.loads((out / "progress.json").read_text())
    assert info["epoch"] == 2 and info["epochs"] == 2 and info["state"] == "done"
    assert info["loss"] == pytest.approx(m["train"][-1]["loss"], abs=1e-6)
    assert info["images_per_s"] > 0 and info["lr"] == m["train"][-1]["lr"]

    from prism_hpc.stages.train import _student_line, student_progress

    found = student_progress(run_dir)
    assert [f["student"] for f in found] == ["resnet18/seed0"]
    assert "resnet18/seed0: epoch 2.00/2 (done" in _student_line(found[0])


def test_evaluate_checkpoint_without_training(tmp_path):
    cfg, run_dir = make_run(tmp_path, relabel={"mode": "none"},
                            students={"loss": "ce", "epochs": 1, "ema": 0.9,
                                      "eval_limit": 60, "workers": 0})  # fmt: skip
    assert student_pairs(cfg) == [(i.payload["arch"], i.payload["seed"])
                                  for i in TrainStage().items(cfg)]  # fmt: skip
    with pytest.raises(UserError, match="no checkpoint"):
        evaluate_checkpoint(cfg, run_dir, "resnet18", 0, log=lambda m: None)
    m = train_student(cfg, TaskEnv(run_dir, log=lambda m: None), "resnet18", 0)
    out = student_dir(run_dir, "resnet18", 0)
    ckpt_bytes = (out / "ckpt.pt").read_bytes()
    (run_dir / "config.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    from prism_hpc.train.eval_array import main

    assert main([str(run_dir), "0"]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["weights"] == "ema" and res["epoch"] == 1 and res["eval_images"] == 60
    assert (res["top1"], res["top5"]) == (m["final"]["top1"], m["final"]["top5"])  # same view
    assert (out / "ckpt.pt").read_bytes() == ckpt_bytes  # nothing trained or rewritten
    assert main([str(run_dir), "5"]) == 2  # one line, exit 2


def test_eval_scripts_run_the_evaluation_entry_point(tmp_path, tiny_cfg):
    """`eval_array.sbatch RUN CHUNK eval` and `eval_array.sh RUN eval` call the evaluation
    module (no srun, no training task); without `eval` they still train."""
    import os
    import subprocess

    from prism_hpc.hpc.launch import plans_for
    from prism_hpc.hpc.scripts import write_scripts
    from prism_hpc.stages import registry
    from tests.conftest import REPO
    from tests.helpers import write_stub

    tiny_cfg["students"]["seeds"] = [0, 1, 2]
    out = tmp_path / "dry"
    cfg = config_from_dict(tiny_cfg)
    write_scripts(cfg, plans_for(cfg, registry(), estimates=False), out / "slurm", out)
    stub = tmp_path / "bin"
    write_stub(stub, "py", 'echo "py $@" >> "$CALLS"\n')
    write_stub(stub, "srun", 'echo "srun $@" >> "$CALLS"\n')
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="2",
               CALLS=str(tmp_path / "calls"), PRISM_PYTHON=str(stub / "py"))  # fmt: skip
    script = str(out / "slurm" / "eval_array.sbatch")
    subprocess.run(["bash", script, str(out), "0", "eval"], env=env, check=True, timeout=60)
    (out / "config.yaml").write_text("{}")
    generic = str(REPO / "slurm" / "eval_array.sh")
    subprocess.run(["bash", generic, str(out), "eval"], env=env, check=True, timeout=60)
    subprocess.run(["bash", generic, str(out)], env=env, check=True, timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"py -m prism_hpc.train.eval_array {out} --array 0 2"
    assert calls[1] == f"py -m prism_hpc.train.eval_array {out} 2"
    assert calls[2].startswith("srun ") and calls[2].endswith(f"-m prism_hpc.hpc.task {out} train 2")


def test_fused_optimizer_rides_with_channels_last_and_keeps_the_losses(tmp_path):
    from prism_hpc.train.student import make_optimizer, use_fused_optimizer

    cpu = torch.device("cpu")
    plain, _ = make_run(tmp_path / "a", relabel={"mode": "online"},
                        students={"epochs": 2, "workers": 0})  # fmt: skip
    assert not use_fused_optimizer(plain, cpu)  # the CPU default path stays bitwise
    assert use_fused_optimizer(plain, torch.device("cuda"))  # channels_last's default
    cl = config_from_dict({**plain.model_dump(), "students": {**plain.students.model_dump(),
                           "channels_last": True}})  # fmt: skip
    assert use_fused_optimizer(cl, cpu)
    model = torch.nn.Linear(3, 2)
    assert make_optimizer(plain, model, True).defaults["fused"] is True
    assert not make_optimizer(plain, model).defaults.get("fused")
    runs = {}
    for fused in (False, True):
        cfg, run_dir = make_run(tmp_path / f"f{fused}", relabel={"mode": "online"},
                                students={"epochs": 2, "workers": 0, "fused_optimizer": fused})  # fmt: skip
        lines: list[str] = []
        hooks = TrainHooks(eval_data=EvalData(cfg, 50))
        m = train_student(cfg, TaskEnv(run_dir, log=lines.append), "resnet18", 0,
                          tmp_path / f"out{fused}", hooks)
        runs[fused] = [e["loss"] for e in m["train"]]
        assert ("fused optimizer" in lines[0]) is fused
    # the fused kernel sums in another order, nothing else: the losses agree to rounding
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
