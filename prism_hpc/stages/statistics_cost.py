"""The statistics stage's price for `prior: norm_stats` teachers: one forward over the
training set per teacher (stages/costing.py's helpers and assumptions; a module of its own
so that costing.py stays within its size)."""

from __future__ import annotations

import math
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.cost.model import TaskLayout, Work, summarise
from prism_hpc.data.sources import num_classes_of
from prism_hpc.stages.costing import GB, _join, _traffic, data_sizes, pricing, teacher, teacher_key
from prism_hpc.workflow import capacity


def statistics_cost(
    cfg: Config, names: list[str], limit_per_class: int | None, batch_size: int
) -> dict[str, Any]:
    """Per teacher (one task each): an fp32 forward of every image the pass reads (the first
    `limit_per_class` of each class, else the training set), un-augmented, in batches of
    `batch_size`; the hooks' per-channel reductions are memory-bound and not counted."""
    train, _, size_note = data_sizes(cfg)
    if limit_per_class:
        train = min(train, limit_per_class * num_classes_of(cfg.data))
    res = cfg.resources.for_stage("statistics")
    price, res, note = pricing(cfg, "statistics", "infer", "fp32", capacity().threads(res))
    steps = math.ceil(train / batch_size)
    tasks, peaks = [], []
    for name in names:
        c = teacher(cfg, name)
        work = Work(train * c.fwd_flops, _traffic(c, train, "infer", False), steps,
                    teacher_key(cfg, name))  # fmt: skip
        tasks.append(price.seconds(work) + price.device.task_overhead_s)
        peaks.append((c.params * 4 + 3 * batch_size * c.max_out_bytes) / GB)
    peak = max(peaks, default=0.0) + price.device.context_gb
    storage = 0.0  # a few kB per layer
    return summarise("statistics", tasks, price,
                     TaskLayout(max(1, res.gpus_per_node or 0),
                                capacity().slots(res, len(tasks)), res.time_min),
                     storage, peak, _join(note, size_note, f"{train} images per teacher"))  # fmt: skip
