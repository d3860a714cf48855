"""What the runs say about their time and state, from the product's records, never a log line:

- per item, the `item_seconds` the task runner wrote into its markers
  (`prism_hpc.hpc.status.item_seconds`);
- per run, the elapsed seconds of its submits, kept by `prism-hpc sweep` in `sweep.json`;
- per run, done / incomplete / failed / not started from its markers (`sweep_status`).
"""

from __future__ import annotations

from pathlib import Path

from prism_hpc.store import layout

from .runlist import sweep_folder


def item_times(rd: Path) -> list[tuple[str, str, float]]:
    """(stage, item key, seconds) of every timed item of the run at `rd` ([] if none)."""
    from prism_hpc.hpc.status import item_seconds
    from prism_hpc.stages import registry

    if not layout.config_file(rd).is_file():
        return []
    return item_seconds(rd, registry())


def stage_seconds(rd: Path) -> dict[str, float]:
    totals: dict[str, float] = {}
    for stage, _, sec in item_times(rd):
        totals[stage] = totals.get(stage, 0.0) + sec
    return totals


def submit_walls(out: Path) -> dict[str, float]:
    """Per run: the summed elapsed seconds of its `prism-hpc submit` attempts."""
    from prism_hpc.sweep.book import submit_seconds
    from prism_hpc.sweep.run import is_sweep, read_sweep

    folder = sweep_folder(out)
    return submit_seconds(read_sweep(folder)) if is_sweep(folder) else {}


def run_states(out: Path) -> dict[str, str]:
    """Per run: done | incomplete | failed | not started (the sweep's own status)."""
    from prism_hpc.stages import registry
    from prism_hpc.sweep.run import is_sweep, sweep_status

    folder = sweep_folder(out)
    if not is_sweep(folder):
        return {}
    return {row["point"]: row["state"] for row in sweep_status(folder, registry())}
