"""torch.distributed inside one task: ranks from the launcher's environment, one per GPU.

Works for the local backend (RANK/WORLD_SIZE set by us) and for SLURM (`SLURM_PROCID`,
`SLURM_NTASKS`, `SLURM_LOCALID`, one SLURM task per GPU). The port is derived from the job id
so that array tasks sharing a node do not collide, with a retry on the next ports.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

PORT_BASE, PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def port_for(job_id: str, attempt: int = 0) -> int:
    digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
    return PORT_BASE + (int(digits) * 7 + attempt) % PORT_SPAN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        return "127.0.0.1"
    head = nodes.split(",")[0]
    if "[" in head:  # node[01-04] -> node01
        prefix, rest = head.split("[", 1)
        head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def dist_info_from_env() -> DistInfo:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistInfo(
            int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])),
            env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500")),
        )  # fmt: skip
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "0"))
        job += env.get("SLURM_ARRAY_TASK_ID", "")
        return DistInfo(
            int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
            _first_slurm_host(), port_for(job),
        )  # fmt: skip
    return DistInfo(0, 1, 0, "127.0.0.1", 0)


def device_for(local_rank: int) -> torch.device:
    """GPU `local_rank` of those SLURM/the local backend made visible, else CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_process_group(info: DistInfo, retries: int = 3) -> None:
    """gloo on CPU, NCCL on GPU; on a port collision move to the next port and retry."""
    if info.world_size <= 1 or dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    last = None
    for attempt in range(retries):
        port = info.master_port + attempt
        try:
            dist.init_process_group(
                backend,
                init_method=f"tcp://{info.master_addr}:{port}",
                rank=info.rank,
                world_size=info.world_size,
                timeout=timedelta(minutes=30),
            )
            return
        except (RuntimeError, OSError) as err:  # address in use, or peers on another port
            last = err
    raise RuntimeError(f"torch.distributed init failed on ports {info.master_port}+: {last}")


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
