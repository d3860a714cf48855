"""Preflight: teachers' weights are checked where the tasks will load them, before a run
directory exists or anything is submitted (one line, exit 2)."""

from __future__ import annotations

import torch

from tests.conftest import write_yaml
from tests.test_cli import run_cli


class NotWeights:
    """Pickled code: `torch.load(weights_only=True)` must refuse it."""


def _cfg(tiny_cfg, tmp_path, **teacher):
    tiny_cfg["run_root"] = str(tmp_path / "runs")
    tiny_cfg["squeeze"]["enabled"] = False
    for spec in tiny_cfg["teachers"].values():
        spec["weights"] = "random"
    tiny_cfg["teachers"]["shufflenet"].update(teacher)
    return write_yaml(tmp_path / "c.yaml", tiny_cfg)


def _refused(result, tmp_path, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert not (tmp_path / "runs").exists()  # nothing created, nothing submitted


def test_weights_file_with_pickled_code_is_refused(tiny_cfg, tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"model": NotWeights()}, bad)
    result = run_cli("submit", _cfg(tiny_cfg, tmp_path, weights=str(bad)))
    _refused(result, tmp_path, "teachers.shufflenet.weights", str(bad), "not a loadable")


def test_weights_of_another_architecture_are_refused(tiny_cfg, tmp_path):
    wrong = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    result = run_cli("submit", _cfg(tiny_cfg, tmp_path, weights=str(wrong)))
    _refused(result, tmp_path, "teachers.shufflenet.weights", str(wrong), "does not fit")


def test_offline_nodes_need_torchvision_weights_in_the_cache(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    tiny_cfg["offline"] = True
    path = _cfg(tiny_cfg, tmp_path, weights="torchvision", width=1.0)
    result = run_cli("submit", path)
    _refused(result, tmp_path, "teachers.shufflenet.weights = torchvision",
             str(tmp_path / "empty-cache"), "offline")  # fmt: skip
