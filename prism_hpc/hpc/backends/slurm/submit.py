"""Submission: one submitit array per stage (split at MaxArraySize), wired by dependencies.

`collect` waits `afterany` on every recover array (so it runs, and names missing slices, even
when some recover tasks failed); every other stage waits `afterok` on its predecessor; every
dependent job has `--kill-on-invalid-dep=yes`. Job ids and the item of every array index are
appended to `state.json`.

`sbatch` runs in the environment of `env.clean_submission_env` (the caller's allocation removed,
`SLURM_CONF` kept). A failing `sbatch` is one line (`TaskFailed`, exit code 1), never
submitit's traceback.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.errors import TaskFailed
from prism_hpc.hpc.backends.slurm.env import clean_submission_env
from prism_hpc.hpc.backends.slurm.query import first_error_line
from prism_hpc.hpc.pending import pending_items
from prism_hpc.hpc.plan import StagePlan, make_plan, split, write_plan
from prism_hpc.hpc.scripts import job_name, setup_lines, warning_signal, write_scripts
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import StageRegistry

AFTERANY_STAGES = {"collect"}  # gates that must run even when some predecessors failed


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
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=5)
    except RuntimeError as err:  # no srun on PATH
        raise TaskFailed(f"submitit cannot submit stage {plan.stage.name}: {err}") from None
    extra: dict[str, Any] = {
        k.replace("-", "_"): v for k, v in (res.get("sbatch_extra") or {}).items()
    }
    if dependency:
        extra["dependency"] = dependency
        extra["kill_on_invalid_dep"] = "yes"
    # resources.signal (default USR2@90, the delay capped for short limits): submitit signals
    # the task, whose handler (SUBMITIT_PREEMPT_SIGNAL, read on the node) checkpoints/requeues
    sig, delay = warning_signal(res)
    extra.setdefault("signal", f"{sig}@{delay}")
    params: dict[str, Any] = {
        "job_name": job_name(cfg, plan.stage.name),
        "time": res["time_min"],
        "mem": f"{int(res['mem_gb'] * 1024)}M",
        "cpus_per_task": res["cpus_per_task"],
        "ntasks_per_node": res["tasks_per_node"],
        "nodes": 1,
        "setup": setup_lines(res) + [f"export SUBMITIT_PREEMPT_SIGNAL={sig}"],
        "additional_parameters": extra,
        "stderr_to_stdout": True,
        "signal_delay_s": delay,
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


class PartialSubmission(TaskFailed):
    """sbatch failed for one array of a stage; `records`: the stage's arrays submitted before."""

    def __init__(self, message: str, records: list[dict[str, Any]]):
        super().__init__(message)
        self.records = records


def _submit_stage(
    rd: RunDir, cfg: Config, plan: StagePlan, indices: list[int], dependency: str | None,
    attempt: int, max_size: int,
) -> list[dict[str, Any]]:  # fmt: skip
    """Submit the given item indices as arrays of at most `max_size`; returns array records."""
    from submitit.core.utils import FailedSubmissionError, UncompletedJobError

    from prism_hpc.hpc.task import task_function

    fn = task_function(plan.stage)
    records = []
    for k, chunk in enumerate(split(len(indices), max_size)):
        items = [indices[i] for i in chunk]
        folder = rd.logs / plan.stage.name / f"attempt{attempt}_array{k}"
        executor = _executor(rd, cfg, plan, folder, dependency)
        n = len(items)
        # submitit prints sbatch's stderr itself before raising: keep it for the one-line error
        try:
            with clean_submission_env(plan.resources), contextlib.redirect_stderr(io.StringIO()):
                jobs = executor.map_array(fn, [str(rd.root)] * n, [plan.stage.name] * n, items)
        except (UncompletedJobError, FailedSubmissionError, OSError) as err:
            msg = f"sbatch failed for stage {plan.stage.name}: {first_error_line(str(err))}"
            raise PartialSubmission(msg, records) from None
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


def submit_chain(
    rd: RunDir, cfg: Config, plans: list[StagePlan], attempt: int, todo: dict[str, list[int]],
    live: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:  # fmt: skip
    """Submit the items `todo[stage]` of every stage, chained; returns stage -> new array ids.

    A stage waits on what its predecessors submitted now plus their `live` tasks of earlier
    attempts (array job ids and `<array>_<task>` ids mix in one dependency list). A stage with
    nothing to submit passes on its live tasks, or else what it would itself have waited on
    (train -> collect when relabel is online)."""
    size_limit = max_array_size()
    live = live or {}
    waits: dict[str, list[str]] = {}  # what a dependent of each stage waits on
    submitted: dict[str, list[str]] = {}
    for plan in plans:
        name = plan.stage.name
        upstream = [j for dep in plan.stage.depends_on for j in waits.get(dep, [])]
        indices = todo.get(name, [])
        if not indices:
            waits[name] = list(live.get(name, [])) or upstream
            continue
        kind = "afterany" if name in AFTERANY_STAGES else "afterok"
        max_size = min(plan.resources.get("max_array_size") or size_limit, size_limit)
        dependency = _dependency(kind, upstream)
        try:
            records = _submit_stage(rd, cfg, plan, indices, dependency, attempt, max_size)
        except PartialSubmission as err:
            if err.records:  # arrays of this stage that did get a job id: recorded, named
                submitted[name] = [r["job_id"] for r in err.records]
                rd.append_state({"event": "submit", "attempt": attempt, "stage": name,
                                 "dependency": dependency, "arrays": err.records})  # fmt: skip
            if submitted:
                done = ", ".join(f"{s} ({' '.join(ids)})" for s, ids in submitted.items())
                raise TaskFailed(f"{err}; already submitted: {done} "
                                 f"(`prism-hpc cancel {rd.root}` cancels them)") from None  # fmt: skip
            raise
        submitted[name] = [r["job_id"] for r in records]
        waits[name] = submitted[name] + list(live.get(name, []))
        rd.append_state({"event": "submit", "attempt": attempt, "stage": name,
                         "dependency": dependency, "arrays": records})  # fmt: skip
        print(f"[{name}] {len(indices)} item(s) -> job(s) {', '.join(submitted[name])}")
    return submitted


def submit_plans(rd: RunDir, cfg: Config, plans: list[StagePlan], attempt: int,
                 only_incomplete: bool) -> dict[str, list[str]]:  # fmt: skip
    """Submit every stage with work left, chained; returns stage -> array job ids."""
    if only_incomplete:
        todo = pending_items(rd.root, plans)
    else:
        todo = {p.stage.name: [i.index for i in p.items] for p in plans}
    return submit_chain(rd, cfg, plans, attempt, todo)


def all_plans(
    cfg: Config, registry: StageRegistry, only: list[str] | None = None
) -> list[StagePlan]:  # fmt: skip
    return make_plan(cfg, registry.select(only), max_array_size())


def submit_slurm(
    rd: RunDir, cfg: Config, registry: StageRegistry, only: list[str] | None = None
) -> dict[str, list[str]]:
    """Submit the selected stages. plan.json and RUN/slurm/ always describe every stage, so
    that the rendered scripts (eval_array.sbatch among them) work for any stage later."""
    selected = {s.name for s in registry.select(only)}
    everything = all_plans(cfg, registry)
    write_plan(rd.plan, everything, registry.ref)
    write_scripts(cfg, everything, rd.slurm, rd.root)
    plans = [p for p in everything if p.stage.name in selected]
    attempt = next_attempt(rd)
    submitted = submit_plans(rd, cfg, plans, attempt, only_incomplete=True)
    if not submitted:
        print("nothing to do: every item has a valid marker")
    return submitted


def next_attempt(rd: RunDir) -> int:
    attempts = [e.get("attempt", -1) for e in rd.read_state() if e.get("event") == "submit"]
    return max(attempts, default=-1) + 1
