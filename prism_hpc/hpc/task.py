"""One array task: run one stage item inside a run dir. The function submitit pickles.

Also a module entry point (`python -m prism_hpc.hpc.task RUN STAGE INDEX`, or
`RUN STAGE --array CHUNK ARRAY_INDEX` in rendered sbatch scripts) that the local backend starts
once per rank. The stages come from the registry recorded in the run's `plan.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

from prism_hpc.hpc import distributed
from prism_hpc.hpc.pending import inputs_of
from prism_hpc.hpc.plan import registry_ref_of
from prism_hpc.store.atomic import atomic_write_text
from prism_hpc.store.itemclock import item_clock
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import (
    Item,
    Stage,
    StageRegistry,
    TaskEnv,
    array_item,
    load_registry,
)  # fmt: skip


def run_item(
    run_dir: str, stage_name: str, index: int, progress=None,
    registry: StageRegistry | None = None,
) -> str:  # fmt: skip
    """Run item `index` of `stage_name` unless its marker is already valid. Returns its key."""
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    os.umask(os.umask(0) | 0o022)  # nothing in a run is group- or world-writable
    rd = RunDir(Path(run_dir))
    cfg = rd.load_config()
    if registry is None:
        registry = load_registry(registry_ref_of(rd.plan))
    stage = registry.opened(rd.root).by_name(stage_name)
    item = stage.items(cfg)[index]
    if stage.is_done(rd.root, item):
        return item.key
    info = distributed.dist_info_from_env()
    if not stage.distributed and info.rank != 0:
        return item.key  # extra SLURM tasks of a non-distributed stage have nothing to do
    world = info if stage.distributed else distributed.DistInfo(0, 1, 0, "127.0.0.1", 0)
    inputs = inputs_of(registry, cfg, rd.root, stage)
    discard_stale_restart_state(stage, rd.root, item, inputs)  # every rank, before anyone reads
    distributed.init_process_group(world)  # a rendezvous: all ranks have decided by now
    if world.rank == 0 and stage.restart_state(rd.root, item):
        atomic_write_text(inputs_record_path(stage, rd.root, item), json.dumps(inputs) + "\n")
    try:
        env = TaskEnv(
            run_dir=rd.root,
            rank=world.rank,
            world_size=world.world_size,
            local_rank=info.local_rank,
            device=distributed.device_for(info.local_rank),
        )
        if progress is not None:
            env.progress = progress
        env.inputs = inputs
        with item_clock():  # its markers record the item's seconds (`store.itemclock`)
            stage.run(cfg, item, env)
    finally:
        distributed.destroy()
    return item.key


def inputs_record_path(stage: Stage, run_dir: Path, item: Item) -> Path:
    """Next to the item's first marker: the upstream marker ids its current attempt started
    from (its restart state was computed from those)."""
    marker = stage.markers(run_dir, item)[0]
    return marker.with_name(marker.name + ".inputs")


def discard_stale_restart_state(
    stage: Stage, run_dir: Path, item: Item, inputs: dict[str, str | None]
) -> list[Path]:
    """Delete a killed attempt's restart state when it cannot be trusted: the upstream items it
    was computed from were redone since, or the item's finished files went bad."""
    state = [p for p in stage.restart_state(run_dir, item) if p.exists()]
    if not state:
        return []
    try:
        recorded = json.loads(inputs_record_path(stage, run_dir, item).read_text())
    except (OSError, ValueError):
        recorded = inputs  # written before inputs were recorded: nothing says it is stale
    went_bad = any(not p.endswith("no marker") for p in stage.problems(run_dir, item))
    if recorded == inputs and not went_bad:
        return []
    for path in state:
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    why = "its files went bad" if went_bad else "its inputs were redone"
    print(f"[{stage.name}] {item.key}: restart state discarded ({why})", flush=True)
    return state


class RunItem:
    """The callable submitit pickles: a module-level class, so it unpickles on the node."""

    def __call__(self, run_dir: str, stage_name: str, index: int) -> str:
        return run_item(run_dir, stage_name, index)


def _checkpointable_base():
    import submitit

    return submitit.helpers.Checkpointable


class CheckpointableRunItem(RunItem, _checkpointable_base()):
    """For stages that checkpoint every epoch: on USR2/timeout submitit requeues the same call,
    and the stage resumes from its last completed epoch."""


def task_function(stage: Stage) -> RunItem:
    """What submitit runs for the stage's tasks: requeued on the warning signal when the
    stage is `checkpointable`."""
    return CheckpointableRunItem() if stage.checkpointable else RunItem()


def main(argv: list[str] | None = None) -> int:
    """`RUN STAGE INDEX` or `RUN STAGE --array CHUNK ARRAY_INDEX` (rendered sbatch scripts)."""
    args = sys.argv[1:] if argv is None else argv
    run_dir, stage_name = args[0], args[1]
    if args[2] == "--array":
        index = array_item(RunDir(Path(run_dir)).plan, stage_name, int(args[3]), int(args[4]))
    else:
        index = int(args[2])
    try:
        run_item(run_dir, stage_name, index)
    except Exception:  # noqa: BLE001 - the log file is the place for the traceback
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
