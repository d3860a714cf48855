"""squeeze -> recover -> collect -> relabel -> train -> report."""

from __future__ import annotations

from prism_hpc.errors import UserError
from prism_hpc.stages.base import Stage
from prism_hpc.stages.collect import CollectStage
from prism_hpc.stages.recover import RecoverStage
from prism_hpc.stages.squeeze import SqueezeStage


def all_stages() -> list[Stage]:
    from prism_hpc.stages.relabel import RelabelStage
    from prism_hpc.stages.report import ReportStage
    from prism_hpc.stages.train import TrainStage

    return [
        SqueezeStage(), RecoverStage(), CollectStage(), RelabelStage(), TrainStage(), ReportStage()
    ]  # fmt: skip


def stage_by_name(name: str) -> Stage:
    for stage in all_stages():
        if stage.name == name:
            return stage
    raise UserError(f"unknown stage '{name}' (stages: {[s.name for s in all_stages()]})")
