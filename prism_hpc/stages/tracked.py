"""The tracker a stage's task reports to (docs/tracking.md): one call, so every stage names
its runs the same way (group = run name, job type = stage, name = item)."""

from __future__ import annotations

from prism_hpc.config.schema import Config
from prism_hpc.tracking import FanOut, TrackedTask, open_tracker
from prism_hpc.workflow import Item, TaskEnv


def tracker_for(cfg: Config, stage: str, item: Item, env: TaskEnv) -> FanOut:
    """Rank 0's tracker for this item, or the null tracker (tracking off, other ranks)."""
    config = cfg.model_dump(mode="json") if cfg.tracking.enabled else {}
    task = TrackedTask(env.run_dir, stage, item.key, cfg.name, config, env.rank)
    return open_tracker(cfg.tracking, task, warn=env.log)


def track_slice(tracker: FanOut, cfg: Config, slice_index: int, provenance: dict) -> None:
    """A recovered slice's logged steps (ce, bn, the lr that step used) and its speed, from
    the provenance the shard records: the optimisation loop itself stays untouched."""
    from prism_hpc.recover.loop import cosine_lr

    rec = cfg.recover
    chunks = provenance.get("chunks") or []
    total = rec.iterations_for(slice_index) if hasattr(rec, "lr") else 0
    for c, chunk in enumerate(chunks):
        prefix = f"slice{slice_index}/chunk{c}/" if len(chunks) > 1 else ""
        for entry in chunk.get("history") or []:
            values = {f"{prefix}ce": entry["ce"], f"{prefix}bn": entry["bn"]}
            if total:
                values[f"{prefix}lr"] = cosine_lr(rec.lr, max(entry["step"] - 1, 0), total)
            tracker.scalars(int(entry["step"]), values)
    seconds = sum(float(c.get("seconds") or 0) for c in chunks)
    images = sum(len(c.get("classes") or []) for c in chunks)
    if seconds > 0 and total:
        tracker.scalars(total, {"images_x_iters_per_s": images * total / seconds})


def track_student(tracker: FanOut, metrics: dict, progress: dict) -> None:
    """A student's training curve (loss, lr), its evaluations (top-1/top-5) and its speed
    (the trainer's last `progress.json`)."""
    for row in metrics.get("train") or []:
        tracker.scalars(int(row["epoch"]), {"loss": row["loss"], "lr": row["lr"]})
    for row in metrics.get("evals") or []:
        tracker.scalars(int(row["epoch"]), {"top1": row["top1"], "top5": row["top5"]})
    images_per_s = progress.get("images_per_s")
    if images_per_s:
        tracker.scalars(int(metrics.get("epochs") or 0), {"images_per_s": images_per_s})
