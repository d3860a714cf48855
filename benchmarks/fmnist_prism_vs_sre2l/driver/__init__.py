"""The PRISM-vs-SRe2L benchmark behind run.py, one job a module:

- specs: modes and the run list with each run's merged config (base.yaml + variants/);
- costs: unit costs measured in the runs' markers (the prediction: `prism_hpc.cost`);
- report, sections_results, sections_runs: BENCHMARKS.md.

Running the list is `prism-hpc sweep` (the spec: `benchmarks.fmnist_shared.runlist`); what both
Fashion-MNIST benchmarks share (sessions, timing from markers, the shared sections) is in
`benchmarks.fmnist_shared`.
"""

from .costs import calibrate, estimate_wall, measure_costs
from .report import publish, write_benchmarks
from .specs import HERE, MODES, REPO, TABLE2_ROWS, VARIANTS, Mode, build_specs, validate

__all__ = [
    "HERE",
    "MODES",
    "REPO",
    "TABLE2_ROWS",
    "VARIANTS",
    "Mode",
    "build_specs",
    "calibrate",
    "estimate_wall",
    "measure_costs",
    "publish",
    "validate",
    "write_benchmarks",
]
