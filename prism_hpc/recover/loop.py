"""The recovery loop: Adam on the normalised pixels of one or several chunks at once.

One loop for every optimising method. A chunk alone is the pack of one; a pack (`recover.pack`)
shares each teacher's forward/backward between its chunks (`loss.packed_loss`) while every
chunk keeps its own Adam, cosine schedule over its own T_i, generators, roles, loss scaler and
log, and leaves the pack after its T_i steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.recover import augment
from prism_hpc.recover.loss import Part, Terms, packed_loss, recovery_loss
from prism_hpc.recover.objective import BNStatistics
from prism_hpc.recover.precision import loss_scaler, prepare_teachers
from prism_hpc.recover.sampler import Roles, sample_roles


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine from `base` at step 0 to 0 at `total`, no warm-up (official lr_cosine_policy)."""
    return 0.5 * base * (1 + math.cos(math.pi * step / total))


def pixel_bounds(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (0 - m) / s, (1 - m) / s


def _host(value: torch.Tensor) -> float:
    """The loop's only device-to-host read (every `log_every` steps); a test replaces it to
    prove that no other read happens on the accelerator path."""
    return float(value)


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


@dataclass
class Unit:
    """One chunk to optimise: initial normalised images, labels, its T_i, its generators
    (augmentation; intra-scope roles or the matching schedule) and fixed roles (None: drawn
    every step). `starts` (joint batches, recover/joint.py): row j joins at step starts[j]
    (DELT's EarlyLate); before that it is not in the forward, the statistics or the update.
    `progress` is called with every logged entry."""

    x0: torch.Tensor
    targets: torch.Tensor
    iterations: int
    aug_gen: torch.Generator
    role_gen: torch.Generator
    fixed_roles: Roles | None
    progress: Callable[[dict], None] | None = None
    starts: list[int] | None = None


Result = tuple[torch.Tensor, list[Roles], list[dict]]  # final images, roles used, history


class _Run:
    """A unit's optimisation state; its steps in the op order of the loop below."""

    def __init__(self, unit: Unit, cfg: OptimizeRecover):
        self.unit = unit
        self.x = unit.x0.clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.x], lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8)
        self.scaler = loss_scaler(cfg, self.x.device)
        self.used: list[Roles] = []
        self.history: list[dict] = []
        starts = unit.starts
        self.active = ActiveRows(starts, self.x.device) if starts is not None else None
        self.rows: torch.Tensor | None = None

    def roles(self, step: int, cfg: OptimizeRecover, matcher) -> Roles:
        u = self.unit
        if matcher is not None:  # one backbone per step, by the matching schedule
            return matcher.roles(step, u.role_gen)
        if u.fixed_roles is not None:
            return u.fixed_roles
        keep = None if cfg.resample_logit or not self.used else self.used[0].logit
        return sample_roles(cfg, u.role_gen, logit=keep)  # intra: redraw every step

    def begin(self, step: int, cfg: OptimizeRecover, matcher) -> Part:
        """Roles, learning rate and augmentation of `step`; the gradient cleared."""
        u = self.unit
        roles = self.roles(step, cfg, matcher)
        if not self.used or roles != self.used[-1]:
            self.used.append(roles)
        for group in self.opt.param_groups:
            group["lr"] = cosine_lr(cfg.lr, step, u.iterations)
        rows = self.rows = None if self.active is None else self.active.at(step)
        x, y = (self.x, u.targets) if rows is None else (self.x[rows], u.targets[rows])
        d = augment.draw(cfg.augment, self.x.shape[-1], x.shape[0], u.aug_gen, step, u.iterations)
        self.opt.zero_grad(set_to_none=True)
        return Part(x, y, roles, d, self.scaler)

    def finish(self, step: int, terms: Terms, bounds, log_every: int) -> None:
        """Adam step (fp16: unscaled, skipped on inf/nan), clamp, log."""
        if self.scaler is None:
            self.opt.step()
        else:
            self.scaler.step(self.opt)
            self.scaler.update()
        lo, hi = bounds
        x, rows = self.x, self.rows
        with torch.no_grad():
            if rows is None:
                x.data = torch.maximum(torch.minimum(x.data, hi), lo)
            else:
                x.data[rows] = torch.maximum(torch.minimum(x.data[rows], hi), lo)
        total = self.unit.iterations
        if step == 0 or (step + 1) % log_every == 0 or step + 1 == total:
            # one host sync per log interval, not per step
            entry = {"step": step + 1, "ce": _host(terms[1]), "bn": _host(terms[2])}
            self.history.append(entry)
            if self.unit.progress:
                self.unit.progress(entry)

    def read_initial(self, loss, cfg: OptimizeRecover, matcher) -> None:
        """No step (`init_only`): the losses of the initial images, once."""
        u = self.unit
        if matcher is not None:
            roles = matcher.roles(0, u.role_gen)
        else:
            roles = u.fixed_roles or sample_roles(cfg, u.role_gen)
        self.used.append(roles)
        d = augment.draw(cfg.augment, self.x.shape[-1], self.x.shape[0], u.aug_gen)
        with torch.no_grad():
            _, ce, bn = loss(Part(self.x, u.targets, roles, d))
        self.history.append({"step": 0, "ce": _host(ce), "bn": _host(bn)})


def recover_units(
    units: list[Unit],
    teachers: dict[str, nn.Module],
    hooks: dict[str, BNStatistics],
    cfg: OptimizeRecover,
    bounds: tuple[torch.Tensor, torch.Tensor],
    matcher=None,
) -> list[Result]:
    """Optimise `units` together; per unit (final normalised images, roles used, history).

    The steps are the same for one unit or several; the loss differs in one choice only: a
    unit alone takes its BN statistics in one pass over its batch (`recovery_loss`; why:
    objective.teacher_terms), several take them per unit (`packed_loss`). So whether a config
    packs never changes the floats of a config that does not. `matcher` (G-VBSM / EDC, recover/gvbsm.StatMatcher): its schedule
    picks each step's backbone and its `loss` replaces the PRISM objective; one unit only."""
    grouped = len(units) > 1
    if matcher is not None and grouped:
        raise ValueError("statistic matching optimises one chunk at a time (recover.pack 1)")
    teachers = prepare_teachers(teachers, cfg)
    if matcher is not None:
        matcher.reset()

    def alone(part: Part, backward: bool) -> Terms:
        if matcher is not None:
            return matcher.loss(part, teachers, hooks, cfg, backward)
        return recovery_loss(part, teachers, hooks, cfg, backward)

    runs = [_Run(u, cfg) for u in units]
    for step in range(max(u.iterations for u in units)):
        live = [r for r in runs if step < r.unit.iterations]
        parts = [r.begin(step, cfg, matcher) for r in live]
        if grouped:
            terms = packed_loss(parts, teachers, hooks, cfg, True)
        else:
            terms = [alone(parts[0], True)]
        for run, t in zip(live, terms, strict=True):
            run.finish(step, t, bounds, cfg.log_every)
    for run in runs:
        if run.unit.iterations == 0:  # recover.init_only: each chunk read alone
            run.read_initial(lambda p: alone(p, False), cfg, matcher)
    return [(r.x.detach(), r.used, r.history) for r in runs]
