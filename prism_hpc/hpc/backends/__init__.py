"""Backends run a plan: `local` (foreground, this machine), `slurm` (submitit arrays)."""

import shutil

from prism_hpc.errors import UserError

BACKENDS = ("auto", "local", "slurm", "debug")


def resolve_backend(name: str) -> str:
    """`auto`: SLURM when `sbatch` is on PATH, else the local machine."""
    if name not in BACKENDS:
        raise UserError(f"backend {name!r}: expected one of {', '.join(BACKENDS)}")
    if name == "auto":
        if shutil.which("sbatch"):
            from prism_hpc.hpc.backends.slurm import is_slurm_available

            if is_slurm_available():
                return "slurm"
        return "local"
    if name == "slurm" and not shutil.which("sbatch"):
        raise UserError("backend slurm: `sbatch` not found on PATH (use --backend local)")
    return name
