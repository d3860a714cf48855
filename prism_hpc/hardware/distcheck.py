"""Can this machine run torch.distributed? Two processes, a free port, init + all_reduce.

Recovery and student training go multi-rank through `hpc.distributed` (gloo on CPU, NCCL on
GPUs); a firewall, a missing loopback route or a broken NCCL shows up there only after a job
waited in the queue. This starts the same kind of process group on one machine, as separate
interpreters (like the local backend's ranks), and kills them after `timeout_s`.

Run as a worker: `python -m prism_hpc.hardware.distcheck RANK WORLD PORT BACKEND DEVICE`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from prism_hpc.hardware.capability import parse_device
from prism_hpc.hardware.checks import Check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, backend: str, device: str) -> int:
    """One rank: join, sum (rank + 1) over all ranks, check it, leave. Prints one JSON line."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    dev = torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))  # fmt: skip
    try:
        t = torch.full((4,), float(rank + 1), device=dev)
        dist.all_reduce(t)
        want = world * (world + 1) / 2
        ok = bool(torch.all(t == want).item())
        print(json.dumps({"rank": rank, "ok": ok, "got": float(t[0]), "want": want}), flush=True)
    finally:
        dist.destroy_process_group()
    return 0 if ok else 1


def _plan(device: str) -> tuple[str, str, str | None]:
    """(backend, device kind, why not) for this machine."""
    kind, _ = parse_device(device)
    if kind == "cpu":
        return "gloo", "cpu", None
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return "nccl", "cuda", f"NCCL needs 2 GPUs for 2 ranks, {count} visible"
    if not torch.distributed.is_nccl_available():
        return "nccl", "cuda", "this torch build has no NCCL"
    return "nccl", "cuda", None


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:  # only the ranks started here, by their handles
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def check_distributed(device: str = "cpu", world_size: int = 2, timeout_s: float = 90.0) -> Check:
    """`world_size` ranks on this machine: init the process group and all_reduce; ok when
    every rank got the right sum within `timeout_s`."""
    backend, kind, why_not = _plan(device)
    if why_not:
        return Check("distributed", "skip", f"{backend}: {why_not}")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "prism_hpc.hardware.distcheck"]
    start = time.perf_counter()
    procs = [
        subprocess.Popen([*args, str(r), str(world_size), str(port), backend, kind], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(world_size)
    ]  # fmt: skip
    outs: list[tuple[str, str]] = []
    try:
        for p in procs:
            left = max(timeout_s - (time.perf_counter() - start), 0.1)
            outs.append(p.communicate(timeout=left))
    except subprocess.TimeoutExpired:
        _stop(procs)
        return Check("distributed", "fail", f"{backend} init + all_reduce over {world_size} "
                     f"processes did not finish in {timeout_s:g} s (port {port})")  # fmt: skip
    took = time.perf_counter() - start
    bad = [(r, p.returncode, err) for r, (p, (_, err)) in enumerate(zip(procs, outs))
           if p.returncode != 0]  # fmt: skip
    if bad:
        rank, code, err = bad[0]
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return Check("distributed", "fail", f"{backend}: rank {rank} exited {code}: {tail}")
    return Check(
        "distributed",
        "ok",
        f"{backend} init + all_reduce over {world_size} processes in {took:.1f} s",
        {"backend": backend, "seconds": round(took, 2)},
    )


if __name__ == "__main__":
    r, w, port_arg, be, dv = sys.argv[1:6]
    sys.exit(_worker(int(r), int(w), int(port_arg), be, dv))
