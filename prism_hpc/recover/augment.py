"""Differentiable batch augmentation of the recovery loop, drawn from an explicit generator.

Per step: RandomResizedCrop (torchvision's sampling rule) + horizontal flip, for the whole
batch (official) or per sample, then a jitter roll by (randint(0, J), randint(0, J)). The
crop's scale range is fixed, or follows CDA's curriculum over the image's iterations.
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


def crop_scale_at(
    cfg: AugmentConfig, step: int | None, total: int | None
) -> tuple[float, float]:
    """The RandomResizedCrop scale range of iteration `step` (0-based) of `total`.

    `curriculum: none`, or no step given (the init-only loss pass), is `crop_scale` itself.
    Otherwise CDA's easy-to-hard rule (VILA-Lab/SRe2L, CDA/recover_cda_in1k.py): while
    step < milestone * total the lower bound is, with p = step / (milestone * total),
    step: start; linear: lo + (start - lo) * (1 - p); cosine: lo + (start - lo) * (1 + cos(pi p)) / 2;
    afterwards lo. CDA itself has lo = 0.08, start = 1.0 and the upper bound 1.0 throughout.
    """
    lo, hi = cfg.crop_scale
    if cfg.curriculum == "none" or step is None or total is None:
        return lo, hi
    span = cfg.curriculum_milestone * total
    if step >= span:
        return lo, hi
    p = step / span
    start = cfg.curriculum_start
    if cfg.curriculum == "step":
        low = start
    elif cfg.curriculum == "linear":
        low = lo + (start - lo) * (1 - p)
    else:
        low = lo + (start - lo) * (1 + math.cos(math.pi * p)) / 2
    return low, hi


def draw(
    cfg: AugmentConfig,
    size: int,
    batch: int,
    g: torch.Generator,
    step: int | None = None,
    total: int | None = None,
) -> AugmentDraw:
    """One step's parameters; `step`/`total` (the image's iteration budget) feed the CDA
    curriculum and change nothing when it is off, so PRISM's draws stay bit-identical."""
    n = batch if cfg.per_sample else 1
    scale = crop_scale_at(cfg, step, total)
    boxes, flips = [], []
    for _ in range(n):
        boxes.append(crop_box(size, scale, g))
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
