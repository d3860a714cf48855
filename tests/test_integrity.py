"""What a marker vouches for (store/integrity.py) and the housekeeping of temp files."""

from __future__ import annotations

import os
import subprocess
import time

from prism_hpc.store.atomic import host_tag, read_marker, remove_stale_tmp, write_marker
from prism_hpc.store.integrity import check_inputs, check_marker, check_outputs


def _flip(path, offset=10):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_a_marker_records_its_files_and_notices_each_kind_of_damage(tmp_path):
    out = tmp_path / "stage" / "data.bin"
    out.parent.mkdir()
    out.write_bytes(bytes(range(256)) * 4)
    marker = tmp_path / "stage" / "data.done"
    payload = write_marker(marker, {"rows": 4}, tmp_path, outputs=[out])
    assert payload["outputs"]["stage/data.bin"]["size"] == 1024
    assert len(payload["outputs"]["stage/data.bin"]["sha256"]) == 64
    assert check_marker(tmp_path, marker) == []

    _flip(out)  # same size, new mtime: the cheap check hashes it
    assert check_marker(tmp_path, marker) == ["stage/data.bin: checksum differs from its marker"]
    _flip(out)  # flipped back: content matches again
    assert check_marker(tmp_path, marker) == []

    _flip(out)
    recorded = payload["outputs"]["stage/data.bin"]["mtime_ns"]
    os.utime(out, ns=(recorded, recorded))  # a damaged copy that kept the recorded mtime
    assert check_outputs(tmp_path, read_marker(marker)) == []  # cheap: size + mtime only
    assert check_outputs(tmp_path, read_marker(marker), full=True) == [
        "stage/data.bin: checksum differs from its marker"
    ]

    os.truncate(out, 1000)
    assert check_marker(tmp_path, marker) == ["stage/data.bin: 1000 bytes, its marker says 1024"]
    out.unlink()
    assert check_marker(tmp_path, marker) == ["stage/data.bin: missing"]
    assert check_marker(tmp_path, tmp_path / "nope.done") == ["nope.done: no marker"]
    marker.write_text("{not json")
    assert check_marker(tmp_path, marker) == ["stage/data.done: marker unreadable"]


def test_a_redone_upstream_makes_downstream_stale_but_a_reseal_does_not(tmp_path):
    up = tmp_path / "up.done"
    first = write_marker(up, {"n": 1})
    down = tmp_path / "down.done"
    write_marker(down, {}, tmp_path, inputs={"up.done": first["id"]})
    assert check_marker(tmp_path, down) == []

    write_marker(up, {"n": 1}, keep_id=first["id"])  # re-sealed (e.g. consolidated): same id
    assert check_inputs(tmp_path, read_marker(down)) == []

    write_marker(up, {"n": 1})  # redone: a new id, even for identical content
    assert check_marker(tmp_path, down) == ["stale: input up.done was redone"]
    up.unlink()
    assert check_marker(tmp_path, down) == ["stale: input up.done is gone"]


def test_markers_written_before_ids_are_identified_by_their_bytes(tmp_path):
    up = tmp_path / "old.done"
    up.write_text('{"rows": 3}\n')  # a marker of an older version: no id
    from prism_hpc.store.integrity import marker_id

    legacy = marker_id(up)
    assert legacy.startswith("sha256:")
    write_marker(tmp_path / "down.done", {}, tmp_path, inputs={"old.done": legacy})
    assert check_marker(tmp_path, tmp_path / "down.done") == []
    up.write_text('{"rows": 4}\n')
    assert check_marker(tmp_path, tmp_path / "down.done") == ["stale: input old.done was redone"]


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    sub = tmp_path / "recover"
    sub.mkdir()
    stale = sub / f".slice_00001.h5.tmp-{host_tag()}-{dead.pid}"
    legacy = sub / f".slice_00002.h5.tmp-{dead.pid}"  # the older name, without a host
    live = sub / f".slice_00003.h5.tmp-{host_tag()}-{os.getpid()}"
    foreign_new = sub / f".ckpt.pt.tmp-othernode-{dead.pid}"
    foreign_old = sub / f".metrics.json.tmp-othernode-{dead.pid}"
    keep = sub / "slice_00001.h5"
    for p in (stale, legacy, live, foreign_new, foreign_old, keep):
        p.write_text("x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(foreign_old, (day_ago, day_ago))
    removed = sorted(p.name for p in remove_stale_tmp(tmp_path))
    assert removed == sorted([stale.name, legacy.name, foreign_old.name])
    assert sorted(p.name for p in sub.iterdir()) == sorted(
        [live.name, foreign_new.name, keep.name]
    )
