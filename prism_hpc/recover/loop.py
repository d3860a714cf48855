"""Optimise one cross-class batch (image i of a chunk of classes) against its teachers."""

from __future__ import annotations

import math
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from prism_hpc.config.schema import RecoverConfig
from prism_hpc.recover import augment
from prism_hpc.recover.objective import BNStatistics, bn_divisor, image_priors, teacher_terms
from prism_hpc.recover.sampler import Roles, sample_roles


@dataclass
class ChunkResult:
    images: torch.Tensor  # float [0, 1], (B, C, H, W)
    ce: float
    bn: float
    top1: float
    roles: list[dict] = field(default_factory=list)  # distinct roles used (intra: many)
    history: list[dict] = field(default_factory=list)  # every log_every steps


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine from `base` at step 0 to 0 at `total`, no warm-up (official lr_cosine_policy)."""
    return 0.5 * base * (1 + math.cos(math.pi * step / total))


def pixel_bounds(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_teachers(teachers: dict[str, nn.Module], cfg: RecoverConfig) -> dict[str, nn.Module]:
    """Per-task teacher set-up for speed (benchmarks/recover_speed.md): weights in
    channels_last (converted in place; faster convolutions with oneDNN on CPU and cuDNN on
    GPU, no effect on values beyond rounding) and, with `cfg.compile`, one `torch.compile`
    wrapper per model, cached so that every chunk of a task reuses the compiled code. The BN
    hooks stay on the original modules; dynamo traces them into the compiled graph."""
    out = {}
    for name, model in teachers.items():
        model.to(memory_format=torch.channels_last)  # idempotent, no copy when already so
        if cfg.compile:
            compiled = _COMPILED.get(model)
            if compiled is None:
                compiled = _COMPILED[model] = torch.compile(model)
            model = compiled
        out[name] = model
    return out


def autocast(cfg: RecoverConfig, device: torch.device):
    """bf16 autocast of the teacher forwards (`recover.amp: bf16`); the BN hooks upcast their
    input, so statistics, norms and losses stay fp32."""
    if cfg.amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def recovery_loss(
    x: torch.Tensor,
    targets: torch.Tensor,
    roles: Roles,
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: RecoverConfig,
    draw: augment.AugmentDraw,
    backward: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total loss, CE and BN sum for one step; with `backward`, x.grad is filled.

    `memory: sequential` treats the augmented batch as a leaf, backpropagates each teacher's
    term on its own (freeing its activations) and pushes the summed gradient through the
    augmentation once: the same gradient, peak memory of the largest teacher.
    """
    xa = augment.apply(x, draw)
    bn_scale = cfg.r_bn / bn_divisor(roles.bn, hooks, cfg.reduction, cfg.count_bnless)
    # A BN teacher without BN layers adds nothing (and no graph): no forward for it.
    names = [roles.logit] + [n for n in roles.bn if n != roles.logit and hooks[n].has_bn]
    sequential = backward and cfg.memory == "sequential"
    leaf = xa.detach().requires_grad_(True) if sequential else xa
    total = x.new_zeros(())
    ce_val = x.new_zeros(())
    bn_val = x.new_zeros(())
    for name in names:
        with autocast(cfg, x.device):
            loss, ce, bn = teacher_terms(
                name, teachers[name], hooks, leaf, targets,
                is_logit=name == roles.logit, is_bn=name in roles.bn, bn_scale=bn_scale,
            )  # fmt: skip
        if sequential:
            loss.backward()
            loss = loss.detach()
        total = total + loss
        if ce is not None:
            ce_val = ce.detach()
        if bn is not None:
            bn_val = bn_val + bn.detach()
    if cfg.l2_scale or cfg.tv_scale:
        prior = image_priors(leaf, cfg.l2_scale, cfg.tv_scale)
        if sequential:
            prior.backward()
            prior = prior.detach()
        total = total + prior
    if backward:
        if sequential:
            xa.backward(leaf.grad)
        else:
            total.backward()
    return total.detach(), ce_val, bn_val


def recover_chunk(
    x0: torch.Tensor,
    targets: torch.Tensor,
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: RecoverConfig,
    iterations: int,
    bounds: tuple[torch.Tensor, torch.Tensor],
    aug_gen: torch.Generator,
    role_gen: torch.Generator,
    fixed_roles: Roles | None,
    progress=None,
) -> tuple[torch.Tensor, list[Roles], list[dict]]:
    """Adam on the normalised pixels; returns final normalised images, roles used, history."""
    teachers = prepare_teachers(teachers, cfg)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
    lo, hi = bounds
    used: list[Roles] = []
    history: list[dict] = []
    size = x.shape[-1]
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for step in range(iterations):
        roles = fixed_roles
        if roles is None:  # intra: redraw every step
            keep = None if cfg.resample_logit or not used else used[0].logit
            roles = sample_roles(cfg, role_gen, logit=keep)
        if not used or roles != used[-1]:
            used.append(roles)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, step, iterations)
        d = augment.draw(cfg.augment, size, x.shape[0], aug_gen)
        opt.zero_grad(set_to_none=True)
        _, ce, bn = recovery_loss(x, targets, roles, teachers, hooks, cfg, d, backward=True)
        opt.step()
        with torch.no_grad():
            x.data = torch.maximum(torch.minimum(x.data, hi), lo)
        pending.append((step, ce, bn))
        if step == 0 or (step + 1) % cfg.log_every == 0 or step + 1 == iterations:
            # one host sync per log interval, not per step
            for s, c, b in pending[-1:]:
                entry = {"step": s + 1, "ce": float(c), "bn": float(b)}
                history.append(entry)
                if progress:
                    progress(entry)
            pending = []
    if iterations == 0:  # recover.init_only: no step; the losses of the initial images, once
        roles = fixed_roles or sample_roles(cfg, role_gen)
        used.append(roles)
        d = augment.draw(cfg.augment, size, x.shape[0], aug_gen)
        with torch.no_grad():
            _, ce, bn = recovery_loss(x, targets, roles, teachers, hooks, cfg, d, backward=False)
        history.append({"step": 0, "ce": float(ce), "bn": float(bn)})
    return x.detach(), used, history
