"""Benchmark of the real recovery step on random data with randomly initialised teachers.

`bench_recover` runs `recover_chunk` itself (augmentation draw, `recovery_loss`, Adam step,
clamp: exactly the per-iteration work of a recover task) with `log_every=1`, so that the
progress callback marks the end of every step (on GPU it synchronises there, which makes the
per-step times exact at the cost of one host sync per step).

Teachers: `teachers[0]` is the logit teacher and a BN teacher, every teacher is a BN teacher;
1000 classes when `res >= 128`, else 10; 3 channels; `create_model`'s full-width models.

Memory (`peak_mem_mb`) is the growth caused by one recovery step on top of the loaded teachers:
- CPU: a fresh Python process builds the same problem, records its resident set, resets the
  kernel's high-water mark (`/proc/self/clear_refs` = 5), runs one step and reads `VmHWM`.
  A fresh process matters: in a process that already ran steps, freed heap pages are reused
  without any RSS growth and the number would depend on history.
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was
  allocated before the step (`peak_mem_total_mb` keeps the absolute peak incl. the teachers).

`python -m prism_hpc.recover.bench '<json>'` is the memory probe's entry point (internal).
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from prism_hpc.config.schema import RecoverConfig
from prism_hpc.models.registry import create_model, freeze
from prism_hpc.recover.loop import PackUnit, pixel_bounds, recover_chunk, recover_packed
from prism_hpc.recover.objective import BNStatistics, bn_hooks
from prism_hpc.recover.sampler import Roles

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Problem:
    """Everything one benchmark configuration needs; shared with `benchmarks/recover_naive.py`."""

    names: list[str]  # unique teacher names (arch, or arch#2 for a repeated arch)
    archs: list[str]
    models: dict[str, nn.Module]
    x0: torch.Tensor  # normalised images (B, 3, res, res)
    targets: torch.Tensor
    roles: Roles
    cfg: RecoverConfig
    bounds: tuple[torch.Tensor, torch.Tensor]
    num_classes: int


def num_classes_for(res: int) -> int:
    return 1000 if res >= 128 else 10


def teacher_names(archs: list[str]) -> list[str]:
    names, seen = [], {}
    for a in archs:
        seen[a] = seen.get(a, 0) + 1
        names.append(a if seen[a] == 1 else f"{a}#{seen[a]}")
    return names


def build_models(archs: list[str], res: int, device: str | torch.device = "cpu", seed: int = 0):
    """Randomly initialised, frozen, eval-mode teachers; teacher i is seeded with seed + i."""
    nc = num_classes_for(res)
    models = {}
    for i, (name, arch) in enumerate(zip(teacher_names(archs), archs)):
        torch.manual_seed(seed + i)
        models[name] = freeze(create_model(arch, nc, 3, res)).to(device)
    return models


def build_problem(
    archs: list[str],
    res: int,
    batch: int,
    device: str | torch.device = "cpu",
    memory: str = "joint",
    amp: str | None = None,
    compile: bool = False,
    seed: int = 0,
    precision: str | None = None,
    pack: int = 1,
) -> Problem:
    """`pack` > 1: x0 and targets hold `pack` chunks of `batch` images one after the other
    (chunk j: images seeded like chunk 0 of a problem with seed + 1000 + j)."""
    if not archs:
        raise ValueError("at least one teacher")
    if pack < 1:
        raise ValueError("pack must be >= 1")
    precision = _precision(precision, amp)
    device = torch.device(device)
    names = teacher_names(archs)
    models = build_models(archs, res, device, seed)
    nc = num_classes_for(res)
    xs = []
    for j in range(pack):
        g = torch.Generator().manual_seed(seed + 1000 + j)
        xs.append(torch.randn(batch, 3, res, res, generator=g))
    x0 = torch.cat(xs).to(device)
    targets = (torch.arange(batch) % nc).repeat(pack).to(device)
    cfg = RecoverConfig(
        iterations=10**6,
        iteration_step=0,
        classes_per_batch=batch,
        logit_teacher=names[0],
        bn_always=names,
        bn_pool=[],
        memory=memory,
        precision=precision,
        pack=pack,
        compile=compile,
        log_every=1,
    )
    roles = Roles(names[0], tuple(names))
    bounds = pixel_bounds(IMAGENET_MEAN, IMAGENET_STD, device)
    return Problem(names, list(archs), models, x0, targets, roles, cfg, bounds, nc)


def _precision(precision: str | None, amp: str | None) -> str:
    """`precision` wins; the older `amp` argument (none | bf16) maps onto it."""
    if precision is None:
        precision = "bf16" if amp == "bf16" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    return precision


@contextmanager
def num_threads(threads: int | None):
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(
    p: Problem, hooks: dict[str, BNStatistics], steps: int, progress=None
) -> torch.Tensor:
    """`steps` real recovery iterations (a fresh Adam state, like one chunk)."""
    device = p.x0.device
    if p.cfg.pack > 1:  # the packed loop over `pack` chunks; unit 0 marks the steps
        b = p.x0.shape[0] // p.cfg.pack
        units = [
            PackUnit(
                p.x0[j * b : (j + 1) * b], p.targets[j * b : (j + 1) * b], steps,
                torch.Generator().manual_seed(1234 + j), torch.Generator().manual_seed(5678 + j),
                p.roles, progress if j == 0 else None,
            )
            for j in range(p.cfg.pack)
        ]  # fmt: skip
        out = recover_packed(units, p.models, hooks, p.cfg, p.bounds)
        _sync(device)
        return torch.cat([x for x, _, _ in out])
    aug_gen = torch.Generator().manual_seed(1234)
    role_gen = torch.Generator().manual_seed(5678)
    x, _, _ = recover_chunk(
        p.x0, p.targets, p.models, hooks, p.cfg, steps, p.bounds,
        aug_gen=aug_gen, role_gen=role_gen, fixed_roles=p.roles, progress=progress,
    )  # fmt: skip
    _sync(device)
    return x


def count_flops(p: Problem, hooks: dict[str, BNStatistics]) -> int | None:
    """FLOPs of one step (forward + backward to the input) by FlopCounterMode, or None."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover - old torch
        return None
    cfg = p.cfg
    if cfg.compile:  # count on the eager graph: same arithmetic
        p.cfg = cfg.model_copy(update={"compile": False})
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            run_steps(p, hooks, 1)
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - an op without a formula must not break the benchmark
        return None
    finally:
        p.cfg = cfg


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


def _probe_cpu_memory(spec: dict) -> dict:
    """In this (fresh) process: RSS growth of one step over the built problem, in MiB."""
    import resource

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    p = build_problem(
        spec["teachers"], spec["res"], spec["batch"], "cpu", spec["memory"], None, False,
        precision=spec.get("precision"), pack=spec.get("pack", 1),
    )  # fmt: skip
    with bn_hooks(p.models, p.cfg.first_bn_multiplier) as hooks:
        gc.collect()
        base_kb = _status_kb("VmRSS")
        exact = _reset_hwm() and base_kb is not None
        if not exact:  # fallback: process-wide peak, which includes the set-up's own peak
            base_kb = base_kb or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run_steps(p, hooks, spec.get("steps", 1))
        peak_kb = (
            _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
    return {
        "peak_mem_mb": round(max(peak_kb - base_kb, 0) / 1024, 1),
        "peak_mem_total_mb": round(peak_kb / 1024, 1),
        "memory_method": "rss_growth_fresh_process" if exact else "ru_maxrss_minus_rss",
    }


def measure_cpu_memory(
    teachers: list[str], res: int, batch: int, memory: str = "joint", amp: str | None = None,
    threads: int | None = None, steps: int = 1, precision: str | None = None, pack: int = 1,
) -> dict:  # fmt: skip
    spec = {"teachers": list(teachers), "res": res, "batch": batch, "memory": memory,
            "precision": _precision(precision, amp), "threads": threads, "steps": steps,
            "pack": pack}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "prism_hpc.recover.bench", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cuda_memory(p: Problem, hooks) -> dict:
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


def bench_recover(
    teachers: list[str],
    res: int,
    batch: int,
    iters: int,
    device: str = "cpu",
    amp: str | None = None,
    compile: bool = False,
    memory: str = "joint",
    warmup: int = 3,
    threads: int | None = None,
    measure_memory: bool = True,
    count: bool = True,
    deterministic: bool = True,
    precision: str | None = None,
    pack: int = 1,
) -> dict:
    """Median ms per recovery iteration, throughput, FLOP/s and peak memory of one config.

    `pack` chunks of `batch` images per step (`recover.pack`); `ms_per_image_iteration` is the
    step time over all pack * batch images. On CUDA, cuDNN is set up as the recover stage does
    (`deterministic`: deterministic kernels, no autotuning; else cuDNN autotuning)."""
    if iters < 1:
        raise ValueError("iters must be >= 1")
    precision = _precision(precision, amp)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device available")
    if dev.type == "cuda":
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    with num_threads(threads):
        p = build_problem(teachers, res, batch, dev, memory, None, compile,
                          precision=precision, pack=pack)  # fmt: skip
        with bn_hooks(p.models, p.cfg.first_bn_multiplier) as hooks:
            mem = {}
            if measure_memory and dev.type == "cuda":
                mem = _cuda_memory(p, hooks)
            marks = [(time.perf_counter(), time.process_time())]
            run_steps(
                p,
                hooks,
                warmup + iters,
                progress=lambda e: marks.append((time.perf_counter(), time.process_time())),
            )
            step_s = [b[0] - a[0] for a, b in pairwise(marks)][warmup:]
            cpu_s = [b[1] - a[1] for a, b in pairwise(marks)][warmup:]
            flops = count_flops(p, hooks) if count else None
        used_threads = torch.get_num_threads()
    del p
    gc.collect()
    if measure_memory and dev.type == "cpu":
        mem = measure_cpu_memory(
            teachers, res, batch, memory, None, threads, precision=precision, pack=pack
        )
    median_s = statistics.median(step_s)
    images = batch * pack
    peak, peak_source = peak_flops(dev, precision, used_threads)
    flop_per_s = flops / median_s if flops else None
    return {
        "teachers": list(teachers),
        "res": res,
        "batch": batch,
        "iters": iters,
        "warmup": warmup,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": used_threads if dev.type == "cpu" else None,
        "precision": precision,
        "amp": precision if precision != "fp32" else "none",  # older key
        "pack": pack,
        "compile": compile,
        "memory": memory,
        "deterministic": deterministic,
        "ms_per_iter": round(median_s * 1e3, 3),
        "ms_per_image_iteration": round(median_s * 1e3 / images, 4),
        "ms_per_iter_mean": round(statistics.fmean(step_s) * 1e3, 3),
        "ms_per_iter_min": round(min(step_s) * 1e3, 3),
        "cpu_ms_per_iter": round(statistics.median(cpu_s) * 1e3, 3),  # process CPU time
        "images_iters_per_s": round(images / median_s, 2),
        "flops_per_iter": flops,
        "flop_per_s": round(flop_per_s, 1) if flop_per_s else None,
        "peak_flop_per_s": peak,
        "peak_source": peak_source,
        "fraction_of_peak": round(flop_per_s / peak, 4) if flop_per_s and peak else None,
        "peak_mem_mb": mem.get("peak_mem_mb"),
        "peak_mem_total_mb": mem.get("peak_mem_total_mb"),
        "memory_method": mem.get("memory_method"),
        "torch": torch.__version__,
    }


# Dense datasheet peaks in TFLOP/s (no sparsity), the convolution rate per precision: fp32
# convolutions use TF32 tensor cores where the card has them (PyTorch's cuDNN default). The
# same vendor numbers as prism_hpc/cost/devices.py (recover must not import cost). Matched
# by substring of torch.cuda.get_device_name(), first match wins.
CUDA_PEAKS_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp32": 495, "bf16": 989, "fp16": 989}),
    ("H100", {"fp32": 495, "bf16": 989, "fp16": 989}),  # SXM5; PCIe parts are ~25 % lower
    ("A100", {"fp32": 156, "bf16": 312, "fp16": 312}),
    ("L40S", {"fp32": 183, "bf16": 362, "fp16": 362}),
    ("4090", {"fp32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    ("V100", {"fp32": 15.7, "bf16": 15.7, "fp16": 125}),  # no bf16 units: fp32 rate
]


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_ghz() -> float | None:
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            with open(path) as f:
                return int(f.read()) / 1e6
        except (OSError, ValueError):
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1]) / 1e3
    except (OSError, ValueError):
        pass
    return None


def cpu_peak(cores: int, precision: str, flags: set[str] | None = None,
             ghz: float | None = None) -> tuple[float | None, str]:  # fmt: skip
    """Peak FLOP/s of `cores` cores: cores x clock x fp32 lanes of the widest vector unit the
    flags show (avx512f: 16, avx2: 8, else 4) x 2 (FMA) x 2 FMA units per core (assumed: true
    for recent Intel/AMD server cores; Zen 4 runs AVX-512 on 256-bit halves, so there the
    AVX-512 figure is 2x what the hardware can do and the fraction a lower bound). bf16 doubles
    it where `avx512_bf16` (a bf16 dot product per fp32 lane) is present."""
    flags = _cpu_flags() if flags is None else flags
    ghz = _cpu_ghz() if ghz is None else ghz
    if not ghz:
        return None, "cpu: clock unknown"
    lanes, unit = (16, "avx512f") if "avx512f" in flags else (
        (8, "avx2") if "avx2" in flags else (4, "sse")
    )  # fmt: skip
    per_cycle = lanes * 2 * 2
    note = f"cpu: {cores} core(s) x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle ({unit}: {lanes} lanes x FMA 2 x 2 units, assumed)"
    if precision == "bf16" and "avx512_bf16" in flags:
        per_cycle *= 2
        note += " x 2 (avx512_bf16)"
    return cores * ghz * 1e9 * per_cycle, note


def peak_flops(
    device: torch.device, precision: str, threads: int | None
) -> tuple[float | None, str]:
    """(peak FLOP/s for the precision the convolutions run in, how it was derived)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in CUDA_PEAKS_TFLOPS:
            if key in name:
                return peaks[precision] * 1e12, f"datasheet {key} {precision} dense"
        return None, f"no table entry for {name!r}"
    if device.type == "cpu":
        return cpu_peak(threads or torch.get_num_threads(), precision)
    return None, f"no peak for device {device.type}"


def _main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    print(json.dumps(_probe_cpu_memory(spec)))


if __name__ == "__main__":
    _main(sys.argv[1:])
