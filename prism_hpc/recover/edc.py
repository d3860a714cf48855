"""EDC (Shao et al., "Elucidating the Design Space of Dataset Condensation", NeurIPS 2024):
its category-aware statistic matching. The rest of its recipe lives where it belongs:
G-VBSM's matching (recover/gvbsm.py) is its base; real-image init from RDED's selected and
stitched crops; its students' smoothing lr schedule and EMA evaluation (docs/baselines.md).

Category-aware matching, as the official `--category-aware global` hooks do
(shaoshitong/EDC, `Branch_full_ImageNet_1k/recover/utils.py`): each layer's term is
0.5 x the G-VBSM term (against the running / precomputed global statistics) + 0.5 x the same
norms against the mean, over the batch's images, of their classes' statistics. A class's
statistic is the mean over its training images of the per-image statistic (recover/
statistics.py), so a batch of one class is pulled to that class, and a cross-class batch to
the average of its classes (a repeated class counts once per image, as in the official code).
"""

from __future__ import annotations

import torch

from prism_hpc.errors import UserError
from prism_hpc.recover.context import SliceContext
from prism_hpc.recover.rded import Observer, rded_class_image


def class_reference(
    stats: dict[str, torch.Tensor], layer: str, stat: str, targets: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch's images of their classes' precomputed `stat` of `layer`."""
    table = stats.get(f"class/{layer}/{stat}")
    if table is None:
        raise UserError(
            f"recover.matching.class_aware: no per-class {stat} for layer {layer!r} in the "
            "statistics (redo the statistics stage with class_aware on)"
        )
    table = table.to(targets.device)
    return table[targets].mean(0)


def rded_init(
    ctx: SliceContext, slice_index: int, classes: list[int]
) -> tuple[torch.Tensor, list[int]]:
    """EDC's real-image init (`recover.init: rded`): for each class, the RDED image of this
    IPC slice (recover/rded.py, the `recover.rded` block, observer = `logit_teacher`),
    quantised to uint8 like the stored RDED set EDC reads its initial images from, then
    normalised. Returns (images, the real image of each class's best patch)."""
    rec = ctx.cfg.recover
    if rec.logit_teacher not in ctx.teachers:
        raise UserError("recover.init rded: the observer (recover.logit_teacher) is not loaded")
    observer = Observer(ctx.teachers[rec.logit_teacher], ctx.cfg.data.resolution, ctx.mean,
                        ctx.std, ctx.device)  # fmt: skip
    images, sources = [], []
    for c in classes:
        image, record = rded_class_image(
            rec.rded, observer, ctx.source, ctx.per_class[c], ctx.cfg.seed, slice_index, c
        )
        images.append((image.cpu().clamp(0, 1) * 255).round() / 255)
        sources.append(record["sources"][0])
    return (torch.stack(images) - ctx.mean) / ctx.std, sources
