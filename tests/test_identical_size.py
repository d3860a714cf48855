"""`recover.ipc: all` (identical-size distillation, paper §3): every real training image is
used exactly once; slice i holds the classes with more than i images, so on uneven data the
slices shrink instead of stopping at the smallest class."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from prism_hpc.store.distilled import DistilledSet
from tests.conftest import write_yaml
from tests.helpers import run_cli

GENERATOR = Path(__file__).parent.parent / "benchmarks" / "in1k_rehearsal" / "make_fake_imagenet.py"


@pytest.fixture(scope="module")
def uneven_imagenet(tmp_path_factory) -> tuple[Path, dict]:
    spec = importlib.util.spec_from_file_location("make_fake_imagenet", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("fake") / "imagenet"
    module.make_fake_imagenet(out, classes=6, train_per_class=3, val_per_class=1,
                              small_classes=2, small_count=1, large_classes=1, large_count=5,
                              min_size=20, max_size=32)  # fmt: skip
    counts = {c: len(list((out / "train" / c).iterdir())) for c in sorted(
        p.name for p in (out / "train").iterdir())}  # fmt: skip
    return out, counts


def _config(tmp_path: Path, root: Path) -> Path:
    teacher = {"arch": "resnet18", "width": 0.125, "weights": "random"}
    cfg = {
        "name": "all", "backend": "local", "run_root": str(tmp_path / "runs"),
        "data": {"source": "imagefolder", "root": str(root), "resolution": 16, "channels": 3},
        "teachers": {"r18": teacher},
        "squeeze": {"enabled": False},
        "recover": {"ipc": "all", "init_only": True, "classes_per_batch": 4,
                    "logit_teacher": "r18", "bn_always": ["r18"], "bn_pool": []},
        "relabel": {"mode": "none"},
        "students": {"archs": ["resnet18"], "loss": "ce", "epochs": 1},
    }  # fmt: skip
    return write_yaml(tmp_path / "all.yaml", cfg)


def test_every_real_image_is_used_exactly_once(tmp_path, uneven_imagenet):
    root, counts = uneven_imagenet
    sizes = sorted(counts.values())
    assert sizes[0] == 1 and sizes[-1] == 5  # uneven, as ImageNet's 732..1300
    path = _config(tmp_path, root)
    plan = run_cli("plan", path, "--out", tmp_path / "dry")
    assert plan.returncode == 0, plan.stderr
    entries = json.loads((tmp_path / "dry" / "plan.json").read_text())
    recover = next(e for e in entries if e["stage"] == "recover")
    total = sum(counts.values())  # 1 + 1 + 3 + 3 + 3 + 5
    assert len(recover["items"]) == 5 and recover["estimate"]["images"] == total == 16
    assert "5 slice(s) x 6..1 classes = 16 images" in recover["estimate"]["note"]
    result = run_cli("submit", path, "--run-dir", tmp_path / "run", "--stages", "recover,collect")
    assert result.returncode == 0, result.stdout + result.stderr
    d = DistilledSet(tmp_path / "run" / "distilled.h5")
    assert len(d) == sum(counts.values())
    per_class = np.bincount(d.labels, minlength=len(counts)).tolist()
    assert per_class == [counts[c] for c in sorted(counts)]  # every image, once
    assert all(i < counts[sorted(counts)[c]] for c, i in d.pairs())
    used = [
        (chunk["classes"], chunk["init_indices"])
        for prov in d.slice_provenance
        for chunk in prov["chunks"]
    ]
    rows = [i for _, idx in used for i in idx]
    assert sorted(rows) == list(range(sum(counts.values())))  # each file exactly one slot
    assert [len(p["chunks"][0]["classes"]) for p in d.slice_provenance][-1] == 1


def test_plan_without_the_data_says_it_cannot_know_the_slices(tmp_path):
    path = _config(tmp_path, tmp_path / "not-here")
    result = run_cli("plan", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "recover.ipc = all" in result.stderr and "cannot know" in result.stderr
