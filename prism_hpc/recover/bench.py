"""Benchmark of the real recovery step on random data with randomly initialised teachers.

`bench_recover` runs the recovery loop itself (`loop.recover_units`: augmentation draw, the
loss, Adam step, clamp: exactly the per-iteration work of a recover task) with `log_every=1`,
so that the progress callback marks the end of every step (on GPU it synchronises there, which
makes the per-step times exact at the cost of one host sync per step).

Teachers: `teachers[0]` is the logit teacher and a BN teacher, every teacher is a BN teacher;
1000 classes when `res >= 128`, else 10; 3 channels; `create_model`'s full-width models.
Peak memory: recover/bench_memory.py; the peak FLOP/s a step is compared with:
recover/bench_peaks.py.
"""

from __future__ import annotations

import gc
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.models.registry import create_model, freeze
from prism_hpc.recover.loop import Unit, pixel_bounds, recover_units
from prism_hpc.recover.objective import BNStatistics, bn_hooks
from prism_hpc.recover.sampler import Roles

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark configuration: teachers (architectures, the first is the logit
    teacher), resolution, images per chunk, and how the step runs."""

    teachers: tuple[str, ...] | list[str]
    res: int
    batch: int
    device: str = "cpu"
    memory: str = "joint"  # joint | sequential
    precision: str = "fp32"  # fp32 | bf16 | fp16
    pack: int = 1  # chunks of `batch` images per step
    compile: bool = False
    threads: int | None = None  # CPU intra-op threads (None: as set)
    deterministic: bool = True  # CUDA: cuDNN deterministic kernels (else autotuning)
    seed: int = 0


@dataclass
class Problem:
    """Everything one benchmark configuration needs; shared with `benchmarks/recover_naive.py`."""

    names: list[str]  # unique teacher names (arch, or arch#2 for a repeated arch)
    archs: list[str]
    models: dict[str, nn.Module]
    x0: torch.Tensor  # normalised images (pack * B, 3, res, res)
    targets: torch.Tensor
    roles: Roles
    cfg: OptimizeRecover
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
    for i, (name, arch) in enumerate(zip(teacher_names(archs), archs, strict=True)):
        torch.manual_seed(seed + i)
        models[name] = freeze(create_model(arch, nc, 3, res)).to(device)
    return models


def build_problem(spec: BenchSpec) -> Problem:
    """`pack` > 1: x0 and targets hold `pack` chunks of `batch` images one after the other
    (chunk j: images seeded like chunk 0 of a problem with seed + 1000 + j)."""
    archs = list(spec.teachers)
    if not archs:
        raise ValueError("at least one teacher")
    if spec.pack < 1:
        raise ValueError("pack must be >= 1")
    if spec.precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {spec.precision!r}")
    device = torch.device(spec.device)
    names = teacher_names(archs)
    models = build_models(archs, spec.res, device, spec.seed)
    nc = num_classes_for(spec.res)
    xs = []
    for j in range(spec.pack):
        g = torch.Generator().manual_seed(spec.seed + 1000 + j)
        xs.append(torch.randn(spec.batch, 3, spec.res, spec.res, generator=g))
    x0 = torch.cat(xs).to(device)
    targets = (torch.arange(spec.batch) % nc).repeat(spec.pack).to(device)
    cfg = OptimizeRecover(
        iterations=10**6,
        iteration_step=0,
        classes_per_batch=spec.batch,
        logit_teacher=names[0],
        bn_always=names,
        bn_pool=[],
        memory=spec.memory,
        precision=spec.precision,
        pack=spec.pack,
        compile=spec.compile,
        log_every=1,
    )
    roles = Roles(names[0], tuple(names))
    bounds = pixel_bounds(IMAGENET_MEAN, IMAGENET_STD, device)
    return Problem(names, archs, models, x0, targets, roles, cfg, bounds, nc)


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(
    p: Problem, hooks: dict[str, BNStatistics], steps: int, progress=None
) -> torch.Tensor:
    """`steps` real recovery iterations of the `pack` chunks (a fresh Adam state, like one
    chunk); chunk 0 marks the steps."""
    b = p.x0.shape[0] // p.cfg.pack
    units = [
        Unit(
            p.x0[j * b : (j + 1) * b], p.targets[j * b : (j + 1) * b], steps,
            torch.Generator().manual_seed(1234 + j), torch.Generator().manual_seed(5678 + j),
            p.roles, progress if j == 0 else None,
        )
        for j in range(p.cfg.pack)
    ]  # fmt: skip
    out = recover_units(units, p.models, hooks, p.cfg, p.bounds)
    sync(p.x0.device)
    return torch.cat([x for x, _, _ in out])


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


def _timed(spec: BenchSpec, iters: int, warmup: int, count: bool, cuda_memory: bool):
    """(step wall seconds, step CPU seconds, FLOPs per step, CUDA memory dict)."""
    from prism_hpc.recover.bench_memory import cuda_memory_of_a_step

    p = build_problem(spec)
    with bn_hooks(p.models, p.cfg.first_bn_multiplier) as hooks:
        mem = cuda_memory_of_a_step(p, hooks) if cuda_memory else {}
        marks = [(time.perf_counter(), time.process_time())]

        def mark(_entry: dict) -> None:
            marks.append((time.perf_counter(), time.process_time()))

        run_steps(p, hooks, warmup + iters, progress=mark)
        step_s = [b[0] - a[0] for a, b in pairwise(marks)][warmup:]
        cpu_s = [b[1] - a[1] for a, b in pairwise(marks)][warmup:]
        flops = count_flops(p, hooks) if count else None
    return step_s, cpu_s, flops, mem


def bench_recover(
    spec: BenchSpec, iters: int, warmup: int = 3, measure_memory: bool = True, count: bool = True
) -> dict:
    """Median ms per recovery iteration, throughput, FLOP/s and peak memory of one config.

    `spec.pack` chunks of `spec.batch` images per step (`recover.pack`);
    `ms_per_image_iteration` is the step time over all pack * batch images. On CUDA, cuDNN is
    set up as the recover stage does (`deterministic`: deterministic kernels, no autotuning;
    else cuDNN autotuning)."""
    from prism_hpc.recover.bench_memory import measure_cpu_memory
    from prism_hpc.recover.bench_peaks import peak_flops

    if iters < 1:
        raise ValueError("iters must be >= 1")
    dev = torch.device(spec.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device available")
    if dev.type == "cuda":
        torch.backends.cudnn.deterministic = spec.deterministic
        torch.backends.cudnn.benchmark = not spec.deterministic
    with num_threads(spec.threads):
        cuda = measure_memory and dev.type == "cuda"
        step_s, cpu_s, flops, mem = _timed(spec, iters, warmup, count, cuda)
        used_threads = torch.get_num_threads()
    gc.collect()
    if measure_memory and dev.type == "cpu":
        mem = measure_cpu_memory(spec)
    median_s = statistics.median(step_s)
    images = spec.batch * spec.pack
    peak, peak_source = peak_flops(dev, spec.precision, used_threads)
    flop_per_s = flops / median_s if flops else None
    return {
        "teachers": list(spec.teachers),
        "res": spec.res,
        "batch": spec.batch,
        "iters": iters,
        "warmup": warmup,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": used_threads if dev.type == "cpu" else None,
        "precision": spec.precision,
        "pack": spec.pack,
        "compile": spec.compile,
        "memory": spec.memory,
        "deterministic": spec.deterministic,
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
