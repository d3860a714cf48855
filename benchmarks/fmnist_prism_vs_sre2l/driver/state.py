"""The state of a run dir: done, partial (resume), new, changed (refused) or broken."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prism_hpc import cost as cost_model

from .specs import RunSpec, load_yaml


def run_dir(out: Path, spec: RunSpec) -> Path:
    return out / "pool" if spec.group == "pool" else out / "runs" / spec.name


def _valid_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def squeezed_teachers(spec: RunSpec) -> list[str]:
    return cost_model.squeezed_teachers(spec.config)


POOL_KEYS = ("seed", "data", "teachers", "squeeze")  # all that the teacher weights depend on


def _identity(spec: RunSpec, cfg: dict | None) -> Any:
    """What must not change between a run's start and its resume: the whole merged config;
    for the pool only what the squeezed teachers depend on (recover/students edits in base.yaml
    do not invalidate the teachers)."""
    if cfg is None or spec.group != "pool":
        return cfg
    return {k: cfg.get(k) for k in POOL_KEYS}


def status(out: Path, spec: RunSpec) -> str:
    """done | partial (resume) | new | changed (config differs) | broken (no config.yaml)."""
    rd = run_dir(out, spec)
    if not (rd / "config.yaml").is_file():
        if rd.exists() and any(rd.iterdir()):
            return "broken"
        return "new"
    stored = load_yaml(rd / "config.input.yaml") if (rd / "config.input.yaml").is_file() else None
    if _identity(spec, stored) != _identity(spec, spec.config):
        return "changed"
    if spec.group == "pool":
        names = squeezed_teachers(spec)
        ok = all(
            _valid_json(rd / "teachers" / f"{n}.done") and (rd / "teachers" / f"{n}.pt").is_file()
            for n in names
        )
        return "done" if ok else "partial"
    return "done" if _valid_json(rd / "report" / "report.done") else "partial"
