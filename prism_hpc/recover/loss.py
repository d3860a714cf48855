"""The recovery loss of one step, for one chunk or a pack of chunks.

Per chunk j: CE of its logit teacher + r_bn / K_j x the BN terms of its BN teachers
(+ DeepInversion's priors), recover/objective.py. Each teacher runs once per step, on the
concatenation of the chunks that drew it; chunk j's loss depends on chunk j's images only
(eval-mode BN, statistics per chunk), so one backward of the sum gives every chunk its own
gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.recover import augment
from prism_hpc.recover.objective import BNStatistics, Share, bn_divisor, image_priors, teacher_terms
from prism_hpc.recover.precision import autocast, device_layout, scaled
from prism_hpc.recover.sampler import Roles


@dataclass
class Part:
    """One chunk's input to a step: its images (normalised, the rows taking part), labels,
    teacher roles, augmentation draw and fp16 loss scaler (None: no scaling)."""

    x: torch.Tensor
    targets: torch.Tensor
    roles: Roles
    draw: augment.AugmentDraw
    scaler: object = None


Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (total, CE, BN sum), detached


def packed_loss(
    parts: list[Part],
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: OptimizeRecover,
    backward: bool,
    grouped: bool = True,
) -> list[Terms]:
    """Per chunk (total, CE, BN sum) of one step; with `backward`, every x.grad is filled.

    A teacher's batch holds the chunks that drew it, those for which it is a BN teacher first
    (`objective.teacher_terms`; `grouped=False` is the one-chunk op order, see there).
    `memory: sequential` treats each augmented batch as a leaf, backpropagates each teacher's
    terms on their own (freeing its activations) and pushes the summed gradient through the
    augmentation once: the same gradient, peak memory of the largest teacher."""
    k = len(parts)
    xa = [device_layout(augment.apply(p.x, p.draw)) for p in parts]
    bn_scale = [cfg.r_bn / bn_divisor(p.roles.bn, hooks, cfg.reduction, cfg.count_bnless)
                for p in parts]  # fmt: skip
    # A BN teacher without BN layers adds nothing (and no graph): no forward for it.
    names = [[r.logit] + [n for n in r.bn if n != r.logit and hooks[n].has_bn]
             for r in (p.roles for p in parts)]  # fmt: skip
    sequential = backward and cfg.memory == "sequential"
    leaves = [a.detach().requires_grad_(True) if sequential else a for a in xa]
    totals = [p.x.new_zeros(()) for p in parts]
    ce_val = [p.x.new_zeros(()) for p in parts]
    bn_val = [p.x.new_zeros(()) for p in parts]
    for name in dict.fromkeys(n for chunk in names for n in chunk):
        members = [j for j in range(k) if name in names[j]]
        rows = [j for j in members if name in parts[j].roles.bn]
        rows += [j for j in members if j not in rows]
        shares = [
            Share(leaves[j], parts[j].targets if parts[j].roles.logit == name else None,
                  bn_scale[j] if name in parts[j].roles.bn else None)
            for j in rows
        ]  # fmt: skip
        with autocast(cfg, parts[0].x.device):
            terms = teacher_terms(teachers[name], hooks[name], shares, grouped)
        for j, (loss, ce, bn) in zip(rows, terms, strict=True):
            if ce is not None:
                ce_val[j] = ce.detach()
            if bn is not None:
                bn_val[j] = bn_val[j] + bn.detach()
        if sequential:
            losses = [scaled(t[0], parts[j].scaler) for j, t in zip(rows, terms, strict=True)]
            (sum(losses) if grouped else losses[0]).backward()
        for j, (loss, _, _) in zip(rows, terms, strict=True):
            totals[j] = totals[j] + (loss.detach() if sequential else loss)
    if cfg.l2_scale or cfg.tv_scale:
        for j in range(k):
            prior = image_priors(leaves[j], cfg.l2_scale, cfg.tv_scale)
            if sequential:
                scaled(prior, parts[j].scaler).backward()
                prior = prior.detach()
            totals[j] = totals[j] + prior
    if backward:
        if sequential:
            torch.autograd.backward(xa, [leaf.grad for leaf in leaves])
        else:
            losses = [scaled(t, p.scaler) for t, p in zip(totals, parts, strict=True)]
            (sum(losses) if grouped else losses[0]).backward()
    return [(t.detach(), c, b) for t, c, b in zip(totals, ce_val, bn_val, strict=True)]


def recovery_loss(
    part: Part,
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: OptimizeRecover,
    backward: bool,
) -> Terms:
    """`packed_loss` of one chunk alone: (total, CE, BN sum); with `backward`, x.grad."""
    return packed_loss([part], teachers, hooks, cfg, backward, grouped=False)[0]
