"""Measurements behind the precision choice, and the checks that need a device to answer.

`time_precisions` times what recovery does, on a toy scale: a frozen conv+BN net in eval mode,
forward and backward to the input, in fp32 and under bf16/fp16 autocast. A slow half precision
can be 10-40x slower than fp32 on a CPU (fp16 autocast without AVX512-FP16: 7 s per step of a
3-layer net at 64 px x 8 on this project's Zen 4 machine, fp32 0.17 s), so every half
precision is first timed on a pilot of one small image (a quarter of the resolution), and only
when the pilot is within `max_ratio` of fp32 is it timed at full size. The probe so stays
around a second on a CPU and still gives a ratio for every precision. Timings are minima over
interleaved rounds (fp32, bf16, fp16, fp32, ...): the machines are shared, a burst of load then
hits every precision alike, and the minimum is the least disturbed estimate.
"""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

from prism_hpc.cost.devices import PRECISIONS
from prism_hpc.hardware.capability import parse_device
from prism_hpc.hardware.checks import Check, first_line

CHANNELS = (3, 16, 32, 32)  # three conv+BN+ReLU layers
PILOT_BUDGET_S = 1.0


@dataclass(frozen=True)
class PrecisionTiming:
    precision: str
    seconds_per_step: float | None  # at the probe's full size; None: only the pilot ran
    ratio: float | None  # time relative to fp32 (full size when both ran, else the pilots)
    pilot_s: float | None  # one step of the pilot (1 image, a quarter of the resolution)
    error: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    device: str
    resolution: int
    batch: int
    threads: int
    timings: tuple[PrecisionTiming, ...]
    total_s: float

    def ratios(self) -> dict[str, float]:
        """{precision: time / fp32 time}, the `measured` argument of `choose_precision`."""
        return {t.precision: t.ratio for t in self.timings if t.ratio is not None}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timings"] = {t.precision: {k: v for k, v in asdict(t).items() if k != "precision"}
                          for t in self.timings}  # fmt: skip
        return out


def _net(device: Any):
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    for cin, cout in itertools.pairwise(CHANNELS):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(*layers)
    return net.to(device).eval().requires_grad_(False)


def _stepper(net: Any, device: Any, precision: str, shape: tuple[int, ...]):
    """One recovery-like step: autocast forward, fp32 loss, backward to the input."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = torch.rand(shape, device=device, requires_grad=True)

    def step() -> float:
        x.grad = None
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        t0 = time.perf_counter()
        with ctx:
            y = net(x)
        y.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return step


def _rounds(steps: dict[str, Callable[[], float]], rounds: int, budget_s: float) -> dict:
    """Minimum step time per precision over interleaved rounds (one step of each per round),
    so that a burst of load from a neighbour hits every precision alike; stops after three
    rounds once `budget_s` is spent."""
    best = dict.fromkeys(steps, float("inf"))
    spent = 0.0
    for k in range(rounds):
        for precision, step in steps.items():
            took = step()
            best[precision], spent = min(best[precision], took), spent + took
        if k >= 2 and spent > budget_s:
            break
    return best


def _first_calls(steps: dict[str, Callable[[], float]]) -> tuple[dict, dict[str, str]]:
    """One untimed step each (a dtype's first call creates its kernels); a precision this
    device cannot run is dropped with its error."""
    kept, errors = {}, {}
    for precision, step in steps.items():
        try:
            kept[precision] = step()
        except (RuntimeError, NotImplementedError) as err:
            errors[precision] = first_line(err)
    return kept, errors


def time_precisions(
    device: str = "cpu", precisions: tuple[str, ...] = PRECISIONS, resolution: int = 64,
    batch: int = 8, repeats: int = 4, max_ratio: float = 4.0, threads: int | None = 1,
) -> ProbeResult:  # fmt: skip
    """Seconds per recovery-like step per precision on `device`, and the ratio to fp32.

    Pilots (1 image at a quarter of the resolution) first; a precision goes on to full size
    (`batch` images at `resolution`) only when its pilot is within `max_ratio` of fp32's and
    its pilot time scaled by the pixels (an over-estimate: a small input uses the cores
    worse) is within 2 x `max_ratio` of fp32's first full step. A precision the device
    cannot run is reported with its error; fp32 failing raises RuntimeError.

    `threads`: CPU threads while timing (None: torch's setting). One by default: the ratio
    between precisions is a property of the core's instruction set, and one thread is
    immune to the stalls of a shared node (two threads on two busy cores turned 1 ms steps
    into 500 ms ones here, one thread stayed within 2x).
    """
    import torch

    parse_device(device)
    before = torch.get_num_threads()
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    try:
        return _time_precisions(torch.device(device), precisions, resolution, batch, repeats,
                                max_ratio)  # fmt: skip
    finally:
        torch.set_num_threads(before)


def _time_precisions(
    dev: Any, precisions: tuple[str, ...], resolution: int, batch: int, repeats: int,
    max_ratio: float,
) -> ProbeResult:  # fmt: skip
    import torch

    start = time.perf_counter()
    net = _net(dev)
    order = ["fp32", *(p for p in precisions if p != "fp32")]
    side = max(resolution // 4, 8)
    pilots = {p: _stepper(net, dev, p, (1, CHANNELS[0], side, side)) for p in order}
    _, errors = _first_calls(pilots)
    if "fp32" in errors:
        raise RuntimeError(f"fp32 conv step failed: {errors['fp32']}")
    pilot = _rounds({p: s for p, s in pilots.items() if p not in errors}, 8, PILOT_BUDGET_S)
    shape = (batch, CHANNELS[0], resolution, resolution)
    fp32_step = _stepper(net, dev, "fp32", shape)
    fp32_first = fp32_step()
    scale = batch * (resolution / side) ** 2
    fulls = {"fp32": fp32_step}
    for p in order[1:]:
        near = p in pilot and pilot[p] <= max_ratio * pilot["fp32"]
        if near and pilot[p] * scale <= 2 * max_ratio * fp32_first:
            fulls[p] = _stepper(net, dev, p, shape)
    _, late = _first_calls({p: s for p, s in fulls.items() if p != "fp32"})
    errors.update(late)
    full = _rounds({p: s for p, s in fulls.items() if p not in late}, repeats, float("inf"))
    timings = []
    for p in order:
        if p in full:
            ratio = full[p] / full["fp32"]
        else:
            ratio = pilot[p] / pilot["fp32"] if p in pilot else None
        timings.append(PrecisionTiming(p, full.get(p), ratio, pilot.get(p), errors.get(p)))
    threads = torch.get_num_threads()
    total = time.perf_counter() - start
    return ProbeResult(str(dev), resolution, batch, threads, tuple(timings), round(total, 3))


def check_channels_last(device: str = "cpu") -> Check:
    """A conv in channels_last keeps the layout and matches the contiguous result (the
    recover loop feeds teachers channels_last on accelerators)."""
    import torch

    dev = torch.device(device)
    try:
        conv = torch.nn.Conv2d(8, 8, 3, padding=1).to(dev).eval()
        x = torch.rand(2, 8, 16, 16, device=dev)
        with torch.no_grad():
            ref = conv(x)
            out = conv.to(memory_format=torch.channels_last)(
                x.to(memory_format=torch.channels_last)
            )
        kept = out.is_contiguous(memory_format=torch.channels_last)
        close = torch.allclose(out.float(), ref.float(), atol=1e-4, rtol=1e-3)
    except RuntimeError as err:
        return Check("channels_last", "warn", f"channels_last conv failed: {first_line(err)}")
    if kept and close:
        return Check("channels_last", "ok", "conv keeps channels_last and matches NCHW")
    why = "output lost the layout" if not kept else "result differs from NCHW"
    return Check("channels_last", "warn", f"channels_last conv: {why}")


_COMPILE_SNIPPET = (
    "import torch\n"
    "f = torch.compile(lambda x: torch.sin(x) * 2 + 1)\n"
    "x = torch.ones(8, device='{device}')\n"
    "assert torch.allclose(f(x), torch.sin(x) * 2 + 1)\n"
)


def check_compile(device: str = "cpu", try_it: bool = False, timeout_s: float = 180.0) -> Check:
    """torch.compile present and the inductor backend importable; with `try_it`, compile a
    trivial function in a child process (a first compile takes tens of seconds on a CPU and
    can hang on a broken toolchain, so it is opt-in and killed after `timeout_s`)."""
    import torch

    if not hasattr(torch, "compile"):
        return Check("compile", "warn", f"torch {torch.__version__} has no torch.compile")
    if importlib.util.find_spec("torch._inductor") is None:
        return Check("compile", "warn", "torch.compile present, inductor backend missing")
    kind, _ = parse_device(device)
    need = "triton" if kind == "cuda" else "a C++ compiler"
    have = (importlib.util.find_spec("triton") is not None if kind == "cuda"
            else shutil.which("c++") or shutil.which("g++"))  # fmt: skip
    if not have:
        return Check("compile", "warn", f"inductor needs {need} for {kind}: not found")
    if not try_it:
        return Check("compile", "ok", f"torch.compile and inductor present ({need} found); "
                     "compiling not tried (--try-compile)", {"tried": False})  # fmt: skip
    start = time.perf_counter()
    code = _COMPILE_SNIPPET.replace("{device}", device)
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout_s, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return Check("compile", "warn", f"a trivial torch.compile took over {timeout_s:.0f} s",
                     {"tried": True})  # fmt: skip
    took = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("compile", "warn", f"torch.compile failed: {tail}", {"tried": True})
    return Check("compile", "ok", f"a trivial function compiled and ran in {took:.1f} s",
                 {"tried": True, "seconds": round(took, 2)})  # fmt: skip
