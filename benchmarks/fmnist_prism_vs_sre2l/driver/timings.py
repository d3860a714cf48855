"""Times of a run: the item times its submit logs print, and OUT/timings.json (every attempt)."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

ITEM_DONE = re.compile(r"^\[(\w+)\] \d+/\d+ done \((.+), ([0-9.]+) s\)\s*$")


def attempt_logs(out: Path, name: str) -> list[Path]:
    logs = list((out / "logs").glob(f"{name}.attempt*.log"))
    return sorted(logs, key=lambda p: int(re.search(r"attempt(\d+)", p.name).group(1)))


def item_times(out: Path, name: str) -> list[tuple[str, str, float]]:
    """(stage, item, seconds) of every item finished in any attempt of the run."""
    found = []
    for log in attempt_logs(out, name):
        for line in log.read_text(errors="replace").splitlines():
            m = ITEM_DONE.match(line)
            if m:
                found.append((m.group(1), m.group(2), float(m.group(3))))
    return found


def stage_seconds(out: Path, name: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for stage, _, sec in item_times(out, name):
        totals[stage] = totals.get(stage, 0.0) + sec
    return totals


class Timings:
    """OUT/timings.json: per run, every submit attempt (start, wall, rc); per driver session."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {"runs": {}, "sessions": []}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)

    def attempt(self, name: str, entry: dict) -> None:
        with self.lock:
            self.data["runs"].setdefault(name, []).append(entry)
            self.save()

    def session(self, entry: dict) -> None:
        with self.lock:
            self.data["sessions"].append(entry)
            self.save()

    def retire(self, name: str) -> None:
        with self.lock:
            old = self.data["runs"].pop(name, None)
            if old:
                self.data.setdefault("stale", {}).setdefault(name, []).extend(old)
                self.save()

    def submit_wall(self, name: str) -> float:
        return sum(a.get("wall_s", 0.0) for a in self.data["runs"].get(name, []))
