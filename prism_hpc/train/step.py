"""One optimizer step of a student: this rank's micro-batch pieces forward/backward, then the
update."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prism_hpc.config.schema import StudentsConfig
from prism_hpc.train.evaluate import half_autocast
from prism_hpc.train.losses import Mix, student_loss


@dataclass(frozen=True)
class StepOptions:
    """What stays the same for every step of one training: the loss settings, where the
    step runs, over how many DDP ranks, and in which number formats (`precision` resolved:
    fp32, bf16 or fp16; fp16 comes with its loss `scaler`, the one stateful member)."""

    students: StudentsConfig
    device: torch.device
    world_size: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
            for k, v in batch.items()}  # fmt: skip


def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    opts: StepOptions,
    soft: torch.Tensor | None = None,
    before_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Forward/backward this rank's micro-batch pieces of one step, then the optimizer step.

    Each piece's loss is weighted by its share of the step batch (times the world size: DDP
    averages over ranks), so the gradient is that of the step-batch mean whatever the split.
    Returns the sum over pieces of (piece loss * piece size) as a float64 device tensor (no
    host sync). `before_step` (tests) sees the step's gradients, all ranks reduced.
    """
    st, world_size = opts.students, opts.world_size
    x = batch["x"]
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y, lam, n = batch["y"], batch["lam"], batch["n"]
    y_b = batch["y_b"] if st.ce_target == "mixed" else None
    total = torch.zeros((), dtype=torch.float64, device=opts.device)
    optimizer.zero_grad(set_to_none=True)
    sizes, offset = batch["sizes"], 0
    for j, size in enumerate(sizes):
        part = slice(offset, offset + size)
        offset += size
        last = j == len(sizes) - 1
        ctx = net.no_sync() if world_size > 1 and not last else contextlib.nullcontext()
        with ctx:
            with half_autocast(opts.device, opts.precision):
                out = net(x[part]).float()
            loss = student_loss(
                st.loss, out, soft[part] if soft is not None else None, y[part],
                temperature=st.temperature, ce_weight=st.ce_weight,
                mix=Mix(y_b[part], lam) if y_b is not None else None,
            )  # fmt: skip
            weighted = loss * (size / n) * world_size
            scaled = weighted if opts.scaler is None else opts.scaler.scale(weighted)
            scaled.backward()
        total += loss.detach().double() * size
    if before_step is not None:
        if opts.scaler is not None:
            opts.scaler.unscale_(optimizer)  # the hook sees true gradients
        before_step()
    if opts.scaler is not None:
        opts.scaler.step(optimizer)
        opts.scaler.update()
    else:
        optimizer.step()
    return total
