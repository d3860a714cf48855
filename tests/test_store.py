"""Shards (atomic, checksummed) and the collected Virtual Dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from prism_hpc.store.atomic import atomic_path, read_marker
from prism_hpc.store.collect import MissingSlices, collect_shards
from prism_hpc.store.shards import marker_for, read_shard, validate_shard, write_shard


def _shard(path, s, classes=4, seed=0):
    rng = np.random.default_rng(seed + s)
    images = rng.integers(0, 256, (classes, 1, 8, 8), dtype=np.uint8)
    labels = np.arange(classes)
    write_shard(path, images, labels, np.full(classes, s), {"slice": s, "bn_teachers": ["a"]})
    return images


def test_shard_roundtrip_and_marker(tmp_path):
    images = _shard(tmp_path / "slice_00000.h5", 0)
    marker = read_marker(marker_for(tmp_path / "slice_00000.h5"))
    assert marker["rows"] == 4 and len(marker["sha256"]) == 64
    back = read_shard(tmp_path / "slice_00000.h5")
    np.testing.assert_array_equal(back["images"], images)
    assert back["provenance"] == {"slice": 0, "bn_teachers": ["a"]}
    with h5py.File(tmp_path / "slice_00000.h5") as f:
        assert f["images"].chunks == (1, 1, 8, 8)
    assert validate_shard(tmp_path / "slice_00000.h5", 4) is None
    assert "expected 5" in validate_shard(tmp_path / "slice_00000.h5", 5)


def test_tampered_or_unmarked_shard_is_invalid(tmp_path):
    path = tmp_path / "slice_00001.h5"
    _shard(path, 1)
    with open(path, "r+b") as fh:  # one byte flipped in place: same size, new mtime
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(b"\x00" if last != b"\x00" else b"\x01")
    assert validate_shard(path) == "slice_00001.h5: checksum differs from its marker"
    with open(path, "ab") as fh:  # a byte appended (a bad copy): caught by the size alone
        fh.write(b"\x00")
    assert "bytes, its marker says" in validate_shard(path, full=False)
    marker_for(path).unlink()
    assert "no .done marker" in validate_shard(path)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "x.txt"
    final.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert final.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


@pytest.mark.parametrize("consolidate", [False, True])
def test_collect_orders_slices_and_survives_a_move(tmp_path, consolidate):
    run = tmp_path / "run"
    shards = {s: run / "recover" / f"slice_{s:05d}.h5" for s in range(3)}
    expected = [_shard(p, s) for s, p in shards.items()]
    info = collect_shards(shards, 4, run / "distilled.h5", {"num_classes": 4}, consolidate)
    assert info["rows"] == 12
    moved = tmp_path / "elsewhere"
    shutil.move(run, moved)
    with h5py.File(moved / "distilled.h5") as f:
        np.testing.assert_array_equal(f["images"][()], np.concatenate(expected))
        assert f["labels"][()].tolist() == [0, 1, 2, 3] * 3
        assert f["ipc_index"][()].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert f.attrs["num_classes"] == 4
        assert f["images"].is_virtual is (not consolidate)


def test_collect_accepts_a_relative_run_dir(tmp_path, monkeypatch):
    # `make demo` writes to runs/<name>/<stamp>: a relative path the VDS check must handle.
    monkeypatch.chdir(tmp_path)
    shards = {s: Path("runs/demo/recover") / f"slice_{s:05d}.h5" for s in range(2)}
    expected = [_shard(p, s) for s, p in shards.items()]
    collect_shards(shards, 4, Path("runs/demo/distilled.h5"), {})
    monkeypatch.chdir("/")
    with h5py.File(tmp_path / "runs/demo/distilled.h5") as f:
        np.testing.assert_array_equal(f["images"][()], np.concatenate(expected))
    assert sorted(p.name for p in (tmp_path / "runs/demo").iterdir()) == ["distilled.h5", "recover"]


def test_collect_names_missing_slices(tmp_path):
    shards = {s: tmp_path / f"slice_{s:05d}.h5" for s in range(4)}
    _shard(shards[0], 0)
    _shard(shards[2], 2)
    with pytest.raises(MissingSlices, match=r"missing or invalid slice\(s\): 1, 3"):
        collect_shards(shards, 4, tmp_path / "distilled.h5", {})
    assert not (tmp_path / "distilled.h5").exists()


# --------------------------------------------------------------------------- run directories
def _tiny_config():
    from prism_hpc.config.load import config_from_dict
    from tests.conftest import TINY

    return config_from_dict(TINY)


def _index(staged) -> None:
    (staged.root / "data_index").mkdir()
    (staged.root / "data_index" / "train.json.gz").write_bytes(b"x")


def test_an_existing_empty_run_dir_keeps_its_mode_and_group(tmp_path):
    """A folder made for the run (group-owned, setgid, its own mode) is filled, not replaced:
    replacing it would drop its group, setgid bit and ACLs."""
    import os
    import stat

    from prism_hpc.errors import UserError
    from prism_hpc.store.rundir import new_run_dir

    target = tmp_path / "shared"
    target.mkdir()
    group = 4242 if os.geteuid() == 0 else os.getgroups()[-1]
    os.chown(target, -1, group)
    os.chmod(target, 0o2770)
    rd = new_run_dir(_tiny_config(), target, {"name": "tiny"}, build=_index)
    assert rd.root == target
    info = target.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o2770, group)
    assert sorted(p.name for p in target.iterdir()) == [
        "config.input.yaml", "config.yaml", "data_index", "provenance.json"]  # fmt: skip
    assert (target / "config.yaml").stat().st_gid == group  # made inside: the group inherited
    assert (target / "data_index").stat().st_mode & stat.S_ISGID
    with pytest.raises(UserError, match=r"run directory exists; use --resume"):
        new_run_dir(_tiny_config(), target, {"name": "tiny"})


def test_a_refused_build_inside_an_existing_dir_leaves_it_empty(tmp_path):
    from prism_hpc.store.rundir import new_run_dir

    target = tmp_path / "shared"
    target.mkdir(mode=0o2775)

    def refuse(staged):
        _index(staged)
        raise RuntimeError("broken image")

    with pytest.raises(RuntimeError):
        new_run_dir(_tiny_config(), target, {}, build=refuse)
    assert target.is_dir() and list(target.iterdir()) == []
    new_run_dir(_tiny_config(), target, {})  # and it is still usable
    assert (target / "config.yaml").is_file()


def test_a_mount_point_can_be_the_run_dir(tmp_path):
    """Renaming a temp folder onto a mount point fails (EBUSY): the run is built inside it."""
    import subprocess

    from prism_hpc.store.rundir import new_run_dir

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        new_run_dir(_tiny_config(), mnt, {"name": "tiny"}, build=_index)
        assert (mnt / "config.yaml").is_file() and (mnt / "data_index").is_dir()
        assert not [p for p in mnt.iterdir() if ".tmp-" in p.name]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_non_empty_run_dir_is_refused_in_one_line(tmp_path, tiny_cfg):
    from tests.conftest import write_yaml
    from tests.helpers import run_cli

    tiny_cfg["squeeze"]["enabled"] = False
    for spec in tiny_cfg["teachers"].values():
        spec["weights"] = "random"
    target = tmp_path / "run"
    target.mkdir()
    (target / "notes.txt").write_text("mine\n")
    result = run_cli("submit", write_yaml(tmp_path / "c.yaml", tiny_cfg), "--run-dir", target)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"prism-hpc: error: {target}: run directory exists; use --resume {target} to continue it"
    )
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
