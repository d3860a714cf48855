"""Recover: an array over IPC slices; each task loads its teachers once and writes shards."""

from __future__ import annotations

import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.data.index import slice_classes
from prism_hpc.data.sources import class_counts, num_classes_of
from prism_hpc.errors import UserError
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.store.integrity import check_marker
from prism_hpc.store.shards import marker_for, write_shard
from prism_hpc.workflow import Item, TaskEnv


def slice_path(run_dir: Path, slice_index: int) -> Path:
    return layout.recover_shard(run_dir, slice_index)


def partial_dir(run_dir: Path) -> Path:
    """Finished chunks of slices in progress (removed once the slice's shard is written)."""
    return layout.recover_partial_dir(run_dir)


def slice_indices(cfg: Config) -> list[int]:
    """IPC indices to recover; `ipc: all` runs to the largest class (class counts from the
    data: the run's index inside a task)."""
    rec = cfg.recover
    if rec.ipc == "all":
        return list(range(rec.ipc_start, max(class_counts(cfg.data))))
    return list(range(rec.ipc_start, rec.ipc_start + rec.ipc))


def slice_rows(cfg: Config) -> dict[int, list[int] | None]:
    """Per slice, its classes (`ipc: all`) or None (every class)."""
    if cfg.recover.ipc != "all":
        return dict.fromkeys(slice_indices(cfg))
    counts = class_counts(cfg.data)
    return {s: slice_classes(counts, s) for s in slice_indices(cfg)}


def distilled_size(cfg: Config) -> int:
    """Images in the distilled set."""
    if cfg.recover.ipc != "all":
        return cfg.recover.ipc * num_classes_of(cfg.data)
    return sum(len(c) for c in slice_rows(cfg).values())


class RecoverStage(SealedStage):
    name = "recover"
    # rank: DELT's init order; statistics: G-VBSM/EDC (each: no item unless asked for)
    depends_on = ("squeeze", "rank", "statistics")
    distributed = True

    def items(self, cfg: Config) -> list[Item]:
        slices = slice_indices(cfg)
        per = cfg.recover.slices_per_task
        items = []
        for i, start in enumerate(range(0, len(slices), per)):
            group = slices[start : start + per]
            key = f"slice_{group[0]:05d}" if len(group) == 1 else (
                f"slices_{group[0]:05d}-{group[-1]:05d}"
            )  # fmt: skip
            items.append(Item(self.name, i, key, {"slices": group}))
        return items

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return marker_for(slice_path(run_dir, item.payload["slices"][-1]))

    def markers(self, run_dir: Path, item: Item) -> list[Path]:
        return [marker_for(slice_path(run_dir, s)) for s in item.payload["slices"]]

    def restart_state(self, run_dir: Path, item: Item) -> list[Path]:
        return [layout.slice_partial_dir(run_dir, s) for s in item.payload["slices"]]

    def estimate(self, cfg: Config) -> dict:
        rec = cfg.recover
        n = num_classes_of(cfg.data)
        rows = {s: n if cls is None else len(cls) for s, cls in slice_rows(cfg).items()}
        iters = sum(rec.iterations_for(i) for i in rows)
        images = sum(rows.values())
        c, r = cfg.data.channels, cfg.data.resolution
        sizes = f"{n} classes" if len(set(rows.values())) <= 1 else (
            f"{max(rows.values())}..{min(rows.values())} classes"
        )  # fmt: skip
        from prism_hpc.stages.costing import recover_cost, safely

        storage = round(images * c * r * r / 1e9, 3)
        note = f"{len(rows)} slice(s) x {sizes} = {images} images, {iters} iterations in all"
        if rec.synthesis == "rded":  # RDED scores crops, it does not iterate
            note = (f"{len(rows)} slice(s) x {sizes} = {images} images, RDED: "
                    f"{rec.rded.candidates} x {rec.rded.crops} crops scored per image")  # fmt: skip
        return {
            "image_iterations": sum(rec.iterations_for(s) * k for s, k in rows.items()),
            "slices": len(rows),
            "images": images,
            "storage_gb": storage,
            "note": note,
            **safely(recover_cost, cfg, rows, storage),
        }

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        import torch  # the science is imported by tasks only: planning and status stay light
        import torch.distributed as dist

        from prism_hpc.recover.driver import recover_item
        from prism_hpc.recover.methods import schedule_for
        from prism_hpc.stages.tuning import resolved_pack

        cfg = _resolved_precision(cfg, env)
        cfg = resolved_pack(cfg, str(env.device), env.log if env.is_main else None)
        rec = cfg.recover
        if env.device.type == "cpu":
            torch.set_num_threads(rec.cpu_threads)
        elif rec.deterministic:
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        else:  # speed over bit-identity: let cuDNN autotune its kernels per shape
            torch.backends.cudnn.benchmark = True
        every = item.payload["slices"]
        todo = [s for s in every
                if check_marker(env.run_dir, marker_for(slice_path(env.run_dir, s)))]  # fmt: skip
        if not todo:
            return
        with _slice_context(cfg, env) as ctx:
            # all the item's slices: a method's works may span them and must not depend on
            # which slices a restart still has to do
            for s, result in recover_item(ctx, schedule_for(rec), every, set(every) - set(todo)):
                if env.is_main:
                    _write(env, s, result)
                    _track(cfg, item, env, s, result["provenance"])
                if env.world_size > 1:
                    dist.barrier()


def _resolved_precision(cfg: Config, env: TaskEnv) -> Config:
    """`recover.precision: auto` becomes what this task's device runs natively; an explicit
    half precision the device lacks runs as asked, with one warning line."""
    from prism_hpc.stages.precision import task_precision

    if getattr(cfg.recover, "precision", None) is None:
        return cfg  # RDED: no autocast
    choice = task_precision(cfg, str(env.device))
    if env.is_main and (choice.warning or cfg.recover.precision == "auto"):
        env.log(f"warning: {choice.warning}" if choice.warning else f"precision {choice.reason}")
    rec = cfg.recover.model_copy(update={"precision": choice.precision})
    return cfg.model_copy(update={"recover": rec})


def _track(cfg: Config, item: Item, env: TaskEnv, s: int, provenance: dict) -> None:
    if not cfg.tracking.enabled:
        return
    from prism_hpc.stages.tracked import track_slice, tracker_for

    slice_item = Item(item.stage, item.index, f"slice_{s:05d}", item.payload)
    with tracker_for(cfg, "recover", slice_item, env) as tracker:
        track_slice(tracker, cfg, s, provenance)


def _write(env: TaskEnv, s: int, result: dict) -> None:
    """Slice `s`'s shard and marker; its restart files go."""
    import numpy as np

    prov = result["provenance"]
    ipc = np.full((len(result["labels"]),), s, dtype=np.int32)
    write_shard(slice_path(env.run_dir, s), result["images"], result["labels"], ipc, prov,
                run_dir=env.run_dir, inputs=env.inputs)  # fmt: skip
    shutil.rmtree(layout.slice_partial_dir(env.run_dir, s), ignore_errors=True)
    env.log(
        f"slice {s}: logit {prov['logit_teacher']}, BN {prov['bn_teachers']}, top-1 "
        + ", ".join(f"{c['logit_top1']:.2f}" for c in prov["chunks"])
    )


@contextmanager
def _slice_context(cfg: Config, env: TaskEnv):
    """The task's SliceContext: data index, teachers (loaded once), their BN hooks (removed
    at the end) and statistic matcher, rank and restart folder."""
    import torch

    from prism_hpc.config.schema import OptimizeRecover
    from prism_hpc.data.index import class_index
    from prism_hpc.data.sources import open_source, source_stats
    from prism_hpc.models.teachers import load_teacher
    from prism_hpc.recover.checks import bn_teacher_candidates, bnless_message
    from prism_hpc.recover.context import SliceContext

    rec = cfg.recover
    source = open_source(cfg.data, "train", env.run_dir)
    num_classes = num_classes_of(cfg.data, env.run_dir)
    if source.num_classes != num_classes:
        raise UserError(
            f"data.num_classes = {num_classes}: the data has {source.num_classes} classes"
        )
    per_class = class_index(source.labels, num_classes)
    if rec.ranker_name() is not None:  # slot i of class c: the i-th image of the rank order
        from prism_hpc.recover.ranking import load_order
        from prism_hpc.stages.rank import order_path

        per_class = load_order(order_path(env.run_dir), per_class)
    teachers = {n: load_teacher(cfg, n, env.run_dir, env.device) for n in rec.teacher_names()}
    if env.device.type == "cuda":
        teachers = {n: m.to(memory_format=torch.channels_last) for n, m in teachers.items()}
    optimize = isinstance(rec, OptimizeRecover)
    matcher = None
    if optimize and rec.matching.enabled:  # G-VBSM / EDC: statistics precomputed by their stage
        from prism_hpc.recover.gvbsm import StatMatcher
        from prism_hpc.stages.statistics import load_statistics

        matcher = StatMatcher(teachers, rec, load_statistics(cfg, env.run_dir, env.device))
    hooks = _prior_hooks(cfg, env, teachers) if optimize else nullcontext({})
    with hooks as bn:
        bnless = [n for n in bn_teacher_candidates(cfg) if not bn[n].has_bn]
        if bnless and env.is_main:
            env.log("warning: " + bnless_message(bnless, rec.count_bnless, rec.reduction))
        yield SliceContext(
            cfg, teachers, bn, source, per_class, source_stats(cfg.data), env.device,
            slice_rows(cfg), env.rank, env.world_size, env.log, partial_dir(env.run_dir),
            matcher,
        )  # fmt: skip


def _prior_hooks(cfg: Config, env: TaskEnv, teachers: dict):
    """Each teacher's statistic hooks by its `prior`: BatchNorm (every teacher that is not a
    norm_stats or none BN-set teacher: exactly the BN hooks of before), LayerNorm/GroupNorm
    against the statistics stage's file (recover/norm_prior.py), or none."""
    from prism_hpc.recover.checks import check_priors
    from prism_hpc.recover.norm_prior import prior_hooks
    from prism_hpc.stages.statistics import load_statistics, statistic_priors

    priors = statistic_priors(cfg)
    check_priors(cfg, teachers, priors)
    norm = "norm_stats" in priors.values()
    stats = load_statistics(cfg, env.run_dir, env.device) if norm else {}
    return prior_hooks(teachers, priors, cfg.recover.first_bn_multiplier, stats)
