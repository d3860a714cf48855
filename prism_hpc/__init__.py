"""prism-hpc: PRISM dataset distillation on SLURM clusters and single machines."""

__version__ = "0.1.0"
