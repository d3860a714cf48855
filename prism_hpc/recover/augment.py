"""Differentiable batch augmentation of the recovery loop, drawn from an explicit generator.

Per step: RandomResizedCrop (torchvision's sampling rule) + horizontal flip, for the whole
batch (official) or per sample, then a jitter roll by (randint(0, J), randint(0, J)).
Parameters are drawn first and applied second, so the same draw can be replayed exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prism_hpc.config.schema import AugmentConfig

RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class AugmentDraw:
    boxes: list[tuple[int, int, int, int]]  # (top, left, height, width): one, or one per sample
    flips: list[bool]
    shift: tuple[int, int]


def _rand(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive, like Python's random.randint)."""
    return int(torch.randint(low, high + 1, (), generator=g))


def crop_box(
    size: int, scale: tuple[float, float], g: torch.Generator
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params for a square image, seeded by `g`."""
    area = size * size
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * _rand(g))
        ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * _rand(g))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= size and 0 < h <= size:
            return _randint(g, 0, size - h), _randint(g, 0, size - w), h, w
    return 0, 0, size, size  # fallback: whole image (ratio of a square is inside RATIO)


def draw(cfg: AugmentConfig, size: int, batch: int, g: torch.Generator) -> AugmentDraw:
    n = batch if cfg.per_sample else 1
    boxes, flips = [], []
    for _ in range(n):
        boxes.append(crop_box(size, cfg.crop_scale, g))
        flips.append(bool(cfg.flip and _rand(g) < 0.5))
    shift = (_randint(g, 0, cfg.jitter), _randint(g, 0, cfg.jitter)) if cfg.jitter else (0, 0)
    return AugmentDraw(boxes, flips, shift)


def _crop_resize(x: torch.Tensor, box, flip: bool, size: int) -> torch.Tensor:
    top, left, h, w = box
    out = x[..., top : top + h, left : left + w]
    if (h, w) != (size, size):
        out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)  # fmt: skip
    return out.flip(-1) if flip else out


def apply(x: torch.Tensor, d: AugmentDraw) -> torch.Tensor:
    size = x.shape[-1]
    if len(d.boxes) == 1:
        out = _crop_resize(x, d.boxes[0], d.flips[0], size)
    else:
        out = torch.cat(
            [
                _crop_resize(x[i : i + 1], b, f, size)
                for i, (b, f) in enumerate(zip(d.boxes, d.flips))
            ]
        )
    if d.shift != (0, 0):
        out = torch.roll(out, shifts=d.shift, dims=(2, 3))
    return out
