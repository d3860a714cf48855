"""`students.precision` and `relabel.precision` follow recovery's capability rule: `plan`
prices and shows what each stage's device runs natively, the tasks resolve `auto` on the
device they have and record it (metrics.json, the label files' attrs and markers), fp16
training runs with a loss scaler, and an explicit half precision the device lacks warns."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch

from prism_hpc.config.load import config_from_dict, deep_merge, load_config
from prism_hpc.hardware import capability
from prism_hpc.hardware.capability import cpu_capability, cuda_capability
from prism_hpc.stages import precision as stage_precision
from prism_hpc.stages.preflight import precision_warnings
from prism_hpc.stages.relabel import RelabelStage
from prism_hpc.stages.train import TrainStage
from prism_hpc.store.softlabels import fingerprint
from prism_hpc.train.evaluate import EvalData
from prism_hpc.train.loop import TrainHooks
from prism_hpc.train.step import StepOptions, train_step
from prism_hpc.train.student import grad_scaler, student_precision
from prism_hpc.train.trainer import train_student
from prism_hpc.workflow import TaskEnv
from tests.helpers import BASE, make_run, run_relabel

IN1K = Path("configs/in1k_ipc50.yaml")
AVX2 = cpu_capability(frozenset({"avx2", "fma"}), "AMD EPYC (AVX2)", 24.0, False)
ZEN4 = cpu_capability(frozenset({"avx2", "avx512f", "avx512_bf16"}), "AMD EPYC (Zen 4)")
V100 = cuda_capability(7, 0, "Tesla V100-SXM2-32GB")


def _estimates(*sets: str) -> dict[str, dict]:
    cfg, _ = load_config(IN1K, list(sets))
    return {"train": TrainStage().estimate(cfg), "relabel": RelabelStage().estimate(cfg)}


@pytest.mark.parametrize(("gpu", "expected"), [("v100", "fp16"), ("a100-80", "bf16"),
                                               ("h100", "bf16")])  # fmt: skip
def test_plan_prices_students_and_relabel_by_the_recover_rule(gpu, expected):
    est = _estimates(f"resources.train.gpu={gpu}", f"resources.relabel.gpu={gpu}",
                     "resources.relabel.gpus_per_node=1")  # fmt: skip
    for stage in ("train", "relabel"):
        assert est[stage]["precision"] == expected, stage
        assert f"precision auto: {expected}" in est[stage]["cost_note"]
        assert not [w for w in est[stage].get("warnings") or [] if "bf16" in w or "fp16" in w]


def test_plan_prices_cpu_stages_in_fp32_and_amp_off_means_fp32():
    est = _estimates("resources.relabel.gpus_per_node=0")
    assert est["relabel"]["precision"] == "fp32"  # the table CPU has no bf16 flags
    off = _estimates("resources.train.gpu=h100", "students.amp=false")
    assert off["train"]["precision"] == "fp32"
    assert "cost_note" not in off["train"] or "precision auto" not in off["train"]["cost_note"]


def test_explicit_bf16_on_a_v100_warns_for_students_and_relabel():
    est = _estimates("resources.train.gpu=v100", "students.precision=bf16",
                     "resources.relabel.gpu=v100", "resources.relabel.gpus_per_node=1",
                     "relabel.precision=bf16")  # fmt: skip
    for stage in ("train", "relabel"):
        assert est[stage]["precision"] == "bf16"
        (warning,) = [w for w in est[stage]["warnings"] if "bf16" in w]
        assert "V100" in warning and "no native bf16" in warning


def test_submit_warns_per_stage_for_bf16_on_a_cpu_without_it(tiny_cfg, monkeypatch):
    monkeypatch.setattr(stage_precision, "detect", lambda device: AVX2)
    tiny_cfg["students"]["precision"] = "bf16"
    tiny_cfg["relabel"]["precision"] = "bf16"
    lines = precision_warnings(config_from_dict(tiny_cfg))
    assert [line.split(":")[0] for line in lines] == ["relabel", "train"]
    assert all("no native bf16" in line for line in lines)
    tiny_cfg["relabel"]["mode"] = "none"  # no teachers run: nothing to warn about
    tiny_cfg["students"]["loss"] = "ce"
    assert [w.split(":")[0] for w in precision_warnings(config_from_dict(tiny_cfg))] == ["train"]


@pytest.mark.parametrize(("cap", "expected"), [(ZEN4, "bf16"), (AVX2, "fp32"),
                                               (V100, "fp16")])  # fmt: skip
def test_students_auto_is_the_capability_rule_on_the_task_device(cap, expected, monkeypatch):
    monkeypatch.setattr(capability, "detect", lambda device: cap)
    cfg = config_from_dict(deep_merge(BASE, {"students": {"precision": "auto"}}))
    choice = student_precision(cfg, torch.device("cpu"))
    assert choice.precision == expected and choice.reason.startswith(f"auto: {expected}")
    off = config_from_dict(deep_merge(BASE, {"students": {"precision": "auto", "amp": False}}))
    assert student_precision(off, torch.device("cpu")).precision == "fp32"


def test_fp16_step_skips_an_overflowing_update_and_lowers_the_scale():
    st = config_from_dict(BASE).students
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    cpu = torch.device("cpu")
    assert isinstance(grad_scaler("fp16", cpu), torch.amp.GradScaler)
    assert grad_scaler("bf16", cpu) is None and grad_scaler("fp32", cpu) is None
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # fp16 gradients overflow
    opts = StepOptions(st, cpu, precision="fp16", scaler=scaler)
    batch = {"x": torch.randn(4, 1, 4, 4), "y": torch.arange(4), "lam": 1.0, "n": 4,
             "sizes": [4]}  # fmt: skip
    before = [p.detach().clone() for p in net.parameters()]
    train_step(net, opt, batch, opts, torch.randn(4, 10))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # skipped
    assert scaler.get_scale() == 2.0**119
    scaler.update(2.0**8)
    train_step(net, opt, batch, opts, torch.randn(4, 10))
    assert not all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_train_records_the_resolved_precision_and_runs_fp16_with_a_scaler(tmp_path, monkeypatch):
    """fp16 on a CPU is not what auto picks, but asked for it runs (with the warning), so the
    scaler path, its checkpoint state and the record are exercised here."""
    cfg, run_dir = make_run(tmp_path, relabel={"mode": "online"},
                            students={"epochs": 2, "workers": 0, "precision": "fp16"})  # fmt: skip
    lines: list[str] = []
    hooks = TrainHooks(eval_data=EvalData(cfg, 20))
    m = train_student(cfg, TaskEnv(run_dir, log=lines.append), "resnet18", 0, tmp_path / "o",
                      hooks)  # fmt: skip
    assert m["precision"]["resolved"] == "fp16"
    assert lines[0].startswith("warning: fp16 on") and "fp16 + loss scaling" in lines[1]
    state = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the learnt scale survives a restart
    monkeypatch.setattr(capability, "detect", lambda device: AVX2)
    auto = config_from_dict(deep_merge(cfg.model_dump(), {"students": {"precision": "auto"}}))
    lines.clear()
    m = train_student(auto, TaskEnv(run_dir, log=lines.append), "resnet18", 0, tmp_path / "a",
                      hooks)  # fmt: skip
    assert m["precision"] == {"resolved": "fp32", "device": "cpu", "relabel": "fp32",
                              "reason": lines[0].removeprefix("students precision ")}  # fmt: skip
    assert "scaler" not in torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)


def test_relabel_resolves_auto_per_task_and_records_it(tmp_path, monkeypatch):
    cfg, run_dir = make_run(tmp_path, students={"epochs": 2})
    monkeypatch.setattr(capability, "detect", lambda device: ZEN4)
    auto = config_from_dict(deep_merge(cfg.model_dump(), {"relabel": {"precision": "auto"}}))
    run_relabel(auto, run_dir)
    stage = RelabelStage()
    (item,) = stage.items(auto)
    (path,) = (run_dir / "relabel").glob("*.h5")
    with h5py.File(path) as f:
        assert f.attrs["precision"] == "bf16"
        stamp = f.attrs["fingerprint"]
    marker = json.loads(stage.marker_path(run_dir, item).read_text())
    assert '"precision": "bf16"' in json.dumps(marker)
    # the resolved precision moves the last bits only: the fp32 config reads the same files
    from prism_hpc.store.distilled import DistilledSet

    distilled = DistilledSet(run_dir / "distilled.h5")
    assert fingerprint(cfg, distilled) == stamp
    distilled.close()


def test_doctor_shows_each_stage_precision_of_a_config(tiny_cfg):
    from prism_hpc.hardware.doctor import _precision_checks

    tiny_cfg["students"]["precision"] = "bf16"
    tiny_cfg["relabel"]["precision"] = "auto"
    checks, auto = _precision_checks(AVX2, config_from_dict(tiny_cfg), None)
    rows = {c.name: c for c in checks}
    assert auto.precision == "fp32" and rows["recover_precision"].status == "ok"
    assert rows["relabel_precision"].status == "ok"
    assert rows["relabel_precision"].detail == "relabel.precision auto -> fp32 here"
    assert rows["students_precision"].status == "warn"
    assert "no native bf16" in rows["students_precision"].detail
