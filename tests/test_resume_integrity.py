"""Finished work that goes bad is found and redone (hpc/pending.py, hpc/verify.py and the
sealed markers of the stages): a truncated or flipped file under a valid marker, downstream
items computed from it, and the commands that report it."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import write_yaml

CLI = [sys.executable, "-m", "prism_hpc.cli"]


def _cli(*args, umask: int | None = None):
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=900,
                          check=False, preexec_fn=preexec)  # fmt: skip


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def _datasets(path: Path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)  # fmt: skip
    return found


def _same_h5(a: Path, b: Path) -> bool:
    da, db = _datasets(a), _datasets(b)
    return da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_teachers):
    """One finished tiny run (made under umask 000), shared by the tests of this module."""
    from tests.conftest import TINY

    cfg = json.loads(json.dumps(TINY))
    for name, path in tiny_teachers.items():
        cfg["teachers"][name]["weights"] = path
    cfg["squeeze"]["enabled"] = False
    cfg["recover"]["ipc"] = 2
    cfg["students"]["epochs"] = 1
    cfg["relabel"]["epochs_per_task"] = 1
    root = tmp_path_factory.mktemp("integrity")
    path = write_yaml(root / "c.yaml", cfg)
    run = root / "ref"
    result = _cli("submit", path, "--run-dir", run, "--backend", "local", umask=0)
    assert result.returncode == 0, result.stderr
    return run


def test_nothing_in_a_run_is_writable_by_others_whatever_the_umask(finished):
    loose = [p for p in [finished, *finished.rglob("*")] if p.stat().st_mode & 0o022]
    assert loose == []
    assert oct(finished.stat().st_mode & 0o777) == "0o750"


def test_verify_passes_a_clean_run(finished):
    result = _cli("verify", finished)
    assert result.returncode == 0, result.stderr
    assert "every finished item matches its marker" in result.stdout


def test_bad_files_under_valid_markers_are_named_then_redone_bit_identical(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)  # copytree keeps mtimes (copy2)
    slice0, slice1 = run / "recover" / "slice_00000.h5", run / "recover" / "slice_00001.h5"
    os.truncate(slice0, slice0.stat().st_size - 64)  # a copy cut short
    _flip(slice1, slice1.stat().st_size // 2)  # a flipped byte, same size
    soft = min((run / "relabel").glob("epochs_*.h5"))
    _flip(soft, soft.stat().st_size // 2)
    student = run / "students" / "resnet18" / "seed0"
    report_marker = (run / "report" / "report.done").read_text()

    result = _cli("verify", run)
    assert result.returncode == 1
    bad = [line for line in result.stdout.splitlines() if line.startswith("bad: ")]
    assert len(bad) == 3, result.stdout
    assert "recover slice_00000: recover/slice_00000.h5:" in bad[0] and "its marker says" in bad[0]
    assert bad[1] == ("bad: recover slice_00001: recover/slice_00001.h5: checksum differs from "
                      "its marker")  # fmt: skip
    assert bad[2].startswith(f"bad: relabel {soft.stem}: relabel/{soft.name}: checksum differs")
    assert len(result.stderr.strip().splitlines()) == 1

    collect = _cli("collect", run)  # the VDS reads the bad slices: not "present"
    assert collect.returncode == 1
    assert "2 bad source(s)" in collect.stderr and "slice_00000.h5" in collect.stderr

    export = _cli("export", run, tmp_path / "png")  # never exports through a damaged shard
    assert export.returncode == 2 and len(export.stderr.strip().splitlines()) == 1
    assert "2 bad source(s), first: recover/slice_00000.h5" in export.stderr
    assert not (tmp_path / "png").exists()

    status = _cli("status", run, "--json")
    rows = {r["stage"]: r for r in json.loads(status.stdout)}
    assert rows["recover"]["pending"] == [0, 1] and rows["train"]["done"] == 0

    resumed = _cli("submit", "--resume", run, "--backend", "local")
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout
    assert "[recover] 2/2 done" in out and "[collect] 1/1 done" in out  # redone, in order
    assert "[relabel] 1/1 done" in out and "[train] 1/1 done" in out
    assert "restart state discarded" in out  # the student started over, not from its ckpt
    assert (run / "report" / "report.done").read_text() != report_marker  # report redone
    for rel in ("recover/slice_00000.h5", "recover/slice_00001.h5", "distilled.h5",
                f"relabel/{soft.name}"):  # fmt: skip
        assert _same_h5(finished / rel, run / rel), rel
    ref = json.loads((finished / "students/resnet18/seed0/metrics.json").read_text())
    new = json.loads((student / "metrics.json").read_text())
    assert new["final"] == ref["final"] and new["evals"] == ref["evals"]  # loss too
    assert _cli("verify", run).returncode == 0


def test_a_second_resume_of_a_live_run_refuses_in_one_line(finished, tmp_path):
    from prism_hpc.store.rundir import RunDir, RunLock

    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    lock = RunLock(RunDir(run)).acquire()
    try:
        result = _cli("submit", "--resume", run, "--backend", "local")
    finally:
        lock.release()
    assert result.returncode == 2
    assert result.stderr.startswith(f"prism-hpc: error: {run}: run is in use by pid {os.getpid()}")
    assert len(result.stderr.strip().splitlines()) == 1
    again = _cli("submit", "--resume", run, "--backend", "local")  # released: it resumes
    assert again.returncode == 0, again.stderr
    assert "[report] 1/1 already done" in again.stdout


def test_resume_removes_temp_files_of_killed_writers(finished, tmp_path):
    from prism_hpc.store.atomic import host_tag

    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    litter = [run / "recover" / f".slice_00000.h5.tmp-{host_tag()}-{dead.pid}",
              run / "students" / "resnet18" / "seed0" / f".ckpt.pt.tmp-{host_tag()}-{dead.pid}"]
    for p in litter:
        p.write_bytes(b"half")
    result = _cli("submit", "--resume", run, "--backend", "local")
    assert result.returncode == 0, result.stderr
    assert "removed 2 temp file(s) of killed writers" in result.stdout
    assert not any(p.exists() for p in litter)
    assert glob.glob(str(run / "**" / "*.tmp-*"), recursive=True) == []
