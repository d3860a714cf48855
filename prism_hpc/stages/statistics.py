"""Statistics: training-set statistics, computed once per run, one item per teacher, before
recovery (`RUN/statistics/<teacher>.pt`, tensors only): G-VBSM / EDC's layer statistics, or
the LayerNorm/GroupNorm input statistics of `prior: norm_stats` teachers (recover/norm_prior.py).

Zero items unless `recover.matching` asks for conv-input or per-class statistics or a BN-set
teacher's prior is `norm_stats`, so PRISM's pipeline (and every run with BN teachers only) is
unchanged: recover then depends, through this stage, on squeeze alone
(`hpc.pending.upstream_markers` looks through empty stages).
"""

from __future__ import annotations

from pathlib import Path

from prism_hpc.config.schema import Config, OptimizeRecover
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.workflow import Item, TaskEnv


def statistics_path(run_dir: Path, teacher: str) -> Path:
    return layout.statistics_file(run_dir, teacher)


def statistic_priors(cfg: Config) -> dict[str, str]:
    """The resolved `prior` of every teacher that can be in a BN set ({} for RDED and for
    G-VBSM / EDC matching, which matches its own layers)."""
    rec = cfg.recover
    if not isinstance(rec, OptimizeRecover) or rec.matching.enabled:
        return {}
    return {n: cfg.teachers[n].resolved_prior() for n in rec.statistic_candidates()}


def norm_prior_teachers(cfg: Config) -> list[str]:
    """The BN-set teachers matched on LayerNorm/GroupNorm statistics (`prior: norm_stats`)."""
    return [n for n, prior in statistic_priors(cfg).items() if prior == "norm_stats"]


def statistics_teachers(cfg: Config) -> list[str]:
    """The teachers that need precomputed statistics ([] when neither matching nor a
    norm_stats prior needs any)."""
    rec = cfg.recover
    if isinstance(rec, OptimizeRecover) and rec.matching.needs_statistics:
        return rec.matching_backbones()
    return norm_prior_teachers(cfg)


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
        norm = set(norm_prior_teachers(cfg))
        return [
            Item(self.name, i, f"statistics_{name}",
                 {"teacher": name, "kind": "norm"} if name in norm else {"teacher": name})
            for i, name in enumerate(statistics_teachers(cfg))
        ]  # fmt: skip

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return layout.statistics_marker(run_dir, item.payload["teacher"])

    def estimate(self, cfg: Config) -> dict:
        teachers = statistics_teachers(cfg)
        if not teachers:
            return {"storage_gb": 0.0, "note": "no statistics needed (recover.matching off)",
                    "gpu_hours": 0.0, "cpu_hours": 0.0, "wall_hours": 0.0}  # fmt: skip
        norm = norm_prior_teachers(cfg)
        keys = cfg.recover.norm_stats if norm else cfg.recover.matching
        limit = (keys.limit_per_class if norm else keys.stats_limit_per_class) or (
            cfg.data.train_limit_per_class
        )  # fmt: skip
        per = f"first {limit} per class" if limit else "every training image"
        note = f"{len(teachers)} teacher(s): one forward over {per}"
        if not norm:  # G-VBSM / EDC: not priced (their per-class hooks are not counted)
            return {"note": note}
        from prism_hpc.stages.costing import safely
        from prism_hpc.stages.statistics_cost import statistics_cost

        cost = safely(statistics_cost, cfg, norm, limit, keys.batch_size)
        return {"note": f"{note} (LayerNorm/GroupNorm input statistics)", **cost}

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
        norm = item.payload.get("kind") == "norm"
        if env.device.type == "cpu":
            torch.set_num_threads(rec.cpu_threads)  # fixed, as recovery: same sums anywhere
        start = time.time()
        source = open_source(cfg.data, "train", env.run_dir)
        num_classes = num_classes_of(cfg.data, env.run_dir)
        limit = (rec.norm_stats.limit_per_class if norm else m.stats_limit_per_class) or (
            cfg.data.train_limit_per_class
        )  # fmt: skip
        batch = rec.norm_stats.batch_size if norm else m.stats_batch_size
        indices = statistic_indices(source.labels, limit)
        mean, std = source_stats(cfg.data)
        model = load_teacher(cfg, name, env.run_dir, env.device)
        batches = training_batches(source, indices, batch, mean, std, env.device)
        if norm:
            from prism_hpc.recover.norm_prior import compute_norm_statistics

            stats = compute_norm_statistics(model, batches)
        else:
            stats = compute_statistics(model, batches, num_classes, conv=m.conv, patch=m.patch,
                                       per_class=m.class_aware)  # fmt: skip
        path = statistics_path(env.run_dir, name)
        with atomic_path(path) as tmp:
            torch.save(stats, tmp)
        info = {
            "teacher": name, "images": len(indices), "keys": len(stats),
            "batch_size": batch, "limit_per_class": limit,
            **({"prior": "norm_stats"} if norm else
               {"conv": m.conv, "patch": m.patch, "class_aware": m.class_aware}),
            "seconds": round(time.time() - start, 2),
        }  # fmt: skip
        env.log(f"statistics {name}: {len(indices)} images, {len(stats)} tensors "
                f"in {info['seconds']} s")  # fmt: skip
        write_marker(self.marker_path(env.run_dir, item), info, env.run_dir,
                     outputs=[path], inputs=env.inputs)  # fmt: skip
