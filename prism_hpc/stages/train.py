"""Train: one item per (student architecture, seed); DDP over the task's ranks.

Outputs in `run_dir/students/<arch>/seed<k>/`: `ckpt.pt` (every epoch; the restart point),
`metrics.json` and the `.done` marker. Training tasks are checkpointable: on preemption the
SLURM layer calls `TrainStage.checkpoint_now()` (or `request_stop()`), the trainer stops after
the current epoch's checkpoint and the requeued task resumes from it.
"""

from __future__ import annotations

import re
from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.stages.recover import distilled_size
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store.atomic import write_marker
from prism_hpc.store.rundir import CKPT_NAME, DONE_NAME, METRICS_NAME, student_dir
from prism_hpc.train.checks import check_train_config
from prism_hpc.workflow import Item, TaskEnv


def _key(arch: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', arch)}-seed{seed}"


class TrainStage(SealedStage):
    name = "train"
    depends_on = ("relabel",)
    distributed = True
    checkpointable = True

    def items(self, cfg: Config) -> list[Item]:
        check_train_config(cfg)
        pairs = [(a, s) for a in cfg.students.archs for s in cfg.students.seeds]
        return [
            Item(self.name, i, _key(a, s), {"arch": a, "seed": s}) for i, (a, s) in enumerate(pairs)
        ]

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return student_dir(run_dir, item.payload["arch"], item.payload["seed"]) / DONE_NAME

    def restart_state(self, run_dir: Path, item: Item) -> list[Path]:
        return [student_dir(run_dir, item.payload["arch"], item.payload["seed"]) / CKPT_NAME]

    def estimate(self, cfg: Config) -> dict:
        n = distilled_size(cfg)
        steps = cfg.students.epochs * -(-n // cfg.students.batch_size)
        from prism_hpc.stages.costing import safely, train_cost

        return {
            "students": len(self.items(cfg)),
            "steps_per_student": steps,
            "note": f"{len(self.items(cfg))} student(s) x {cfg.students.epochs} epochs",
            **safely(train_cost, cfg, n),
        }

    @staticmethod
    def checkpoint_now() -> None:
        """Preemption hook: stop after the current epoch's checkpoint (then requeue)."""
        from prism_hpc.train.trainer import request_stop

        request_stop()

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        from prism_hpc.train.trainer import train_student, write_metrics  # torch: tasks only

        arch, seed = item.payload["arch"], item.payload["seed"]
        out = student_dir(env.run_dir, arch, seed)
        metrics = train_student(
            cfg, env.run_dir, arch, seed, out, env.device, env.rank, env.world_size,
            log=env.log, progress=env.progress,
        )  # fmt: skip
        if env.is_main:
            write_metrics(out, metrics)
            write_marker(
                self.marker_path(env.run_dir, item),
                {"arch": arch, "seed": seed, "final": metrics["final"], "best": metrics["best"],
                 "wall_seconds": metrics["wall_seconds"]},
                env.run_dir, outputs=[out / CKPT_NAME, out / METRICS_NAME], inputs=env.inputs,
            )  # fmt: skip
