"""The ImageNet-1K rehearsal (benchmarks/in1k_rehearsal/run.py) in quick mode: 20 fake ImageNet
classes at 96 px through the real SLURM path (recover array with 2 gloo ranks per task,
collect, relabel, a DDP student with 2 ranks, report), then export; every check must pass."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "in1k_rehearsal" / "run.py"
STAGES = ("recover", "collect", "relabel", "train", "report", "export")


@pytest.fixture(scope="module")
def rehearsal():
    spec = importlib.util.spec_from_file_location("in1k_rehearsal_driver", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # puts the script's folder (its sibling modules) on sys.path
    return module


def test_override_file_becomes_set_pairs(rehearsal, tmp_path):
    pairs = rehearsal.override_pairs(rehearsal.OVERRIDES, out=str(tmp_path), classes=20,
                                     resolution=64, recover_mem_gb=8)  # fmt: skip
    assert f"data.root={tmp_path}/fake_imagenet_20" in pairs
    assert "data.num_classes=20" in pairs and "data.resolution=64" in pairs
    assert 'students.archs=["resnet18"]' in pairs  # lists replace
    assert "teachers.alexnet.weights=random" in pairs
    assert "resources.recover.tasks_per_node=2" in pairs
    assert "resources.train.tasks_per_node=2" in pairs


@pytest.mark.slurm
def test_quick_rehearsal_on_slurm(rehearsal, tmp_path, slurm_cluster):
    report = tmp_path / "REHEARSAL.md"
    rc = rehearsal.main(["--quick", "--out", str(tmp_path / "out"), "--report", str(report)])
    text = report.read_text()
    assert rc == 0, text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in STAGES}  # fmt: skip
    assert set(rows) == set(STAGES), text
    checks = text.split("## Checks", 1)[1]
    results = [line.split("|")[2].strip() for line in checks.splitlines()
               if line.startswith("| ") and not line.startswith("| check")]  # fmt: skip
    assert len(results) == 6 and all(r == "PASS" for r in results), checks
    assert "prism-hpc submit configs/in1k_ipc50.yaml --set" in text
