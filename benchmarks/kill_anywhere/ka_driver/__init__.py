"""The kill-anywhere driver behind run.py, one job a module:

- stages: the pipeline's stage names, read from `prism_hpc.stages.registry()` (the one piece
  of product code the driver uses: everything else goes through the `prism-hpc` command and
  the files a run leaves);
- launch: `prism-hpc submit` processes in their own session, output lines timestamped;
- markers: every `.done` marker of a run and the files it vouches for; lost / corrupt / redone;
  the stage windows of the reference, from its markers' times;
- compare: a run against the reference, bit for bit;
- trials: the reference run, the seeded draws, one kill-and-resume trial;
- report: the markdown table and summary.

run.py puts this folder's parent on sys.path before importing it.
"""

from .compare import compare_runs
from .markers import check_finished, snapshot, stage_at, stage_of, stage_windows
from .stages import pipeline_stages

__all__ = [
    "check_finished", "compare_runs", "pipeline_stages", "snapshot", "stage_at", "stage_of",
    "stage_windows",
]  # fmt: skip
