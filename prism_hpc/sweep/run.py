"""Running a sweep: every point becomes a run in the sweep folder, through `submit`'s path.

`sweep.json` (`sweep.book`: written atomically before the first point starts, then after
each) records the spec, its digest, each point's run directory and its submit attempts; the
markers of those runs, never log lines, say what is done. Rerunning the same spec resumes: a
point whose items are all done (by their markers) is skipped, one whose run exists is submitted
with `--resume` (finished items are skipped), one without gets a new run. `first:` points come
before the others; `--jobs N` runs the points as N child processes (`sweep.children`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_hpc.errors import UserError
from prism_hpc.store import layout
from prism_hpc.submission import Echo, SubmitRequest, submit_run
from prism_hpc.sweep.book import SWEEP_FILE, SweepBook
from prism_hpc.sweep.spec import Point, SweepSpec
from prism_hpc.workflow import StageRegistry


@dataclass(frozen=True)
class SweepTarget:
    spec: SweepSpec
    folder: Path
    backend: str | None = None
    jobs: int = 1  # points at once, each a child `prism-hpc submit` when > 1


def default_folder(spec: SweepSpec) -> Path:
    return Path("runs") / "sweeps" / spec.name


def read_sweep(folder: Path) -> dict[str, Any]:
    path = folder / SWEEP_FILE
    if not path.is_file():
        raise UserError(f"{folder}: not a sweep folder (no {SWEEP_FILE})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({err})") from None


def is_sweep(folder: Path) -> bool:
    return (Path(folder) / SWEEP_FILE).is_file()


def point_runs(folder: Path) -> list[Path]:
    """The run directories of a sweep's points that exist, in point order."""
    data = read_sweep(folder)
    runs = [folder / p["run"] for p in data["points"]]
    return [r for r in runs if layout.config_file(r).is_file()]


def _check_folder(target: SweepTarget) -> None:
    if not target.folder.exists():
        return
    if not is_sweep(target.folder):
        if any(target.folder.iterdir()):
            raise UserError(f"{target.folder}: exists and is not a sweep folder")
        return
    old = read_sweep(target.folder)
    if old.get("digest") != target.spec.digest and not _grows(old, target.spec):
        raise UserError(
            f"{target.folder}: holds sweep {old.get('name')!r} with other points (digest "
            f"{old.get('digest')} vs {target.spec.digest}); choose another --out"
        )


def _grows(old: dict[str, Any], spec: SweepSpec) -> bool:
    """The spec keeps every point the folder holds, unchanged (same config, overrides,
    stages), and adds some: a grid grown by a value, a benchmark by a method. Then the folder
    is reused and only the new points run; a spec that drops or changes a point is refused."""
    now = {p.name: p.to_json() for p in spec.every}
    record = ("run", "state", "attempts")  # what sweep.json adds to a point
    before = [*old.get("first", []), *old.get("points", [])]
    return all(
        now.get(p.get("name")) == {k: v for k, v in p.items() if k not in record} for p in before
    )


def _request(point: Point, target: SweepTarget) -> SubmitRequest:
    overrides = list(point.overrides)
    if target.spec.throttle:
        overrides.append(f"resources.default.array_parallelism={target.spec.throttle}")
    run_dir = target.folder / point.name
    resume = run_dir if layout.config_file(run_dir).is_file() else None
    return SubmitRequest(point.config, tuple(overrides), target.backend,
                         None if resume else run_dir, resume, point.stages)  # fmt: skip


def run_sweep(target: SweepTarget, registry: StageRegistry, echo: Echo) -> dict[str, str]:
    """Submit (or resume) every point not done yet, `first:` points before the others;
    returns point name -> 'done' (skipped) | 'launched' | 'resumed' (| 'failed' with jobs)."""
    _check_folder(target)
    every = target.spec.every
    for p in every:  # a bad stage name fails before anything is made
        registry.select(list(p.stages) if p.stages else None)
    target.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    book = SweepBook(target.spec, target.folder)
    book.write()
    todo = []
    for k, point in enumerate(every, 1):
        if point_state(target.folder / point.name, point.stages, registry) == "done":
            echo(f"[sweep] {k}/{len(every)} {point.name} (done)")
            book.state(point.name, "done")
        else:
            todo.append(point)
    if target.jobs > 1:
        from prism_hpc.sweep.children import run_children

        run_children(target, todo, book, echo, lambda p: _request(p, target))
        return book.states
    for point in todo:
        req = _request(point, target)
        echo(f"[sweep] {every.index(point) + 1}/{len(every)} {point.name}"
             + (" (resume)" if req.resume else ""))  # fmt: skip
        start, ok = time.time(), False
        try:
            submit_run(req, registry, echo)
            ok = True
        finally:
            book.attempt(point.name, start, ok)
        book.state(point.name, "resumed" if req.resume else "launched")
    return book.states


def describe(spec: SweepSpec, folder: Path) -> list[str]:
    """The dry run: one line per point (`first:` ones first), nothing created."""
    first = f" after {len(spec.first)} first" if spec.first else ""
    lines = [f"sweep {spec.name}: {len(spec.points)} point(s){first} -> {folder}"]
    for p in spec.every:
        exists = layout.config_file(folder / p.name).is_file()
        sets = "".join(f" --set {o}" for o in p.overrides)
        stages = f" --stages {','.join(p.stages)}" if p.stages else ""
        tag = "  [first]" if p in spec.first else ""
        lines.append(f"  {p.name}: {p.config.name}{sets}{stages}{tag}"
                     + ("  [exists: resume]" if exists else ""))  # fmt: skip
    return lines


def _stage_rows(run: Path, stages: tuple[str, ...] | None, registry: StageRegistry) -> list[dict]:
    from prism_hpc.hpc.status import stage_status
    from prism_hpc.store.rundir import open_run_dir

    rows = stage_status(open_run_dir(run), registry)
    return [r for r in rows if not stages or r["stage"] in stages]


def point_state(run: Path, stages: tuple[str, ...] | None, registry: StageRegistry) -> str:
    """done | failed | incomplete | not started, from the run's markers (its `stages` only)."""
    if not layout.config_file(run).is_file():
        return "not started"
    return _state_of(_stage_rows(run, stages, registry))


def _state_of(rows: list[dict]) -> str:
    done, total = sum(r["done"] for r in rows), sum(r["total"] for r in rows)
    failed = sum(len(r.get("failed", [])) for r in rows)
    return "done" if done == total else ("failed" if failed else "incomplete")


def sweep_status(folder: Path, registry: StageRegistry) -> list[dict[str, Any]]:
    """Per point (`first:` ones first): its run, and items done / total over its stages (all
    of them unless the point names some), from markers."""
    rows = []
    data = read_sweep(folder)
    for p in [*data.get("first", []), *data["points"]]:
        run = folder / p["run"]
        if not layout.config_file(run).is_file():
            rows.append({"point": p["name"], "run": str(run), "done": 0, "total": None,
                         "state": "not started"})  # fmt: skip
            continue
        stages = tuple(p.get("stages") or ()) or None
        found = _stage_rows(run, stages, registry)
        rows.append({"point": p["name"], "run": str(run),
                     "done": sum(r["done"] for r in found), "total": sum(r["total"] for r in found),
                     "state": _state_of(found)})  # fmt: skip
    return rows
