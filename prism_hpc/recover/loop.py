"""Optimise one cross-class batch (image i of a chunk of classes) against its teachers."""

from __future__ import annotations

import math
import weakref
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from prism_hpc.config.schema import RecoverConfig
from prism_hpc.recover import augment
from prism_hpc.recover.objective import (
    BNStatistics,
    bn_divisor,
    fp32,
    fp32_island,
    image_priors,
    teacher_terms,
)
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
        if cfg.precision in HALF:
            grouped_convs_in_fp32(model)
        if cfg.compile:
            compiled = _COMPILED.get(model)
            if compiled is None:
                compiled = _COMPILED[model] = torch.compile(model)
            model = compiled
        out[name] = model
    return out


HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _fp32_forward(forward):
    def run(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return forward(fp32(x))
        return forward(x)

    return run


def grouped_convs_in_fp32(model: nn.Module) -> None:
    """Under CPU autocast, grouped (depthwise) convolutions run in fp32: oneDNN's bf16
    kernels for them are slower than its fp32 ones on this hardware (mobilenet_v2 /
    efficientnet_b0 / shufflenet got 1.2-1.7x slower in bf16, recover_speed.md), while the
    dense convolutions gain ~2x. No effect on GPU or outside autocast; installed once."""
    for module in model.modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.groups > 1
            and not getattr(module, "_prism_fp32_island", False)
        ):
            module.forward = _fp32_forward(module.forward)
            module._prism_fp32_island = True


def autocast(cfg: RecoverConfig, device: torch.device):
    """Autocast of the teacher forwards (and so their backward) for `recover.precision` bf16 /
    fp16; the BN hooks and the CE are fp32 islands (objective.fp32_island), the images and
    Adam stay fp32. fp32: no context at all (bit-identical to a run without the option)."""
    if cfg.precision in HALF and device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, dtype=HALF[cfg.precision])
    return nullcontext()


def loss_scaler(cfg: RecoverConfig, device: torch.device):
    """fp16: dynamic loss scaling (torch.amp.GradScaler: the scale halves on an inf/nan
    gradient, whose step is skipped, and doubles after 2000 clean steps); else None. Its
    inf check reads one flag back to the host per step: the one sync fp16 costs (bf16 has
    fp32's range and needs no scaling)."""
    if cfg.precision == "fp16":
        return torch.amp.GradScaler(device.type)
    return None


def _scaled(loss: torch.Tensor, scaler) -> torch.Tensor:
    return scaler.scale(loss) if scaler is not None else loss


def device_layout(xa: torch.Tensor) -> torch.Tensor:
    """On an accelerator the augmented batch goes to the teachers in channels_last (cuDNN's
    fast layout, matching the weights); on CPU it is left as it is (oneDNN converts, and the
    default path stays bit-identical)."""
    if xa.device.type != "cpu":
        return xa.contiguous(memory_format=torch.channels_last)
    return xa


def _host(value: torch.Tensor) -> float:
    """The loop's only device-to-host read (every `log_every` steps); a test replaces it to
    prove that no other read happens on the accelerator path."""
    return float(value)


def recovery_loss(
    x: torch.Tensor,
    targets: torch.Tensor,
    roles: Roles,
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: RecoverConfig,
    draw: augment.AugmentDraw,
    backward: bool,
    scaler=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Total loss, CE and BN sum for one step; with `backward`, x.grad is filled.

    `memory: sequential` treats the augmented batch as a leaf, backpropagates each teacher's
    term on its own (freeing its activations) and pushes the summed gradient through the
    augmentation once: the same gradient, peak memory of the largest teacher.
    """
    xa = device_layout(augment.apply(x, draw))
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
            _scaled(loss, scaler).backward()
            loss = loss.detach()
        total = total + loss
        if ce is not None:
            ce_val = ce.detach()
        if bn is not None:
            bn_val = bn_val + bn.detach()
    if cfg.l2_scale or cfg.tv_scale:
        prior = image_priors(leaf, cfg.l2_scale, cfg.tv_scale)
        if sequential:
            _scaled(prior, scaler).backward()
            prior = prior.detach()
        total = total + prior
    if backward:
        if sequential:
            xa.backward(leaf.grad)
        else:
            _scaled(total, scaler).backward()
    return total.detach(), ce_val, bn_val


class ActiveRows:
    """The rows of a joint batch that take part at a step (row j from step starts[j] on): one
    index tensor per distinct start, built once; None while every row takes part."""

    def __init__(self, starts: list[int], device: torch.device):
        self.starts = list(starts)
        self.cache: dict[int, torch.Tensor | None] = {}
        self.device = device

    def at(self, step: int) -> torch.Tensor | None:
        count = sum(1 for s in self.starts if s <= step)
        if count not in self.cache:
            rows = [j for j, s in enumerate(self.starts) if s <= step]
            full = len(rows) == len(self.starts)
            self.cache[count] = None if full else torch.tensor(rows, device=self.device)
        return self.cache[count]


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
    matcher=None,
    starts: list[int] | None = None,
) -> tuple[torch.Tensor, list[Roles], list[dict]]:
    """Adam on the normalised pixels; returns final normalised images, roles used, history.

    `starts` (joint batches, recover/joint.py): row j joins the batch at step starts[j] (DELT's
    EarlyLate: an image with budget T_j starts at T - T_j); before that it is not in the
    forward, not in the statistics, and not changed (zero gradient, zero Adam moments, no
    clamp). None: every row from step 0 (this loop as it always was).

    `matcher` (G-VBSM / EDC, recover/gvbsm.StatMatcher): its schedule picks each step's
    backbone and its `loss` replaces `recovery_loss`; None (PRISM): this loop unchanged."""
    teachers = prepare_teachers(teachers, cfg)
    loss_fn = recovery_loss if matcher is None else matcher.loss
    if matcher is not None:
        matcher.reset()
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
    scaler = loss_scaler(cfg, x.device)
    lo, hi = bounds
    used: list[Roles] = []
    history: list[dict] = []
    size = x.shape[-1]
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    active = ActiveRows(starts, x.device) if starts is not None else None
    for step in range(iterations):
        roles = fixed_roles
        if matcher is not None:  # one backbone per step, by the matching schedule
            roles = matcher.roles(step, role_gen)
        elif roles is None:  # intra: redraw every step
            keep = None if cfg.resample_logit or not used else used[0].logit
            roles = sample_roles(cfg, role_gen, logit=keep)
        if not used or roles != used[-1]:
            used.append(roles)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, step, iterations)
        rows = None if starts is None else active.at(step)
        xb, tb = (x, targets) if rows is None else (x[rows], targets[rows])
        d = augment.draw(cfg.augment, size, xb.shape[0], aug_gen, step, iterations)
        opt.zero_grad(set_to_none=True)
        _, ce, bn = loss_fn(
            xb, tb, roles, teachers, hooks, cfg, d, backward=True, scaler=scaler
        )
        if scaler is None:
            opt.step()
        else:  # unscale x.grad, skip the step on inf/nan, adapt the scale
            scaler.step(opt)
            scaler.update()
        with torch.no_grad():
            if rows is None:
                x.data = torch.maximum(torch.minimum(x.data, hi), lo)
            else:
                x.data[rows] = torch.maximum(torch.minimum(x.data[rows], hi), lo)
        pending.append((step, ce, bn))
        if step == 0 or (step + 1) % cfg.log_every == 0 or step + 1 == iterations:
            # one host sync per log interval, not per step
            for s, c, b in pending[-1:]:
                entry = {"step": s + 1, "ce": _host(c), "bn": _host(b)}
                history.append(entry)
                if progress:
                    progress(entry)
            pending = []
    if iterations == 0:  # recover.init_only: no step; the losses of the initial images, once
        if matcher is not None:
            roles = matcher.roles(0, role_gen)
        else:
            roles = fixed_roles or sample_roles(cfg, role_gen)
        used.append(roles)
        d = augment.draw(cfg.augment, size, x.shape[0], aug_gen)
        with torch.no_grad():
            _, ce, bn = loss_fn(x, targets, roles, teachers, hooks, cfg, d, backward=False)
        history.append({"step": 0, "ce": _host(ce), "bn": _host(bn)})
    return x.detach(), used, history


# --- packed chunks (`recover.pack`) --------------------------------------------------------


@dataclass
class PackUnit:
    """One chunk (a class chunk of one IPC slice) of a pack: what `recover_chunk` takes."""

    x0: torch.Tensor
    targets: torch.Tensor
    iterations: int
    aug_gen: torch.Generator
    role_gen: torch.Generator
    fixed_roles: Roles | None
    progress: object = None


def packed_loss(
    xs: list[torch.Tensor],
    targets: list[torch.Tensor],
    roles: list[Roles],
    draws: list[augment.AugmentDraw],
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: RecoverConfig,
    backward: bool,
    scalers: list | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-chunk CE and BN sum of one packed step; with `backward`, every x.grad is filled.

    Each teacher runs once on the concatenation of the chunks that drew it (as logit or as a
    BN teacher with BN layers); a chunk that did not draw it is not in its batch. The chunks
    for which it is a BN teacher come first and its hook computes one set of statistics per
    chunk (`grouped_channel_stats`); CE is per chunk. Chunk j's loss depends on x_j only (eval
    BN, per-chunk statistics), so the gradient of the sum is each chunk's own gradient.
    """
    k = len(xs)
    scalers = scalers or [None] * k
    xa = [device_layout(augment.apply(x, d)) for x, d in zip(xs, draws)]
    bn_scale = [cfg.r_bn / bn_divisor(r.bn, hooks, cfg.reduction, cfg.count_bnless) for r in roles]
    names = [[r.logit] + [n for n in r.bn if n != r.logit and hooks[n].has_bn] for r in roles]
    order = list(dict.fromkeys(n for chunk in names for n in chunk))
    sequential = backward and cfg.memory == "sequential"
    leaves = [a.detach().requires_grad_(True) if sequential else a for a in xa]
    totals = [x.new_zeros(()) for x in xs]
    ce_val = [x.new_zeros(()) for x in xs]
    bn_val = [x.new_zeros(()) for x in xs]
    for name in order:
        members = [j for j in range(k) if name in names[j]]
        bn_members = [j for j in members if name in roles[j].bn]
        rows = bn_members + [j for j in members if j not in bn_members]
        hook = hooks[name]
        hook.active = bool(bn_members)
        hook.groups = [xs[j].shape[0] for j in bn_members]
        try:
            with autocast(cfg, xs[0].device):
                batch = leaves[rows[0]] if len(rows) == 1 else torch.cat([leaves[j] for j in rows])
                logits = teachers[name](batch)
        finally:
            hook.active = False
        bn = hook.collect() if bn_members else None
        hook.groups = None
        if bn is not None and bn.dim() == 0:  # a BN teacher without BN layers: zero terms
            bn = bn.expand(len(bn_members))
        losses: dict[int, torch.Tensor] = {}
        start = 0
        for j in rows:
            n = xs[j].shape[0]
            loss = xs[j].new_zeros(())
            if roles[j].logit == name:
                part = logits[start : start + n]
                with fp32_island(part):
                    ce = F.cross_entropy(fp32(part), targets[j])
                loss = loss + ce
                ce_val[j] = ce.detach()
            if j in bn_members:
                b = bn[bn_members.index(j)]
                loss = loss + bn_scale[j] * b
                bn_val[j] = bn_val[j] + b.detach()
            losses[j] = loss
            start += n
        if sequential:
            sum(_scaled(losses[j], scalers[j]) for j in rows).backward()
        else:
            for j in rows:
                totals[j] = totals[j] + losses[j]
    if cfg.l2_scale or cfg.tv_scale:
        for j in range(k):
            prior = image_priors(leaves[j], cfg.l2_scale, cfg.tv_scale)
            if sequential:
                _scaled(prior, scalers[j]).backward()
            else:
                totals[j] = totals[j] + prior
    if backward:
        if sequential:
            torch.autograd.backward(xa, [leaf.grad for leaf in leaves])
        else:
            sum(_scaled(t, s) for t, s in zip(totals, scalers)).backward()
    return ce_val, bn_val


def recover_packed(
    units: list[PackUnit],
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: RecoverConfig,
    bounds: tuple[torch.Tensor, torch.Tensor],
) -> list[tuple[torch.Tensor, list[Roles], list[dict]]]:
    """`recover_chunk` for several chunks at once (`recover.pack`): per chunk its own Adam,
    cosine schedule over its own T_i, generators, roles, loss scaler and log; the teachers'
    forward/backward is shared (`packed_loss`). A chunk leaves the pack after its T_i steps.
    Returns what `recover_chunk` returns, per unit, in order."""
    if len(units) == 1 or all(u.iterations == 0 for u in units):
        out = []
        for u in units:
            out.append(recover_chunk(
                u.x0, u.targets, teachers, hooks, cfg, u.iterations, bounds,
                u.aug_gen, u.role_gen, u.fixed_roles, u.progress,
            ))  # fmt: skip
        return out
    teachers = prepare_teachers(teachers, cfg)
    xs = [u.x0.clone().requires_grad_(True) for u in units]
    opts = [torch.optim.Adam([x], lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8) for x in xs]
    scalers = [loss_scaler(cfg, x.device) for x in xs]
    lo, hi = bounds
    used: list[list[Roles]] = [[] for _ in units]
    history: list[list[dict]] = [[] for _ in units]
    for step in range(max(u.iterations for u in units)):
        active = [j for j, u in enumerate(units) if step < u.iterations]
        roles, draws = [], []
        for j in active:
            u = units[j]
            r = u.fixed_roles
            if r is None:  # intra: redraw every step
                keep = None if cfg.resample_logit or not used[j] else used[j][0].logit
                r = sample_roles(cfg, u.role_gen, logit=keep)
            if not used[j] or r != used[j][-1]:
                used[j].append(r)
            roles.append(r)
            for group in opts[j].param_groups:
                group["lr"] = cosine_lr(cfg.lr, step, u.iterations)
            draws.append(augment.draw(cfg.augment, xs[j].shape[-1], xs[j].shape[0], u.aug_gen, step, u.iterations))
            opts[j].zero_grad(set_to_none=True)
        ce, bn = packed_loss(
            [xs[j] for j in active], [units[j].targets for j in active], roles, draws,
            teachers, hooks, cfg, backward=True, scalers=[scalers[j] for j in active],
        )  # fmt: skip
        for i, j in enumerate(active):
            if scalers[j] is None:
                opts[j].step()
            else:
                scalers[j].step(opts[j])
                scalers[j].update()
            with torch.no_grad():
                xs[j].data = torch.maximum(torch.minimum(xs[j].data, hi), lo)
            total = units[j].iterations
            if step == 0 or (step + 1) % cfg.log_every == 0 or step + 1 == total:
                entry = {"step": step + 1, "ce": _host(ce[i]), "bn": _host(bn[i])}
                history[j].append(entry)
                if units[j].progress:
                    units[j].progress(entry)
    return [(x.detach(), u, h) for x, u, h in zip(xs, used, history)]
