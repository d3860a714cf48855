"""The SLURM executor: submitit arrays, chained by dependencies; `submit` returns at once."""

from __future__ import annotations

import shutil

from prism_hpc.config.schema import StageResources
from prism_hpc.errors import UserError
from prism_hpc.hpc.backends.slurm.query import is_slurm_available
from prism_hpc.hpc.backends.slurm.submit import max_array_size, submit_run
from prism_hpc.hpc.executor import Executor, Run, register_executor
from prism_hpc.hpc.plan import split

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize


@register_executor
class SlurmExecutor(Executor):
    name = "slurm"
    auto_rank = 0  # preferred by `auto` wherever it works

    @classmethod
    def found(cls) -> bool:
        return bool(shutil.which("sbatch")) and is_slurm_available()

    @classmethod
    def check_usable(cls) -> None:
        if not shutil.which("sbatch"):
            raise UserError("backend slurm: `sbatch` not found on PATH (use --backend local)")

    def max_array_size(self) -> int | None:
        return max_array_size()

    def launch(self, run: Run) -> None:
        run.registry.opened(run.rd.root)
        # every stage is planned (and rendered), the selected ones submitted
        submit_run(run, self.plan(run.cfg, run.registry))

    def slots(self, res: StageResources, n_tasks: int) -> int:
        """Every task of every array at once (the queue decides), each array capped at its
        `%array_parallelism`; a stage has one array per `max_array_size` tasks."""
        size = res.max_array_size or DEFAULT_MAX_ARRAY_SIZE
        par = res.array_parallelism
        sizes = [len(chunk) for chunk in split(n_tasks, size)]
        return max(1, sum(min(k, par) if par else k for k in sizes))

    def threads(self, res: StageResources) -> int:
        """What the allocation gives a task: `cpus_per_task`."""
        return res.cpus_per_task or 1
