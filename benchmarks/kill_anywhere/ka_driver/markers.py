"""A run as its markers describe it: every `*.done` marker, the files it vouches for, which
were lost, corrupted or redone across a kill, and the stages' time windows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .stages import pipeline_stages

REPORT_OUTPUTS = ("report.md", "report.json", "diversity.json", "diversity_features.npz")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_of(rel: Path) -> str:
    """The stage a marker belongs to, from where it lives (DESIGN §3)."""
    if rel == Path("distilled.done"):
        return "collect"
    top = rel.parts[0]
    return {"teachers": "squeeze", "students": "train"}.get(top, top)


def outputs_of(run: Path, marker: Path, payload: Any) -> list[Path]:
    """The files a marker vouches for: its `outputs` record when it has one (paths relative
    to the run), else by layout (`NAME.done` next to `NAME.*`; a student's `.done` for its
    folder; the report's files)."""
    if isinstance(payload, dict) and payload.get("outputs"):
        names = payload["outputs"]
        names = [n.get("path", "") if isinstance(n, dict) else str(n) for n in names]
        found = []
        for name in filter(None, names):
            for base in (run, marker.parent):
                if (base / name).is_file():
                    found.append(base / name)
                    break
        return found
    rel = marker.relative_to(run)
    if stage_of(rel) == "report":
        found = [run / n for n in REPORT_OUTPUTS if (run / n).is_file()]
        if (run / "figures").is_dir():
            found += sorted(p for p in (run / "figures").iterdir() if p.is_file())
        return found
    if marker.name == ".done":
        return sorted(p for p in marker.parent.iterdir() if p.is_file() and p != marker)
    stem = marker.name[: -len(".done")]
    return sorted(p for p in marker.parent.glob(f"{stem}.*") if p.is_file() and p != marker)


def _name(run: Path, path: Path) -> str:
    """Relative to the run; as given for a file outside it (a user's teacher weights)."""
    try:
        return str(path.relative_to(run))
    except ValueError:
        return str(path)


def snapshot(run: Path) -> dict[str, dict[str, Any]]:
    """Every marker in the run: its identity (inode, mtime, sha256) and its files' sizes and
    sha256, keyed by the marker's path relative to the run."""
    result: dict[str, dict[str, Any]] = {}
    if not run.is_dir():
        return result
    for marker in sorted(run.rglob("*.done")):
        if not marker.is_file() or "logs" in marker.relative_to(run).parts:
            continue
        st = marker.stat()
        try:
            payload = json.loads(marker.read_text())
        except (OSError, ValueError):
            payload = None
        files = {
            _name(run, p): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in outputs_of(run, marker, payload)
        }
        result[str(marker.relative_to(run))] = {
            "inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "sha256": sha256(marker),
            "id": payload.get("id") if isinstance(payload, dict) else None, "files": files,
        }  # fmt: skip
    return result


def stage_windows(markers: dict[str, dict[str, Any]],
                  started_wall: float) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Each stage's window in an uninterrupted run, in seconds since its start: from the
    previous stage's last marker (squeeze: from the start, so it includes start-up and the
    creation of the run directory) to its own last marker, read from the markers' mtimes
    (written once, last, by each item). Stages without markers have no window."""
    ends: dict[str, float] = {}
    for rel, record in markers.items():
        stage = stage_of(Path(rel))
        ends[stage] = max(ends.get(stage, 0.0), record["mtime_ns"] / 1e9 - started_wall)
    windows, start = {}, 0.0
    for stage in pipeline_stages():
        if stage in ends:
            end = max(start, ends[stage])
            windows[stage] = (start, end)
            start = end
    return windows


def stale_tmp(run: Path) -> list[str]:
    """`.tmp-` leftovers inside the run and temporary siblings of the run directory."""
    left = [str(p.relative_to(run)) for p in run.rglob("*.tmp-*")] if run.is_dir() else []
    if run.parent.is_dir():
        left += [p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.tmp")]
    return sorted(left)


def stage_at(markers: dict[str, Any], counts: dict[str, int]) -> str:
    """The first stage (in pipeline order) with fewer markers than the reference has."""
    have: dict[str, int] = {}
    for rel in markers:
        stage = stage_of(Path(rel))
        have[stage] = have.get(stage, 0) + 1
    for stage in pipeline_stages():
        if have.get(stage, 0) < counts.get(stage, 0):
            return stage
    return "(finished)"


def check_finished(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    """Markers present at the kill, after resume: lost (marker or a file gone), redone (a new
    marker `id`; without ids, a rewritten marker file), corrupt (not redone, yet its files or,
    without ids, the marker itself changed). Re-sealing a marker under the same id (fresh
    mtimes, same content) is neither."""
    lost, corrupt, redone = [], [], []
    for rel, was in before.items():
        now = after.get(rel)
        if now is None:
            lost.append(rel)
            continue
        if was["id"] is not None:
            rewritten = now["id"] != was["id"]
        else:
            rewritten = (now["inode"], now["mtime_ns"]) != (was["inode"], was["mtime_ns"])
        if rewritten:
            redone.append(rel)
        lost += [f"{rel}: {f}" for f in was["files"] if f not in now["files"]]
        if rewritten:
            continue
        changed = [f for f, rec in was["files"].items() if now["files"].get(f) not in (None, rec)]
        if was["id"] is None and now["sha256"] != was["sha256"]:
            changed.insert(0, rel)
        corrupt += [f"{rel}: {f}" for f in changed]
    return {"lost": lost, "corrupt": corrupt, "redone": redone}
