"""Relabel: an array over chunks of epochs; each task writes one HDF5 file of plans + labels.

Only `relabel.mode: offline` has items; online relabel happens inside training and `none`
trains on hard labels, so those modes give this stage zero items (nothing to wait for).
"""

from __future__ import annotations

from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import num_classes_of
from prism_hpc.stages.recover import distilled_size
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.store.atomic import write_marker
from prism_hpc.store.softlabels import (
    epoch_chunks,
    estimate_storage_bytes,
    human_bytes,
    label_bytes_per_visit,
)  # fmt: skip
from prism_hpc.workflow import Item, TaskEnv


class RelabelStage(SealedStage):
    name = "relabel"
    depends_on = ("collect",)

    def items(self, cfg: Config) -> list[Item]:
        if cfg.relabel.mode != "offline":
            return []
        return [
            Item(self.name, i, layout.softlabel_key(start, stop), {"epochs": [start, stop]})
            for i, (start, stop) in enumerate(epoch_chunks(cfg))
        ]

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return layout.softlabel_marker(run_dir, *item.payload["epochs"])

    def estimate(self, cfg: Config) -> dict:
        from prism_hpc.stages.costing import relabel_cost, safely

        if cfg.relabel.mode != "offline":
            return {"storage_gb": 0.0, "note": f"relabel.mode = {cfg.relabel.mode}: nothing stored",
                    "gpu_hours": 0.0, "cpu_hours": 0.0, "wall_hours": 0.0}  # fmt: skip
        k = num_classes_of(cfg.data)
        n = distilled_size(cfg)
        total = estimate_storage_bytes(cfg, n, k)
        per = label_bytes_per_visit(k, cfg.relabel.storage, cfg.relabel.topk)
        chunks = epoch_chunks(cfg)
        return {
            "storage_gb": round(total / 1e9, 3),
            "storage_bytes": total,
            "files": len(chunks),
            "teacher_forwards": cfg.students.epochs * n * len(cfg.relabel.teachers),
            "note": (
                f"{cfg.students.epochs} epochs x {n} images, {cfg.relabel.storage} "
                f"({per} B/label before gzip), {len(chunks)} file(s), ~{human_bytes(total)}"
            ),
            **safely(relabel_cost, cfg, n, chunks, round(total / 1e9, 3)),
        }

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        from prism_hpc.relabel.ensemble import load_ensemble  # torch only inside tasks
        from prism_hpc.relabel.offline import write_relabel_chunk
        from prism_hpc.stages.precision import task_precision
        from prism_hpc.store.distilled import DistilledSet

        start, stop = item.payload["epochs"]
        choice = task_precision(cfg, str(env.device), "relabel")
        if env.is_main and (choice.warning or cfg.relabel.precision == "auto"):
            env.log(f"warning: {choice.warning}" if choice.warning else
                    f"relabel precision {choice.reason}")  # fmt: skip
        distilled = DistilledSet(layout.distilled_file(env.run_dir))
        try:
            ensemble = load_ensemble(cfg, env.run_dir, env.device, choice.precision)
            images = len(distilled)
            info = write_relabel_chunk(
                cfg, layout.softlabel_chunk(env.run_dir, start, stop), range(start, stop),
                distilled, ensemble, env.device, env.log,
            )  # fmt: skip
        finally:
            distilled.close()
        env.log(f"relabel {item.key}: {human_bytes(info['bytes'])} in {info['seconds']} s")
        from prism_hpc.stages.tracked import tracker_for

        visits = images * (stop - start)
        with tracker_for(cfg, self.name, item, env) as tracker:
            tracker.scalars(stop, {"images_per_s": visits / max(info["seconds"], 1e-9)})
        write_marker(
            self.marker_path(env.run_dir, item), info, env.run_dir,
            outputs=[layout.softlabel_chunk(env.run_dir, start, stop)], inputs=env.inputs,
        )  # fmt: skip
