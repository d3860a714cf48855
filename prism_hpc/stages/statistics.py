"""Statistics: G-VBSM / EDC's training-set statistics, computed once per run, one item per
teacher, before recovery (`RUN/statistics/<teacher>.pt`, tensors only).

Zero items unless `recover.matching` asks for conv-input or per-class statistics, so PRISM's
pipeline (and every run without matching) is unchanged: recover then depends, through this
stage, on squeeze alone (`hpc.pending.upstream_markers` looks through empty stages).
"""

from __future__ import annotations

from pathlib import Path

from prism_hpc.config.schema import Config, OptimizeRecover
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.workflow import Item, TaskEnv


def statistics_path(run_dir: Path, teacher: str) -> Path:
    return Path(run_dir) / "statistics" / f"{teacher}.pt"


def statistics_teachers(cfg: Config) -> list[str]:
    """The teachers that need precomputed statistics ([] when matching needs none)."""
    rec = cfg.recover
    if not isinstance(rec, OptimizeRecover) or not rec.matching.needs_statistics:
        return []
    return rec.matching_backbones()


def load_statistics(cfg: Config, run_dir: Path, device) -> dict:
    """{teacher: {key: tensor}} for recovery; a missing file names the stage to run."""
    import torch

    from prism_hpc.errors import TaskFailed

    out = {}
    for name in statistics_teachers(cfg):
        path = statistics_path(run_dir, name)
        if not path.is_file():
            raise TaskFailed(f"{path}: missing (run the statistics stage before recover)")
        out[name] = torch.load(path, map_location=device, weights_only=True)
    return out


class StatisticsStage(SealedStage):
    name = "statistics"
    depends_on = ("squeeze",)

    def items(self, cfg: Config) -> list[Item]:
        return [
            Item(self.name, i, f"statistics_{name}", {"teacher": name})
            for i, name in enumerate(statistics_teachers(cfg))
        ]

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return statistics_path(run_dir, item.payload["teacher"]).with_suffix(".done")

    def estimate(self, cfg: Config) -> dict:
        teachers = statistics_teachers(cfg)
        if not teachers:
            return {"storage_gb": 0.0, "note": "no statistics needed (recover.matching off)",
                    "gpu_hours": 0.0, "cpu_hours": 0.0, "wall_hours": 0.0}  # fmt: skip
        limit = cfg.recover.matching.stats_limit_per_class or cfg.data.train_limit_per_class
        per = f"first {limit} per class" if limit else "every training image"
        return {"note": f"{len(teachers)} teacher(s): one forward over {per}"}

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        import time

        import torch  # tasks only: plan and status stay light

        from prism_hpc.data.sources import num_classes_of, open_source, source_stats
        from prism_hpc.models.teachers import load_teacher
        from prism_hpc.recover.statistics import (
            compute_statistics,
            statistic_indices,
            training_batches,
        )
        from prism_hpc.store.atomic import atomic_path, write_marker

        rec, m = cfg.recover, cfg.recover.matching
        name = item.payload["teacher"]
        if env.device.type == "cpu":
            torch.set_num_threads(rec.cpu_threads)  # fixed, as recovery: same sums anywhere
        start = time.time()
        source = open_source(cfg.data, "train", env.run_dir)
        num_classes = num_classes_of(cfg.data, env.run_dir)
        limit = m.stats_limit_per_class or cfg.data.train_limit_per_class
        indices = statistic_indices(source.labels, limit)
        mean, std = source_stats(cfg.data)
        model = load_teacher(cfg, name, env.run_dir, env.device)
        stats = compute_statistics(
            model, training_batches(source, indices, m.stats_batch_size, mean, std, env.device),
            num_classes, conv=m.conv, patch=m.patch, per_class=m.class_aware,
        )  # fmt: skip
        path = statistics_path(env.run_dir, name)
        with atomic_path(path) as tmp:
            torch.save(stats, tmp)
        info = {
            "teacher": name, "images": len(indices), "keys": len(stats),
            "batch_size": m.stats_batch_size, "limit_per_class": limit,
            "conv": m.conv, "patch": m.patch, "class_aware": m.class_aware,
            "seconds": round(time.time() - start, 2),
        }  # fmt: skip
        env.log(f"statistics {name}: {len(indices)} images, {len(stats)} tensors "
                f"in {info['seconds']} s")  # fmt: skip
        write_marker(self.marker_path(env.run_dir, item), info, env.run_dir,
                     outputs=[path], inputs=env.inputs)  # fmt: skip
