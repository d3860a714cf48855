"""SLURM backend: its executor (`executor`), submission (`submit`), scheduler queries (`query`),
and operations on a submitted run (`operations`). Status reads markers first and asks `sacct`
once for the rest."""

from prism_hpc.hpc.backends.slurm.executor import SlurmExecutor
from prism_hpc.hpc.backends.slurm.operations import cancel_run, log_path, resubmit_failed
from prism_hpc.hpc.backends.slurm.query import is_slurm_available, scheduler_states
from prism_hpc.hpc.backends.slurm.submit import max_array_size, submitit_executor

__all__ = [
    "SlurmExecutor", "cancel_run", "is_slurm_available", "log_path", "max_array_size",
    "resubmit_failed", "scheduler_states", "submitit_executor",
]  # fmt: skip
