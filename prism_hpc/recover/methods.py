"""The synthesis methods the recover stage knows, as schedules for the one driver.

Adding a method = writing one `driver.Schedule` subclass (what a unit of work is, how to
solve it, which configs it `applies` to) and listing it here, before any schedule that would
also apply; the driver, the restart files, the shards and the stage stay as they are.
"""

from __future__ import annotations

from prism_hpc.recover.driver import Schedule
from prism_hpc.recover.joint import JointBatches
from prism_hpc.recover.schedules import CrossClass, PackedChunks, RdedSelection

# first match wins
SCHEDULES: list[type[Schedule]] = [RdedSelection, JointBatches, PackedChunks, CrossClass]


def schedule_for(rec) -> Schedule:
    """The schedule that runs recover config `rec`."""
    for schedule in SCHEDULES:
        if schedule.applies(rec):
            return schedule()
    raise ValueError(f"no recover schedule applies to synthesis {rec.synthesis!r}")
