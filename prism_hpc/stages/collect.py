"""Collect: the gate between recovery and training; validates every slice, writes distilled.h5."""

from __future__ import annotations

from pathlib import Path

from prism_hpc.config.load import dump_config
from prism_hpc.config.schema import Config
from prism_hpc.data.sources import FASHION_MNIST_CLASSES, num_classes_of, source_stats
from prism_hpc.errors import TaskFailed
from prism_hpc.stages.recover import slice_rows
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.store.atomic import read_marker, write_marker
from prism_hpc.store.collect import MissingSlices, collect_shards
from prism_hpc.store.integrity import check_marker
from prism_hpc.store.shards import validate_shard
from prism_hpc.workflow import Item, TaskEnv


def class_names(cfg: Config, run_dir: Path | None = None) -> list[str]:
    if cfg.data.class_names:
        return list(cfg.data.class_names)
    if cfg.data.source == "fashion_mnist":
        return list(FASHION_MNIST_CLASSES)
    from prism_hpc.data.sources import open_source

    return open_source(cfg.data, "train", run_dir).class_names


def collect_run(cfg: Config, run_dir: Path, consolidate: bool = False) -> dict:
    mean, std = source_stats(cfg.data)
    attrs = {
        "num_classes": num_classes_of(cfg.data, run_dir),
        "class_names": class_names(cfg, run_dir),
        "mean": mean,
        "std": std,
        "method": cfg.method,
        "config": dump_config(cfg),
    }
    n = attrs["num_classes"]
    rows = {s: n if cls is None else len(cls) for s, cls in slice_rows(cfg).items()}
    shards = {s: layout.recover_shard(run_dir, s) for s in rows}
    try:
        info = collect_shards(shards, rows, layout.distilled_file(run_dir), attrs, consolidate)
    except MissingSlices as err:
        raise TaskFailed(f"collect: {err}") from None
    return info


class CollectStage(SealedStage):
    name = "collect"
    depends_on = ("recover",)
    # runs when recover tasks failed, to name the missing slices (SLURM: afterany)
    runs_after_failed_dependencies = True
    primary_output = True  # distilled.h5 is what the pipeline is for

    def items(self, cfg: Config) -> list[Item]:
        return [Item(self.name, 0, "distilled", {})]

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return layout.distilled_marker(run_dir)

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        return [("distilled set", layout.distilled_file(run_dir))]

    def estimate(self, cfg: Config) -> dict:
        from prism_hpc.stages.costing import collect_cost, safely
        from prism_hpc.stages.recover import distilled_size

        c, r = cfg.data.channels, cfg.data.resolution
        slices_gb = round(distilled_size(cfg) * c * r * r / 1e9, 3)
        return {
            "note": f"validates {slices_gb} GB of slices, writes a Virtual Dataset",
            **safely(collect_cost, cfg, slices_gb),
        }

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        info = collect_run(cfg, env.run_dir)
        env.log(
            f"collect: {info['rows']} images from {len(info['slices'])} slice(s) -> distilled.h5"
        )
        write_marker(
            self.marker_path(env.run_dir, item), info, env.run_dir,
            outputs=[layout.distilled_file(env.run_dir)], inputs=env.inputs,
        )  # fmt: skip


def distilled_problems(cfg: Config, run_dir: Path) -> list[str]:
    """Every slice the distilled set reads, hashed against its marker, and the set itself."""
    n = num_classes_of(cfg.data, run_dir)
    bad = []
    for s, cls in slice_rows(cfg).items():
        reason = validate_shard(layout.recover_shard(run_dir, s), n if cls is None else len(cls))
        if reason:
            bad.append(reason)
    marker = layout.distilled_marker(run_dir)
    if marker.exists():
        bad += check_marker(run_dir, marker, full=True)
    return bad


def reseal_distilled(run_dir: Path) -> None:
    """After `collect --consolidate` rewrote distilled.h5 from the same slices, record the new
    file in the marker under the same id (the content did not change: keep what depends on it).
    """
    marker_path = layout.distilled_marker(run_dir)
    marker = read_marker(marker_path)
    if marker is None:
        return
    payload = {k: v for k, v in marker.items() if k not in ("outputs", "id")}
    write_marker(
        marker_path, payload, run_dir, outputs=[layout.distilled_file(run_dir)],
        inputs=marker.get("inputs"), keep_id=marker.get("id"),
    )  # fmt: skip
