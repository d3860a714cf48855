"""Seeded batch augmentation: torchvision's sampling rule and ops, determinism, exact replay."""

from __future__ import annotations

import math

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
    for i, (box, flip) in enumerate(zip(d.boxes, d.flips)):
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
