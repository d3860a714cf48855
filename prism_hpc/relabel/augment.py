"""FKD-style augmentation plans: everything random about one training epoch, drawn up front.

An `EpochPlan` fixes, for one epoch, the visiting order of the distilled images, each visit's
RandomResizedCrop box and flip flag, and per batch one CutMix box or Mixup weight plus a
partner permutation. Plans come from a generator keyed by (run seed, "relabel-plan", epoch),
so relabel (offline), online relabel and hard-label training all see the same batches, and a
plan stored in HDF5 can be replayed exactly by `build_batch`.

Batches are `students.batch_size` long (the last one may be shorter): the mix and the
ensemble's per-batch norm rescaling refer to the optimizer-step batch, so relabel and training
cannot disagree about batch boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prism_hpc.relabel.patches import draw_shuffles, shuffle_patches
from prism_hpc.seeding import generator
from prism_hpc.store.softlabels import EpochPlan

PLAN_STREAM = "relabel-plan"
MIX_CODES = {"none": 0, "cutmix": 1, "mixup": 2}


def _crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """torchvision RandomResizedCrop.get_params, vectorised: 10 tries, then a centre crop."""
    tries = 10
    area = height * width
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    f64 = torch.float64
    target = area * (
        scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=g, dtype=f64)
    )
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=g, dtype=f64))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    u_top = torch.rand(n, tries, generator=g, dtype=f64)
    u_left = torch.rand(n, tries, generator=g, dtype=f64)
    first = ok.to(torch.uint8).argmax(1, keepdim=True)  # first successful try
    hh, ww = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    top = (u_top.gather(1, first).squeeze(1) * (height - hh + 1)).floor().long()
    left = (u_left.gather(1, first).squeeze(1) * (width - ww + 1)).floor().long()
    boxes = torch.stack([top.minimum(height - hh), left.minimum(width - ww), hh, ww], 1)
    # no try fits: torchvision's fallback, the largest centred crop with ratio in [3/4, 4/3]
    ratio = width / height
    if ratio < 3 / 4:
        fw, fh = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        fh, fw = height, round(height * (4 / 3))
    else:
        fh, fw = height, width
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    boxes = torch.where(ok.any(1, keepdim=True), boxes, fallback)
    return boxes.to(torch.int32)


def _cutmix_box(lam: float, height: int, width: int, g: torch.Generator) -> tuple[int, ...]:
    """The usual CutMix box: side sqrt(1 - lam) of the image, centre uniform, clipped."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (1,), generator=g))
    cx = int(torch.randint(width, (1,), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, height)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, width)
    return y0, y1, x0, x1


@dataclass(frozen=True)
class PlanAugment:
    """What a plan draws for each visit and batch (the `relabel.*` settings): the crop scale
    range, flips, the batch mix and its Beta(a, a) parameter, RDED's patch shuffle."""

    crop_scale: tuple[float, float] = (0.25, 1.0)
    flip: bool = True
    mix: str = "cutmix"
    mix_alpha: float = 1.0
    shuffle_patches: int = 1


def make_epoch_plan(
    run_seed: int,
    epoch: int,
    num_images: int,
    height: int,
    width: int,
    batch_size: int,
    aug: PlanAugment | None = None,
) -> EpochPlan:
    """Draw the plan of `epoch` (pure function of its arguments)."""
    aug = aug if aug is not None else PlanAugment()
    crop_scale, flip, mix, mix_alpha = aug.crop_scale, aug.flip, aug.mix, aug.mix_alpha
    shuffle_patches = aug.shuffle_patches
    if mix not in MIX_CODES:
        raise ValueError(f"mix must be one of {sorted(MIX_CODES)}, got {mix!r}")
    g = generator(run_seed, PLAN_STREAM, epoch)
    n = num_images
    order = torch.randperm(n, generator=g)
    crops = _crop_boxes(n, height, width, crop_scale, g)
    flips = (torch.rand(n, generator=g) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    num_batches = math.ceil(n / batch_size)
    perm = torch.empty(n, dtype=torch.int64)
    lam = torch.ones(num_batches, dtype=torch.float32)
    boxes = torch.zeros(num_batches, 4, dtype=torch.int32)
    for b in range(num_batches):
        start, stop = b * batch_size, min((b + 1) * batch_size, n)
        perm[start:stop] = torch.randperm(stop - start, generator=g)
        if mix == "none":
            continue
        # Beta(a, a) drawn with our generator (torch.distributions cannot take one)
        u = _beta_sample(mix_alpha, g) if mix_alpha != 1.0 else float(torch.rand(1, generator=g))
        if mix == "mixup":
            lam[b] = u
        else:
            y0, y1, x0, x1 = _cutmix_box(u, height, width, g)
            boxes[b] = torch.tensor([y0, y1, x0, x1], dtype=torch.int32)
            lam[b] = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    # RDED's patch shuffle from a stream of its own: with it off the plan is draw for draw
    # the same as without the option
    shuffles = draw_shuffles(run_seed, epoch, n, shuffle_patches) if shuffle_patches > 1 else None
    return EpochPlan(epoch, batch_size, mix, order, crops, flips, perm, lam, boxes, shuffles)


def _beta_sample(alpha: float, g: torch.Generator) -> float:
    """Beta(alpha, alpha) = X / (X + Y), X, Y ~ Gamma(alpha); Marsaglia-Tsang with `g`."""

    def gamma(a: float) -> float:
        boost = 1.0
        if a < 1:
            boost = float(torch.rand(1, generator=g, dtype=torch.float64)) ** (1 / a)
            a += 1
        d = a - 1 / 3
        c = 1 / math.sqrt(9 * d)
        while True:
            x = float(torch.randn(1, generator=g, dtype=torch.float64))
            v = (1 + c * x) ** 3
            if v <= 0:
                continue
            u = float(torch.rand(1, generator=g, dtype=torch.float64))
            if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
                return d * v * boost

    x, y = gamma(alpha), gamma(alpha)
    return x / (x + y) if x + y > 0 else 0.5


def crop_flip(
    images: torch.Tensor, crops: torch.Tensor, flips: torch.Tensor, size: int
) -> torch.Tensor:
    """Resized crops (bilinear, no antialias) + horizontal flips in one batched grid_sample.

    `images` float (n, C, H, W); `crops` (n, 4) top, left, height, width in pixels.
    """
    n, _, height, width = images.shape
    c = crops.to(images.device, torch.float32)
    top, left, h, w = c.unbind(1)
    # align_corners=False: pixel edges 0..W map to -1..1
    sx = w / width
    sy = h / height
    tx = (2 * left + w) / width - 1
    ty = (2 * top + h) / height - 1
    sign = 1.0 - 2.0 * flips.to(images.device, torch.float32)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = sx * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, [n, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def apply_mix(x: torch.Tensor, plan: EpochPlan, b: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mix batch `b` (already cropped, same rows as `plan.batch_slice(b)`).

    Returns (mixed images, partner positions within the batch, lam of the original image).
    """
    sl = plan.batch_slice(b)
    perm = plan.perm[sl].to(x.device)
    lam = float(plan.lam[b])
    if plan.mix == "none":
        return x, perm, 1.0
    if plan.mix == "mixup":
        return lam * x + (1.0 - lam) * x[perm], perm, lam
    y0, y1, x0, x1 = (int(v) for v in plan.boxes[b])
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    return out, perm, lam


def build_batch(
    images: torch.Tensor,
    plan: EpochPlan,
    b: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Batch `b` of `plan` from its source rows: crop + flip + normalise + mix.

    `images`: uint8 pixels [0, 255] or float [0, 1], (n, C, H, W), the rows
    `plan.order[plan.batch_slice(b)]` in that order. Returns (x, partner positions, lam).
    """
    sl = plan.batch_slice(b)
    x = images.float()
    if not images.is_floating_point():
        x = x / 255.0
    size = size or images.shape[-1]
    if plan.shuffles is not None:  # RDED: strips reordered before the crop
        x = shuffle_patches(x, plan.shuffles[sl])
    x = crop_flip(x, plan.crops[sl], plan.flips[sl], size)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = (x - mean) / std
    return apply_mix(x, plan, b)


def plan_from_config(cfg, epoch: int, num_images: int, height: int, width: int) -> EpochPlan:
    """The plan of `epoch` for a run: keyed by the run seed only (shared by all students)."""
    rel = cfg.relabel
    aug = PlanAugment(tuple(rel.crop_scale), rel.flip, rel.mix, rel.mix_alpha,
                      rel.shuffle_patches)  # fmt: skip
    return make_epoch_plan(cfg.seed, epoch, num_images, height, width, cfg.students.batch_size,
                           aug)  # fmt: skip
