"""Weights & Biases: one W&B run per item, grouped by the prism-hpc run, kept inside it.

Files go to RUN/tracking/wandb/ (W&B adds its own `wandb/` level there), so an offline run
travels with the run directory and `prism-hpc sync RUN` uploads it from a machine with
internet. The API key is read by wandb itself from $WANDB_API_KEY (or ~/.netrc): this module
never reads, passes or writes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism_hpc.config.tracking import TrackingConfig
from prism_hpc.store import layout
from prism_hpc.tracking.base import TrackedTask, as_row

PACKAGE = "wandb"
# online mode on a node without internet: give up after this long instead of W&B's 90 s
INIT_TIMEOUT_S = 60.0
# $WANDB_MODE values that may only turn a configured online run down, never up
_DOWNGRADES = {"offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def wandb_dir(run_dir: Path) -> Path:
    """The folder handed to `wandb.init(dir=...)`; offline runs end up in its `wandb/`."""
    return layout.wandb_dir(run_dir)


def wandb_mode(configured: str, environ: Mapping[str, str] = os.environ) -> str:
    """The mode to run in: the config's, unless $WANDB_MODE asks for less. A site that exports
    WANDB_MODE=offline on compute nodes (no internet) keeps an `online` config from waiting
    on the network, and WANDB_MODE=disabled switches W&B off without editing the config."""
    forced = _DOWNGRADES.get(environ.get("WANDB_MODE", "").strip().lower())
    if forced == "disabled" or (forced == "offline" and configured == "online"):
        return forced
    return configured


class WandbSink:
    """One W&B run for one item; `log` steps never go backwards (W&B drops such rows)."""

    def __init__(self, cfg: TrackingConfig, task: TrackedTask):
        import wandb

        folder = wandb_dir(task.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self._step = 0
        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=task.run_name,
            job_type=task.stage,
            name=task.item_key,
            config=dict(task.config),
            dir=str(folder),
            mode=wandb_mode(cfg.wandb),
            reinit="create_new",  # a process may run several items one after the other
            # no banner lines and no stdout/stderr capture: the task's log stays the task's
            settings=wandb.Settings(silent=True, console="off", init_timeout=INIT_TIMEOUT_S),
        )

    def _log(self, step: int, row: Mapping[str, Any]) -> None:
        self._step = max(self._step, int(step))
        self._run.log(dict(row), step=self._step)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._log(*as_row(step, values))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        import html

        self._log(step, {tag: self._wandb.Html(f"<pre>{html.escape(str(text))}</pre>")})

    def image(self, tag: str, image: Any, step: int = 0) -> None:
        if isinstance(image, str | Path):
            picture = self._wandb.Image(str(image))
        else:
            from prism_hpc.tracking.images import to_hwc

            picture = self._wandb.Image(to_hwc(image))
        self._log(step, {tag: picture})

    def close(self) -> None:
        """Finish the run and wait for W&B's service to write it out.

        `finish()` returns before the service has flushed the run's transaction log (seen
        with wandb 0.31: a file holding only its header right after it); a task that ends
        then, or whose job step SLURM tears down, could lose the run. `teardown()` waits for
        the service; it reports a failure by `sys.exit`, turned here into an exception so
        that the guard warns instead of ending the task.
        """
        self._run.finish()
        try:
            self._wandb.teardown()
        except SystemExit as stop:
            raise RuntimeError(f"the W&B service ended with exit code {stop.code}") from None
