"""Train: one item per (student architecture, seed); DDP over the task's ranks.

Outputs in `run_dir/students/<arch>/seed<k>/`: `ckpt.pt` (every epoch; the restart point),
`metrics.json` and the `.done` marker. Training tasks are checkpointable: on the warning
signal before the time limit (or a preemption) the SLURM layer requeues the task (submitit's
`checkpoint()`, or the rendered script's `scontrol requeue`) without telling the trainer, and
the requeued task resumes after the last finished epoch: the epoch in flight is redone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.stages.recover import distilled_size
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.store.atomic import write_marker
from prism_hpc.store.layout import (
    CKPT_NAME,
    DONE_NAME,
    METRICS_NAME,
    PROGRESS_NAME,
    student_dir,
)  # fmt: skip
from prism_hpc.train.checks import check_train_config
from prism_hpc.workflow import Item, TaskEnv


def _key(arch: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', arch)}-seed{seed}"


class TrainStage(SealedStage):
    name = "train"
    depends_on = ("relabel",)
    distributed = True
    checkpointable = True  # an epoch checkpoint: a requeued task resumes from it
    serves_eval_array = True  # eval_array.sbatch: students for plain-sbatch users

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

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        return [("students", layout.students_dir(run_dir)), ("results", layout.results_md(run_dir))]

    def progress(self, run_dir: Path) -> dict[str, Any]:
        found = student_progress(run_dir)
        return {"students": found} if found else {}

    def progress_lines(self, fields: dict[str, Any]) -> list[str]:
        return [_student_line(s) for s in fields.get("students", [])]

    def _track(self, cfg: Config, item: Item, env: TaskEnv, metrics: dict) -> None:
        from prism_hpc.stages.tracked import track_student, tracker_for

        if not cfg.tracking.enabled:
            return
        out = student_dir(env.run_dir, item.payload["arch"], item.payload["seed"])
        try:
            progress = json.loads((out / PROGRESS_NAME).read_text())
        except (OSError, ValueError):
            progress = {}
        with tracker_for(cfg, self.name, item, env) as tracker:
            track_student(tracker, metrics, progress)

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        from prism_hpc.train.checkpoint import write_metrics  # torch: tasks only
        from prism_hpc.train.trainer import train_student

        arch, seed = item.payload["arch"], item.payload["seed"]
        out = student_dir(env.run_dir, arch, seed)
        metrics = train_student(cfg, env, arch, seed, out)
        if env.is_main:
            write_metrics(out, metrics)
            self._track(cfg, item, env, metrics)
            write_marker(
                self.marker_path(env.run_dir, item),
                {"arch": arch, "seed": seed, "final": metrics["final"], "best": metrics["best"],
                 "wall_seconds": metrics["wall_seconds"],
                 "precision": (metrics.get("precision") or {}).get("resolved")},
                env.run_dir, outputs=[out / CKPT_NAME, out / METRICS_NAME], inputs=env.inputs,
            )  # fmt: skip


def student_progress(run_dir: Path) -> list[dict]:
    """Epoch reached by each student that has started, from its small `progress.json`
    (written by the trainer's rank 0; read here without torch)."""
    found = []
    for path in layout.student_files(run_dir, PROGRESS_NAME):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: the next look sees it
        if isinstance(info, dict):
            found.append({"student": f"{path.parent.parent.name}/{path.parent.name}", **info})
    return found


def _student_line(s: dict) -> str:
    eta = s.get("eta_s") or 0
    left = f", ETA {eta / 3600:.1f} h" if s.get("state") == "running" and eta else ""
    return (f"  {s['student']}: epoch {float(s.get('epoch', 0)):.2f}/{s.get('epochs', '?')} "
            f"({s.get('state', '?')}, loss {s.get('loss', '?')}, "
            f"{s.get('images_per_s', '?')} img/s{left})")  # fmt: skip
