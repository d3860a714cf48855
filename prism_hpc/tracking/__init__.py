"""Experiment tracking as a sink: TensorBoard files and W&B runs beside the run's own files.

Imports nothing heavy: each sink imports its package only when switched on (docs/tracking.md).
"""

from prism_hpc.tracking.base import FanOut, TrackedTask, Tracker, null_tracker
from prism_hpc.tracking.open import open_tracker
from prism_hpc.tracking.sync import sync_run

__all__ = ["FanOut", "TrackedTask", "Tracker", "null_tracker", "open_tracker", "sync_run"]
