"""Rendered sbatch scripts: what `plan` shows and what plain-sbatch users submit.

Every value that comes from the config is passed through `shlex.quote`; names are validated by
the schema (no control characters), so no config string can start a shell command.
`resources.<stage>.setup` lines are commands (`module load cuda/12.1`, `source
~/envs/prism/bin/activate`): each is split into words like a shell would, `~` and `$VAR` are
expanded at submission, and every word is quoted again, so `$(...)`, backticks, `;`, `|` and
redirections stay literal text. Complex set-up belongs in a file that a setup line sources.

Warning signal (`resources.<stage>.signal`, default `USR2@90`): rendered scripts ask for it as
`--signal=B:SIG@SECONDS`, i.e. for the batch shell, which traps it and requeues the job
(`scontrol requeue`, at most `MAX_REQUEUES` times); the requeued task skips finished items and
resumes training from its last epoch checkpoint. The task processes themselves are not
signalled: a plain `python -m prism_hpc.hpc.task` has no handler and would die at once. (The
submitit path signals the task instead, where submitit's handler checkpoints and requeues.)

`RUN/slurm/eval_array.sbatch` is the `train` stage rendered for plain sbatch users
(`slurm/eval_array.sh` is its generic, config-free twin): the resources of `resources.train`,
but the run directory (and the array chunk) are arguments, so one rendering serves every run of
the same config: `sbatch RUN/slurm/eval_array.sbatch [RUN_DIR [CHUNK]]`.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.hpc.plan import StagePlan
from prism_hpc.store.atomic import atomic_write_text

JOB_ENV = {"HDF5_USE_FILE_LOCKING": "FALSE", "PYTHONUNBUFFERED": "1"}
DEFAULT_SIGNAL = "USR2@90"
MAX_REQUEUES = 5  # like submitit's max_num_timeout: a task that never fits its limit stops
EVAL_STAGE = "train"  # the stage `eval_array.sbatch` runs


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


def sbatch_options(res: dict[str, Any]) -> dict[str, str | bool]:
    """Stage resources -> sbatch long options (without dependencies and arrays)."""
    opts: dict[str, str | bool] = {}
    for key, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"),
                      ("constraint", "constraint")):  # fmt: skip
        if res.get(key):
            opts[flag] = str(res[key])
    opts["time"] = str(res["time_min"])
    opts["mem"] = f"{int(res['mem_gb'] * 1024)}M"
    opts["cpus-per-task"] = str(res["cpus_per_task"])
    opts["ntasks-per-node"] = str(res["tasks_per_node"])
    opts["nodes"] = "1"
    if res.get("gpus_per_node"):
        opts["gpus-per-node"] = str(res["gpus_per_node"])
    sig, delay = warning_signal(res)
    opts["signal"] = f"B:{sig}@{delay}"
    opts["open-mode"] = "append"  # a requeued task appends to its log
    for key, value in (res.get("sbatch_extra") or {}).items():
        opts[key.replace("_", "-")] = value if value is True else str(value)
    return opts


def _header(opts: dict[str, str | bool], comments: list[str] = ()) -> list[str]:
    lines = ["#!/bin/bash", *comments]
    for key, value in opts.items():
        lines.append(
            f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(value)}"
        )
    return lines


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
    indices = plan.chunks[chunk]
    opts = sbatch_options(res)
    opts["job-name"] = job_name(cfg, plan.stage.name)
    array = f"0-{len(indices) - 1}"
    if res.get("array_parallelism"):
        array += f"%{res['array_parallelism']}"
    opts["array"] = array
    opts["output"] = str(Path(run_dir) / "logs" / plan.stage.name / "sbatch_%A_%a.log")
    lines = _header(opts)
    lines += ["", "# environment of every prism-hpc job, then resources.setup (quoted words)"]
    lines += setup_lines(res)
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
    """The student train/eval array with `resources.train`; RUN_DIR and CHUNK are arguments."""
    res = plan.resources
    opts = sbatch_options(res)
    opts["job-name"] = job_name(cfg, "eval")
    first = plan.chunks[0] if plan.chunks else [0]
    opts["array"] = f"0-{len(first) - 1}" + (
        f"%{res['array_parallelism']}" if res.get("array_parallelism") else ""
    )
    opts["output"] = str(Path(run_dir) / "logs" / plan.stage.name / "eval_%A_%a.log")
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
    lines = _header(opts, comments)
    lines += ["", "# environment of every prism-hpc job, then resources.setup (quoted words)"]
    lines += setup_lines(res)
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
        (Path(run_dir) / "logs" / plan.stage.name).mkdir(parents=True, exist_ok=True)
        for chunk in range(len(plan.chunks)):
            suffix = "" if len(plan.chunks) == 1 else f".{chunk}"
            path = folder / f"{plan.stage.name}{suffix}.sbatch"
            atomic_write_text(path, render_script(cfg, plan, chunk, run_dir))
            written.append(path)
        if plan.stage.name == EVAL_STAGE and plan.items:
            path = folder / "eval_array.sbatch"
            atomic_write_text(path, render_eval_array(cfg, plan, run_dir))
            written.append(path)
    return written
