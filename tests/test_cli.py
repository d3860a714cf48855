"""The command line as users meet it: exit codes, one-line errors, nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_yaml

CLI = [sys.executable, "-m", "prism_hpc.cli"]


def run_cli(*args, cwd=None, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env, check=False)  # fmt: skip


def _bad(cfg: dict, mutate) -> dict:
    mutate(cfg)
    return cfg


BAD_INPUTS = {
    "unknown key": (lambda c: c["recover"].update(iters=5), r"unknown key 'recover.iters'"),
    "wrong type": (lambda c: c["recover"].update(ipc="ten"), r"recover.ipc = 'ten': Input should"),
    "unknown model": (
        lambda c: c["teachers"]["resnet18"].update(arch="resnet1800"),
        r"teachers.resnet18.arch = 'resnet1800': unknown model",
    ),
    "missing dataset": (
        lambda c: c["data"].update(root="/nonexistent/fmnist"),
        r"data.root = '/nonexistent/fmnist': train-images-idx3-ubyte.gz not found",
    ),
    "ipc too large": (
        lambda c: c["recover"].update(ipc=6001),
        r"recover.ipc = 6001: needs 6001 images per class, the smallest class .* has 6000",
    ),
    "zero iterations": (
        lambda c: c["recover"].update(iterations=0),
        r"recover.iterations = 0: Input should be greater than or equal to 1",
    ),
    "negative iterations": (
        lambda c: c["recover"].update(iterations=-5),
        r"recover.iterations = -5: Input should be greater than or equal to 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_config_exits_2_with_one_line(case, tmp_path, tiny_cfg, fmnist_available):
    mutate, pattern = BAD_INPUTS[case]
    cfg = _bad(tiny_cfg, mutate)
    cfg["run_root"] = str(tmp_path / "runs")
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    result = run_cli("submit", path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].startswith(f"prism-hpc: error: {path}: ")
    assert not (tmp_path / "runs").exists()


def test_missing_and_malformed_config(tmp_path):
    result = run_cli("submit", tmp_path / "missing.yaml")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"prism-hpc: error: {tmp_path / 'missing.yaml'}: config file not found"
    )
    bad = tmp_path / "syntax.yaml"
    bad.write_text("name: x\nteachers: [\n")
    result = run_cli("submit", bad)
    assert result.returncode == 2 and "YAML syntax error" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_is_informative():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("submit", "plan", "status", "collect", "report", "export"):
        assert command in result.stdout
    sub = run_cli("submit", "--help")
    assert "--resume" in sub.stdout and "--set" in sub.stdout and "--backend" in sub.stdout


def test_plan_prints_stages_without_running(tmp_path, tiny_cfg):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg)
    result = run_cli("plan", path, "--out", tmp_path / "dry")
    assert result.returncode == 0, result.stderr
    for stage in ("squeeze", "recover", "collect", "relabel", "train", "report"):
        assert stage in result.stdout
    assert (tmp_path / "dry" / "plan.json").is_file()
    assert not (tmp_path / "runs").exists()


def test_second_submit_never_overwrites(tmp_path, tiny_cfg_pretrained):
    cfg = tiny_cfg_pretrained
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("precious: true\n")
    result = run_cli("submit", path, "--run-dir", run)
    assert result.returncode == 2 and "use --resume" in result.stderr
    assert (run / "config.yaml").read_text() == "precious: true\n"


def test_resume_refuses_a_different_config(tmp_path, tiny_cfg_pretrained):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    run = tmp_path / "run"
    ok = run_cli("submit", path, "--run-dir", run, "--stages", "recover,collect",
                 "--set", "recover.ipc=1")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (run / "distilled.h5").is_file()
    assert oct(run.stat().st_mode & 0o777) == "0o750"
    result = run_cli("submit", path, "--resume", run, "--set", "recover.ipc=2")
    assert result.returncode == 2
    assert "config differs from the run's config.yaml at recover.ipc (1 != 2)" in result.stderr
    assert Path(run / "provenance.json").is_file()
