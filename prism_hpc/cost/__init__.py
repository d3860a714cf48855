"""Run-time prediction from a config and measured unit costs (sizing sweeps and allocations)."""

from prism_hpc.cost.runtime import (
    DatasetSize,
    RunPlan,
    estimate_wall,
    predict_run,
    squeeze_steps,
    squeezed_teachers,
    student_steps,
)

__all__ = [
    "DatasetSize",
    "RunPlan",
    "estimate_wall",
    "predict_run",
    "squeeze_steps",
    "squeezed_teachers",
    "student_steps",
]
