"""Rendered sbatch scripts: what `plan` shows and what plain-sbatch users submit.

Every value that comes from the config is passed through `shlex.quote`; names are validated by
the schema (no control characters), so no config string can start a shell command.
`resources.<stage>.setup` lines are commands (`module load cuda/12.1`, `source
~/envs/prism/bin/activate`): each is split into words like a shell would, `~` and `$VAR` are
expanded at submission, and every word is quoted again, so `$(...)`, backticks, `;`, `|` and
redirections stay literal text. Complex set-up belongs in a file that a setup line sources.

Resources become sbatch options in one place, `sbatch_options`, for the rendered scripts and
for submitit's submissions alike (`backends/slurm/submit.submitit_executor`).

Requeue, one policy: a task warned before its time limit (`resources.<stage>.signal`, default
`USR2@90`, the delay capped by `warning_signal`) is requeued, at most `MAX_REQUEUES` times, and
the requeued task skips finished items and continues from its restart state (a student's last
epoch checkpoint). Who catches the warning depends on what runs in the job, and the tests pin
both: a rendered script runs a plain `python -m prism_hpc.hpc.task`, which has no handler and
would die at once, so the script asks for `--signal=B:SIG@SECONDS` (the batch shell), traps it
and runs `scontrol requeue`; a submitit job runs submitit's own handler inside the task, so it
asks for `--signal=SIG@SECONDS` (the task) and that handler checkpoints and requeues.

`RUN/slurm/eval_array.sbatch` is the stage marked `serves_eval_array` (the students) rendered
for plain sbatch users (`slurm/eval_array.sh` is its generic, config-free twin): that stage's
resources, but the run directory (and the array chunk) are arguments, so one rendering serves
every run of the same config: `sbatch RUN/slurm/eval_array.sbatch [RUN_DIR [CHUNK]]`.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.hpc.plan import StagePlan
from prism_hpc.store import layout
from prism_hpc.store.atomic import atomic_write_text

JOB_ENV = {"HDF5_USE_FILE_LOCKING": "FALSE", "PYTHONUNBUFFERED": "1"}
DEFAULT_SIGNAL = "USR2@90"
MAX_REQUEUES = 5  # both launchers: a task that never fits its limit stops being requeued


def quote_setup_line(line: str) -> str:
    """`source ~/env/bin/activate` -> `source /home/u/env/bin/activate`, nothing executed."""
    words = shlex.split(line)
    return " ".join(shlex.quote(os.path.expandvars(os.path.expanduser(w))) for w in words)


def setup_lines(res: dict[str, Any]) -> list[str]:
    env = [f"export {k}={shlex.quote(v)}" for k, v in JOB_ENV.items()]
    return env + [quote_setup_line(line) for line in res.get("setup") or []]


def job_name(cfg: Config, stage: str) -> str:
    return f"prism-{cfg.name}-{stage}"


def warning_signal(res: dict[str, Any]) -> tuple[str, int]:
    """`resources.signal` -> (signal name without SIG, seconds before the limit). The delay is
    capped at a fifth of the time limit: SLURM's default 90 s would fire at once for a 1-minute
    job (and a task signalled at start never gets anything done)."""
    name, _, seconds = (res.get("signal") or DEFAULT_SIGNAL).partition("@")
    name = name.removeprefix("SIG")
    return name, max(1, min(int(seconds), int(res["time_min"]) * 60 // 5))


@dataclass(frozen=True)
class SbatchJob:
    """One submission of a stage's tasks, as its #SBATCH lines describe it."""

    resources: dict[str, Any]  # the stage's plan entry `resources`
    name: str  # --job-name
    batch_shell_signal: bool  # True: the batch shell traps the warning (rendered scripts)
    array: str | None = None  # --array (submitit writes its own)
    output: str | None = None  # --output (submitit writes its own)
    dependency: str | None = None  # afterok:1:2 ..., with --kill-on-invalid-dep=yes


def sbatch_options(job: SbatchJob) -> dict[str, str | bool]:
    """Stage resources -> sbatch long options, in #SBATCH order. `sbatch_extra` overrides what
    the resources say; the job's name, array, log and dependency override `sbatch_extra`."""
    res = job.resources
    opts: dict[str, str | bool] = {}
    for key in ("partition", "account", "qos", "constraint"):
        if res.get(key):
            opts[key] = str(res[key])
    opts["time"] = str(res["time_min"])
    opts["mem"] = f"{int(res['mem_gb'] * 1024)}M"
    opts["cpus-per-task"] = str(res["cpus_per_task"])
    opts["ntasks-per-node"] = str(res["tasks_per_node"])
    opts["nodes"] = "1"
    if res.get("gpus_per_node"):
        opts["gpus-per-node"] = str(res["gpus_per_node"])
    sig, delay = warning_signal(res)
    opts["signal"] = f"{'B:' if job.batch_shell_signal else ''}{sig}@{delay}"
    opts["open-mode"] = "append"  # a requeued task appends to its log
    for key, value in (res.get("sbatch_extra") or {}).items():
        opts[key.replace("_", "-")] = value if value is True else str(value)
    opts["job-name"] = job.name
    for key, value in (("array", job.array), ("output", job.output),
                       ("dependency", job.dependency)):  # fmt: skip
        if value:
            opts[key] = value
    if job.dependency:
        opts["kill-on-invalid-dep"] = "yes"
    return opts


def array_range(res: dict[str, Any], n: int) -> str:
    """`--array` for `n` tasks, `%array_parallelism` when set."""
    par = res.get("array_parallelism")
    return f"0-{n - 1}" + (f"%{par}" if par else "")


def _header(
    opts: dict[str, str | bool], res: dict[str, Any], comments: list[str] = ()
) -> list[str]:
    """Shebang, comments, the #SBATCH lines, then the environment every job sets up."""
    lines = ["#!/bin/bash", *comments]
    for key, value in opts.items():
        lines.append(
            f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(value)}"
        )
    lines += ["", "# environment of every prism-hpc job, then resources.setup (quoted words)"]
    return lines + setup_lines(res)


def _run_with_requeue(res: dict[str, Any], command: str) -> list[str]:
    """Run `command` (an srun line) in the background so that the batch shell can act on the
    warning signal at once: it requeues the job, whose task then resumes."""
    sig, _ = warning_signal(res)
    return [
        f"# {sig} (--signal=B:...) before the time limit: requeue; the task resumes after it",
        "prism_requeue() {",
        f'  echo "prism-hpc: {sig} before the time limit (restart ${{SLURM_RESTART_COUNT:-0}})"',
        f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {MAX_REQUEUES} ]; then',
        '    scontrol requeue "$SLURM_JOB_ID" || echo "prism-hpc: scontrol requeue failed" >&2',
        "  fi",
        "}",
        f"trap prism_requeue {sig}",
        f"{command} &",
        "PRISM_STEP=$!",
        'wait "$PRISM_STEP"; rc=$?',
        "# `wait` returns early when the trap runs: wait for the step itself",
        'while kill -0 "$PRISM_STEP" 2>/dev/null; do wait "$PRISM_STEP"; rc=$?; done',
        'exit "$rc"',
        "",
    ]


TASK = 'srun --unbuffered "${PRISM_PYTHON:-python}" -m prism_hpc.hpc.task "$RUN_DIR" "$STAGE"'


def render_script(cfg: Config, plan: StagePlan, chunk: int, run_dir: Path) -> str:
    res = plan.resources
    opts = sbatch_options(SbatchJob(
        res, job_name(cfg, plan.stage.name), batch_shell_signal=True,
        array=array_range(res, len(plan.chunks[chunk])),
        output=str(layout.sbatch_log(run_dir, plan.stage.name)),
    ))  # fmt: skip
    lines = _header(opts, res)
    lines += [
        "",
        f"RUN_DIR={shlex.quote(str(run_dir))}",
        f"STAGE={shlex.quote(plan.stage.name)}",
        f"CHUNK={chunk}",
        "# the array index maps to an item through plan.json, never by arithmetic",
    ]
    lines += _run_with_requeue(res, TASK + ' --array "$CHUNK" "$SLURM_ARRAY_TASK_ID"')
    return "\n".join(lines)


def render_eval_array(cfg: Config, plan: StagePlan, run_dir: Path) -> str:
    """The student train/eval array with that stage's resources; RUN_DIR and CHUNK are
    arguments."""
    res = plan.resources
    first = plan.chunks[0] if plan.chunks else [0]
    opts = sbatch_options(SbatchJob(
        res, job_name(cfg, "eval"), batch_shell_signal=True, array=array_range(res, len(first)),
        output=str(layout.sbatch_log(run_dir, plan.stage.name, prefix="eval")),
    ))  # fmt: skip
    chunks = len(plan.chunks)
    comments = [
        f"# Student training + evaluation (stage {plan.stage.name}) of a prism-hpc run of config",
        f"# {cfg.name!r}, with resources.{plan.stage.name} (GPUs, tasks, time, signal) below:",
        "#",
        "#   sbatch eval_array.sbatch [RUN_DIR [CHUNK [eval]]]",
        "#",
        "# With `eval` (third argument) a task only evaluates the student's saved checkpoint",
        "# (EMA weights when present) and writes eval.json next to it: no training.",
        "#",
        "# RUN_DIR defaults to the run this was rendered for. Array index i runs item i of array",
        f"# CHUNK (default 0) of the run's plan.json ({chunks} chunk(s) here; with more than one,",
        "# submit each with its own --array and CHUNK). Finished items exit at once, so",
        "# re-submitting is safe. Command-line options (--time, --partition, ...) override the",
        "# #SBATCH lines; --output too if RUN_DIR is not the default.",
    ]
    lines = _header(opts, res, comments)
    lines += [
        "",
        f'RUN_DIR="${{1:-}}"; [ -n "$RUN_DIR" ] || RUN_DIR={shlex.quote(str(run_dir))}',
        f"STAGE={shlex.quote(plan.stage.name)}",
        'CHUNK="${2:-0}"',
        "# the array index maps to an item through plan.json, never by arithmetic",
        'if [ "${3:-}" = eval ]; then',
        (
            '  exec "${PRISM_PYTHON:-python}" -m prism_hpc.train.eval_array "$RUN_DIR" --array '
            '"$CHUNK" "$SLURM_ARRAY_TASK_ID"'
        ),
        "fi",
    ]
    lines += _run_with_requeue(res, TASK + ' --array "$CHUNK" "$SLURM_ARRAY_TASK_ID"')
    return "\n".join(lines)


def write_scripts(cfg: Config, plans: list[StagePlan], folder: Path, run_dir: Path) -> list[Path]:
    """One script per stage array, plus `eval_array.sbatch` when the plan trains students. The
    log folders are created too: sbatch cannot create the folder of `--output`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for plan in plans:
        layout.stage_logs(run_dir, plan.stage.name).mkdir(parents=True, exist_ok=True)
        for chunk in range(len(plan.chunks)):
            suffix = "" if len(plan.chunks) == 1 else f".{chunk}"
            path = layout.stage_script(folder, plan.stage.name, suffix)
            atomic_write_text(path, render_script(cfg, plan, chunk, run_dir))
            written.append(path)
        if plan.stage.serves_eval_array and plan.items:
            path = layout.eval_array_script(folder)
            atomic_write_text(path, render_eval_array(cfg, plan, run_dir))
            written.append(path)
    return written
