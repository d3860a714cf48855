"""Intra-class diversity, result tables and figures, and the run report.

Imports are lazy so that `import prism_hpc.metrics` does not pull in matplotlib.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "penultimate_features": "prism_hpc.metrics.diversity",
    "intra_class_cosine": "prism_hpc.metrics.diversity",
    "compute_diversity": "prism_hpc.metrics.measure",
    "write_diversity": "prism_hpc.metrics.measure",
    "read_diversity": "prism_hpc.metrics.runs",
    "run_diversity": "prism_hpc.metrics.measure",
    "load_runs": "prism_hpc.metrics.runs",
    "accuracy_table": "prism_hpc.metrics.tables",
    "paired_differences": "prism_hpc.metrics.tables",
    "ablation_table": "prism_hpc.metrics.ablation",
    "write_results": "prism_hpc.metrics.results",
    "write_report": "prism_hpc.metrics.report",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prism_hpc.metrics' has no attribute {name!r}")
