"""Preflight: teachers' weights are checked where the tasks will load them, before a run
directory exists or anything is submitted (one line, exit 2)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import write_yaml
from tests.helpers import run_cli


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
    _refused(result, tmp_path, f"teachers.shufflenet.weights: {bad} is a pickled object "
             "(it needs tests.test_preflight.NotWeights) that torch.load(weights_only=True) "
             "refuses; save a state_dict with torch.save(model.state_dict(), ...)")  # fmt: skip
    assert "weights_only=False" not in result.stderr  # never the unsafe load as advice


@pytest.mark.parametrize(("content", "why"), [
    (b"", "empty"),
    (b"resnet18 weights: see the wiki\n", "not a zip/pickle file"),
])  # fmt: skip
def test_a_file_that_is_no_checkpoint_says_so(tiny_cfg, tmp_path, content, why):
    bad = tmp_path / "resnet18.pth"
    bad.write_bytes(content)
    result = run_cli("submit", _cfg(tiny_cfg, tmp_path, weights=str(bad)))
    _refused(result, tmp_path, f"teachers.shufflenet.weights: {bad} is not a torch checkpoint "
             f"({why})")  # fmt: skip


def test_weights_of_another_architecture_are_refused(tiny_cfg, tmp_path):
    wrong = tmp_path / "resnet.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    result = run_cli("submit", _cfg(tiny_cfg, tmp_path, weights=str(wrong)))
    _refused(result, tmp_path, "teachers.shufflenet.weights", str(wrong), "does not fit")


def test_offline_nodes_need_torchvision_weights_in_the_cache(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    tiny_cfg["offline"] = True
    tiny_cfg["data"].update(channels=3, num_classes=1000)  # what ImageNet weights fit
    path = _cfg(tiny_cfg, tmp_path, weights="torchvision", width=1.0)
    result = run_cli("submit", path)
    _refused(result, tmp_path, "teachers.shufflenet.weights = torchvision",
             str(tmp_path / "empty-cache"), "offline")  # fmt: skip


@pytest.mark.parametrize(("command", "channels", "mismatch"), [
    ("plan", 1, "the data has 10 classes and 1 channel"),
    ("plan", 3, "the data has 10 classes"),
    ("submit", 1, "the data has 10 classes and 1 channel"),
])  # fmt: skip
def test_torchvision_weights_must_fit_the_data(tiny_cfg, tmp_path, monkeypatch, command,
                                               channels, mismatch):  # fmt: skip
    """torchvision's weights are its 1000-class RGB ImageNet network, whatever the data says."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    tiny_cfg["offline"] = True  # nothing is ever downloaded, whatever the outcome
    tiny_cfg["data"]["channels"] = channels
    path = _cfg(tiny_cfg, tmp_path, weights="torchvision", width=1.0)
    result = run_cli(command, path)
    _refused(result, tmp_path, "teachers.shufflenet: weights torchvision are a 1000-class "
             f"3-channel ImageNet network, but {mismatch}")  # fmt: skip
    assert result.stderr.strip().endswith(mismatch)


def test_plan_refuses_data_that_contradicts_the_config(tiny_cfg, tmp_path, fmnist_available):
    """`plan` reads the data when it is there: a mismatch is an error, not a warning."""
    tiny_cfg["data"]["class_names"] = ["a", "b", "c"]
    result = run_cli("plan", _cfg(tiny_cfg, tmp_path))
    _refused(result, tmp_path, "data.class_names has 3 name(s), the data has 10 classes")
    tiny_cfg["data"].update(class_names=None, num_classes=7)
    result = run_cli("plan", _cfg(tiny_cfg, tmp_path))
    _refused(result, tmp_path, "data.num_classes = 7: the data has 10 classes")


def test_plan_without_the_data_warns(tiny_cfg, tmp_path):
    tiny_cfg["data"]["root"] = str(tmp_path / "elsewhere")
    result = run_cli("plan", _cfg(tiny_cfg, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "warning: data not checked: data.root" in result.stderr
