"""What every slice runner needs, built once per recover task by the stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.recover.objective import BNStatistics


@dataclass(frozen=True)
class SliceContext:
    """A recover task's fixed inputs: the config (and with it the run seed), the loaded
    teachers and their BN hooks, the training images and their slot order, where the task runs
    (device, torch.distributed rank / world size) and where finished chunks are kept."""

    cfg: Config
    teachers: dict[str, nn.Module]
    hooks: dict[str, BNStatistics]
    source: Any  # the training images (data.sources): .load(positions), .labels
    per_class: list[np.ndarray]  # per class, dataset positions in slot order (init_order)
    stats: tuple[list[float], list[float]]  # the data's per-channel mean and std
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # the classes of each slice (`ipc: all` shrinks late slices); absent or None: every class
    members_of: Mapping[int, list[int] | None] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1
    log: Callable[[str], None] = print
    progress_dir: Path | None = None  # recover/partial: finished chunks of unwritten slices
    matcher: Any = None  # G-VBSM / EDC statistic matching (recover/gvbsm.StatMatcher)

    @property
    def rec(self):
        return self.cfg.recover

    @property
    def num_classes(self) -> int:
        return len(self.per_class)

    def classes_of(self, slice_index: int) -> list[int]:
        """The classes that have an image in IPC slice `slice_index`, in class order."""
        members = self.members_of.get(slice_index)
        return list(range(self.num_classes)) if members is None else list(members)

    @cached_property
    def mean(self) -> torch.Tensor:
        """(1, C, 1, 1) on the CPU: pixels are quantised there."""
        return torch.tensor(self.stats[0]).view(1, -1, 1, 1)

    @cached_property
    def std(self) -> torch.Tensor:
        return torch.tensor(self.stats[1]).view(1, -1, 1, 1)

    @cached_property
    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid range of normalised pixels per channel, on the device (the clamp)."""
        m = torch.tensor(self.stats[0], device=self.device).view(1, -1, 1, 1)
        s = torch.tensor(self.stats[1], device=self.device).view(1, -1, 1, 1)
        return (0 - m) / s, (1 - m) / s

    def quantise(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> stored uint8 (lossless: round(255 * clamp(x * s + m, 0, 1)))."""
        pixels = (x.cpu() * self.std + self.mean).clamp_(0, 1)
        return (pixels * 255).round_().to(torch.uint8)

    def normalise(self, quantised: torch.Tensor) -> torch.Tensor:
        """Stored uint8 images -> normalised, on the device (what a teacher sees of them)."""
        return ((quantised.float() / 255 - self.mean) / self.std).to(self.device)
