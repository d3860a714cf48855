"""Scheduler queries: what SLURM says about a run's submitted arrays, in one batched call
(`sacct`, falling back to `squeue`), never one query per job."""

from __future__ import annotations

import subprocess
from typing import Any

from prism_hpc.errors import TaskFailed
from prism_hpc.store.rundir import RunDir

TERMINAL_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}  # fmt: skip
# a task in one of these states may still write its marker: never run its item a second time
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
         "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"}  # fmt: skip


def submit_events(rd: RunDir) -> list[dict[str, Any]]:
    return [e for e in rd.read_state() if e.get("event") == "submit"]


def submitted_arrays(rd: RunDir) -> dict[str, list[dict[str, Any]]]:
    """Latest attempt's arrays per stage."""
    latest: dict[str, tuple[int, list]] = {}
    for event in submit_events(rd):
        stage, attempt = event["stage"], event["attempt"]
        if stage not in latest or attempt > latest[stage][0]:
            latest[stage] = (attempt, list(event["arrays"]))
        elif attempt == latest[stage][0]:
            latest[stage][1].extend(event["arrays"])
    return {stage: arrays for stage, (_, arrays) in latest.items()}


def item_tasks(rd: RunDir) -> dict[str, dict[int, list[tuple[dict[str, Any], int]]]]:
    """stage -> item -> every (array record, position) that ran it, oldest attempt first
    (after `resubmit`, an item's latest task can belong to an earlier attempt than the
    stage's latest array)."""
    out: dict[str, dict[int, list[tuple[dict[str, Any], int]]]] = {}
    for event in sorted(submit_events(rd), key=lambda e: e["attempt"]):
        per_item = out.setdefault(event["stage"], {})
        for record in event["arrays"]:
            for pos, item in enumerate(record["items"]):
                per_item.setdefault(item, []).append((record, pos))
    return out


def sacct_states(job_ids: list[str]) -> dict[str, str] | None:
    """One sacct call for all arrays: `<array>_<task>` -> state; None when sacct is unusable."""
    if not job_ids:
        return {}
    stdout = _query(["sacct", "--noheader", "--parsable2", "-X", "--format=JobID,State", "-j",
                     ",".join(job_ids)])  # fmt: skip
    if stdout is None:
        return None
    states = {}
    for line in stdout.splitlines():
        if "|" in line:
            job, state = line.split("|", 1)
            states[job] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def squeue_states(job_ids: list[str]) -> dict[str, str] | None:
    """One squeue call: the jobs still known to the controller (pending array ranges expanded);
    a job missing from the result has left the queue. None when squeue is unusable."""
    if not job_ids:
        return {}
    stdout = _query(["squeue", "--noheader", "--array", "--format=%i|%T", "--jobs",
                     ",".join(job_ids)], gone_ok=True)  # fmt: skip
    if stdout is None:
        return None
    return {job: state for job, state in (l.split("|", 1) for l in stdout.split() if "|" in l)}


def first_error_line(text: str) -> str:
    """The line of a SLURM client's stderr worth showing: its `fatal:` line, else the first."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    fatal = [line for line in lines if "fatal:" in line]
    return (fatal or lines or ["(no error message)"])[0]


_ERRORS: list[str] = []  # first stderr lines of the latest failed queries (one-line messages)


def _query(cmd: list[str], gone_ok: bool = False) -> str | None:
    """stdout of a scheduler query, or None when the command is missing or fails. `gone_ok`:
    squeue answers "Invalid job id specified" when a single requested job has left the queue
    (several ids: it lists the known ones); that is an empty answer, not a failure."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        _ERRORS.append(f"{cmd[0]}: {err}")
        return None
    if out.returncode == 0:
        return out.stdout
    if gone_ok and "Invalid job id specified" in out.stderr:
        return ""
    _ERRORS.append(first_error_line(out.stderr or f"{cmd[0]} exited with code {out.returncode}"))
    del _ERRORS[:-10]
    return None


def task_state(states: dict[str, str], record: dict[str, Any], pos: int,
               cache: dict[str, dict[int, str]] | None = None) -> str | None:  # fmt: skip
    """State of array position `pos` of `record`, or None when the answer does not name it."""
    cache = {} if cache is None else cache
    key = record["job_id"]
    if key not in cache:
        cache[key] = _expand(states, key, len(record["items"]))
    return cache[key].get(pos)


def live_tasks(rd: RunDir) -> tuple[dict[str, dict[int, str]], str]:
    """stage -> item -> id of its task that is still pending or running (any attempt; the
    latest when several), from ONE scheduler query for every array of the run: `squeue` (the
    controller's live view; sacct lags a few seconds), `sacct` if squeue is unusable. Raises
    TaskFailed when neither answers: without an answer, resubmitting could run items twice."""
    tasks = item_tasks(rd)
    job_ids = list(dict.fromkeys(rec["job_id"] for per_item in tasks.values()
                                 for runs in per_item.values() for rec, _ in runs))  # fmt: skip
    _ERRORS.clear()
    states, source = squeue_states(job_ids), "squeue"
    if states is None:
        states, source = sacct_states(job_ids), "sacct"
    if states is None:
        first = (_ERRORS or ["no error message"])[0]
        raise TaskFailed(f"cannot tell which tasks are still alive (squeue and sacct failed): "
                         f"{first}")  # fmt: skip
    cache: dict[str, dict[int, str]] = {}
    live: dict[str, dict[int, str]] = {}
    for stage, per_item in tasks.items():
        for item, runs in per_item.items():
            for record, pos in runs:  # oldest first: the latest alive one wins
                if task_state(states, record, pos, cache) in ALIVE:
                    live.setdefault(stage, {})[item] = record["tasks"][pos]
    return live, source


def _expand(states: dict[str, str], array_id: str, n: int) -> dict[int, str]:
    """Per array position: state, resolving pending ranges such as `123_[2-4%2]`."""
    result: dict[int, str] = {}
    if n == 1 and array_id in states:  # submitit submits a one-item array as a plain job
        return {0: states[array_id]}
    for job, state in states.items():
        if not job.startswith(f"{array_id}_"):
            continue
        rest = job[len(array_id) + 1 :]
        if rest.startswith("["):
            span = rest.strip("[]").split("%")[0]
            for part in span.split(","):
                lo, _, hi = part.partition("-")
                for pos in range(int(lo), int(hi or lo) + 1):
                    result[pos] = state
        elif rest.isdigit():
            result[int(rest)] = state
    return result


def scheduler_states(rd: RunDir, rows: list[dict]) -> None:
    """Fill running/queued/failed lists of status rows for items without a marker; an item's
    state is that of its most recent task (of whichever attempt ran it last)."""
    tasks = item_tasks(rd)
    if not tasks:
        return
    job_ids = list(dict.fromkeys(rec["job_id"] for per_item in tasks.values()
                                 for runs in per_item.values() for rec, _ in runs))  # fmt: skip
    states = sacct_states(job_ids)
    source = "sacct"
    if states is None:
        states, source = squeue_states(job_ids), "squeue"
    cache: dict[str, dict[int, str]] = {}
    for row in rows:
        row.update(running=[], queued=[], failed=[], unknown=[], source=source)
        per_item = tasks.get(row["stage"], {})
        for item in row["pending"]:
            if item not in per_item:
                continue
            record, pos = per_item[item][-1]
            state = task_state(states or {}, record, pos, cache)
            if state is None and cache.get(record["job_id"]):
                # the scheduler knows the array but not this task: an array task cancelled
                # while pending leaves no accounting row at all (SLURM 22.05)
                state = "CANCELLED"
            if state in ("RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING"):
                row["running"].append(item)
            elif state in ("PENDING", "SUSPENDED"):
                row["queued"].append(item)
            elif state in TERMINAL_BAD or state == "COMPLETED":
                row["failed"].append(item)  # finished without a valid marker
            else:
                row["unknown"].append(item)
        row["queued"] += [i for i in row["pending"] if i not in
                          set(row["running"] + row["failed"] + row["unknown"] + row["queued"])]  # fmt: skip


def is_slurm_available() -> bool:
    try:
        probe = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, check=False)
        return probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
