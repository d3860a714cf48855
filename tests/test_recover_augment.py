"""Seeded batch augmentation: torchvision's sampling rule and ops, determinism, exact replay."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import functional as TF

from prism_hpc.config.schema import AugmentConfig
from prism_hpc.recover import augment
from prism_hpc.seeding import generator


def _x(n=3, size=20):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_draws_are_deterministic_and_seed_dependent():
    cfg = AugmentConfig(crop_scale=(0.08, 1.0), jitter=8)
    a = [augment.draw(cfg, 32, 4, generator(0, "aug", 1)) for _ in range(2)]
    assert a[0] == a[1]
    g1, g2 = generator(0, "aug", 1), generator(0, "aug", 1)
    seq1 = [augment.draw(cfg, 32, 4, g1) for _ in range(20)]
    seq2 = [augment.draw(cfg, 32, 4, g2) for _ in range(20)]
    assert seq1 == seq2
    other = [augment.draw(cfg, 32, 4, generator(0, "aug", 2)) for _ in range(20)]
    assert other != seq1
    torch.manual_seed(99)  # the global RNG plays no part
    assert augment.draw(cfg, 32, 4, generator(0, "aug", 1)) == a[0]


def test_crop_box_follows_torchvisions_rule():
    g = generator(0, "boxes")
    size, scale = 64, (0.08, 1.0)
    for _ in range(2000):
        top, left, h, w = augment.crop_box(size, scale, g)
        assert 0 <= top <= size - h and 0 <= left <= size - w and 1 <= h <= size and 1 <= w <= size
        # area and aspect ratio inside the ranges (up to the integer rounding of h and w)
        assert scale[0] * size * size * 0.8 <= h * w <= size * size
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # the fallback of a square image is the whole image
    assert augment.crop_box(4, (1.0, 1.0), generator(0, "x")) in {(0, 0, 4, 4)}


def test_apply_equals_torchvision_ops_and_replays_exactly():
    x = _x()
    d = augment.AugmentDraw([(3, 5, 9, 12)], [True], (2, 7))
    out = augment.apply(x, d)
    ref = TF.resized_crop(x, 3, 5, 9, 12, [20, 20], antialias=True)
    ref = torch.roll(TF.hflip(ref), shifts=(2, 7), dims=(2, 3))
    assert torch.equal(out, ref)
    assert torch.equal(augment.apply(x, d), out)  # replay: the same draw, the same pixels


def test_per_sample_crops_and_flips():
    cfg = AugmentConfig(crop_scale=(0.2, 1.0), per_sample=True, jitter=3)
    x = _x(n=4)
    d = augment.draw(cfg, 20, 4, generator(1, "aug"))
    assert len(d.boxes) == 4 and len(d.flips) == 4 and len(set(d.boxes)) > 1
    out = augment.apply(x, d)
    for i, (box, flip) in enumerate(zip(d.boxes, d.flips, strict=True)):
        ref = TF.resized_crop(x[i : i + 1], *box, [20, 20], antialias=True)
        ref = TF.hflip(ref) if flip else ref
        assert torch.equal(out[i : i + 1], torch.roll(ref, shifts=d.shift, dims=(2, 3)))
    batch = augment.draw(AugmentConfig(), 20, 4, generator(1, "aug"))
    assert len(batch.boxes) == 1 and len(batch.flips) == 1  # official: one crop for the batch


def test_flip_and_jitter_distributions():
    cfg = AugmentConfig(crop_scale=(0.5, 1.0), jitter=4)
    g = generator(0, "dist")
    draws = [augment.draw(cfg, 16, 2, g) for _ in range(2000)]
    flips = sum(d.flips[0] for d in draws)
    assert abs(flips - 1000) < 5 * math.sqrt(500)
    shifts = {s for d in draws for s in d.shift}
    assert shifts == set(range(5))  # randint(0, J) inclusive, like the official code
    off = augment.draw(AugmentConfig(flip=False, jitter=0), 16, 2, generator(0, "d"))
    assert off.flips == [False] and off.shift == (0, 0)


def test_apply_is_differentiable():
    x = _x().requires_grad_(True)
    d = augment.AugmentDraw([(2, 2, 10, 14)], [True], (1, 1))
    augment.apply(x, d).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- CDA curriculum (issue 15) -------------------------------------------------------------


def _cda(mode: str, **kw) -> AugmentConfig:
    return AugmentConfig(crop_scale=(0.08, 1.0), curriculum=mode, **kw)


def test_cda_schedule_against_hand_values():
    """CDA's easy-to-hard lower bound (VILA-Lab/SRe2L CDA/recover_cda_in1k.py), by hand:
    cosine over 4000 iterations, milestone 1: 1.0 at 0, 0.08 + 0.92 * (1 + cos(pi/4)) / 2 at
    1000, 0.54 at 2000; linear: 0.77 at 1000; step: 1.0 before the milestone, 0.08 after."""
    at = augment.crop_scale_at
    cos = _cda("cosine")
    assert at(cos, 0, 4000) == (1.0, 1.0)
    assert at(cos, 1000, 4000)[0] == pytest.approx(0.08 + 0.92 * (1 + math.sqrt(0.5)) / 2)
    assert at(cos, 1000, 4000)[0] == pytest.approx(0.865269, abs=1e-6)
    assert at(cos, 2000, 4000)[0] == pytest.approx(0.54)
    assert at(cos, 3999, 4000)[0] == pytest.approx(0.08, abs=1e-6)
    assert at(cos, 4000, 4000) == (0.08, 1.0)
    lin = _cda("linear")
    assert at(lin, 1000, 4000)[0] == pytest.approx(0.77)
    assert at(lin, 3000, 4000)[0] == pytest.approx(0.31)
    half = _cda("linear", curriculum_milestone=0.5)  # reaches 0.08 at 50 of 100, then stays
    assert at(half, 25, 100)[0] == pytest.approx(0.54)
    assert at(half, 50, 100) == (0.08, 1.0) and at(half, 99, 100) == (0.08, 1.0)
    stp = _cda("step", curriculum_milestone=0.5)
    assert at(stp, 49, 100) == (1.0, 1.0) and at(stp, 50, 100) == (0.08, 1.0)
    assert at(_cda("cosine", curriculum_milestone=0.0), 0, 100) == (0.08, 1.0)
    start = _cda("cosine", curriculum_start=0.5)  # a lower starting bound
    assert at(start, 0, 10) == (0.5, 1.0) and at(start, 5, 10)[0] == pytest.approx(0.29)
    # off, or no step (the init-only loss pass): crop_scale itself
    assert at(AugmentConfig(crop_scale=(0.08, 1.0)), 0, 4000) == (0.08, 1.0)
    assert at(cos, None, None) == (0.08, 1.0)


def test_cda_off_draws_are_bit_identical_and_on_starts_with_whole_image():
    plain = AugmentConfig(crop_scale=(0.08, 1.0), jitter=4)
    g1, g2 = generator(0, "aug"), generator(0, "aug")
    assert [augment.draw(plain, 32, 4, g1) for _ in range(30)] == [
        augment.draw(plain, 32, 4, g2, step, 30) for step in range(30)
    ]
    cda = _cda("cosine", jitter=4)
    d0 = augment.draw(cda, 32, 4, generator(0, "aug"), 0, 30)
    assert d0.boxes == [(0, 0, 32, 32)]  # lower bound 1.0: the whole image
    areas = [augment.draw(cda, 32, 1, generator(0, "late", s), 29, 30).boxes[0] for s in range(40)]
    assert min(h * w for _, _, h, w in areas) < 0.5 * 32 * 32  # small crops allowed at the end


def test_cda_start_outside_crop_scale_is_refused():
    with pytest.raises(ValueError, match="curriculum_start must lie inside crop_scale"):
        AugmentConfig(crop_scale=(0.08, 0.6), curriculum="cosine")
    AugmentConfig(crop_scale=(0.08, 0.6), curriculum="none")  # unused when off


def test_loop_feeds_each_images_own_budget_to_the_curriculum(monkeypatch):
    """recover_chunk passes (step, iterations) to the draw: the scale follows the chunk's T_i."""
    from prism_hpc.recover import loop

    seen: list[tuple] = []
    real = augment.draw

    def spy(cfg, size, batch, g, step=None, total=None):
        seen.append((step, total))
        return real(cfg, size, batch, g, step, total)

    monkeypatch.setattr(loop.augment, "draw", spy)
    zero = torch.zeros(())
    monkeypatch.setattr(loop, "recovery_loss", lambda part, *a, **k: (None, zero, zero))
    monkeypatch.setattr(loop, "prepare_teachers", lambda t, cfg: t)
    from prism_hpc.config.schema import OptimizeRecover

    cfg = OptimizeRecover(iterations=5, iteration_step=0, logit_teacher="r", bn_always=["r"],
                        bn_pool=[], augment=_cda("cosine"))  # fmt: skip
    x0 = torch.zeros(2, 1, 8, 8)
    bounds = (torch.full((1, 1, 1, 1), -1.0), torch.full((1, 1, 1, 1), 1.0))
    from prism_hpc.recover.sampler import Roles

    unit = loop.Unit(x0, torch.arange(2), 3, generator(0, "a"), generator(0, "b"),
                     Roles("r", ("r",)))  # fmt: skip
    loop.recover_units([unit], {}, {}, cfg, bounds)
    assert seen == [(0, 3), (1, 3), (2, 3)]


def test_baseline_configs_carry_their_mechanism():
    """configs/baselines/: SRe2L without the curriculum, CDA and DELT with CDA's cosine from
    1.0 to 0.08 over all iterations, DELT with the EarlyLate budget (8 rounds of 1/8)."""
    from pathlib import Path

    from prism_hpc.config.load import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "baselines"
    rec = {p.stem: load_config(p)[0].recover for p in root.glob("*.yaml")}
    assert {"fmnist_sre2l", "fmnist_cda", "fmnist_delt", "in1k_cda_ipc50", "in1k_delt_ipc50"} <= set(
        rec
    )  # (RDED, G-VBSM, EDC: their own tests)
    assert rec["fmnist_sre2l"].augment.curriculum == "none"
    for name in ("fmnist_cda", "fmnist_delt", "in1k_cda_ipc50", "in1k_delt_ipc50"):
        a = rec[name].augment
        assert (a.curriculum, a.curriculum_milestone, a.curriculum_start) == ("cosine", 1.0, 1.0)
        assert a.crop_scale == (0.08, 1.0) and rec[name].bn_pool == []
    for name in ("fmnist_sre2l", "fmnist_cda", "in1k_cda_ipc50"):
        assert rec[name].init == "noise" and rec[name].iteration_step == 0
    d = rec["in1k_delt_ipc50"]
    assert d.init == "real" and [d.iterations_for(i) for i in (0, 7, 8)] == [4000, 500, 4000]
    assert rec["fmnist_delt"].iterations_for(7) == 25 and rec["fmnist_delt"].augment.jitter == 0
    for name, group, classes in (("fmnist_delt", 10, 10), ("in1k_delt_ipc50", 50, 2)):
        r = rec[name]  # DELT's ranked init and its batches: every IPC position of a class
        assert (r.init_order, r.batching, r.slices_per_task) == ("delt_medium", "joint", group)
        assert r.slices_per_task == r.ipc and r.classes_per_batch * r.ipc == 100 == classes * group
