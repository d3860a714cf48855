"""Which items still need to run: not done, or downstream of an item that must be redone.

An item's own check (`Stage.problems`) sees its files and whether the upstream markers it was
computed from were redone. Before anything is redone, though, a bad upstream file has not
changed any marker yet; so at planning time (submit, resubmit, status) a stage with work left
makes every stage that depends on it pending as a whole, and the tasks themselves later find
their old markers stale against the upstream markers that were rewritten in the meantime.
"""

from __future__ import annotations

from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.hpc.plan import StagePlan
from prism_hpc.store.integrity import input_records
from prism_hpc.workflow import Stage, StageRegistry


def pending_items(run_dir: Path, plans: list[StagePlan]) -> dict[str, list[int]]:
    """Per stage in `plans`, the item indices to (re)run."""
    todo: dict[str, list[int]] = {}
    dirty: set[str] = set()
    for plan in plans:
        name = plan.stage.name
        if any(dep in dirty for dep in plan.stage.depends_on):
            todo[name] = [i.index for i in plan.items]
            dirty.add(name)
            continue
        todo[name] = [i.index for i in plan.items if not plan.stage.is_done(run_dir, i)]
        if todo[name]:
            dirty.add(name)
    return todo


def upstream_markers(
    registry: StageRegistry, cfg: Config, run_dir: Path, stage: Stage
) -> list[Path]:
    """The markers of the items `stage` consumes (through stages that have no items)."""
    found: list[Path] = []
    for dep in stage.depends_on:
        upstream = registry.by_name(dep)
        items = upstream.items(cfg)
        if items:
            found += [m for item in items for m in upstream.markers(run_dir, item)]
        else:
            found += upstream_markers(registry, cfg, run_dir, upstream)
    return found


def inputs_of(
    registry: StageRegistry, cfg: Config, run_dir: Path, stage: Stage
) -> dict[str, str | None]:
    return input_records(run_dir, upstream_markers(registry, cfg, run_dir, stage))
