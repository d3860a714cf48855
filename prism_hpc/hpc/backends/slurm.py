"""SLURM backend: one submitit array per stage (split at MaxArraySize), wired by dependencies.

`collect` waits `afterany` on every recover array (so it runs, and names missing slices, even
when some recover tasks failed); every other stage waits `afterok` on its predecessor; every
dependent job has `--kill-on-invalid-dep=yes`. Job ids and the item of every array index are
appended to `state.json`; status reads markers first and asks `sacct` once for the rest.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError
from prism_hpc.hpc.plan import StagePlan, make_plan, split, write_plan
from prism_hpc.hpc.rundir import RunDir
from prism_hpc.hpc.scripts import job_name, setup_lines, write_scripts

AFTERANY_STAGES = {"collect"}  # gates that must run even when some predecessors failed
TERMINAL_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}  # fmt: skip


def max_array_size() -> int:
    """MaxArraySize from `scontrol show config` (indices must be < it), default 1001."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                             timeout=30, check=False).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return 1001
    for line in out.splitlines():
        if line.strip().startswith("MaxArraySize"):
            try:
                return int(line.split("=", 1)[1].strip())
            except ValueError:
                break
    return 1001


def _executor(rd: RunDir, cfg: Config, plan: StagePlan, folder: Path, dependency: str | None):
    import submitit

    res = plan.resources
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=5)
    extra: dict[str, Any] = {
        k.replace("-", "_"): v for k, v in (res.get("sbatch_extra") or {}).items()
    }
    if dependency:
        extra["dependency"] = dependency
        extra["kill_on_invalid_dep"] = "yes"
    params: dict[str, Any] = {
        "job_name": job_name(cfg, plan.stage.name),
        "time": res["time_min"],
        "mem": f"{int(res['mem_gb'] * 1024)}M",
        "cpus_per_task": res["cpus_per_task"],
        "ntasks_per_node": res["tasks_per_node"],
        "nodes": 1,
        "setup": setup_lines(res),
        "additional_parameters": extra,
        "stderr_to_stdout": True,
        # submitit's default USR2@90 would fire at once for short jobs
        "signal_delay_s": max(10, min(90, res["time_min"] * 60 // 5)),
    }
    for key in ("partition", "account", "qos", "constraint"):
        if res.get(key):
            params[key] = res[key]
    if res.get("gpus_per_node"):
        params["gpus_per_node"] = res["gpus_per_node"]
    if res.get("array_parallelism"):
        params["array_parallelism"] = res["array_parallelism"]
    executor.update_parameters(**params)
    return executor


def _submit_stage(
    rd: RunDir, cfg: Config, plan: StagePlan, indices: list[int], dependency: str | None,
    attempt: int, max_size: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Submit the given item indices as arrays of at most `max_size`; returns array records."""
    import submitit

    from prism_hpc.hpc.task import task_function

    fn = task_function(plan.stage)
    records = []
    for k, chunk in enumerate(split(len(indices), max_size)):
        items = [indices[i] for i in chunk]
        folder = rd.logs / plan.stage.name / f"attempt{attempt}_array{k}"
        executor = _executor(rd, cfg, plan, folder, dependency)
        n = len(items)
        with submitit.helpers.clean_env():
            jobs = executor.map_array(fn, [str(rd.root)] * n, [plan.stage.name] * n, items)
        array_id = jobs[0].job_id.split("_")[0]
        records.append({
            "job_id": array_id,
            "items": items,
            "tasks": [j.job_id for j in jobs],  # "123_4" in an array, "123" for a single job
            "logs": [str(j.paths.stdout).replace("%t", "0") for j in jobs],
            "folder": str(folder),
        })  # fmt: skip
    return records


def _dependency(kind: str, job_ids: list[str]) -> str | None:
    return f"{kind}:" + ":".join(job_ids) if job_ids else None


def submit_plans(rd: RunDir, cfg: Config, plans: list[StagePlan], attempt: int,
                 only_incomplete: bool) -> dict[str, list[str]]:  # fmt: skip
    """Submit every stage with work left, chained; returns stage -> array job ids."""
    size_limit = max_array_size()
    submitted: dict[str, list[str]] = {}
    submitted_now: set[str] = set()
    for plan in plans:
        indices = [i.index for i in plan.items]
        if only_incomplete:
            indices = [i for i in indices if not plan.stage.is_done(rd.root, plan.items[i])]
        upstream = [j for dep in plan.stage.depends_on for j in submitted.get(dep, [])]
        if not indices:
            # nothing to run here (no items, or all done): dependents wait on what this stage
            # itself would have waited on, e.g. train -> collect when relabel is online
            submitted[plan.stage.name] = upstream
            continue
        kind = "afterany" if plan.stage.name in AFTERANY_STAGES else "afterok"
        max_size = min(plan.resources.get("max_array_size") or size_limit, size_limit)
        records = _submit_stage(rd, cfg, plan, indices, _dependency(kind, upstream), attempt,
                                max_size)  # fmt: skip
        submitted[plan.stage.name] = [r["job_id"] for r in records]
        submitted_now.add(plan.stage.name)
        rd.append_state({"event": "submit", "attempt": attempt, "stage": plan.stage.name,
                         "dependency": _dependency(kind, upstream), "arrays": records})  # fmt: skip
        print(
            f"[{plan.stage.name}] {len(indices)} item(s) -> job(s) {', '.join(submitted[plan.stage.name])}"
        )
    return {k: v for k, v in submitted.items() if k in submitted_now}


def _all_plans(cfg: Config) -> list[StagePlan]:
    from prism_hpc.stages.pipeline import all_stages

    return make_plan(cfg, all_stages(), max_array_size())


def submit_slurm(rd: RunDir, cfg: Config, only: list[str] | None = None) -> dict[str, list[str]]:
    plans = _all_plans(cfg)
    if only:
        plans = [p for p in plans if p.stage.name in only]
    write_plan(rd.plan, plans)
    write_scripts(cfg, plans, rd.slurm, rd.root)
    attempt = _next_attempt(rd)
    submitted = submit_plans(rd, cfg, plans, attempt, only_incomplete=True)
    if not submitted:
        print("nothing to do: every item has a valid marker")
    return submitted


def _next_attempt(rd: RunDir) -> int:
    attempts = [e.get("attempt", -1) for e in rd.read_state() if e.get("event") == "submit"]
    return max(attempts, default=-1) + 1


# ---- operations ------------------------------------------------------------------------


def submitted_arrays(rd: RunDir) -> dict[str, list[dict[str, Any]]]:
    """Latest attempt's arrays per stage."""
    latest: dict[str, tuple[int, list]] = {}
    for event in rd.read_state():
        if event.get("event") != "submit":
            continue
        stage, attempt = event["stage"], event["attempt"]
        if stage not in latest or attempt > latest[stage][0]:
            latest[stage] = (attempt, list(event["arrays"]))
        elif attempt == latest[stage][0]:
            latest[stage][1].extend(event["arrays"])
    return {stage: arrays for stage, (_, arrays) in latest.items()}


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
    stdout = _query(["squeue", "--noheader", "--array", "--format=%i|%T", "--jobs",
                     ",".join(job_ids)])  # fmt: skip
    if stdout is None:
        return None
    return {job: state for job, state in (l.split("|", 1) for l in stdout.split() if "|" in l)}


def _query(cmd: list[str]) -> str | None:
    """stdout of a scheduler query, or None when the command is missing or fails."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


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
    """Fill running/queued/failed lists of status rows for items without a marker."""
    arrays = submitted_arrays(rd)
    if not arrays:
        return
    job_ids = [a["job_id"] for recs in arrays.values() for a in recs]
    states = sacct_states(job_ids)
    source = "sacct"
    if states is None:
        states, source = squeue_states(job_ids), "squeue"
    for row in rows:
        row.update(running=[], queued=[], failed=[], unknown=[], source=source)
        pending = set(row["pending"])
        for record in arrays.get(row["stage"], []):
            per_pos = _expand(states or {}, record["job_id"], len(record["items"]))
            for pos, item in enumerate(record["items"]):
                if item not in pending:
                    continue
                state = per_pos.get(pos)
                if state is None and per_pos:
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


def active_job_ids(rd: RunDir) -> list[str]:
    return [r["job_id"] for e in rd.read_state() if e.get("event") == "submit" for r in e["arrays"]]


def cancel_jobs(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(
            ["scancel", *job_ids], capture_output=True, text=True, timeout=60, check=False
        )


def cancel_run(rd: RunDir) -> list[str]:
    ids = active_job_ids(rd)
    cancel_jobs(ids)
    rd.append_state({"event": "cancel", "jobs": ids})
    return ids


def resubmit_failed(rd: RunDir) -> dict[str, list[str]]:
    """New arrays for incomplete items only; dependents re-submitted against the new ids; the
    stale dependents of earlier attempts are cancelled."""
    cfg = rd.load_config()
    plans = _all_plans(cfg)
    stale = active_job_ids(rd)
    cancel_jobs([j for j in stale if _is_pending_or_running(j)])
    submitted = submit_plans(rd, cfg, plans, _next_attempt(rd), only_incomplete=True)
    rd.append_state({"event": "resubmit", "cancelled_stale": stale})
    return submitted


def _is_pending_or_running(job_id: str) -> bool:
    states = squeue_states([job_id]) or {}
    return any(s in ("PENDING", "RUNNING", "CONFIGURING") for s in states.values())


def log_path(rd: RunDir, stage: str, index: int) -> Path:
    arrays = submitted_arrays(rd).get(stage)
    if not arrays:
        raise UserError(f"{rd.root}: stage '{stage}' was never submitted to SLURM")
    for record in arrays:
        if index in record["items"]:
            return Path(record["logs"][record["items"].index(index)])
    raise UserError(f"{rd.root}: item {index} of stage '{stage}' is not in the latest submission")


def is_slurm_available() -> bool:
    try:
        probe = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, check=False)
        return probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
