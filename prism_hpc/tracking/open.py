"""`open_tracker`: the one entry point a stage calls.

Each sink module is imported only when its sink is switched on, so with tracking off (the
default) neither TensorBoard, torch's writer nor wandb is imported: `status`, `plan` and the
stages that never log stay as light as before.
"""

from __future__ import annotations

from prism_hpc.config.tracking import TrackingConfig
from prism_hpc.tracking.base import FanOut, GuardedSink, TrackedTask, Tracker, Warn, null_tracker


def _config_text(task: TrackedTask) -> str | None:
    if not task.config:
        return None
    import yaml

    return yaml.safe_dump(dict(task.config), sort_keys=False)


def _tensorboard(task: TrackedTask) -> Tracker:
    from prism_hpc.tracking.tensorboard_sink import TensorBoardSink, tensorboard_dir

    log_dir = tensorboard_dir(task.run_dir, task.stage, task.item_key)
    return TensorBoardSink(log_dir, _config_text(task))


def _wandb(cfg: TrackingConfig, task: TrackedTask) -> Tracker:
    from prism_hpc.tracking.wandb_sink import WandbSink

    return WandbSink(cfg, task)


def open_tracker(cfg: TrackingConfig, task: TrackedTask, warn: Warn) -> FanOut:
    """A tracker over the sinks `cfg` switches on, or the null tracker.

    Never raises for a sink's sake: a sink that cannot start (package missing, folder not
    writable, project refused, no network) reports one line through `warn` and is left out;
    the same holds for any later call. Use it as a context manager so that it is closed (and
    its files flushed) however the stage ends.
    """
    if task.rank != 0 or not cfg.enabled:
        return null_tracker()
    sinks = []
    if cfg.tensorboard:
        sinks.append(GuardedSink("tensorboard", "tensorboard", lambda: _tensorboard(task), warn))
    if cfg.wandb != "off":
        sinks.append(GuardedSink("wandb", "wandb", lambda: _wandb(cfg, task), warn))
    return FanOut([s for s in sinks if s.active])
