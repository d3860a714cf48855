"""The PRISM objective: CE on the logit teacher + r_bn x BN-statistics alignment.

  loss = CE(f_logit(A(x)), y) + r_bn / K * sum_k sum_l m_l (||var_l - rv_l||_2 + ||mean_l - rm_l||_2)

mean/var are over (N, H, W) of each BN layer's input (var biased); m_l = first_bn_multiplier
for a teacher's first BN layer, 1 otherwise; K = number of BN teachers (`reduction: mean`,
BN-less teachers counted only with `count_bnless`) or 1 (`reduction: sum`, paper eq. 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from prism_hpc.models.registry import bn_layers


def cpu_var_mean(xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Biased per-channel variance and mean over (N, H, W) on the CPU, in one pass over a
    channels_last tensor (a (N*H*W, C) view) and two over a contiguous one; the same op
    order for a whole batch and for each chunk of a pack, so both give the same bits."""
    c = xs.shape[1]
    if xs.is_contiguous(memory_format=torch.channels_last):
        rows = xs.permute(0, 2, 3, 1).reshape(-1, c)  # a view: (N*H*W, C)
        mean = rows.mean(0)
        dev = rows - mean
        return (dev * dev).mean(0), mean
    mean4 = xs.mean((0, 2, 3), keepdim=True)
    dev = xs - mean4
    return (dev * dev).mean((0, 2, 3)), mean4.view(c)


class ChannelStats(torch.autograd.Function):
    """Biased variance and mean per channel over (N, H, W): the hook's statistics.

    Forward without autograd: on CUDA one `torch.var_mean` pass; on CPU two passes (mean, then
    mean of squared deviations) over the channels_last (N*H*W, C) view, because the CPU
    `var_mean` over dims (0, 2, 3) is 10-17x slower than that (benchmarks/recover_speed.md).
    Half-precision inputs are reduced in fp32. Backward in one fused pass:
    dx = (2 g_var / n) x + (g_mean / n - (2 g_var / n) mean), instead of autograd's several
    passes through var_mean. Same values as `torch.var_mean` up to rounding.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor):
        xs = fp32(x)
        if xs.device.type != "cpu":
            var, mean = torch.var_mean(xs, dim=(0, 2, 3), unbiased=False)
        else:
            var, mean = cpu_var_mean(xs)
        ctx.save_for_backward(x, mean)
        return var, mean

    @staticmethod
    @once_differentiable
    def backward(ctx, g_var: torch.Tensor, g_mean: torch.Tensor):
        x, mean = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        a = g_var * (2.0 / n)
        shift = g_mean / n - a * mean
        shape = (1, -1, 1, 1)
        return torch.addcmul(shift.view(shape), x, a.view(shape)).to(x.dtype)


def fp32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors upcast to fp32 (float64 stays float64): the entry of every fp32
    island (BN statistics, BN loss, CE) under `recover.precision: bf16 | fp16`."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def fp32_island(x: torch.Tensor):
    """Autocast off for the ops inside (norms, CE): they run in the dtype of their inputs.
    A no-op where autocast is not on (fp32 runs: nothing changes)."""
    kind = x.device.type
    if kind in ("cpu", "cuda") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return nullcontext()


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(var, mean) of a BN layer's input, differentiable (see `ChannelStats`)."""
    return ChannelStats.apply(x)


def _one_pass(x: torch.Tensor, sizes: tuple[int, ...]) -> bool:
    """Equal groups off the CPU: one `var_mean` over a (G, B, C, H, W) view (a test forces it
    on CPU to check it against the per-group path)."""
    return x.device.type != "cpu" and len(set(sizes)) == 1


class GroupedChannelStats(torch.autograd.Function):
    """`ChannelStats` per group of rows: (var, mean), each (G, C), of rows
    [o_g, o_g + n_g) for consecutive groups from row 0; rows after the last group (packed
    chunks for which this teacher is the logit teacher only) get a zero gradient. One
    Function for the whole packed batch: slicing first and stacking per-group `ChannelStats`
    would make autograd zero-fill and add a full-size gradient per group (k^2 work)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...]):
        xs = fp32(x)
        if _one_pass(xs, sizes):
            used = xs[: sum(sizes)]
            view = used.reshape(len(sizes), sizes[0], *xs.shape[1:])
            var, mean = torch.var_mean(view, dim=(1, 3, 4), unbiased=False)
        else:
            means, vars_ = [], []
            start = 0
            for n in sizes:
                part = xs[start : start + n]
                v, m = cpu_var_mean(part)
                means.append(m)
                vars_.append(v)
                start += n
            var, mean = torch.stack(vars_), torch.stack(means)
        ctx.sizes = sizes
        ctx.save_for_backward(x, mean)
        return var, mean

    @staticmethod
    @once_differentiable
    def backward(ctx, g_var: torch.Tensor, g_mean: torch.Tensor):
        x, mean = ctx.saved_tensors
        hw = x.shape[2] * x.shape[3]
        dx = torch.zeros_like(x)  # keeps x's memory format
        start = 0
        for g, n in enumerate(ctx.sizes):
            a = g_var[g] * (2.0 / (n * hw))
            shift = g_mean[g] / (n * hw) - a * mean[g]
            shape = (1, -1, 1, 1)
            dx[start : start + n] = torch.addcmul(
                shift.view(shape), x[start : start + n], a.view(shape)
            )
            start += n
        return dx, None


def grouped_channel_stats(x: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(var, mean), each (G, C): the statistics of each group of leading rows (a packed chunk)
    on its own, never over the packed batch (see `GroupedChannelStats`)."""
    return GroupedChannelStats.apply(x, tuple(sizes))


class BNStatistics:
    """Forward hooks that add each BN layer's alignment term while `active`.

    Statistics come from `channel_stats` on the hook input (no permute/contiguous copy).
    `layers=[]`: a teacher with no statistic term (`prior: none`); `has_bn` is False.
    """

    def __init__(self, model: nn.Module, first_multiplier: float, layers: list | None = None):
        self.layers = bn_layers(model) if layers is None else layers
        self.active = False
        # Packed forward: sizes of the leading row groups (chunks) whose statistics count, one
        # term per group; None: the whole batch is one group and a term is a scalar.
        self.groups: list[int] | None = None
        self.terms: list[torch.Tensor] = []
        self._handles = []
        for i, layer in enumerate(self.layers):
            weight = first_multiplier if i == 0 else 1.0
            self._handles.append(layer.register_forward_hook(self._hook(weight)))

    def _hook(self, weight: float):
        def hook(module: nn.BatchNorm2d, inputs, output) -> None:
            if not self.active:
                return
            x = inputs[0]
            with fp32_island(x):  # fp32 statistics and norms for half inputs
                if self.groups is None:
                    var, mean = channel_stats(x)
                    term = torch.linalg.vector_norm(
                        module.running_var - var
                    ) + torch.linalg.vector_norm(module.running_mean - mean)
                else:
                    var, mean = grouped_channel_stats(x, self.groups)
                    term = torch.linalg.vector_norm(
                        module.running_var - var, dim=1
                    ) + torch.linalg.vector_norm(module.running_mean - mean, dim=1)
            self.terms.append(term * weight if weight != 1.0 else term)

        return hook

    @property
    def has_bn(self) -> bool:
        return bool(self.layers)

    def collect(self) -> torch.Tensor:
        """Sum of the terms recorded since the last call (per group when `groups` is set)."""
        if not self.terms:
            total = torch.zeros(())
        elif self.groups is None:
            total = torch.stack(self.terms).sum()
        else:
            total = torch.stack(self.terms).sum(0)
        self.terms = []
        return total

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextmanager
def bn_hooks(models: dict[str, nn.Module], first_multiplier: float) -> Iterator[dict]:
    """Hooks on every teacher for the duration of a task; removed even on error."""
    hooks = {name: BNStatistics(m, first_multiplier) for name, m in models.items()}
    try:
        yield hooks
    finally:
        for h in hooks.values():
            h.remove()


def bn_divisor(bn_names, hooks: dict[str, BNStatistics], reduction: str, count_bnless: bool):
    if reduction == "sum":
        return 1.0
    k = sum(1 for n in bn_names if count_bnless or hooks[n].has_bn)
    return float(max(k, 1))


def image_priors(x: torch.Tensor, l2_scale: float, tv_scale: float) -> torch.Tensor:
    """Optional DeepInversion priors (off by default), in DeepInversion's own form:
    `l2_scale * ||x||_2` over the whole batch and `tv_scale * sum_d ||diff_d(x)||_2` over the
    horizontal, vertical and both diagonal neighbour differences (`loss_var_l2`)."""
    loss = x.new_zeros(())
    if l2_scale:
        loss = loss + l2_scale * torch.linalg.vector_norm(x)
    if tv_scale:
        diffs = (
            x[..., :, :-1] - x[..., :, 1:],
            x[..., :-1, :] - x[..., 1:, :],
            x[..., 1:, :-1] - x[..., :-1, 1:],
            x[..., :-1, :-1] - x[..., 1:, 1:],
        )
        loss = loss + tv_scale * sum(torch.linalg.vector_norm(d) for d in diffs)
    return loss


@dataclass(frozen=True)
class Share:
    """One chunk's rows in a teacher's forward: its labels when the teacher is its logit
    teacher, its BN weight (r_bn / K) when it is one of its BN teachers."""

    x: torch.Tensor
    targets: torch.Tensor | None = None
    bn_scale: float | None = None


def teacher_terms(
    model: nn.Module, hook: BNStatistics, shares: list[Share], grouped: bool = True
) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """One forward of one teacher over the chunks that drew it; per chunk (its share of the
    loss, CE or None, BN sum or None). A model that is both logit and BN teacher runs once
    (the official code runs it twice).

    The BN shares come first. `grouped`: the hook takes one set of statistics per BN share,
    over that chunk's rows only (`grouped_channel_stats`), never over the concatenation, so a
    chunk's loss depends on its own images alone. `grouped=False` (one share) takes them in
    one pass over the batch (`channel_stats`): the op order of an unpacked run. The two agree
    bit for bit on the CPU (checked), but on CUDA the grouped statistics of
    equal groups are one `var_mean` over a (G, B, C, H, W) view, another reduction whose
    rounding is not guaranteed to match; a chunk alone therefore keeps the ungrouped order."""
    bn_count = sum(s.bn_scale is not None for s in shares)
    if any(s.bn_scale is not None for s in shares[bn_count:]):
        raise ValueError("teacher_terms: the BN shares must come first")
    if not grouped and len(shares) != 1:
        raise ValueError("teacher_terms: grouped=False takes one share")
    hook.active = bn_count > 0
    hook.groups = [s.x.shape[0] for s in shares[:bn_count]] if grouped else None
    try:
        logits = model(shares[0].x if len(shares) == 1 else torch.cat([s.x for s in shares]))
    finally:
        hook.active = False
    bn = hook.collect() if bn_count else None
    hook.groups = None
    if grouped and bn is not None and bn.dim() == 0:  # a BN teacher without BN layers
        bn = bn.expand(bn_count)
    out, start = [], 0
    for j, share in enumerate(shares):
        n = share.x.shape[0]
        part = logits[start : start + n] if grouped else logits
        start += n
        ce = None
        if share.targets is not None:
            with fp32_island(part):  # autocast: CE in fp32
                ce = F.cross_entropy(fp32(part), share.targets)
        b = None if share.bn_scale is None else (bn[j] if grouped else bn)
        loss = share.x.new_zeros(())
        if ce is not None:
            loss = loss + ce
        if b is not None:
            loss = loss + share.bn_scale * b
        out.append((loss, ce, b))
    return out
