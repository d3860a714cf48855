"""squeeze -> rank -> recover -> collect -> relabel -> train -> report: PRISM's pipeline, as
the one `StageRegistry` that the CLI hands to the cluster layer (rank has no item unless
`recover.init_order` asks for DELT's order; statistics none unless `recover.matching` needs
G-VBSM/EDC's precomputed statistics). Pipeline order: squeeze, rank, statistics, recover..."""

from __future__ import annotations

from prism_hpc.workflow import StageRegistry

REGISTRY_REF = "prism_hpc.stages.pipeline:registry"


CANARY_REF = "prism_hpc.canary:run_canary"  # above the stages: it launches a whole run


def registry() -> StageRegistry:
    from prism_hpc.stages.collect import CollectStage
    from prism_hpc.stages.rank import RankStage
    from prism_hpc.stages.recover import RecoverStage
    from prism_hpc.stages.relabel import RelabelStage
    from prism_hpc.stages.report import ReportStage
    from prism_hpc.stages.squeeze import SqueezeStage
    from prism_hpc.stages.statistics import StatisticsStage
    from prism_hpc.stages.train import TrainStage

    stages = (
        SqueezeStage(), RankStage(), StatisticsStage(), RecoverStage(), CollectStage(),
        RelabelStage(), TrainStage(), ReportStage(),
    )  # fmt: skip
    from prism_hpc.data.listing import use_run_index

    return StageRegistry(stages, REGISTRY_REF, open_run=use_run_index, canary=CANARY_REF)
