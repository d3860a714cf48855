"""SLURM backend: submission (`submit`), scheduler queries (`query`), and operations on a
submitted run (`operations`). Status reads markers first and asks `sacct` once for the rest."""

from prism_hpc.hpc.backends.slurm.operations import cancel_run, log_path, resubmit_failed
from prism_hpc.hpc.backends.slurm.query import is_slurm_available, scheduler_states
from prism_hpc.hpc.backends.slurm.submit import _executor, max_array_size, submit_slurm

__all__ = [
    "_executor", "cancel_run", "is_slurm_available", "log_path", "max_array_size",
    "resubmit_failed", "scheduler_states", "submit_slurm",
]  # fmt: skip
