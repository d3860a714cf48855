"""`sweep.json`, the sweep folder's own record, rewritten atomically after every change.

It holds the spec, its digest and per point its run folder, its state in the last invocation
and every submit attempt (when it started, its elapsed seconds, whether it succeeded). The
attempts are kept across invocations, so the wall time a point's submits took (start-up, plan,
every stage) is a fact of the folder, next to the per-item seconds in the runs' markers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prism_hpc.store.atomic import atomic_write_text
from prism_hpc.sweep.spec import Point, SweepSpec

SWEEP_FILE = "sweep.json"


def _old_attempts(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The attempts recorded by earlier invocations (of this spec, or of one it grew from)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = [*old.get("first", []), *old.get("points", [])]
    return {p["name"]: list(p.get("attempts", [])) for p in entries if "name" in p}


class SweepBook:
    """The states and attempts of one sweep invocation, written to `FOLDER/sweep.json`."""

    def __init__(self, spec: SweepSpec, folder: Path):
        self.spec, self.path = spec, Path(folder) / SWEEP_FILE
        self.states: dict[str, str] = {}
        self.attempts = _old_attempts(self.path)

    def state(self, name: str, state: str) -> None:
        self.states[name] = state
        self.write()

    def attempt(self, name: str, started: float, ok: bool, log: str | None = None) -> None:
        """One submit of point `name` that began at `started` (time.time()) ended now."""
        entry = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
            "seconds": round(time.time() - started, 2),
            "ok": ok,
        }
        if log:
            entry["log"] = log
        self.attempts.setdefault(name, []).append(entry)
        self.write()

    def _entry(self, p: Point) -> dict[str, Any]:
        return {**p.to_json(), "run": p.name, "state": self.states.get(p.name, "new"),
                "attempts": self.attempts.get(p.name, [])}  # fmt: skip

    def write(self) -> None:
        spec = self.spec
        data = {
            "name": spec.name, "spec": str(spec.source), "digest": spec.digest,
            "throttle": spec.throttle,
            "first": [self._entry(p) for p in spec.first],
            "points": [self._entry(p) for p in spec.points],
        }  # fmt: skip
        atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")


def submit_seconds(data: dict[str, Any]) -> dict[str, float]:
    """Per point of a read `sweep.json`: the elapsed seconds of all its submits."""
    entries = [*data.get("first", []), *data.get("points", [])]
    return {p["name"]: sum(a.get("seconds", 0.0) for a in p.get("attempts", [])) for p in entries}
