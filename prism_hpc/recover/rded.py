"""RDED synthesis: real crops scored by an observer model and stitched, no optimisation.

RDED (Sun, Shi, Yu & Lin, CVPR 2024; code LINs-lab/RDED, `synthesize/`) makes a distilled
image of class c like this: take random real images of c, cut `crops` random square crops
(RandomResizedCrop, area scale 0.08-1, aspect ratio 1, output side res // factor) from each,
score every crop by the observer's cross-entropy of the true class on the crop zero-padded to
the full resolution (realism: low CE = confident), keep each image's best crop, rank the kept
crops across images and stitch the `factor x factor` best into one image (row-major, the best
top-left; with res % factor != 0 the first rows/columns are one pixel larger, nearest resize).

Fitted to the slice rails: RDED ranks one pool per class for all IPC positions at once; here
every IPC slice is its own item, so slice i of class c draws its candidates from a block of a
per-class permutation seeded by (run seed, class) only: block i = positions
[i * candidates, (i + 1) * candidates). Blocks of different slices are disjoint (no two slices
reuse a real image, as no two RDED images share a source), every slice can be computed alone,
in any order, on any rank, and again after a restart with the same result. Crops are drawn from
a generator keyed by (run seed, slice, class), so a class's image does not depend on which
other classes share its chunk (any `classes_per_batch`, any world size).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prism_hpc.config.schema import RdedConfig
from prism_hpc.data.patches import patch_edges
from prism_hpc.errors import UserError
from prism_hpc.recover.context import SliceContext
from prism_hpc.seeding import generator

# ------------------------------------------------------------------------------- candidates


def candidate_block(
    class_positions: np.ndarray, run_seed: int, cls: int, slice_index: int, candidates: int
) -> np.ndarray:
    """Dataset positions of the real images slice `slice_index` of class `cls` may use.

    One permutation per (run seed, class), cut into disjoint blocks of `candidates`: slice i
    gets block i, so slices never share an image and each can be computed on its own.
    """
    n = len(class_positions)
    stop = (slice_index + 1) * candidates
    if stop > n:
        raise UserError(
            f"recover.rded: IPC slice {slice_index} of class {cls} needs images "
            f"{slice_index * candidates}..{stop - 1} of a permutation of its {n} images; "
            f"lower recover.rded.candidates (now {candidates}) or recover.ipc"
        )
    perm = torch.randperm(n, generator=generator(run_seed, "rded-candidates", cls))
    return np.asarray(class_positions)[perm[slice_index * candidates : stop].numpy()]


# ------------------------------------------------------------------------------- crops


def square_crop_boxes(
    count: int, crops: int, size: int, scale: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """(count, crops, 3) int64 boxes (top, left, side) of square crops of a size x size image.

    torchvision's RandomResizedCrop.get_params with ratio (1, 1): area = size^2 * U(scale),
    side = round(sqrt(area)), top/left uniform over the positions where it fits. On a square
    image the first of its ten tries always fits (side <= size), so one draw per crop.
    """
    u = torch.rand(count, crops, 3, generator=g, dtype=torch.float64)
    lo, hi = scale
    side = torch.round(torch.sqrt(size * size * (lo + (hi - lo) * u[..., 0]))).long()
    side = side.clamp_(1, size)
    room = (size - side + 1).double()
    top = torch.floor(u[..., 1] * room).long().minimum(size - side)
    left = torch.floor(u[..., 2] * room).long().minimum(size - side)
    return torch.stack([top, left, side], -1)


def cut_patches(images: torch.Tensor, boxes: torch.Tensor, patch: int) -> torch.Tensor:
    """Crop box (top, left, side) of each image and resize it to patch x patch.

    `images` (n, C, H, W) float, `boxes` (n, k, 3); returns (n, k, C, patch, patch). Bilinear
    with antialias (torchvision's tensor RandomResizedCrop with antialias=True).
    """
    n, k = boxes.shape[:2]
    out = images.new_empty(n, k, images.shape[1], patch, patch)
    for i in range(n):
        for j in range(k):
            t, left, s = (int(v) for v in boxes[i, j])
            region = images[i : i + 1, :, t : t + s, left : left + s]
            out[i, j] = F.interpolate(
                region, size=(patch, patch), mode="bilinear", antialias=True, align_corners=False
            )[0]
    return out


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad (N, C, h, w) centred to size x size (RDED scores a patch inside a blank frame;
    zero of normalised pixels is the data mean)."""
    dh, dw = size - x.shape[-2], size - x.shape[-1]
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


# ------------------------------------------------------------------------------- scoring


@torch.no_grad()
def crop_scores(
    observer: nn.Module, patches: torch.Tensor, label: int, size: int, mean, std, batch: int
) -> torch.Tensor:
    """Cross-entropy of `label` for each patch (n, k, C, p, p) in [0, 1], normalised and
    zero-padded to `size`: RDED's realism score (lower = more realistic). Returns (n, k)."""
    n, k = patches.shape[:2]
    flat = (patches.reshape(n * k, *patches.shape[2:]) - mean) / std
    flat = pad_to(flat, size)
    logits = torch.cat([observer(flat[a : a + batch]).float() for a in range(0, len(flat), batch)])
    ce = -torch.log_softmax(logits, dim=1)[:, label]
    return ce.view(n, k)


def select_patches(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RDED's two-step selection on (n images, k crops) scores (lower is better).

    Per image the crop with the lowest score (first on ties), then the `keep` images whose best
    crop scores lowest (stable: ties keep image order). Returns (image rows, their crop
    columns), best first.
    """
    best_crop = scores.argmin(1)
    best = scores.gather(1, best_crop[:, None])[:, 0]
    rows = torch.sort(best, stable=True).indices[:keep]
    return rows, best_crop[rows]


# ------------------------------------------------------------------------------- stitching


def stitch(patches: torch.Tensor, size: int, factor: int) -> torch.Tensor:
    """(factor**2, C, p, p) patches, best first -> one (C, size, size) image.

    Patch k goes to grid cell (k // factor, k % factor), resized (nearest, RDED's
    F.interpolate default) to the cell; the identity when size is a multiple of factor.
    """
    edges = patch_edges(size, factor)
    out = patches.new_zeros(patches.shape[1], size, size)
    for k in range(factor * factor):
        i, j = divmod(k, factor)
        h, w = edges[i + 1] - edges[i], edges[j + 1] - edges[j]
        cell = patches[k : k + 1]
        if cell.shape[-2:] != (h, w):
            cell = F.interpolate(cell, size=(h, w), mode="nearest")
        out[:, edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = cell[0]
    return out


# ------------------------------------------------------------------------------- a chunk


@dataclass(frozen=True)
class Observer:
    """The model that scores crops, and how its input is made: side `size` px, normalised
    with `mean` / `std` ((1, C, 1, 1)), on `device`."""

    model: nn.Module
    size: int
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device


def rded_class_image(
    rd: RdedConfig,
    observer: Observer,
    source,
    class_positions: np.ndarray,
    run_seed: int,
    slice_index: int,
    cls: int,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """One distilled image of class `cls` for IPC slice `slice_index`: pixels in [0, 1]
    (C, size, size) and its provenance (source positions, crop boxes, scores, best first)."""
    size, device = observer.size, observer.device
    cand = candidate_block(class_positions, run_seed, cls, slice_index, rd.candidates)
    images = source.load(cand).to(device)
    if images.shape[-1] != size or images.shape[-2] != size:
        raise UserError(f"recover.rded: images must be {size}x{size}, got {tuple(images.shape)}")
    g = generator(run_seed, "rded-crops", slice_index, cls)
    boxes = square_crop_boxes(len(cand), rd.crops, size, tuple(rd.crop_scale), g)
    patch = size // rd.factor
    patches = cut_patches(images, boxes, patch)
    scores = crop_scores(
        observer.model, patches, cls, size, observer.mean.to(device), observer.std.to(device),
        rd.score_batch,
    )  # fmt: skip
    rows, cols = select_patches(scores, rd.factor**2)
    image = stitch(patches[rows, cols], size, rd.factor)
    picked = list(zip(rows.tolist(), cols.tolist(), strict=True))
    record = {
        "sources": [int(cand[r]) for r, _ in picked],
        "boxes": [boxes[r, c].tolist() for r, c in picked],
        "scores": [round(float(scores[r, c]), 6) for r, c in picked],
    }
    return image, record


def rded_chunk(
    ctx: SliceContext, slice_index: int, chunk: int, classes: list[int]
) -> dict[str, Any]:
    """A finished chunk in the record format of the optimising schedules (uint8 images,
    classes, provenance), made by RDED instead of optimisation."""
    rec = ctx.cfg.recover
    rd = rec.rded
    observer = Observer(ctx.teachers[rec.logit_teacher], ctx.cfg.data.resolution, ctx.mean,
                        ctx.std, ctx.device)  # fmt: skip
    start = time.time()
    pixels, picks = [], []
    for c in classes:
        image, record = rded_class_image(
            rd, observer, ctx.source, ctx.per_class[c], ctx.cfg.seed, slice_index, c
        )
        pixels.append(image)
        picks.append({"class": c, **record})
    quantised = (torch.stack(pixels).cpu().clamp_(0, 1) * 255).round_().to(torch.uint8)
    targets = torch.tensor(classes, device=ctx.device)
    with torch.no_grad():
        logits = observer.model(ctx.normalise(quantised)).float()
        ce = float(F.cross_entropy(logits, targets))
        top1 = (logits.argmax(1) == targets).float().mean().item()
    mean_score = float(np.mean([p["scores"][0] for p in picks]))
    if not math.isfinite(ce):
        raise RuntimeError(f"recover.rded: observer CE is {ce} on slice {slice_index}")
    return {
        "chunk": chunk,
        "classes": classes,
        "images": quantised.numpy(),
        # the real image of each class's best (top-left) patch: the diversity reference
        "init_indices": [p["sources"][0] for p in picks],
        "roles": [{"logit_teacher": rec.logit_teacher, "bn_teachers": []}],
        "roles_changes": 1,
        "synthesis": "rded",
        "rded": {
            "factor": rd.factor,
            "candidates": rd.candidates,
            "crops": rd.crops,
            "crop_scale": list(rd.crop_scale),
            "block": [slice_index * rd.candidates, (slice_index + 1) * rd.candidates],
            "picks": picks,
        },
        "final_ce": ce,
        "final_bn": 0.0,
        "first_bn": 0.0,
        "best_patch_ce": round(mean_score, 6),
        "history": [],
        "logit_top1": top1,
        "seconds": round(time.time() - start, 3),
        "rank": ctx.rank,
    }
