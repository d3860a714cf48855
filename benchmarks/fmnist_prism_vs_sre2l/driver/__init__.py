"""The Fashion-MNIST benchmark driver behind run.py, one job a module:

- specs: modes and the run list with each run's merged config;
- state: done / partial / new / changed / broken of a run dir;
- timings: item times from the submit logs, OUT/timings.json;
- runner: the `prism-hpc submit` processes, `--jobs` side by side;
- costs: unit costs measured in the runs (the prediction: `prism_hpc.cost`);
- report, sections_results, sections_runs, markdown: BENCHMARKS.md.

run.py puts this folder's parent and the repository on sys.path before importing it.
"""

from .costs import calibrate, estimate_wall, measure_costs
from .markdown import fmt_s
from .report import publish, write_benchmarks
from .runner import Runner, cli, command, run_all, sigterm_handler
from .specs import (
    HERE,
    MODES,
    REPO,
    STAGES,
    TABLE2_ROWS,
    VARIANTS,
    Mode,
    RunSpec,
    build_specs,
    validate,
)
from .state import run_dir, squeezed_teachers, status
from .timings import Timings, item_times, stage_seconds

__all__ = [
    "HERE",
    "MODES",
    "REPO",
    "STAGES",
    "TABLE2_ROWS",
    "VARIANTS",
    "Mode",
    "RunSpec",
    "Runner",
    "Timings",
    "build_specs",
    "calibrate",
    "cli",
    "command",
    "estimate_wall",
    "fmt_s",
    "item_times",
    "measure_costs",
    "publish",
    "run_all",
    "run_dir",
    "sigterm_handler",
    "squeezed_teachers",
    "stage_seconds",
    "status",
    "validate",
    "write_benchmarks",
]
