"""The seam between the science and the cluster: every stage has the same small interface.

`hpc` only sees `Stage`s and `Item`s; it never knows what a slice or a student is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prism_hpc.config.schema import Config


@dataclass(frozen=True)
class Item:
    """One array index of a stage. `key` is stable and human-readable (file names, logs)."""

    stage: str
    index: int
    key: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "index": self.index, "key": self.key, "payload": self.payload}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        return cls(data["stage"], data["index"], data["key"], data.get("payload", {}))


def _print(message: str) -> None:
    print(message, flush=True)


@dataclass
class TaskEnv:
    """Where and how an item runs: set up by the backend, read by the stage."""

    run_dir: Path
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    log: Callable[[str], None] = _print
    progress: Callable[[dict[str, Any]], None] = lambda info: None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Stage:
    """Base class: subclasses set `name`/`depends_on` and implement `items` and `run`.

    `run` must be idempotent and end by writing the item's marker (only rank 0 writes).
    """

    name: str = ""
    depends_on: tuple[str, ...] = ()
    distributed: bool = False  # True: all ranks of a task call `run` (torch.distributed)

    def items(self, cfg: Config) -> list[Item]:
        raise NotImplementedError

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        raise NotImplementedError

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return Path(run_dir) / self.name / f"{item.key}.done"

    def is_done(self, run_dir: Path, item: Item) -> bool:
        """Valid marker present. Stages with checksummed outputs override to verify them."""
        path = self.marker_path(run_dir, item)
        if not path.is_file():
            return False
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return True

    def estimate(self, cfg: Config) -> dict[str, Any]:
        """Rough compute/storage numbers for `plan` (keys: gpu_hours, storage_gb, note)."""
        return {}
