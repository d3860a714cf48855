"""A student's restart point (`ckpt.pt`, after every finished epoch) and its `metrics.json`.

A killed or requeued task resumes after the last finished epoch: the epoch in flight is
redone, with the same seeds, so the result is that of an uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prism_hpc.store.atomic import atomic_path, atomic_write_text
from prism_hpc.store.layout import METRICS_NAME
from prism_hpc.train.ema import ModelEMA


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class History:
    """What a student has done so far: finished epochs, evaluations, per-epoch loss, time."""

    epoch: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    train_log: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            ema: ModelEMA | None, scaler: Any = None) -> History | None:  # fmt: skip
    """Load `path` into the model, optimizer, EMA and fp16 loss scaler; None (and nothing
    loaded) without one."""
    state = load_checkpoint(path)
    if state is None:
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state.get("ema"):
        ema.load_state_dict(state["ema"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])  # the learnt scale, not 65536 again
    return History(int(state["epoch"]), json.loads(state["history"]),
                   json.loads(state["train_log"]), float(state["wall"]))  # fmt: skip


def checkpoint(path: Path, history: History, model: nn.Module,
               optimizer: torch.optim.Optimizer, ema: ModelEMA | None,
               scaler: Any = None) -> None:  # fmt: skip
    """Save the state after `history.epoch` finished epochs (rank 0); `scaler` (fp16 only)
    adds its state, so fp32/bf16 checkpoints hold what they always held."""
    state = {
        "epoch": history.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else {},
        "history": json.dumps(history.evals),
        "train_log": json.dumps(history.train_log),
        "wall": history.wall,
    }
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    save_checkpoint(path, state)


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = Path(out_dir) / METRICS_NAME
    atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    return path
