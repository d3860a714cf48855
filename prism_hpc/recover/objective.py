"""The PRISM objective: CE on the logit teacher + r_bn x BN-statistics alignment.

  loss = CE(f_logit(A(x)), y) + r_bn / K * sum_k sum_l m_l (||var_l - rv_l||_2 + ||mean_l - rm_l||_2)

mean/var are over (N, H, W) of each BN layer's input (var biased); m_l = first_bn_multiplier
for a teacher's first BN layer, 1 otherwise; K = number of BN teachers (`reduction: mean`,
BN-less teachers counted only with `count_bnless`) or 1 (`reduction: sum`, paper eq. 4).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from prism_hpc.models.registry import bn_layers


class BNStatistics:
    """Forward hooks that add each BN layer's alignment term while `active`.

    Statistics come from one `torch.var_mean` pass over the hook input (no permute/copy).
    """

    def __init__(self, model: nn.Module, first_multiplier: float):
        self.layers = bn_layers(model)
        self.active = False
        self.terms: list[torch.Tensor] = []
        self._handles = []
        for i, layer in enumerate(self.layers):
            weight = first_multiplier if i == 0 else 1.0
            self._handles.append(layer.register_forward_hook(self._hook(weight)))

    def _hook(self, weight: float):
        def hook(module: nn.BatchNorm2d, inputs, output) -> None:
            if not self.active:
                return
            x = inputs[0].float()
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            term = torch.linalg.vector_norm(module.running_var - var) + torch.linalg.vector_norm(
                module.running_mean - mean
            )
            self.terms.append(term * weight if weight != 1.0 else term)

        return hook

    @property
    def has_bn(self) -> bool:
        return bool(self.layers)

    def collect(self) -> torch.Tensor:
        """Sum of the terms recorded since the last call."""
        total = torch.stack(self.terms).sum() if self.terms else torch.zeros(())
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
    """Optional SRe2L/DeepInversion priors (off by default): L2 norm and L2 total variation."""
    loss = x.new_zeros(())
    if l2_scale:
        loss = loss + l2_scale * torch.linalg.vector_norm(x.flatten(1), dim=1).mean()
    if tv_scale:
        dx = x[..., :, 1:] - x[..., :, :-1]
        dy = x[..., 1:, :] - x[..., :-1, :]
        loss = loss + tv_scale * (dx.pow(2).mean() + dy.pow(2).mean())
    return loss


def teacher_terms(
    name: str,
    model: nn.Module,
    hooks: dict[str, BNStatistics],
    xa: torch.Tensor,
    targets: torch.Tensor,
    is_logit: bool,
    is_bn: bool,
    bn_scale: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One forward of one teacher; returns (its share of the loss, CE or None, BN sum or None).

    A model that is both logit and BN teacher is run once (the official code runs it twice).
    """
    hook = hooks[name]
    hook.active = is_bn
    try:
        logits = model(xa)
    finally:
        hook.active = False
    ce = F.cross_entropy(logits, targets) if is_logit else None
    bn = hook.collect() if is_bn else None
    loss = xa.new_zeros(())
    if ce is not None:
        loss = loss + ce
    if bn is not None:
        loss = loss + bn_scale * bn
    return loss, ce, bn
