"""Norm-statistic priors: LayerNorm / GroupNorm teachers as statistic teachers.

A `prior: norm_stats` teacher adds, for every LayerNorm and GroupNorm layer l (module order),

    m_l * ( ||var_l^ref - var_l(A(x))||_2 + ||mean_l^ref - mean_l(A(x))||_2 )

to its BN-set term, exactly where a BN teacher adds its BatchNorm terms (same plain L2 norms,
`first_bn_multiplier` for its first such layer, the same `r_bn / K` weight and divisor K).
mean/var are per channel of the layer's **input**, biased, over every other dimension:
(B, N) of a (B, N, C) token input, (B, H, W) of a channels-last (B, H, W, C) or channels-first
(B, C, H, W) input (timm's LayerNorm2d, GroupNorm), B of a (B, C) input. The references are
the same statistics over the whole training set, measured once by the statistics stage
(`compute_norm_statistics`; stored as `norm/<layer>/{mean,var}` in
`RUN/statistics/<teacher>.pt`), the counterpart of a BN layer's running statistics.

Why an LN teacher carries a prior at all (docs/recover.md): LayerNorm normalises each token by
its own mean and variance, so its *output* forgets them, but the per-channel distribution of
its *input* over real data (the channel means and scales of a residual stream) is a property
of the data the teacher saw; matching it asks synthetic images to produce realistic
activations, as BN's running statistics do for CNNs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prism_hpc.errors import TaskFailed
from prism_hpc.models.registry import norm_layers
from prism_hpc.recover.objective import BNStatistics, fp32, fp32_island


def _other_dims(x: torch.Tensor, dim: int) -> tuple[int, ...]:
    keep = dim % x.dim()
    return tuple(d for d in range(x.dim()) if d != keep)


def norm_channel_stats(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(var, mean) per channel (dimension `dim`) over every other dimension, biased;
    half-precision inputs are reduced in fp32. Differentiable (autograd)."""
    xs = fp32(x)
    return torch.var_mean(xs, dim=_other_dims(xs, dim), unbiased=False)


def grouped_norm_stats(
    x: torch.Tensor, dim: int, sizes: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(var, mean), each (G, C): `norm_channel_stats` of each group of leading rows (a packed
    chunk) on its own; rows after the last group (chunks for which the teacher is only the
    logit teacher) take no part. One split, so the backward is one concatenation."""
    xs = fp32(x)
    rest = xs.shape[0] - sum(sizes)
    parts = torch.split(xs, [*sizes, rest] if rest else list(sizes))
    stats = [
        torch.var_mean(p, dim=_other_dims(p, dim), unbiased=False) for p in parts[: len(sizes)]
    ]
    return torch.stack([v for v, _ in stats]), torch.stack([m for _, m in stats])


class NormStatistics(BNStatistics):
    """Forward hooks on a teacher's LayerNorm / GroupNorm layers that add each layer's term
    against the training-set statistics while `active`. The interface of `BNStatistics`
    (active, groups, collect, has_bn: "has a statistic term"), so the loss, the divisor K,
    packing and the memory modes treat both alike."""

    def __init__(
        self, model: nn.Module, first_multiplier: float, reference: dict[str, torch.Tensor]
    ):
        found = norm_layers(model)
        self.layers = [module for _, module, _ in found]
        self.active = False
        self.groups: list[int] | None = None
        self.terms: list[torch.Tensor] = []
        self._handles = []
        for i, (name, module, dim) in enumerate(found):
            keys = (f"norm/{name}/mean", f"norm/{name}/var")
            missing = [k for k in keys if k not in reference]
            if missing:
                raise TaskFailed(
                    f"norm statistics lack {missing[0]} (computed for another model or "
                    "another config: redo the statistics stage)"
                )
            weight = first_multiplier if i == 0 else 1.0
            hook = self._norm_hook(dim, reference[keys[0]], reference[keys[1]], weight)
            self._handles.append(module.register_forward_hook(hook))

    def _norm_hook(self, dim: int, ref_mean: torch.Tensor, ref_var: torch.Tensor, weight: float):
        def hook(module: nn.Module, inputs, output) -> None:
            if not self.active:
                return
            x = inputs[0]
            with fp32_island(x):  # fp32 statistics and norms for half inputs
                if self.groups is None:
                    var, mean = norm_channel_stats(x, dim)
                    term = torch.linalg.vector_norm(ref_var - var) + torch.linalg.vector_norm(
                        ref_mean - mean
                    )
                else:
                    var, mean = grouped_norm_stats(x, dim, self.groups)
                    term = torch.linalg.vector_norm(
                        ref_var - var, dim=1
                    ) + torch.linalg.vector_norm(ref_mean - mean, dim=1)
            self.terms.append(term * weight if weight != 1.0 else term)

        return hook


@contextmanager
def prior_hooks(
    models: dict[str, nn.Module],
    priors: dict[str, str],
    first_multiplier: float,
    statistics: dict[str, dict[str, torch.Tensor]],
) -> Iterator[dict]:
    """`objective.bn_hooks` with each teacher's prior: `bn` (the default for a teacher not in
    `priors`: exactly the BN hooks as before), `norm_stats` (against `statistics[name]`) or
    `none` (no term). Removed at the end, even on error."""
    hooks: dict[str, BNStatistics] = {}
    try:
        for name, model in models.items():
            prior = priors.get(name, "bn")
            if prior == "norm_stats":
                if name not in statistics:
                    raise TaskFailed(
                        f"teacher {name!r}: no norm statistics (run the statistics stage)"
                    )
                hooks[name] = NormStatistics(model, first_multiplier, statistics[name])
            else:
                hooks[name] = BNStatistics(model, first_multiplier, [] if prior == "none" else None)
        yield hooks
    finally:
        for h in hooks.values():
            h.remove()


@torch.no_grad()
def compute_norm_statistics(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """One pass of `model` (eval) over `batches` of (normalised images, labels): per LN/GN
    layer, the mean and biased variance per channel of its input over every image and
    position of the pass (`norm/<layer>/{mean,var}`, float32), and `meta/images`.

    The population moments of the whole pass, not a mean of per-batch variances: batches
    are merged with Chan et al.'s pairwise update in float64 (count, mean, sum of squared
    deviations), so the result does not depend on the batch size beyond rounding."""
    found = norm_layers(model)
    acc: dict[str, tuple[float, torch.Tensor, torch.Tensor]] = {}

    def hook_for(name: str, dim: int):
        def hook(module, inputs, output) -> None:
            x = inputs[0].float()
            var, mean = norm_channel_stats(x, dim)
            n = x.numel() / x.shape[dim]
            mean, m2 = mean.double().cpu(), var.double().cpu() * n
            if name not in acc:
                acc[name] = (n, mean, m2)
                return
            n0, mean0, m20 = acc[name]
            total = n0 + n
            delta = mean - mean0
            acc[name] = (total, mean0 + delta * (n / total), m20 + m2 + delta**2 * (n0 * n / total))

        return hook

    handles = [m.register_forward_hook(hook_for(n, d)) for n, m, d in found]
    was_training = model.training
    model.eval()
    images = 0
    try:
        for x, _ in batches:
            model(x)
            images += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if images == 0:
        raise ValueError("no training images to compute statistics from")
    out: dict[str, torch.Tensor] = {}
    for name, (n, mean, m2) in acc.items():
        out[f"norm/{name}/mean"] = mean.float()
        out[f"norm/{name}/var"] = (m2 / n).float()
    out["meta/images"] = torch.tensor(images)
    return out
