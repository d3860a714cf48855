"""Packed chunks (`recover.pack`): one teacher forward over several chunks equals separate runs.

Per-chunk BN statistics (grouped), per-chunk CE, Adam, schedules, generators and roles: the
packed loop must give each chunk what the loop gives it alone (fp32 CPU, to rounding).
"""

from __future__ import annotations

import pytest
import torch

from prism_hpc.config.schema import AugmentConfig, OptimizeRecover
from prism_hpc.models.registry import create_model, freeze
from prism_hpc.recover.loop import Unit, pixel_bounds, recover_units
from prism_hpc.recover.objective import bn_hooks
from prism_hpc.recover.sampler import Roles
from prism_hpc.seeding import generator

SIZE = 16
BOUNDS = pixel_bounds([0.3], [0.4], "cpu")
# float64: the packed loop is the same arithmetic (equal to 1e-10). float32: rounding differs
# with the batch composition (~1e-7 after one step) and Adam's normalised update amplifies it
# for pixels whose gradient is near zero (measured <= 1e-3 after 6 steps).
ATOL = {torch.float64: 1e-10, torch.float32: 2e-3}
RTOL_LOSS = {torch.float64: 1e-10, torch.float32: 1e-4}


@pytest.fixture(scope="module", params=["float64", "float32"])
def teachers(request) -> dict:
    """Three small architectures with non-trivial running statistics (as test_recover_loop)."""
    torch.manual_seed(0)
    specs = {"r": ("resnet18", 0.25), "m": ("mobilenet_v2", 0.25), "s": ("shufflenet_v2_x0_5", 0.5)}
    out = {}
    for name, (arch, width) in specs.items():
        model = create_model(arch, 10, in_channels=1, resolution=SIZE, width=width)
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(16, 1, SIZE, SIZE) * 0.7 + 0.2)
        out[name] = freeze(model).to(getattr(torch, request.param))
    return out


def _cfg(**kw) -> OptimizeRecover:
    base = {
        "logit_teacher": "r", "bn_always": ["r"], "bn_pool": ["m", "s"], "r_bn": 0.05,
        "iterations": 12, "iteration_step": 0, "lr": 0.1, "log_every": 2,
        "augment": AugmentConfig(crop_scale=(0.5, 1.0), jitter=2),
    }  # fmt: skip
    base.update(kw)
    return OptimizeRecover(**base)


# chunk sizes, iterations and (pre) roles differ: r is logit + BN teacher of chunk 0, logit
# only of chunk 1, BN only of chunk 2; s is drawn by chunk 1 alone; m by chunks 0 and 2
ROLES = [Roles("r", ("r", "m")), Roles("r", ("s",)), Roles("m", ("m", "r"))]
SIZES = [4, 3, 2]
ITERS = [6, 5, 4]


def _units(cfg: OptimizeRecover, intra: bool, dtype=torch.float32) -> list[Unit]:
    units = []
    for j, (n, t) in enumerate(zip(SIZES, ITERS, strict=True)):
        x0 = torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(10 + j))
        x0 = x0.to(dtype)
        units.append(
            Unit(
                x0, torch.arange(n) + j, t, generator(0, "aug", j), generator(0, "intra", j),
                None if intra else ROLES[j],
            )
        )  # fmt: skip
    return units


def _dtype(teachers) -> torch.dtype:
    return next(teachers["r"].parameters()).dtype


def _bounds(teachers):
    return tuple(b.to(_dtype(teachers)) for b in BOUNDS)


def _separate(teachers, cfg, intra):
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        out = []
        for u in _units(cfg, intra, _dtype(teachers)):
            out += recover_units([u], teachers, hooks, cfg, _bounds(teachers))
        return out


def _packed(teachers, cfg, intra):
    units = _units(cfg, intra, _dtype(teachers))
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        return recover_units(units, teachers, hooks, cfg, _bounds(teachers))


@pytest.mark.parametrize(
    "kw",
    [
        {"scope": "pre"},
        {"scope": "pre", "memory": "sequential", "l2_scale": 1e-3},
        {"scope": "intra", "per_sample": True},
    ],
    ids=["pre-joint", "pre-sequential", "intra-per-sample"],
)
def test_packed_equals_separate_runs(teachers, kw):
    kw = dict(kw)
    aug = AugmentConfig(crop_scale=(0.5, 1.0), jitter=2, per_sample=kw.pop("per_sample", False))
    cfg = _cfg(augment=aug, **kw)
    intra = cfg.scope == "intra"
    alone = _separate(teachers, cfg, intra)
    packed = _packed(teachers, cfg, intra)
    dt = _dtype(teachers)
    for (xa, ua, ha), (xp, up, hp), u in zip(alone, packed, _units(cfg, intra, dt), strict=True):
        assert (xa - u.x0).abs().max() > 0.05  # it did optimise
        torch.testing.assert_close(xp, xa, rtol=0, atol=ATOL[dt])
        assert up == ua  # same roles (intra: the same redraws)
        assert [e["step"] for e in hp] == [e["step"] for e in ha]
        for ep, ea in zip(hp, ha, strict=True):
            assert ep["ce"] == pytest.approx(ea["ce"], rel=RTOL_LOSS[dt])
            assert ep["bn"] == pytest.approx(ea["bn"], rel=RTOL_LOSS[dt])
    if intra:
        assert any(len(u) > 1 for _, u, _ in alone)  # the redraws were exercised


def test_teachers_see_only_the_chunks_that_drew_them(teachers):
    """Every forward of a teacher holds exactly the rows of the active chunks that drew it."""
    cfg = _cfg(scope="pre")
    seen: dict[str, list[int]] = {n: [] for n in teachers}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, n=n: seen[n].append(args[0].shape[0]))
        for n, m in teachers.items()
    ]
    try:
        _packed(teachers, cfg, intra=False)
    finally:
        for h in handles:
            h.remove()
    users = {"r": [0, 1, 2], "m": [0, 2], "s": [1]}
    for name, chunks in users.items():
        expected = [sum(SIZES[j] for j in chunks if step < ITERS[j]) for step in range(max(ITERS))]
        assert seen[name] == [n for n in expected if n]  # s: 5 steps of chunk 1 alone


def test_pack_groups_bn_statistics_per_chunk(teachers):
    """The BN term of a packed forward is each chunk's own term, not the packed batch's."""
    from prism_hpc.recover import augment
    from prism_hpc.recover.loss import Part, packed_loss, recovery_loss

    cfg = _cfg(scope="pre")
    units = _units(cfg, False, _dtype(teachers))
    roles = [Roles("r", ("r", "m"))] * 2
    xs = [units[0].x0, units[0].x0.flip(0) * 0.5]  # same size, different content
    draws = [augment.draw(cfg.augment, SIZE, 4, generator(0, "d", j)) for j in range(2)]
    ys = [torch.arange(4), torch.arange(4) + 3]
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        parts = [Part(xs[j], ys[j], roles[j], draws[j]) for j in range(2)]
        bn = [b for _, _, b in packed_loss(parts, teachers, hooks, cfg, backward=False)]
        for j in range(2):
            _, _, alone = recovery_loss(parts[j], teachers, hooks, cfg, False)
            assert bn[j].item() == pytest.approx(alone.item(), rel=RTOL_LOSS[_dtype(teachers)])
    assert abs(bn[0].item() - bn[1].item()) > 1e-3 * abs(bn[0].item())


def test_grouped_stats_one_pass_equals_per_group(monkeypatch):
    """The accelerator branch (one var_mean over a (G, B, C, H, W) view of equal groups) gives
    the per-group values and gradient of the CPU branch; trailing rows get a zero gradient."""
    from prism_hpc.recover import objective

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 5, 5, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last)
    wv, wm = torch.randn(2, 3, generator=g, dtype=torch.float64).unbind(0)
    out = {}
    for forced in (False, True):
        with monkeypatch.context() as mp:
            mp.setattr(objective, "_one_pass", lambda xs, sizes, f=forced: f)
            xi = x.clone().requires_grad_(True)
            var, mean = objective.grouped_channel_stats(xi, [3, 3])
            ((var * wv).sum() + (mean * wm).sum()).backward()
            out[forced] = (var.detach(), mean.detach(), xi.grad)
    for a, b in zip(out[False], out[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ref_var, ref_mean = torch.var_mean(x[3:6], dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(out[True][0][1], ref_var)
    torch.testing.assert_close(out[True][1][1], ref_mean)
    assert torch.equal(out[True][2][6], torch.zeros_like(x[6]))  # not in any group
