"""Operations on a submitted run: cancel, resubmit what is missing, find a task's log.

`resubmit` touches only what is neither done nor alive (DESIGN §5). One scheduler query
(`query.live_tasks`) tells which tasks of earlier attempts are still pending or running; then,
stage by stage in pipeline order:

- items with a valid marker: done, left alone;
- items with a live task: kept (not cancelled, not resubmitted) -- unless the stage is a stale
  dependent, i.e. one of its predecessors now gets new arrays: its live tasks wait on (or, for
  `afterany` stages such as collect, already run on) inputs that are incomplete, so they are
  cancelled and their items resubmitted;
- every other item is resubmitted in a new array.

A resubmitted stage waits on its predecessors' new arrays AND their kept live tasks (a
dependency list that mixes array job ids and `<array>_<task>` ids). The `resubmit` event in
`state.json` records what was kept alive, what was cancelled and what was resubmitted.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from prism_hpc.errors import TaskFailed, UserError
from prism_hpc.hpc.backends.slurm.executor import SlurmExecutor
from prism_hpc.hpc.backends.slurm.query import (
    first_error_line,
    item_tasks,
    live_tasks,
    submit_events,
)  # fmt: skip
from prism_hpc.hpc.backends.slurm.submit import next_attempt, send_canaries, submit_chain
from prism_hpc.hpc.executor import Run
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import StageRegistry


def active_job_ids(rd: RunDir) -> list[str]:
    return [r["job_id"] for e in submit_events(rd) for r in e["arrays"]]


def cancel_jobs(job_ids: list[str]) -> None:
    """One scancel call. scancel exits 0 for jobs that already ended; anything else (no
    controller, no permission) is a one-line TaskFailed."""
    if not job_ids:
        return
    try:
        out = subprocess.run(
            ["scancel", *job_ids], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise TaskFailed(f"scancel failed: {err}") from None
    if out.returncode != 0:
        raise TaskFailed(f"scancel failed: {first_error_line(out.stderr)}")


def cancel_run(rd: RunDir) -> list[str]:
    ids = active_job_ids(rd)
    cancel_jobs(ids)
    rd.append_state({"event": "cancel", "jobs": ids})
    return ids


def resubmit_failed(
    rd: RunDir, registry: StageRegistry, canary: bool = True
) -> dict[str, list[str]]:
    """New arrays for items that are neither done nor alive; live tasks are kept; stale
    dependents are cancelled and resubmitted against the new arrays and the kept tasks.
    With `canary`, a new canary job (per resource shape) runs before the new arrays."""
    cfg = rd.load_config()
    plans = SlurmExecutor().plan(cfg, registry)
    live, source = live_tasks(rd)
    changed: set[str] = set()  # stages whose dependents must now wait on something new
    todo: dict[str, list[int]] = {}
    kept: dict[str, dict[int, str]] = {}
    stale: dict[str, dict[int, str]] = {}
    dirty: set[str] = set()  # stages with items to redo: everything downstream is redone too
    for plan in plans:
        name = plan.stage.name
        if any(dep in dirty for dep in plan.stage.depends_on):
            done: set[int] = set()
        else:
            done = {i.index for i in plan.items if plan.stage.is_done(rd.root, i)}
        alive = {i: t for i, t in sorted(live.get(name, {}).items()) if i not in done}
        upstream_changed = any(dep in changed for dep in plan.stage.depends_on)
        if upstream_changed and alive:
            stale[name], alive = alive, {}
        todo[name] = [i.index for i in plan.items if i.index not in done and i.index not in alive]
        kept[name] = alive
        if todo[name] or name in dirty or any(dep in dirty for dep in plan.stage.depends_on):
            dirty.add(name)
        if todo[name] or (upstream_changed and not alive):
            changed.add(name)  # new arrays, or passes its predecessors' new arrays on
    cancelled = [t for tasks in stale.values() for t in tasks.values()]
    cancel_jobs(cancelled)
    attempt = next_attempt(rd)
    rd.append_state({
        "event": "resubmit", "attempt": attempt, "source": source,
        "kept_alive": _listing(kept), "cancelled": _listing(stale),
        "resubmitted": {stage: items for stage, items in todo.items() if items},
    })  # fmt: skip
    for stage, tasks in kept.items():
        if tasks:
            print(f"[{stage}] kept {len(tasks)} live task(s): {' '.join(tasks.values())}")
    for stage, tasks in stale.items():
        print(f"[{stage}] cancelled {len(tasks)} stale dependent(s): {' '.join(tasks.values())}")
    live_ids = {stage: list(tasks.values()) for stage, tasks in kept.items() if tasks}
    canaries = send_canaries(Run(rd, cfg, registry, canary=canary), plans, todo, attempt)
    return submit_chain(rd, cfg, plans, attempt, todo, live=live_ids, canaries=canaries)


def _listing(per_stage: dict[str, dict[int, str]]) -> dict[str, list[dict]]:
    return {s: [{"item": i, "task": t} for i, t in m.items()] for s, m in per_stage.items() if m}


def log_path(rd: RunDir, stage: str, index: int) -> Path:
    """Log of the item's most recent task (whichever attempt ran it last)."""
    runs = item_tasks(rd).get(stage)
    if not runs:
        raise UserError(f"{rd.root}: stage '{stage}' was never submitted to SLURM")
    if index not in runs:
        raise UserError(f"{rd.root}: item {index} of stage '{stage}' was never submitted")
    record, pos = runs[index][-1]
    return Path(record["logs"][pos])
