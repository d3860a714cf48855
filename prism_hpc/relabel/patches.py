"""RDED's patch shuffle: the relabel-time augmentation of stitched images.

RDED's training/relabel code (LINs-lab/RDED `validation/utils.py` `ShufflePatches`, used in
`validation/main.py` before RandomResizedCrop(scale 1/factor..1) + flip + CutMix) cuts each
visited image into `factor` column strips, puts them in a random order, then does the same with
the row strips; the teacher labels the shuffled, cropped, mixed image, and the student learns
that label on the same view. So a soft label always belongs to the region (patches, in a new
arrangement) the student sees. Here the orders are drawn into the epoch plan
(`EpochPlan.shuffles`, one column order and one row order per visit), so offline relabel,
online relabel and the student's replay apply the same shuffle. Strip boundaries are the
stitching grid's (`data.patches.patch_edges`), so a strip is always whole patches.
"""

from __future__ import annotations

import torch

from prism_hpc.data.patches import patch_edges
from prism_hpc.seeding import generator

SHUFFLE_STREAM = "relabel-shuffle"


def draw_shuffles(run_seed: int, epoch: int, num_images: int, factor: int) -> torch.Tensor:
    """(N, 2, factor) int8: per visit the column order (0) and the row order (1), uniform
    permutations from their own stream, so the plan's other draws are unchanged."""
    g = generator(run_seed, SHUFFLE_STREAM, epoch)
    keys = torch.rand(num_images, 2, factor, generator=g)
    return keys.argsort(dim=-1).to(torch.int8)


def _strip_index(size: int, factor: int, order: torch.Tensor) -> torch.Tensor:
    """(n, size) source positions along one axis: output strip j is input strip order[j]."""
    edges = patch_edges(size, factor)
    out = []
    for row in order.tolist():
        out.append(torch.cat([torch.arange(edges[k], edges[k + 1]) for k in row]))
    return torch.stack(out)


def shuffle_patches(images: torch.Tensor, shuffles: torch.Tensor) -> torch.Tensor:
    """Reorder the column strips, then the row strips, of each image (n, C, H, W) by its
    `shuffles` row (n, 2, factor). Pure indexing: per image and exact."""
    n, c, h, w = images.shape
    factor = shuffles.shape[-1]
    cols = _strip_index(w, factor, shuffles[:, 0]).to(images.device)
    rows = _strip_index(h, factor, shuffles[:, 1]).to(images.device)
    x = images.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
    return x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
