"""The environment `sbatch` runs in: what a new submission must not inherit, and what it must.

`prism-hpc submit`/`resubmit` may run inside a SLURM job (an `salloc` shell, a pipeline job
that submits the next one). `sbatch` exports the caller's environment into the new job
(`--export=ALL`), so the variables that describe the *caller's* allocation must go: SLURM only
overwrites those it sets for the new job, and `srun` inside the new job reads the rest as
input (`SLURM_NTASKS`, `SLURM_MEM_PER_GPU`, `SLURM_CPUS_PER_TASK`, `SLURM_GPUS_PER_TASK`, ...:
a wrong step layout or a gres error). submitit's `helpers.clean_env()` solves that by removing
every `SLURM_*` variable -- including `SLURM_CONF`, so on a site whose configuration is found
only through `SLURM_CONF` (configless slurmd sets it in every job; modules/environments set it
on login nodes) `sbatch` falls back to a DNS SRV lookup and fails.

Removed (`_DROP_PREFIXES`, `_DROP_NAMES`): every `SLURM_*` / `SLURMD_*` / `SRUN_*` /
`SALLOC_*` / `SUBMITIT_*` variable (the job/array/step ids, task and node counts, CPU/memory/
GPU layouts, `SLURM_RESTART_COUNT`, ... -- sbatch(1) OUTPUT ENVIRONMENT VARIABLES), the
`torch.distributed` rendezvous (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
`MASTER_ADDR`, `MASTER_PORT`: `prism_hpc.hpc.distributed` prefers them over SLURM's), the
`SBATCH_*` option variables (sbatch(1): "environment variables will override any options set
in a batch script", so `SBATCH_TIMELIMIT` or `SBATCH_GRES` would silently replace
`resources.<stage>`), and, when called from inside a job, the GPU visibility SLURM set for it
(`CUDA_VISIBLE_DEVICES`, `ROCR_VISIBLE_DEVICES`, `GPU_DEVICE_ORDINAL`).

Kept (`KEEP`), from sbatch(1) INPUT ENVIRONMENT VARIABLES -- the `SLURM_*` inputs that say
where and how to talk to the cluster and that SLURM never sets to describe an allocation:
`SLURM_CONF` (the configuration file: how sbatch finds the controller), `SLURM_CLUSTERS`
(= `--clusters`, multi-cluster sites), `SLURM_TIME_FORMAT` (time format of the client tools'
output), `SLURM_DEBUG_FLAGS`, `SLURM_EXIT_ERROR` (exit code of sbatch's own errors) and
`SLURM_UMASK` (permissions of the log files). Also kept, because sites use them as the user's
defaults for *where* a job goes: `SBATCH_ACCOUNT`, `SBATCH_PARTITION`, `SBATCH_QOS`,
`SBATCH_RESERVATION`, `SBATCH_CLUSTERS`, `SBATCH_WCKEY` -- but each only while the stage does
not set that option itself (`resources.<stage>.account`, ..., or `sbatch_extra`), since the
variable would otherwise override the config.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

KEEP = frozenset({"SLURM_CONF", "SLURM_CLUSTERS", "SLURM_TIME_FORMAT", "SLURM_DEBUG_FLAGS",
                  "SLURM_EXIT_ERROR", "SLURM_UMASK"})  # fmt: skip
# SBATCH_<OPTION> defaults kept unless the stage sets <option>
SITE_DEFAULTS = {"SBATCH_ACCOUNT": "account", "SBATCH_PARTITION": "partition",
                 "SBATCH_QOS": "qos", "SBATCH_RESERVATION": "reservation",
                 "SBATCH_CLUSTERS": "clusters", "SBATCH_WCKEY": "wckey"}  # fmt: skip
_DROP_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SALLOC_", "SBATCH_", "SUBMITIT_")
_DROP_NAMES = frozenset({"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                         "MASTER_PORT"})  # fmt: skip
_JOB_GPU_NAMES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def _stage_sets(res: Mapping[str, Any], option: str) -> bool:
    extra = {k.replace("-", "_") for k in (res.get("sbatch_extra") or {})}
    return bool(res.get(option)) or option in extra


def dropped_names(environ: Mapping[str, str], res: Mapping[str, Any] | None = None) -> list[str]:
    """Names in `environ` that a submission for a stage with resources `res` must not see."""
    res = res or {}
    in_job = "SLURM_JOB_ID" in environ or "SLURM_JOBID" in environ
    drop = []
    for name in environ:
        if name in KEEP:
            continue
        if name in SITE_DEFAULTS:
            if _stage_sets(res, SITE_DEFAULTS[name]):
                drop.append(name)
            continue
        allocation = name.startswith(_DROP_PREFIXES) or name in _DROP_NAMES
        if allocation or (in_job and name in _JOB_GPU_NAMES):
            drop.append(name)
    return drop


def submission_environ(
    environ: Mapping[str, str], res: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """A copy of `environ` as a new submission should see it."""
    drop = set(dropped_names(environ, res))
    return {k: v for k, v in environ.items() if k not in drop}


@contextmanager
def clean_submission_env(res: Mapping[str, Any] | None = None) -> Iterator[None]:
    """`os.environ` without the caller's allocation for the duration (submitit's sbatch call
    inherits it); restored afterwards."""
    saved = {name: os.environ.pop(name) for name in dropped_names(os.environ, res)}
    try:
        yield
    finally:
        os.environ.update(saved)
