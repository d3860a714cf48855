"""The pipeline's stages. This package is the only place that knows their order."""

from prism_hpc.stages.base import Item, Stage, TaskEnv
from prism_hpc.stages.pipeline import all_stages, stage_by_name

__all__ = ["Item", "Stage", "TaskEnv", "all_stages", "stage_by_name"]
