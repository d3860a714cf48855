"""The optimisation loop: Adam/cosine/clamp exactly as specified, memory modes, scopes, T_i."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from prism_hpc.config.schema import AugmentConfig, OptimizeRecover
from prism_hpc.models.registry import create_model, freeze
from prism_hpc.recover import augment
from prism_hpc.recover.loop import Unit, cosine_lr, pixel_bounds, recover_units
from prism_hpc.recover.loss import Part, recovery_loss
from prism_hpc.recover.objective import bn_hooks
from prism_hpc.recover.sampler import Roles
from prism_hpc.seeding import generator

SIZE = 16


@pytest.fixture(scope="module")
def teachers() -> dict:
    """Three small real architectures with non-trivial BN running statistics."""
    torch.manual_seed(0)
    specs = {"r": ("resnet18", 0.25), "m": ("mobilenet_v2", 0.25), "s": ("shufflenet_v2_x0_5", 0.5)}
    out = {}
    for name, (arch, width) in specs.items():
        model = create_model(arch, 10, in_channels=1, resolution=SIZE, width=width)
        model.train()
        with torch.no_grad():  # a few batches so running stats are not the 0/1 defaults
            for _ in range(3):
                model(torch.randn(16, 1, SIZE, SIZE) * 0.7 + 0.2)
        out[name] = freeze(model)
    return out


def _cfg(**kw) -> OptimizeRecover:
    base = {
        "logit_teacher": "r", "bn_always": ["r"], "bn_pool": ["m", "s"], "r_bn": 0.05,
        "iterations": 12, "iteration_step": 0, "lr": 0.1, "log_every": 5,
        "augment": AugmentConfig(crop_scale=(0.5, 1.0), jitter=2),
    }  # fmt: skip
    base.update(kw)
    return OptimizeRecover(**base)


def _x(n=4):
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_sequential_gradient_equals_joint(teachers):
    roles = Roles("r", ("r", "m", "s"))
    y = torch.arange(4)
    d = augment.draw(_cfg().augment, SIZE, 4, generator(0, "aug"))
    grads, totals = {}, {}
    for memory in ("joint", "sequential"):
        cfg = _cfg(memory=memory, l2_scale=1e-3, tv_scale=1e-3)
        x = _x().requires_grad_(True)
        with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
            totals[memory], _, _ = recovery_loss(Part(x, y, roles, d), teachers, hooks, cfg, True)
        grads[memory] = x.grad
    rel = (grads["sequential"] - grads["joint"]).norm() / grads["joint"].norm()
    assert rel.item() < 1e-5
    assert totals["sequential"].item() == pytest.approx(totals["joint"].item(), rel=1e-6)


def test_cosine_lr():
    assert cosine_lr(0.05, 0, 4000) == 0.05
    assert cosine_lr(0.05, 2000, 4000) == pytest.approx(0.025)
    assert cosine_lr(0.05, 1000, 4000) == pytest.approx(0.025 * (1 + math.cos(math.pi / 4)))
    assert cosine_lr(0.05, 3999, 4000) == pytest.approx(0.0, abs=1e-8)


def test_loop_is_adam_betas_cosine_then_clamp(teachers):
    """recover_chunk against a hand-written loop: Adam(0.5, 0.9, eps 1e-8), cosine LR set before
    the step, clamp of every channel to [(0-m)/s, (1-m)/s] after it, draws replayed in order."""
    cfg = _cfg(scope="pre")
    roles = Roles("r", ("r", "m"))
    mean, std = [0.3], [0.4]
    bounds = pixel_bounds(mean, std, "cpu")
    y = torch.arange(4)
    x0 = _x() * 2  # partly outside the valid range: the clamp matters
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        unit = Unit(x0, y, 12, generator(0, "a"), generator(0, "b"), roles)
        ((out, used, history),) = recover_units([unit], teachers, hooks, cfg, bounds)
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
        g = generator(0, "a")
        for step in range(12):
            opt.param_groups[0]["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / 12))
            d = augment.draw(cfg.augment, SIZE, 4, g)
            opt.zero_grad()
            recovery_loss(Part(x, y, roles, d), teachers, hooks, cfg, backward=True)
            opt.step()
            with torch.no_grad():
                x.clamp_(min=(0 - 0.3) / 0.4, max=(1 - 0.3) / 0.4)
    assert torch.equal(out, x.detach())
    assert out.min() >= -0.75 and out.max() <= 1.75
    assert used == [roles]
    assert [h["step"] for h in history] == [1, 5, 10, 12]  # step 1 logged: the starting point


def test_defaults_are_the_papers():
    cfg = OptimizeRecover()
    assert (cfg.lr, tuple(cfg.betas), cfg.iterations, cfg.r_bn) == (0.05, (0.5, 0.9), 4000, 0.01)
    assert (cfg.iteration_step, cfg.iteration_period, cfg.first_bn_multiplier) == (500, 8, 10.0)
    assert cfg.augment.crop_scale == (0.08, 1.0) and cfg.augment.jitter == 32
    assert cfg.classes_per_batch == 100 and cfg.include_prob == 0.5 and cfg.scope == "pre"


def test_varying_iteration_rule():
    cfg = OptimizeRecover()
    assert [cfg.iterations_for(i) for i in range(10)] == [
        4000, 3500, 3000, 2500, 2000, 1500, 1000, 500, 4000, 3500
    ]  # fmt: skip
    flat = OptimizeRecover(iteration_step=0)
    assert {flat.iterations_for(i) for i in range(20)} == {4000}
    small = OptimizeRecover(iterations=200, iteration_step=20, iteration_period=8)
    assert [small.iterations_for(i) for i in (0, 7, 8, 15)] == [200, 60, 200, 60]
    with pytest.raises(ValidationError, match="iteration_step"):
        OptimizeRecover(iterations=3000, iteration_step=500, iteration_period=8)


def test_intra_scope_redraws_every_step(teachers):
    bounds = pixel_bounds([0.3], [0.4], "cpu")
    y = torch.arange(4)
    results = {}
    for resample in (False, True):
        cfg = _cfg(scope="intra", logit_teacher=None, logit_pool=["r", "m", "s"],
                   bn_always=[], bn_pool=["r", "m", "s"], sampler="uniform", k_max=2,
                   resample_logit=resample, iterations=10)  # fmt: skip
        with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
            unit = Unit(_x(), y, 10, generator(0, "a"), generator(0, "intra"), None)
            results[resample] = recover_units([unit], teachers, hooks, cfg, bounds)[0]
    fixed_used, moving_used = results[False][1], results[True][1]
    assert len(fixed_used) > 3 and len({r.bn for r in fixed_used}) > 2
    assert len({r.logit for r in fixed_used}) == 1  # logit teacher kept unless resample_logit
    assert len({r.logit for r in moving_used}) > 1
    assert all(1 <= len(r.bn) <= 2 for r in fixed_used + moving_used)
    # deterministic: same generators, same roles and images
    cfg = _cfg(scope="intra", logit_teacher=None, logit_pool=["r", "m", "s"], bn_always=[],
               bn_pool=["r", "m", "s"], sampler="uniform", k_max=2, iterations=10)  # fmt: skip
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        unit = Unit(_x(), y, 10, generator(0, "a"), generator(0, "intra"), None)
        again = recover_units([unit], teachers, hooks, cfg, bounds)[0]
    assert again[1] == fixed_used and torch.equal(again[0], results[False][0])
