"""What a `.done` marker vouches for, and the check that it still holds.

A marker is written last by the item that made the files; on a cluster the files can still go
bad afterwards (a truncated copy, a flipped byte, a quota hit during a move). So a marker
records, relative to the run directory:

- `outputs`: {path: {size, mtime_ns, sha256}} of every file the item made;
- `inputs`: {upstream marker path: its `id`} of the markers the item was computed from;
- `id`: a fresh token. Downstream items record it; when an upstream item is redone its new
  marker has a new id, so everything computed from the old one is stale;
- `item_seconds` (markers sealed inside a task only, `store.itemclock`): how long the item had
  run when its marker was sealed. Informative: no check reads it, and the id never depended on
  the payload, so a timing can never make an input look redone.

The cheap check (every resume, every `status`) compares size and mtime and hashes only a file
whose mtime changed; the full check (`prism-hpc verify`, `collect`) hashes everything. Re-sealing
a marker (after `collect --consolidate` rewrote the distilled set, or to refresh mtimes) keeps
its id, so nothing downstream is redone for a file whose content the item still vouches for.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prism_hpc.store.itemclock import ITEM_SECONDS, elapsed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """Size, mtime and checksum of one finished file (stat taken after hashing)."""
    sha = file_sha256(path)
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}


def _rel(run_dir: Path, path: Path) -> str:
    path = Path(path)
    try:
        return path.resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(path)  # outside the run (a user's weights file): recorded as given


def output_records(run_dir: Path, paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    return {_rel(run_dir, p): file_record(Path(p)) for p in paths}


def marker_id(path: Path) -> str | None:
    """The identity downstream items record: the marker's `id` (older markers: its digest)."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return None
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    if isinstance(payload, dict) and isinstance(payload.get("id"), str):
        return payload["id"]
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def input_records(run_dir: Path, markers: Iterable[Path]) -> dict[str, str | None]:
    return {_rel(run_dir, m): marker_id(m) for m in markers}


def sealed(
    payload: Mapping[str, Any],
    run_dir: Path | None = None,
    outputs: Iterable[Path] = (),
    inputs: Mapping[str, str | None] | None = None,
    keep_id: str | None = None,
) -> dict[str, Any]:
    """`payload` plus the integrity records (a new id unless `keep_id`), and the running
    item's seconds unless the payload already has them (a re-seal keeps the item's time)."""
    out = dict(payload)
    seconds = elapsed()
    if seconds is not None:
        out.setdefault(ITEM_SECONDS, seconds)
    outputs = list(outputs)
    if outputs:
        if run_dir is None:
            raise ValueError("output records need the run directory")
        out["outputs"] = output_records(run_dir, outputs)
    if inputs is not None:
        out["inputs"] = dict(inputs)
    out["id"] = keep_id or uuid.uuid4().hex
    return out


def _resolve(run_dir: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(run_dir) / p


def check_outputs(run_dir: Path, marker: Mapping[str, Any], full: bool = False) -> list[str]:
    """Problems with the files a marker vouches for ([] when they all still match)."""
    problems = []
    for rel, rec in (marker.get("outputs") or {}).items():
        path = _resolve(run_dir, rel)
        try:
            st = os.stat(path)
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if st.st_size != rec.get("size"):
            problems.append(f"{rel}: {st.st_size} bytes, its marker says {rec.get('size')}")
            continue
        if full or st.st_mtime_ns != rec.get("mtime_ns"):
            try:
                if file_sha256(path) != rec.get("sha256"):
                    problems.append(f"{rel}: checksum differs from its marker")
            except OSError as err:
                problems.append(f"{rel}: unreadable ({err.strerror or err})")
    return problems


def check_inputs(run_dir: Path, marker: Mapping[str, Any]) -> list[str]:
    """Upstream markers that were redone (or vanished) since this item was computed."""
    problems = []
    for rel, recorded in (marker.get("inputs") or {}).items():
        now = marker_id(_resolve(run_dir, rel))
        if now is None:
            problems.append(f"stale: input {rel} is gone")
        elif now != recorded:
            problems.append(f"stale: input {rel} was redone")
    return problems


def read_json_marker(path: Path) -> dict[str, Any] | None:
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def check_marker(run_dir: Path, path: Path, full: bool = False) -> list[str]:
    """Everything wrong with one marker: absent, unreadable, bad outputs, stale inputs."""
    path = Path(path)
    if not path.exists():
        return [f"{_rel(run_dir, path)}: no marker"]
    marker = read_json_marker(path)
    if marker is None:
        return [f"{_rel(run_dir, path)}: marker unreadable"]
    return check_outputs(run_dir, marker, full) + check_inputs(run_dir, marker)
