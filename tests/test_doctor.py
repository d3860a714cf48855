"""`prism-hpc doctor`: exit codes, one JSON object, and the checks that need a config.

Most runs use `--quick` (no timing probe, no two-process distributed check): those are
covered once each below, in process, so that the file stays fast on 2 shared cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prism_hpc.config.load import config_from_dict
from tests.conftest import TINY, write_yaml
from tests.helpers import run_cli, write_stub

DEMO = Path(__file__).resolve().parent.parent / "configs" / "fmnist_demo.yaml"


def _cpu_has_native_bf16() -> bool:
    text = Path("/proc/cpuinfo").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("flags"))
    return bool(set(line.split(":")[1].split()) & {"avx512_bf16", "amx_bf16"})


def _checks(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo")
def test_json_on_this_machine_gives_the_bf16_verdict_of_proc_cpuinfo():
    done = run_cli("doctor", "--json", "--quick")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # exactly one JSON object on stdout
    native = _cpu_has_native_bf16()
    assert report["ok"] is True and report["failed"] == []
    assert report["capability"]["native_bf16"] is native
    checks = _checks(report)
    assert checks["native_precision"]["data"]["native_bf16"] is native
    assert report["precision"]["auto"] == ("bf16" if native else "fp32")
    assert checks["cuda"]["status"] in ("skip", "ok")
    assert {"torch", "cpu", "precision", "channels_last", "compile"} <= set(checks)
    assert checks["probe"]["status"] == checks["distributed"]["status"] == "skip"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_device_cuda_fails_naming_the_cuda_check():
    done = run_cli("doctor", "--device", "cuda", "--quick", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["failed"] == ["cuda"]
    assert done.stderr.count("\n") == 1 and "cuda (no CUDA device visible" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--device", "foo"], "device 'foo': expected cpu, cuda or cuda:N"),
     (["/nonexistent/x.yaml"], "config file not found"),
     (["--set", "recover.ipc=2"], "--set needs a CONFIG file")],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args, message):
    done = run_cli("doctor", *args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert done.stdout == ""


def test_demo_config_passes_its_data_checks(fmnist_available, tmp_path):
    done = run_cli("doctor", DEMO, "--json", "--quick", "--set", f"run_root={tmp_path / 'r'}",
                   "--set", f"data.root={fmnist_available}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    checks = _checks(json.loads(done.stdout))
    for name in ("data", "data_test", "data_decode", "run_root", "hdf5"):
        assert checks[name]["status"] == "ok", checks[name]
    assert "60000 training images in 10 classes" in checks["data"]["detail"]
    teachers = [c for n, c in checks.items() if n.startswith("teacher:")]
    assert len(teachers) == 5
    assert all(c["status"] == "skip" and "trained by squeeze" in c["detail"] for c in teachers)
    assert checks["recover_precision"]["status"] == "ok"  # the demo runs fp32
    assert list(tmp_path.iterdir()) == []  # nothing written: run_root not even made


def test_an_unreadable_data_root_fails_that_check(tmp_path, tiny_cfg):
    tiny_cfg.update(run_root=str(tmp_path / "runs"))
    tiny_cfg["data"]["root"] = "/nonexistent/fm"
    done = run_cli("doctor", write_yaml(tmp_path / "c.yaml", tiny_cfg), "--json", "--quick")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["failed"] == ["data"]
    assert "/nonexistent/fm" in _checks(report)["data"]["detail"]
    assert "data (/nonexistent/fm" in done.stderr


# --------------------------------------------------------------------------- in process


def _cfg(tmp_path: Path, **teacher_weights: str):
    raw = json.loads(json.dumps(TINY))
    raw["run_root"] = str(tmp_path / "runs")
    for name, weights in teacher_weights.items():
        raw["teachers"][name]["weights"] = weights
    return config_from_dict(raw)


def test_teacher_weights_load_into_their_architecture_or_fail_by_name(tmp_path, fmnist_available):
    from prism_hpc.hardware.configcheck import teacher_checks
    from prism_hpc.models.teachers import build_untrained

    cfg = _cfg(tmp_path)
    good = tmp_path / "good.pt"
    torch.save(build_untrained(cfg, cfg.teachers["resnet18"]).state_dict(), good)
    wrong = tmp_path / "wrong.pt"  # resnet18 weights for the shufflenet teacher
    torch.save(build_untrained(cfg, cfg.teachers["resnet18"]).state_dict(), wrong)
    cfg = _cfg(tmp_path, resnet18=str(good), shufflenet=str(wrong))
    checks = {c.name: c for c in teacher_checks(cfg, None)}
    assert checks["teacher:resnet18"].status == "ok"
    assert "loads into resnet18; 1x16x16 -> 10 logits" in checks["teacher:resnet18"].detail
    assert checks["teacher:shufflenet"].status == "fail"
    assert "does not fit" in checks["teacher:shufflenet"].detail


def test_run_root_free_space_and_hdf5(tmp_path):
    from prism_hpc.hardware.configcheck import run_root_checks

    cfg = _cfg(tmp_path)
    ok = {c.name: c for c in run_root_checks(cfg, storage_gb=0.01)}
    assert ok["run_root"].status == "ok" and "not made yet" in ok["run_root"].detail
    assert ok["hdf5"].status == "ok"
    full = {c.name: c for c in run_root_checks(cfg, storage_gb=1e9)}
    assert full["run_root"].status == "fail" and "the plan writes" in full["run_root"].detail
    assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("backend", "sinfo_rc", "status"),
    [("local", 0, "skip"), ("slurm", 0, "ok"), ("slurm", 1, "fail"), ("auto", 1, "warn")],
)  # fmt: skip
def test_scheduler_check_follows_the_backend(tmp_path, monkeypatch, backend, sinfo_rc, status):
    from prism_hpc.hardware.configcheck import scheduler_check

    bin_dir = tmp_path / "bin"
    write_stub(bin_dir, "sbatch", "exit 0\n")
    write_stub(bin_dir, "sinfo", f"echo 'sinfo: down' >&2; exit {sinfo_rc}\n")
    write_stub(bin_dir, "squeue", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = _cfg(tmp_path).model_copy(update={"backend": backend})
    check = scheduler_check(cfg)
    assert check.status == status, check
    if status == "fail":
        assert "sinfo: down" in check.detail


def test_no_sbatch_on_the_slurm_backend_fails(tmp_path, monkeypatch):
    from prism_hpc.hardware.configcheck import scheduler_check

    monkeypatch.setenv("PATH", str(tmp_path))
    assert scheduler_check(_cfg(tmp_path).model_copy(update={"backend": "slurm"})).status == "fail"
    assert scheduler_check(_cfg(tmp_path).model_copy(update={"backend": "auto"})).status == "skip"


def test_full_doctor_times_precisions_and_runs_two_ranks(tmp_path):
    """The slow parts once: the probe's ratios feed the precision choice; gloo across two
    processes; the report's JSON form."""
    from prism_hpc.hardware.doctor import run_doctor

    report = run_doctor("cpu")
    checks = {c.name: c for c in report.checks}
    assert checks["probe"].status == "ok" and report.probe is not None
    assert report.probe.ratios()["fp32"] == 1.0
    assert checks["distributed"].status == "ok", checks["distributed"]
    assert "gloo" in checks["distributed"].detail
    assert report.precision.precision in ("bf16", "fp32")
    assert json.loads(json.dumps(report.to_dict()))["probe"]["timings"]["fp32"]["ratio"] == 1.0
