"""GPU-hours, wall time, time limits and memory of a stage, from the work its tasks do.

Pure arithmetic (no torch): the stages describe their tasks as `Work` (FLOPs, bytes moved,
steps) from the architectures' counted FLOPs (`prism_hpc.models.flops`) and hand them here.

Seconds of one piece of work on a device:
- calibrated (`bench --calibrate` measured this device and kind): FLOPs / measured FLOP/s,
  scaled by threads on the CPU;
- table: FLOPs / (peak x compute efficiency) + bytes / (bandwidth x memory efficiency)
  + steps x per-step overhead, times the number of threads on the CPU row;
and every task pays the device's start-up overhead once.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

from prism_hpc.cost.devices import (
    DEFAULT_GPU,
    Device,
    device,
)

# A time limit this many times the need (and 2 h more than it) is "far too long": long limits
# wait longer for backfill and hold the allocation's budget.
TOO_LONG_FACTOR = 4.0
TOO_LONG_MARGIN_MIN = 120


@dataclass(frozen=True)
class Work:
    """What a task computes: FLOPs, bytes of memory traffic, and optimiser steps/iterations
    (each pays a fixed launch/Python overhead that dominates small models)."""

    flops: float = 0.0
    traffic_bytes: float = 0.0
    steps: float = 0.0
    arch: str | None = None  # architecture key: a calibration may hold its own FLOP/s

    def scaled(self, k: float) -> Work:
        return Work(self.flops * k, self.traffic_bytes * k, self.steps * k, self.arch)


@dataclass(frozen=True)
class Pricing:
    """How one (device, kind of work) is priced: the table or a calibration entry."""

    device: Device
    kind: str
    precision: str = "fp32"
    threads: int = 1  # CPU only: cores a task uses
    calibrated: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        if self.calibrated:
            return f"calibrated {self.calibrated.get('measured_at', '')}".strip()
        return "table"

    def seconds(self, *works: Work) -> float:
        return sum(self._seconds(w) for w in works)

    def _seconds(self, work: Work) -> float:
        d = self.device
        scale = 1.0 if d.is_gpu else max(1, self.threads)
        cal = self.calibrated or {}
        rate = (cal.get("archs") or {}).get(work.arch or "") or cal.get("flop_per_s")
        if rate:
            if not d.is_gpu:
                rate *= scale / max(1, cal.get("threads") or 1)
            return work.flops / float(rate)
        compute = work.flops / (d.peak(self.precision) * d.sustained(self.kind) * scale)
        memory = work.traffic_bytes / (d.mem_bw * d.memory_efficiency * scale)
        return compute + memory + work.steps * d.step_overhead_s


def stage_device(gpu: str | None, gpus_per_node: int) -> tuple[Device, str]:
    """The device a stage is priced on and a note when it was assumed."""
    if not gpus_per_node:
        return device("cpu"), ""
    if gpu is None:
        return device(DEFAULT_GPU), f"gpu not set: {DEFAULT_GPU} assumed"
    return device(gpu), ""


def makespan(task_seconds: list[float], slots: int) -> float:
    """Elapsed seconds of independent tasks on `slots` workers, longest first (LPT)."""
    if not task_seconds:
        return 0.0
    workers = [0.0] * max(1, min(slots, len(task_seconds)))
    heapq.heapify(workers)
    for t in sorted(task_seconds, reverse=True):
        heapq.heappush(workers, heapq.heappop(workers) + t)
    return max(workers)


def time_limit_min(task_seconds: float) -> int:
    """A time limit that fits a task: 25 % headroom plus 10 minutes, whole minutes."""
    return math.ceil(1.25 * task_seconds / 60 + 10)


@dataclass(frozen=True)
class TaskLayout:
    """How a stage's tasks are run: GPUs each, how many at once, and their time limit."""

    gpus_per_task: int
    slots: int
    time_min: int


def summarise(
    stage: str,
    task_seconds: list[float],
    pricing: Pricing,
    layout: TaskLayout,
    storage_gb: float = 0.0,
    peak_mem_gb: float | None = None,
    note: str = "",
) -> dict[str, Any]:
    """The numbers `plan` prints and writes for one stage, and its time-limit warnings."""
    gpus_per_task, slots, time_min = layout.gpus_per_task, layout.slots, layout.time_min
    total_s = sum(task_seconds)
    longest = max(task_seconds, default=0.0)
    need = time_limit_min(longest) if task_seconds else 0
    warnings = []
    if task_seconds and longest / 60 > time_min:
        warnings.append(
            f"{stage}: the longest task needs ~{longest / 60:.0f} min but time_min is {time_min}: "
            f"it would be killed (set resources.{stage}.time_min to ~{need})"
        )
    elif (
        task_seconds and time_min > TOO_LONG_FACTOR * need and time_min - need > TOO_LONG_MARGIN_MIN
    ):
        warnings.append(
            f"{stage}: time_min {time_min} is far above the ~{need} min a task needs "
            "(long limits wait longer in the queue)"
        )
    d = pricing.device
    mem_over = d.is_gpu and peak_mem_gb is not None and peak_mem_gb > d.memory_gb
    if mem_over:
        warnings.append(
            f"{stage}: ~{peak_mem_gb:.1f} GB per GPU exceeds the {d.name}'s {d.memory_gb:g} GB"
        )
    return {
        "device": d.name,
        "throughput": pricing.source,
        "gpu_hours": round(total_s * gpus_per_task / 3600, 3) if d.is_gpu else 0.0,
        "cpu_hours": round(total_s * max(1, pricing.threads) / 3600, 3) if not d.is_gpu else 0.0,
        "wall_hours": round(makespan(task_seconds, slots) / 3600, 4),
        "wall_s": round(makespan(task_seconds, slots), 1),
        "task_hours_max": round(longest / 3600, 3),
        "time_limit_min": need,
        "parallel_tasks": max(0, min(slots, len(task_seconds))),
        "storage_gb": round(storage_gb, 3),
        "peak_mem_gb": None if peak_mem_gb is None else round(peak_mem_gb, 2),
        "warnings": warnings,
        **({"cost_note": note} if note else {}),
    }


def totals(estimates: list[dict[str, Any]]) -> dict[str, float]:
    """Sums over stages (they run one after another: wall hours add up)."""
    keys = ("gpu_hours", "cpu_hours", "wall_hours", "storage_gb")
    out = {k: round(sum(float(e.get(k) or 0.0) for e in estimates), 3) for k in keys}
    peaks = [e["peak_mem_gb"] for e in estimates if e.get("peak_mem_gb") is not None]
    out["peak_mem_gb"] = max(peaks) if peaks else None
    return out
