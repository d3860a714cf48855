"""The debug executor: the local backend with every item in this process, one at a time, so
that exceptions propagate to a debugger (submitit's DebugExecutor, for this pipeline)."""

from __future__ import annotations

from prism_hpc.config.schema import StageResources
from prism_hpc.hpc.backends.local import LocalExecutor, planned_layout
from prism_hpc.hpc.executor import register_executor


@register_executor
class DebugExecutor(LocalExecutor):
    name = "debug"
    auto_rank = None  # only when asked for
    in_process = True

    def slots(self, res: StageResources, n_tasks: int) -> int:
        return 1

    def threads(self, res: StageResources) -> int:
        return planned_layout(res, 1).threads
