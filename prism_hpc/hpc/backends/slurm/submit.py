"""Submission: one submitit array per stage (split at MaxArraySize), wired by dependencies.

A stage that `runs_after_failed_dependencies` (PRISM's collect) waits `afterany` on its
predecessors' arrays (so it runs, and names what is missing, even when some of their tasks
failed); every other stage waits `afterok`; every dependent job has `--kill-on-invalid-dep=yes`.
Job ids and the item of every array index are appended to `state.json`.

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
from prism_hpc.hpc.canary import Shape, shape_of, submit_canaries
from prism_hpc.hpc.executor import Run
from prism_hpc.hpc.pending import pending_items
from prism_hpc.hpc.plan import StagePlan, split, write_plan
from prism_hpc.hpc.scripts import (
    MAX_REQUEUES,
    SbatchJob,
    job_name,
    sbatch_options,
    setup_lines,
    warning_signal,
    write_scripts,
)  # fmt: skip
from prism_hpc.store import layout
from prism_hpc.store.rundir import RunDir

# what submitit writes itself: the array range of map_array, its log files, append mode
SUBMITIT_WRITES = ("array", "output", "open-mode")


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


def submitit_executor(
    cfg: Config, name: str, res: dict[str, Any], folder: Path, dependency: str | None
):
    """A submitit executor whose sbatch file carries `sbatch_options` (the rendered scripts'
    translation of the resources) as submitit parameters. The warning signal goes to the task,
    whose submitit handler (SUBMITIT_PREEMPT_SIGNAL, read on the node) checkpoints/requeues."""
    import submitit

    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
    except RuntimeError as err:  # no srun on PATH
        raise TaskFailed(f"submitit cannot submit stage {name}: {err}") from None
    job = SbatchJob(res, job_name(cfg, name), batch_shell_signal=False,
                    dependency=dependency)  # fmt: skip
    # submitit's own keys are spelt with "_" (job_name, time, ...): the same spelling makes
    # these replace its defaults instead of adding a second line
    extra = {k.replace("-", "_"): v for k, v in sbatch_options(job).items()
             if k not in SUBMITIT_WRITES}  # fmt: skip
    sig, delay = warning_signal(res)
    params: dict[str, Any] = {
        "setup": setup_lines(res) + [f"export SUBMITIT_PREEMPT_SIGNAL={sig}"],
        "additional_parameters": extra,
        "stderr_to_stdout": True,
        "signal_delay_s": delay,
    }
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
        folder = layout.submitit_logs(rd.root, plan.stage.name, attempt, k)
        executor = submitit_executor(cfg, plan.stage.name, plan.resources, folder, dependency)
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
    live: dict[str, list[str]] | None = None, canaries: dict[Shape, str] | None = None,
) -> dict[str, list[str]]:  # fmt: skip
    """Submit the items `todo[stage]` of every stage, chained; returns stage -> new array ids.

    A stage waits on what its predecessors submitted now plus their `live` tasks of earlier
    attempts (array job ids and `<array>_<task>` ids mix in one dependency list). A stage with
    nothing to submit passes on its live tasks, or else what it would itself have waited on
    (train -> collect when relabel is online). A stage whose shape has a canary job in
    `canaries` also waits on it (`afterok`)."""
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
        kind = "afterany" if plan.stage.runs_after_failed_dependencies else "afterok"
        max_size = min(plan.resources.get("max_array_size") or size_limit, size_limit)
        canary = (canaries or {}).get(shape_of(plan.resources))
        waits_for = [_dependency(kind, upstream), _dependency("afterok", [canary] if canary else [])]
        dependency = ",".join(d for d in waits_for if d) or None
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


def submit_run(run: Run, everything: list[StagePlan]) -> dict[str, list[str]]:
    """Submit the run's selected stages; `everything`: every stage, planned. plan.json and
    RUN/slurm/ always describe every stage, so that the rendered scripts (eval_array.sbatch
    among them) work for any stage later."""
    rd = run.rd
    write_plan(rd.plan, everything, run.registry.ref)
    write_scripts(run.cfg, everything, rd.slurm, rd.root)
    selected = {s.name for s in run.registry.select(run.only)}
    plans = [p for p in everything if p.stage.name in selected]
    attempt = next_attempt(rd)
    todo = pending_items(rd.root, plans)
    canaries = send_canaries(run, plans, todo, attempt)
    submitted = submit_chain(rd, run.cfg, plans, attempt, todo, canaries=canaries)
    if not submitted:
        print("nothing to do: every item has a valid marker")
    return submitted


def send_canaries(run: Run, plans: list[StagePlan], todo: dict[str, list[int]],
                  attempt: int) -> dict[Shape, str]:  # fmt: skip
    """The canary jobs the arrays about to be submitted wait on (none when switched off by
    `--no-canary` or `resources.canary.enabled: false`, or when the pipeline has none)."""
    with_work = [p for p in plans if todo.get(p.stage.name)]
    if not (run.canary and run.cfg.resources.canary.enabled and run.registry.canary and with_work):
        return {}
    return submit_canaries(run.rd, run.cfg, with_work, attempt, run.registry.canary)


def next_attempt(rd: RunDir) -> int:
    attempts = [e.get("attempt", -1) for e in rd.read_state() if e.get("event") == "submit"]
    return max(attempts, default=-1) + 1
