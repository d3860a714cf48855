"""Kill-anywhere (issue 17): SIGKILL a real local run (all six stages, squeeze included) at
seeded points, resume, and demand a bit-identical result with nothing finished lost, corrupted
or redone. The driver is benchmarks/kill_anywhere/run.py; its many-trial table is RESULTS.md
there. Here: the reference plus three trials aimed at squeeze, recover and train, then checks
that the driver's own detectors see tampering (so a clean table is not vacuous)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import h5py
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "kill_anywhere" / "run.py"
AIMED = ("squeeze", "recover", "train")


@pytest.fixture(scope="module")
def ka():
    """run.py (its `main`); loading it puts its `ka_driver` package on sys.path."""
    spec = importlib.util.spec_from_file_location("kill_anywhere_driver", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def driver(ka):
    """The driver's detectors (`ka_driver`: markers, comparison, the registry's stages)."""
    return importlib.import_module("ka_driver")


@pytest.fixture(scope="module")
def trials(ka, tmp_path_factory):
    work = tmp_path_factory.mktemp("kill_anywhere")
    out = work / "table.md"
    argv = ["--trials", "3", "--seed", "3", "--stages", ",".join(AIMED), "--work", str(work),
            "--out", str(out), "--json", str(work / "trials.json"), "--keep"]  # fmt: skip
    rc = ka.main(argv)
    return {"rc": rc, "work": work, "table": out.read_text(),
            **json.loads((work / "trials.json").read_text())}  # fmt: skip


def test_killed_runs_resume_bit_identical(trials):
    records = trials["trials"]
    assert [t["aimed"] for t in records] == list(AIMED)
    assert all(t["kill_at"] is not None for t in records), "every trial was really killed"
    assert "squeeze" in {t["stage"] for t in records}
    for t in records:
        assert t["resume_rc"] == 0, t["resume_error"]
        assert t["lost"] == [] and t["corrupt"] == [], t
        assert t["redone"] == [], t
        assert t["differences"] == [], t
    assert sum(t["finished"] for t in records) > 0  # some kills came after finished items
    assert trials["rc"] == 0
    assert (
        "| 0 | squeeze |" in trials["table"]
        and "result: PASS (3/3 trials clean)" in trials["table"]
    )
    assert set(trials["windows"]) == {"squeeze", "recover", "collect", "relabel", "train", "report"}


def test_detectors_see_tampering(driver, trials):
    """The checks behind a clean row: a changed soft label, teacher tensor, metric or image is
    named; a deleted marker is lost, a modified output corrupt, a rewritten marker redone."""
    ref = trials["work"] / "reference"
    copy = trials["work"] / "tampered"
    shutil.copytree(ref, copy)
    assert driver.compare_runs(ref, copy) == []
    before = driver.snapshot(copy)
    assert "recover/slice_00001.done" in before
    assert before["recover/slice_00001.done"]["files"].keys() == {"recover/slice_00001.h5"}

    relabel = min((copy / "relabel").glob("*.h5"))
    with h5py.File(relabel, "r+") as fh:
        fh["epoch_0000/logits"][0, 0] += 1
    teacher = copy / "teachers" / "resnet18.pt"
    weights = torch.load(teacher, weights_only=True)
    weights["conv1.weight"].view(-1)[0] += 1e-7
    torch.save(weights, teacher)
    metrics = next((copy / "students").glob("*/*/metrics.json"))
    data = json.loads(metrics.read_text())
    data["final"]["top1"] += 0.001
    data["wall_seconds"] = 0  # timing fields are ignored
    metrics.write_text(json.dumps(data))
    with h5py.File(copy / "recover" / "slice_00001.h5", "r+") as fh:
        fh["images"][0, 0, 0, 0] ^= 1  # through the VDS this is a distilled image
    (copy / "recover" / "slice_00002.done").unlink()
    marker = copy / "teachers" / "shufflenet.done"
    payload = json.loads(marker.read_text())
    if "id" in payload:
        payload["id"] = "a-new-id"  # what a redone item's marker gets
    marker.unlink()
    marker.write_text(json.dumps(payload))  # without ids: a new marker file is a redo

    diffs = driver.compare_runs(ref, copy)
    rel = relabel.relative_to(copy)
    assert f"{rel}:epoch_0000/logits" in diffs
    assert "teachers/resnet18.pt:conv1.weight" in diffs
    assert f"{metrics.relative_to(copy)}:final" in diffs
    assert "distilled.h5:images" in diffs
    assert "missing marker recover/slice_00002.done" in diffs
    checked = driver.check_finished(before, driver.snapshot(copy))
    assert "recover/slice_00002.done" in checked["lost"]
    assert "recover/slice_00001.done: recover/slice_00001.h5" in checked["corrupt"]
    assert "teachers/shufflenet.done" in checked["redone"]
    assert "teachers/resnet18.done: teachers/resnet18.pt" in checked["corrupt"]


def test_stage_from_markers(driver):
    counts = {"squeeze": 2, "recover": 3, "collect": 1, "relabel": 3, "train": 1, "report": 1}
    assert driver.stage_at({}, counts) == "squeeze"
    done = {"teachers/a.done": 0, "teachers/b.done": 0, "recover/slice_00000.done": 0}
    assert driver.stage_at(done, counts) == "recover"
    assert driver.stage_of(Path("students/resnet18/seed0/.done")) == "train"
    assert driver.stage_of(Path("distilled.done")) == "collect"


def test_stages_come_from_the_registry(driver):
    """The pipeline order is the product's, not a copy in the benchmark."""
    from prism_hpc.stages import registry

    assert driver.pipeline_stages() == tuple(s.name for s in registry().stages)
    assert {"squeeze", "recover", "collect", "relabel", "train", "report"} <= set(
        driver.pipeline_stages()
    )


def test_stage_windows_come_from_marker_times(driver):
    """No log line is read for a number: each window ends at its stage's last marker."""
    at = 1000.0
    markers = {
        "teachers/a.done": {"mtime_ns": int(1002e9)},
        "teachers/b.done": {"mtime_ns": int(1003e9)},
        "recover/slice_00000.done": {"mtime_ns": int(1007.5e9)},
        "distilled.done": {"mtime_ns": int(1008e9)},
    }
    assert driver.stage_windows(markers, at) == {
        "squeeze": (0.0, 3.0), "recover": (3.0, 7.5), "collect": (7.5, 8.0)}  # fmt: skip
