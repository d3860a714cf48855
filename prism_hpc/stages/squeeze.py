"""Squeeze: train the teacher pool on the data set (one item per teacher with weights: squeeze)."""

from __future__ import annotations

from pathlib import Path

from prism_hpc.config.schema import Config
from prism_hpc.stages.sealed import SealedStage
from prism_hpc.store import layout
from prism_hpc.store.atomic import write_marker
from prism_hpc.workflow import Item, TaskEnv


class SqueezeStage(SealedStage):
    name = "squeeze"
    depends_on = ()

    def items(self, cfg: Config) -> list[Item]:
        if not cfg.squeeze.enabled:
            return []
        names = [n for n, spec in cfg.teachers.items() if spec.weights == "squeeze"]
        return [Item(self.name, i, name, {"teacher": name}) for i, name in enumerate(names)]

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return layout.teacher_marker(run_dir, item.key)

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        return [("teachers", layout.teachers_dir(run_dir))]

    def estimate(self, cfg: Config) -> dict:
        from prism_hpc.stages.costing import safely, squeeze_cost

        names = [i.payload["teacher"] for i in self.items(cfg)]
        steps = f"max {cfg.squeeze.max_steps} steps" if cfg.squeeze.max_steps else (
            f"{cfg.squeeze.epochs} epoch(s)"
        )  # fmt: skip
        none = {"gpu_hours": 0.0, "cpu_hours": 0.0, "wall_hours": 0.0}  # pretrained teachers
        cost = safely(squeeze_cost, cfg, names) if names else none
        return {"note": f"{len(names)} teacher(s), {steps} each", **cost}

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        from prism_hpc.models.squeeze import train_teacher  # torch only inside tasks

        info = train_teacher(
            cfg, item.payload["teacher"], env.run_dir, env.device, env.log, env.progress
        )
        run, name = env.run_dir, item.payload["teacher"]
        outputs = [layout.teacher_weights(run, name), layout.teacher_info(run, name)]
        write_marker(self.marker_path(env.run_dir, item), info, env.run_dir, outputs=outputs,
                     inputs=env.inputs)  # fmt: skip
