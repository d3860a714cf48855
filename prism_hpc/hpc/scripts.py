"""Rendered sbatch scripts: what `plan` shows and what plain-sbatch users submit.

Every value that comes from the config is passed through `shlex.quote`; names are validated by
the schema (no control characters), so no config string can start a shell command.
`resources.<stage>.setup` lines are commands (`module load cuda/12.1`, `source
~/envs/prism/bin/activate`): each is split into words like a shell would, `~` and `$VAR` are
expanded at submission, and every word is quoted again, so `$(...)`, backticks, `;`, `|` and
redirections stay literal text. Complex set-up belongs in a file that a setup line sources.
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


def quote_setup_line(line: str) -> str:
    """`source ~/env/bin/activate` -> `source /home/u/env/bin/activate`, nothing executed."""
    words = shlex.split(line)
    return " ".join(shlex.quote(os.path.expandvars(os.path.expanduser(w))) for w in words)


def setup_lines(res: dict[str, Any]) -> list[str]:
    env = [f"export {k}={shlex.quote(v)}" for k, v in JOB_ENV.items()]
    return env + [quote_setup_line(line) for line in res.get("setup") or []]


def job_name(cfg: Config, stage: str) -> str:
    return f"prism-{cfg.name}-{stage}"


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
    for key, value in (res.get("sbatch_extra") or {}).items():
        opts[key.replace("_", "-")] = value if value is True else str(value)
    return opts


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
    lines = ["#!/bin/bash"]
    for key, value in opts.items():
        lines.append(
            f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(value)}"
        )
    lines += ["", "# environment of every prism-hpc job, then resources.setup (quoted words)"]
    lines += setup_lines(res)
    lines += [
        "",
        f"RUN_DIR={shlex.quote(str(run_dir))}",
        f"STAGE={shlex.quote(plan.stage.name)}",
        f"CHUNK={chunk}",
        "# the array index maps to an item through plan.json, never by arithmetic",
        (
            'srun --unbuffered "${PRISM_PYTHON:-python}" -m prism_hpc.hpc.task "$RUN_DIR" "$STAGE" '
            '--array "$CHUNK" "$SLURM_ARRAY_TASK_ID"'
        ),
        "",
    ]
    return "\n".join(lines)


def write_scripts(cfg: Config, plans: list[StagePlan], folder: Path, run_dir: Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for plan in plans:
        for chunk in range(len(plan.chunks)):
            suffix = "" if len(plan.chunks) == 1 else f".{chunk}"
            path = folder / f"{plan.stage.name}{suffix}.sbatch"
            atomic_write_text(path, render_script(cfg, plan, chunk, run_dir))
            written.append(path)
    return written
