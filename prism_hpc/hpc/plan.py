"""Map stages to arrays: items -> array indices through the plan, never by job-id arithmetic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.store.atomic import atomic_write_text
from prism_hpc.workflow import Capacity, Item, Stage, estimating


@dataclass
class StagePlan:
    stage: Stage
    items: list[Item]
    chunks: list[list[int]]  # item indices per array (each <= max_array_size)
    resources: dict[str, Any]
    estimate: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage.name,
            "depends_on": list(self.stage.depends_on),
            "items": [i.to_json() for i in self.items],
            "arrays": self.chunks,
            "resources": self.resources,
            "estimate": self.estimate,
        }


def split(n: int, max_size: int) -> list[list[int]]:
    return [list(range(a, min(a + max_size, n))) for a in range(0, n, max_size)]


def make_plan(
    cfg: Config, stages: list[Stage], max_array_size: int | None = None,
    capacity: Capacity | None = None,
) -> list[StagePlan]:  # fmt: skip
    """Items -> arrays per stage, with cost estimates priced on `capacity` (the executor that
    runs them). Without one (status, verify) there are no estimates: they may need the data's
    class counts."""
    plans = []
    for stage in stages:
        items = stage.items(cfg)
        res = cfg.resources.for_stage(stage.name)
        size = res.max_array_size or max_array_size or 1001
        estimate = {}
        if capacity is not None:
            with estimating(capacity):
                estimate = stage.estimate(cfg)
        plans.append(StagePlan(stage, items, split(len(items), size), res.model_dump(), estimate))
    return plans


def write_plan(path: Path, plans: list[StagePlan], registry_ref: str) -> None:
    """plan.json: one entry per stage; `registry` tells a task process how to rebuild the
    stages (the cluster layer itself imports none)."""
    entries = [{**p.to_json(), "registry": registry_ref} for p in plans]
    atomic_write_text(path, json.dumps(entries, indent=1) + "\n")


def read_plan(path: Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text())


def registry_ref_of(path: Path) -> str:
    """The stage registry a run was planned with (from its plan.json)."""
    from prism_hpc.errors import UserError

    try:
        entries = read_plan(path)
        return next(e["registry"] for e in entries if "registry" in e)
    except (OSError, ValueError, StopIteration, TypeError, KeyError):
        raise UserError(f"{path}: no stage registry recorded (plan the run first)") from None
