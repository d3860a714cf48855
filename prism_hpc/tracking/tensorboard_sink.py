"""TensorBoard event files beside the run: RUN/tracking/tensorboard/<stage>/<item>/.

One folder per item, so `tensorboard --logdir RUN/tracking/tensorboard` shows every slice,
chunk and student as its own curve, and a restarted item appends a new event file to the same
folder. The writer is torch's `SummaryWriter`: torch is loaded in every stage that logs, and
it writes text and images, which tensorboard's own numpy-only writer does not (yet).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism_hpc.store import layout
from prism_hpc.tracking.base import as_row

PACKAGE = "tensorboard"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
FLUSH_SECONDS = 30  # a task killed by SLURM loses at most this much of its curves


def safe_part(name: str) -> str:
    """One path component from a stage name or item key (teacher names may hold ':' or '/')."""
    return _UNSAFE.sub("_", name).strip("._") or "_"


def tensorboard_dir(run_dir: Path, stage: str, item_key: str) -> Path:
    """Where an item's event files go."""
    return layout.tensorboard_dir(run_dir, safe_part(stage), safe_part(item_key))


class TensorBoardSink:
    """Writes scalars, text and images of one item as TensorBoard events."""

    def __init__(self, log_dir: Path, config_text: str | None = None):
        # torch's wrapper hides a missing package behind a generic ImportError: ask first
        if importlib.util.find_spec(PACKAGE) is None:
            raise ModuleNotFoundError(f"No module named {PACKAGE!r}", name=PACKAGE)
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir), flush_secs=FLUSH_SECONDS)
        if config_text:
            # the resolved config beside the curves: which run a curve came from
            self._writer.add_text("config", f"```yaml\n{config_text}\n```", 0)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        step, row = as_row(step, values)
        for tag, value in row.items():
            self._writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self._writer.add_text(tag, str(text), int(step))

    def image(self, tag: str, image: Any, step: int = 0) -> None:
        from prism_hpc.tracking.images import layout, to_hwc

        array = to_hwc(image)
        self._writer.add_image(tag, array, int(step), dataformats=layout(array))

    def close(self) -> None:
        self._writer.close()
