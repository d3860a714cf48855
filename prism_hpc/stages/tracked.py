"""The tracker a stage's task reports to (docs/tracking.md): one call, so every stage names
its runs the same way (group = run name, job type = stage, name = item)."""

from __future__ import annotations

from prism_hpc.config.schema import Config
from prism_hpc.tracking import FanOut, TrackedTask, open_tracker
from prism_hpc.workflow import Item, TaskEnv


def tracker_for(cfg: Config, stage: str, item: Item, env: TaskEnv) -> FanOut:
    """Rank 0's tracker for this item, or the null tracker (tracking off, other ranks)."""
    config = cfg.model_dump(mode="json") if cfg.tracking.enabled else {}
    task = TrackedTask(env.run_dir, stage, item.key, cfg.name, config, env.rank)
    return open_tracker(cfg.tracking, task, warn=env.log)
