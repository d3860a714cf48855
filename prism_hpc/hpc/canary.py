"""Canary jobs: one short job per resource shape, before the arrays that would run on it.

A broken environment on the compute nodes (driver/toolkit mismatch, a weights file missing,
an unreadable data root, bf16 on a V100) should cost one short job, not the queue wait and
failure of every task of a fifty-task array. So `submit` and `resubmit` on SLURM first send,
per distinct (partition, GPUs per node, constraint) among the stages with work, one job with
that stage's resources that runs the pipeline's canary function (named by the registry's
`canary` reference, so this module knows nothing of PRISM), and every array of that shape
waits on it with `afterok` (+ `--kill-on-invalid-dep=yes`: a failed canary cancels them).
The canary writes only under `RUN/canary/attempt<k>/` and its marker `canary.done` there;
it never counts as work of the run.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.errors import TaskFailed
from prism_hpc.hpc.plan import StagePlan
from prism_hpc.store import layout
from prism_hpc.store.atomic import atomic_write_text
from prism_hpc.store.rundir import RunDir

CANARY_TIME_MIN = 20  # default limit: doctor + one tiny item per stage, imports included
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL",
                 "DEADLINE", "PREEMPTED"}  # fmt: skip

Shape = tuple[str, int, str]


def shape_of(res: dict[str, Any]) -> Shape:
    """What makes two stages need different nodes: partition, GPUs, constraint."""
    return (res.get("partition") or "", int(res.get("gpus_per_node") or 0),
            res.get("constraint") or "")  # fmt: skip


def canary_resources(cfg: Config, stage_res: dict[str, Any]) -> dict[str, Any]:
    """The stage's node shape (partition, GPUs, constraint, the same CPUs) as ONE task: the
    canary runs the pipeline through the local executor, which starts a stage's ranks itself
    (SLURM would otherwise start the whole canary once per rank). Time and memory from
    `resources.canary` where set."""
    res = dict(stage_res)
    ranks = int(res.get("tasks_per_node") or 1)
    res["tasks_per_node"] = 1
    res["cpus_per_task"] = int(res.get("cpus_per_task") or 1) * ranks
    own = cfg.resources.canary.model_dump(exclude={"enabled"})
    res.update({k: v for k, v in own.items() if v is not None})
    if cfg.resources.canary.time_min is None:
        res["time_min"] = min(res.get("time_min") or CANARY_TIME_MIN, CANARY_TIME_MIN)
    return res


class CanaryCall:
    """What submitit runs on the node: the registry's canary function, then the marker."""

    def __call__(self, run_dir: str, attempt: int, ref: str) -> str:
        module, _, attr = ref.partition(":")
        check = getattr(importlib.import_module(module), attr)
        folder = layout.canary_dir(run_dir, attempt)
        info = check(Path(run_dir), folder)
        marker = layout.canary_marker(run_dir, attempt)
        atomic_write_text(marker, json.dumps(info or {}) + "\n")
        return str(marker)


def canary_events(rd: RunDir) -> list[dict[str, Any]]:
    return [e for e in rd.read_state() if e.get("event") == "canary"]


def submit_canaries(rd: RunDir, cfg: Config, plans: list[StagePlan], attempt: int,
                    ref: str) -> dict[Shape, str]:  # fmt: skip
    """One canary per shape of `plans` (the stages with work); returns shape -> job id."""
    from prism_hpc.hpc.backends.slurm.env import clean_submission_env
    from prism_hpc.hpc.backends.slurm.submit import submitit_executor

    first: dict[Shape, StagePlan] = {}
    for plan in plans:
        first.setdefault(shape_of(plan.resources), plan)
    jobs: dict[Shape, str] = {}
    for k, (shape, plan) in enumerate(first.items()):
        res = canary_resources(cfg, plan.resources)
        folder = layout.canary_logs(rd.root, attempt, k)
        executor = submitit_executor(cfg, "canary", res, folder, None)
        try:
            with clean_submission_env(res):
                job = executor.submit(CanaryCall(), str(rd.root), attempt, ref)
        except Exception as err:  # noqa: BLE001 - submitit's errors are many; one line here
            raise TaskFailed(f"sbatch failed for the canary: {str(err).splitlines()[0]}") from None
        jobs[shape] = job.job_id
        stages = [p.stage.name for p in plans if shape_of(p.resources) == shape]
        rd.append_state({"event": "canary", "attempt": attempt, "shape": list(shape),
                         "job_id": job.job_id, "stages": stages,
                         "log": str(job.paths.stdout).replace("%t", "0")})  # fmt: skip
        print(f"[canary] {', '.join(stages)}: job {job.job_id} runs first")
    return jobs


def canary_lines(rd: RunDir) -> list[str]:
    """One line per canary of the latest attempt that sent one: passed, failed (with its
    log), or its scheduler state."""
    events = canary_events(rd)
    if not events:
        return []
    latest = max(e["attempt"] for e in events)
    current = [e for e in events if e["attempt"] == latest]
    from prism_hpc.hpc.backends.slurm.query import sacct_states

    states = sacct_states([e["job_id"] for e in current]) or {}
    lines = []
    for e in current:
        if layout.canary_marker(rd.root, latest).is_file():
            lines.append(f"canary (attempt {latest}): passed")
            continue
        state = states.get(e["job_id"], "UNKNOWN")
        if state in FAILED_STATES:
            lines.append(f"canary (attempt {latest}) {state}: the arrays of "
                         f"{', '.join(e['stages'])} will not start; log {e['log']}; fix it, then "
                         f"`prism-hpc resubmit {rd.root}`")  # fmt: skip
        else:
            lines.append(f"canary (attempt {latest}): {state.lower()} (job {e['job_id']})")
    return lines
