"""End to end on the local backend: determinism, kill + resume, the full pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import h5py
import numpy as np

from prism_hpc.store.atomic import file_sha256
from tests.conftest import write_yaml
from tests.helpers import CLI, run_cli


def _images(run):
    with h5py.File(run / "distilled.h5") as f:
        return f["images"][()], f["labels"][()], f["ipc_index"][()]


def test_same_seed_gives_bit_identical_images(tmp_path, tiny_cfg_pretrained):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    runs = []
    for name in ("a", "b"):
        result = run_cli(
            "submit", path, "--run-dir", tmp_path / name, "--stages", "recover,collect"
        )
        assert result.returncode == 0, result.stderr
        runs.append(_images(tmp_path / name))
    (ia, la, pa), (ib, lb, pb) = runs
    assert ia.shape == (30, 1, 16, 16)
    assert np.array_equal(ia, ib) and np.array_equal(la, lb) and np.array_equal(pa, pb)
    assert la.tolist() == list(range(10)) * 3 and pa.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    other = run_cli("submit", path, "--run-dir", tmp_path / "c", "--stages", "recover,collect",
                    "--set", "seed=1")  # fmt: skip
    assert other.returncode == 0
    assert not np.array_equal(_images(tmp_path / "c")[0], ia)


def test_sigkill_during_recover_then_resume(tmp_path, tiny_cfg_pretrained):
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=4, iterations=60, iteration_step=0)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    reference = tmp_path / "reference"
    assert (
        run_cli("submit", path, "--run-dir", reference, "--stages", "recover,collect").returncode
        == 0
    )

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*CLI, "submit", str(path), "--run-dir", str(run), "--stages", "recover,collect"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    first = run / "recover" / "slice_00000.done"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), "first slice never finished"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in (run / "recover").glob("*.done"))
    assert 1 <= len(done_before) < 4, done_before
    sums = {n: file_sha256(run / "recover" / n.replace(".done", ".h5")) for n in done_before}
    mtimes = {n: (run / "recover" / n).stat().st_mtime_ns for n in done_before}

    resumed = run_cli("submit", "--resume", run)
    assert resumed.returncode == 0, resumed.stderr
    for n in done_before:  # finished slices are not redone
        assert file_sha256(run / "recover" / n.replace(".done", ".h5")) == sums[n]
        assert (run / "recover" / n).stat().st_mtime_ns == mtimes[n]
    assert np.array_equal(_images(run)[0], _images(reference)[0])
    leftovers = [p.name for p in (run / "recover").iterdir() if ".tmp-" in p.name]
    assert leftovers == [] or all(p.startswith(".") for p in leftovers)


def test_full_pipeline_tiny(tmp_path, tiny_cfg, fmnist_available):
    """squeeze -> recover -> collect -> relabel -> train -> report, everything written."""
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "outputs:" in result.stdout and str(run / "distilled.h5") in result.stdout
    for name in ("resnet18", "shufflenet"):
        info = json.loads((run / "teachers" / f"{name}.json").read_text())
        assert 0.3 < info["test_top1"] <= 1.0
    with h5py.File(run / "distilled.h5") as f:
        assert f["images"].shape == (30, 1, 16, 16)
        assert f.attrs["method"] == "PRISM"
        prov = json.loads(f.attrs["slice_provenance"])
        assert [p["slice"] for p in prov] == [0, 1, 2]
        assert all(p["bn_teachers"][0] == "resnet18" for p in prov)
    assert (run / "report.md").is_file()
    state = json.loads((run / "state.json").read_text())
    assert state[0]["event"] == "local-run" and state[-1]["event"] == "local-finished"
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["packages"]["torch"] and "git_sha" in prov
