"""The student network, its optimizer and its number formats, as `students.*` asks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.hardware.capability import PrecisionChoice, detect, resolve_precision
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


def student_precision(cfg: Config, device: torch.device) -> PrecisionChoice:
    """`students.precision` on `device` by recovery's capability rule (one rule for every
    stage): auto = bf16 where native, fp16 on CUDA without bf16, else fp32 (`amp: false`:
    fp32). The trainer asks on its task's device (each rank on its own); evaluating a
    checkpoint gets the same answer there."""
    return resolve_precision(cfg.students.requested_precision(), device)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs dynamic loss scaling (its range underflows small gradients); bf16 and fp32
    do not. The scaler skips a step whose gradients overflowed and halves its scale."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def use_channels_last(cfg: Config, device: torch.device, log=None) -> bool:
    """`students.channels_last`: None = on GPU only; auto = the faster layout that `bench
    recover --calibrate` measured on this device (None's choice without a measurement);
    `log` gets auto's one line of why."""
    cl = cfg.students.channels_last
    if cl == "auto":
        from prism_hpc.hardware.tuning import choose_channels_last, device_key

        choice = choose_channels_last(device_key(detect(str(device))), device.type == "cuda")
        if log is not None:
            log(f"students {choice.reason}")
        return bool(choice.value)
    return device.type == "cuda" if cl is None else bool(cl)
