"""Peak memory of one recovery step, on top of the loaded teachers (`bench_recover`'s
`peak_mem_mb`):

- CPU: a fresh Python process builds the same problem, records its resident set, resets the
  kernel's high-water mark (`/proc/self/clear_refs` = 5), runs one step and reads `VmHWM`.
  A fresh process matters: in a process that already ran steps, freed heap pages are reused
  without any RSS growth and the number would depend on history.
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was
  allocated before the step (`peak_mem_total_mb` keeps the absolute peak incl. the teachers).

`python -m prism_hpc.recover.bench_memory '<json>'` is the CPU probe's entry point (internal).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys

import torch

from prism_hpc.recover.bench import BenchSpec, Problem, build_problem, run_steps
from prism_hpc.recover.objective import bn_hooks


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _probe_cpu_memory(spec: BenchSpec, steps: int) -> dict:
    """In this (fresh) process: RSS growth of `steps` steps over the built problem, in MiB."""
    import resource

    if spec.threads:
        torch.set_num_threads(spec.threads)
    p = build_problem(dataclasses.replace(spec, device="cpu", compile=False))
    with bn_hooks(p.models, p.cfg.first_bn_multiplier) as hooks:
        gc.collect()
        base_kb = _status_kb("VmRSS")
        exact = _reset_hwm() and base_kb is not None
        if not exact:  # fallback: process-wide peak, which includes the set-up's own peak
            base_kb = base_kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_steps(p, hooks, steps)
        peak_kb = (
            _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
    return {
        "peak_mem_mb": round(max(peak_kb - base_kb, 0) / 1024, 1),
        "peak_mem_total_mb": round(peak_kb / 1024, 1),
        "memory_method": "rss_growth_fresh_process" if exact else "ru_maxrss_minus_rss",
    }


def measure_cpu_memory(spec: BenchSpec, steps: int = 1) -> dict:
    """`_probe_cpu_memory` of `spec` in a fresh process (the CPU run of the same problem)."""
    payload = {**dataclasses.asdict(spec), "teachers": list(spec.teachers), "steps": steps}
    out = subprocess.run(
        [sys.executable, "-m", "prism_hpc.recover.bench_memory", json.dumps(payload)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cuda_memory_of_a_step(p: Problem, hooks) -> dict:
    device = p.x0.device
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run_steps(p, hooks, 1)
    peak = torch.cuda.max_memory_allocated(device)
    return {
        "peak_mem_mb": round((peak - base) / 2**20, 1),
        "peak_mem_total_mb": round(peak / 2**20, 1),
        "memory_method": "cuda_max_memory_allocated",
    }


def _main(argv: list[str]) -> None:
    payload = json.loads(argv[0])
    steps = payload.pop("steps")
    print(json.dumps(_probe_cpu_memory(BenchSpec(**payload), steps)))


if __name__ == "__main__":
    _main(sys.argv[1:])
