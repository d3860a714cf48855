"""The student network, its optimizer and its number formats, as `students.*` asks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.models.registry import create_model


def build_student(cfg: Config, arch: str, num_classes: int) -> nn.Module:
    return create_model(
        arch, num_classes, in_channels=cfg.data.channels, resolution=cfg.data.resolution,
        width=cfg.students.width,
    )  # fmt: skip


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on >1-D weights (convs, linear weights) only; not on biases / norms."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(cfg: Config, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or SGD; `fused` runs the update as one kernel over all parameters (CPU and CUDA):
    ~5 % of a 224 px ResNet-18 step on CPU (benchmarks/train_speed.md), same math up to
    float rounding, so it rides with channels_last rather than on the bitwise CPU default."""
    st = cfg.students
    groups = param_groups(model, st.weight_decay)
    extra = {"fused": True} if fused else {}
    if st.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=st.lr, momentum=st.momentum, **extra)
    return torch.optim.AdamW(groups, lr=st.lr, **extra)


def use_fused_optimizer(cfg: Config, device: torch.device) -> bool:
    fused = cfg.students.fused_optimizer
    return use_channels_last(cfg, device) if fused is None else bool(fused)


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """`students.precision`: auto = bf16 on GPU when `amp` (fp32 on CPU), else as named."""
    p = cfg.students.precision
    if p == "auto":
        return bool(cfg.students.amp) and device.type == "cuda"
    return p == "bf16"


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    cl = cfg.students.channels_last
    return device.type == "cuda" if cl is None else bool(cl)
