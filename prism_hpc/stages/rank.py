"""Rank: DELT's teacher-ranked initialisation order, computed once per run (one item).

No item unless `recover.init_order` is not `file`. The item runs the ranker over the whole
training set once (fixed order and batch size, `recover/ranking.py`), writes
`RUN/rank/order.npz` atomically and a sealed marker vouching for it; recover depends on this
stage, so every slice task reads the same order and a redone ranking makes the slices stale.
"""

from __future__ import annotations

import os
from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.store.atomic import write_marker
from prism_hpc.workflow import Item, TaskEnv


def order_path(run_dir: Path) -> Path:
    return layout.rank_order(run_dir)


class RankStage(SealedStage):
    name = "rank"
    depends_on = ("squeeze",)

    def items(self, cfg: Config) -> list[Item]:
        rec = cfg.recover
        ranker = rec.ranker_name()
        if ranker is None:  # init_order file (or a method without initial images)
            return []
        payload = {"ranker": ranker, "criterion": rec.init_order}
        return [Item(self.name, 0, "order", payload)]

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return layout.rank_marker(run_dir)

    def estimate(self, cfg: Config) -> dict:
        if not self.items(cfg):
            return {"note": "init_order file: nothing to rank", "gpu_hours": 0.0,
                    "cpu_hours": 0.0, "wall_hours": 0.0}  # fmt: skip
        from prism_hpc.stages.costing import safely

        return {"note": f"one forward of {cfg.recover.ranker_name()} over the training set",
                **safely(_rank_cost, cfg)}  # fmt: skip

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        import torch  # the science only inside the task: plan and status stay light

        from prism_hpc.data.index import class_index
        from prism_hpc.data.sources import num_classes_of, open_source, source_stats
        from prism_hpc.models.teachers import load_teacher
        from prism_hpc.recover.ranking import ranked_index, save_order, true_class_scores

        rec = cfg.recover
        if env.device.type == "cpu":
            torch.set_num_threads(rec.cpu_threads)
        else:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        source = open_source(cfg.data, "train", env.run_dir)
        num_classes = num_classes_of(cfg.data, env.run_dir)
        name = item.payload["ranker"]
        model = load_teacher(cfg, name, env.run_dir, env.device)
        workers = 0 if cfg.data.source == "fashion_mnist" else _workers()
        scores = true_class_scores(
            model, source, source_stats(cfg.data), env.device, workers=workers, log=env.log
        )
        per_class = class_index(source.labels, num_classes)
        order = ranked_index(per_class, scores, item.payload["criterion"])
        info = {**item.payload, "images": len(scores), "classes": num_classes}
        out = order_path(env.run_dir)
        save_order(out, order, scores, info)
        env.log(f"rank: {len(scores)} images scored by {name}, order {info['criterion']}")
        write_marker(self.marker_path(env.run_dir, item), info, env.run_dir, outputs=[out],
                     inputs=env.inputs)  # fmt: skip


def _workers() -> int:
    """DataLoader workers decoding ImageFolder batches (the scores do not depend on them)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores - 1))


def _rank_cost(cfg: Config) -> dict:
    """One forward of the ranker per training image (priced like the report's features)."""
    from prism_hpc.cost.model import TaskLayout, Work, summarise
    from prism_hpc.stages.costing import _traffic, data_sizes, pricing, teacher, teacher_key

    name = cfg.recover.ranker_name()
    price, res, note = pricing(cfg, "rank", "infer", "fp32")
    c = teacher(cfg, name)
    img, _, size_note = data_sizes(cfg)
    t = price.seconds(Work(img * c.fwd_flops, _traffic(c, img, "infer", False),
                           arch=teacher_key(cfg, name)))  # fmt: skip
    t += price.device.task_overhead_s
    peak = (c.params * 4 + 256 * 3 * c.max_out_bytes) / 1e9 + price.device.context_gb
    notes = "; ".join(n for n in (note, size_note) if n)
    return summarise("rank", [t], price,
                     TaskLayout(max(1, res.gpus_per_node or 0), 1, res.time_min), 0.0,
                     peak, notes)  # fmt: skip
