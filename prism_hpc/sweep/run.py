"""Running a sweep: every point becomes a run in the sweep folder, through `submit`'s path.

`sweep.json` (written atomically before the first point starts, then after each) records the
spec, its digest and each point's run directory; the markers of those runs, never log lines,
say what is done. Rerunning the same spec resumes: a point whose run exists is submitted with
`--resume` (finished items are skipped by their markers), a point without one gets a new run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_hpc.errors import UserError
from prism_hpc.store.atomic import atomic_write_text
from prism_hpc.submission import Echo, SubmitRequest, submit_run
from prism_hpc.sweep.spec import Point, SweepSpec
from prism_hpc.workflow import StageRegistry

SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class SweepTarget:
    spec: SweepSpec
    folder: Path
    backend: str | None = None


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
    return [r for r in runs if (r / "config.yaml").is_file()]


def _record(target: SweepTarget, states: dict[str, str]) -> None:
    spec = target.spec
    data = {
        "name": spec.name, "spec": str(spec.source), "digest": spec.digest,
        "throttle": spec.throttle,
        "points": [{**p.to_json(), "run": p.name, "state": states.get(p.name, "new")}
                   for p in spec.points],
    }  # fmt: skip
    atomic_write_text(target.folder / SWEEP_FILE, json.dumps(data, indent=1) + "\n")


def _check_folder(target: SweepTarget) -> None:
    if not target.folder.exists():
        return
    if not is_sweep(target.folder):
        if any(target.folder.iterdir()):
            raise UserError(f"{target.folder}: exists and is not a sweep folder")
        return
    old = read_sweep(target.folder)
    if old.get("digest") != target.spec.digest:
        raise UserError(
            f"{target.folder}: holds sweep {old.get('name')!r} with other points (digest "
            f"{old.get('digest')} vs {target.spec.digest}); choose another --out"
        )


def _request(point: Point, target: SweepTarget) -> SubmitRequest:
    overrides = list(point.overrides)
    if target.spec.throttle:
        overrides.append(f"resources.default.array_parallelism={target.spec.throttle}")
    run_dir = target.folder / point.name
    resume = run_dir if (run_dir / "config.yaml").is_file() else None
    return SubmitRequest(point.config, tuple(overrides), target.backend,
                         None if resume else run_dir, resume)  # fmt: skip


def run_sweep(target: SweepTarget, registry: StageRegistry, echo: Echo) -> dict[str, str]:
    """Submit (or resume) every point; returns point name -> 'launched' | 'resumed'."""
    _check_folder(target)
    target.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    states: dict[str, str] = {}
    _record(target, states)
    total = len(target.spec.points)
    for k, point in enumerate(target.spec.points, 1):
        req = _request(point, target)
        echo(f"[sweep] {k}/{total} {point.name}" + (" (resume)" if req.resume else ""))
        submit_run(req, registry, echo)
        states[point.name] = "resumed" if req.resume else "launched"
        _record(target, states)
    return states


def describe(spec: SweepSpec, folder: Path) -> list[str]:
    """The dry run: one line per point, nothing created."""
    lines = [f"sweep {spec.name}: {len(spec.points)} point(s) -> {folder}"]
    for p in spec.points:
        exists = (folder / p.name / "config.yaml").is_file()
        sets = " ".join(f"--set {o}" for o in p.overrides)
        lines.append(f"  {p.name}: {p.config.name} {sets}" + ("  [exists: resume]" if exists else ""))
    return lines


def sweep_status(folder: Path, registry: StageRegistry) -> list[dict[str, Any]]:
    """Per point: its run, and items done / total over all stages (from markers)."""
    from prism_hpc.hpc.status import stage_status
    from prism_hpc.store.rundir import open_run_dir

    rows = []
    for p in read_sweep(folder)["points"]:
        run = folder / p["run"]
        if not (run / "config.yaml").is_file():
            rows.append({"point": p["name"], "run": str(run), "done": 0, "total": None,
                         "state": "not started"})  # fmt: skip
            continue
        stages = stage_status(open_run_dir(run), registry)
        done, total = sum(r["done"] for r in stages), sum(r["total"] for r in stages)
        failed = sum(len(r.get("failed", [])) for r in stages)
        state = "done" if done == total else ("failed" if failed else "incomplete")
        rows.append({"point": p["name"], "run": str(run), "done": done, "total": total,
                     "state": state})  # fmt: skip
    return rows
