"""Which precisions a device runs natively, and the rule that picks one for a stage.

Why a rule of our own instead of asking torch: `torch.cuda.is_bf16_supported()` says True on a
V100 because emulated bf16 counts, and `torch.ops.mkldnn._is_mkldnn_bf16_supported()` says True
on any AVX-512 CPU, though only AVX512-BF16 / AMX-BF16 make bf16 convolutions fast. On an
AVX2-only CPU recovery in bf16 ran 9x slower than in fp32 (docs/hardware.md, FACTS G). So
"native" here means the instruction set or the compute capability, and `choose_precision`
is a pure function of a `DeviceCapability` (and, when one was taken, a measurement), so that
a stage (with its torch device), `plan` (with only `resources.<stage>.gpu`) and `doctor`
(with a timing) all resolve `precision: auto` the same way.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prism_hpc.cost.devices import DEVICES, PRECISIONS
from prism_hpc.errors import UserError

if TYPE_CHECKING:
    import torch

REQUESTS = ("auto", *PRECISIONS)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 / AMX; aarch64 `bf16`
CPU_FP16_FLAGS = ("avx512_fp16", "amx_fp16")
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16")
BF16_CUDA = (8, 0)  # Ampere and later have bf16 tensor cores
SLOWER = 1.5  # a measured ratio to fp32 above this counts as slower (shared-core noise below)

# compute capability by a token of the GPU's name (torch's or the cost table's spelling)
_GPU_TOKENS: dict[str, tuple[int, int]] = {
    "p100": (6, 0), "v100": (7, 0), "t4": (7, 5),
    "a100": (8, 0), "a800": (8, 0), "a30": (8, 0),
    "a10": (8, 6), "a10g": (8, 6), "a40": (8, 6), "3090": (8, 6),
    "l4": (8, 9), "l40": (8, 9), "l40s": (8, 9), "4090": (8, 9), "rtx4090": (8, 9),
    "h100": (9, 0), "h800": (9, 0), "h200": (9, 0), "gh200": (9, 0), "b200": (10, 0),
}  # fmt: skip


@dataclass(frozen=True)
class DeviceCapability:
    """One device as the precision rule sees it. CPU: `cpu_flags` from /proc/cpuinfo; CUDA:
    `cuda_capability`. `torch_bf16` is what torch claims (emulation included on CUDA and on
    AVX-512 CPUs); on a CPU its False vetoes the flag (oneDNN capped below the bf16 ISA)."""

    kind: str  # "cpu" | "cuda"
    name: str
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    cuda_capability: tuple[int, int] | None = None
    memory_gb: float = 0.0
    torch_bf16: bool | None = None

    @property
    def native_bf16(self) -> bool:
        if self.kind == "cuda":
            return self.cuda_capability is not None and self.cuda_capability >= BF16_CUDA
        # The flag is not enough: oneDNN runs the kernels, and a capped ISA
        # (ONEDNN_MAX_CPU_ISA=AVX2, set by some sites) makes bf16 emulated and ~100x slower
        # although the flag is there; torch then reports no bf16 support.
        has_flag = any(f in self.cpu_flags for f in CPU_BF16_FLAGS)
        return has_flag and self.torch_bf16 is not False

    @property
    def native_fp16(self) -> bool:
        """CUDA: tensor cores (>= 7.0) or the P100's double-rate fp16 (6.0); CPU: AVX512-FP16
        or AMX-FP16 (without them CPU fp16 autocast falls back to slow kernels)."""
        if self.kind == "cuda":
            cc = self.cuda_capability
            return cc is not None and (cc >= (7, 0) or cc == (6, 0))
        return any(f in self.cpu_flags for f in CPU_FP16_FLAGS)

    def label(self) -> str:
        """The device in one short phrase for warnings: `Tesla V100 (cuda 7.0)`."""
        if self.kind == "cuda":
            cc = self.cuda_capability
            return f"{self.name} (cuda {cc[0]}.{cc[1]})" if cc else f"{self.name} (cuda)"
        return f"{self.name} (cpu)"

    def why_no_bf16(self) -> str:
        if self.kind == "cuda":
            cc = self.cuda_capability
            have = f"{cc[0]}.{cc[1]}" if cc else "unknown"
            return f"compute capability {have} < {BF16_CUDA[0]}.{BF16_CUDA[1]}"
        if any(f in self.cpu_flags for f in CPU_BF16_FLAGS):
            isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
            capped = f" (ONEDNN_MAX_CPU_ISA={isa})" if isa else ""
            return f"the bf16 flag is there but oneDNN does not use it{capped}"
        return "no avx512_bf16/amx_bf16 flag"

    def to_dict(self) -> dict[str, Any]:
        shown = [f for f in CPU_FLAGS_SHOWN if f in self.cpu_flags]
        cc = list(self.cuda_capability) if self.cuda_capability else None
        return {"kind": self.kind, "name": self.name, "cpu_flags": shown,
                "cuda_capability": cc, "memory_gb": round(self.memory_gb, 1),
                "native_bf16": self.native_bf16, "native_fp16": self.native_fp16,
                "torch_bf16": self.torch_bf16}  # fmt: skip


@dataclass(frozen=True)
class PrecisionChoice:
    """What to run in, why (one line, for logs and `plan`), and a one-line warning when the
    user's explicit choice is likely slow on this device (None otherwise)."""

    precision: str
    reason: str
    warning: str | None = None


def cpu_capability(
    flags: set[str] | frozenset[str], name: str = "cpu", memory_gb: float = 0.0,
    torch_bf16: bool | None = None,
) -> DeviceCapability:  # fmt: skip
    return DeviceCapability("cpu", name, frozenset(flags), None, memory_gb, torch_bf16)


def cuda_capability(
    major: int, minor: int, name: str = "cuda", memory_gb: float = 0.0,
    torch_bf16: bool | None = None,
) -> DeviceCapability:  # fmt: skip
    return DeviceCapability("cuda", name, frozenset(), (major, minor), memory_gb, torch_bf16)


def cuda_capability_for_gpu_name(name: str) -> tuple[int, int] | None:
    """Compute capability from a GPU's name: torch's (`NVIDIA A100-SXM4-80GB`, `Tesla T4`)
    or the cost table's (`a100-80`, `rtx4090`); None for a name not known here."""
    for token in re.split(r"[^a-z0-9]+", name.lower()):
        if token in _GPU_TOKENS:
            return _GPU_TOKENS[token]
    return None


def capability_for_device_name(name: str) -> DeviceCapability:
    """A capability without the device present, for `plan` pricing `resources.<stage>.gpu`.
    `cpu` is the cost table's placeholder core (AVX2, no bf16 flags): a node's real flags are
    unknown on the login node, so `auto` prices CPU stages in fp32 (the safe side)."""
    key = name.lower()
    if key == "cpu":
        return cpu_capability(frozenset({"avx2"}), "table CPU core")
    cc = cuda_capability_for_gpu_name(key)
    if cc is None:
        known = ", ".join(sorted(set(DEVICES) | set(_GPU_TOKENS)))
        raise UserError(f"device {name!r}: compute capability not known (known: {known})")
    memory = DEVICES[key].memory_gb if key in DEVICES else 0.0
    label = DEVICES[key].label if key in DEVICES else name
    return cuda_capability(cc[0], cc[1], label, memory)


def parse_device(device: str) -> tuple[str, int | None]:
    """`cpu`, `cuda` or `cuda:N` (a torch.device's str() too) -> (kind, index)."""
    text = str(device).strip().lower()
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if not match or (match.group(1) == "cpu" and match.group(2) is not None):
        raise UserError(f"device {device!r}: expected cpu, cuda or cuda:N")
    return match.group(1), int(match.group(2)) if match.group(2) is not None else None


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor; aarch64 says `Features`. Without the file
    (macOS, Windows) the name comes from `platform` and the flag set is empty."""
    name, flags = "", frozenset()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return platform.processor() or platform.machine() or "cpu", flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return name or platform.machine() or "cpu", flags


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 0.0


@cache
def _detect(kind: str, index: int | None) -> DeviceCapability:
    import torch

    if kind == "cpu":
        name, flags = read_cpuinfo()
        try:
            said = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            said = None
        return cpu_capability(flags, name, _host_memory_gb(), said)
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = f"torch {torch.__version__} built with CUDA {built}" if built else (
            f"torch {torch.__version__} is a CPU-only build")  # fmt: skip
        raise UserError(f"device cuda: no CUDA device visible ({why}, "
                        "torch.cuda.is_available() is False)")  # fmt: skip
    count = torch.cuda.device_count()
    idx = torch.cuda.current_device() if index is None else index
    if not 0 <= idx < count:
        raise UserError(f"device cuda:{idx}: only {count} CUDA device(s) visible")
    props = torch.cuda.get_device_properties(idx)
    with torch.cuda.device(idx):
        said = bool(torch.cuda.is_bf16_supported())
    return cuda_capability(props.major, props.minor, props.name, props.total_memory / 1e9, said)


def detect(device: str) -> DeviceCapability:
    """The capability of `device` (`cpu`, `cuda`, `cuda:N`) on this machine; cached, since
    flags and compute capability do not change within a process."""
    kind, index = parse_device(device)
    return _detect(kind, index)


def _ratio(measured: Mapping[str, float] | None, precision: str) -> float | None:
    value = (measured or {}).get(precision)
    return float(value) if value else None


def _auto(
    cap: DeviceCapability, measured: Mapping[str, float] | None, allowed: tuple[str, ...]
) -> PrecisionChoice:
    dev = cap.label()
    if cap.native_bf16:
        why = "compute capability >= 8.0" if cap.kind == "cuda" else "+".join(
            f for f in CPU_BF16_FLAGS if f in cap.cpu_flags)  # fmt: skip
        pick, reason = "bf16", f"auto: bf16, native on {dev}: {why}"
    elif cap.kind == "cuda" and cap.native_fp16:
        pick, reason = "fp16", (f"auto: fp16 with loss scaling: {dev} has fast fp16 but no "
                                f"native bf16 ({cap.why_no_bf16()})")  # fmt: skip
    else:
        half = "bf16 or fp16" if cap.kind == "cuda" else "bf16"
        pick, reason = "fp32", f"auto: fp32: {dev} has no native {half} ({cap.why_no_bf16()})"
    if pick not in allowed:
        return PrecisionChoice("fp32", f"auto: fp32: {pick} would suit {dev}, but this stage "
                                       f"runs only {'/'.join(allowed)}")  # fmt: skip
    ratio = _ratio(measured, pick) if pick != "fp32" else None
    if ratio is not None and ratio > SLOWER:
        return PrecisionChoice("fp32", f"auto: fp32: {pick} measured {ratio:.2f}x the time "
                                       f"of fp32 on {dev}")  # fmt: skip
    if ratio is not None:
        reason += f"; measured {ratio:.2f}x the time of fp32"
    return PrecisionChoice(pick, reason)


def _explicit_warning(precision: str, cap: DeviceCapability, ratio: float | None) -> str | None:
    dev = cap.label()
    measured = f"measured {ratio:.1f}x the time of fp32 here" if ratio else None
    if precision == "bf16" and not cap.native_bf16:
        alt = "fp16, fp32" if cap.kind == "cuda" and cap.native_fp16 else "fp32"
        example = " (9x on an AVX2-only CPU)" if cap.kind == "cpu" else ""
        slow = measured or f"emulated, typically several times slower than fp32{example}"
        return f"bf16 on {dev}: no native bf16 ({cap.why_no_bf16()}); {slow}; use {alt} or auto"
    if precision == "fp16" and cap.kind == "cpu":
        if ratio is not None and ratio <= SLOWER:
            return None  # a measurement (AVX512-FP16, AMX-FP16) beats the rule of thumb
        alt = "bf16" if cap.native_bf16 else "fp32"
        slow = measured or "CPU fp16 autocast is typically many times slower than fp32"
        return f"fp16 on {dev}: {slow}; use {alt} or auto"
    if precision == "fp16" and not cap.native_fp16:
        return f"fp16 on {dev}: no fast fp16 units; use fp32 or auto"
    if ratio is not None and ratio > SLOWER:
        return f"{precision} on {dev}: {measured}; use fp32 or auto"
    return None


def choose_precision(
    requested: str, cap: DeviceCapability, measured: Mapping[str, float] | None = None,
    allowed: tuple[str, ...] = PRECISIONS,
) -> PrecisionChoice:  # fmt: skip
    """Resolve a config's precision (`auto`, `fp32`, `bf16`, `fp16`) for one device.

    `auto`: bf16 where native (CUDA >= 8.0; CPU with AVX512-BF16/AMX-BF16), fp16 with loss
    scaling on CUDA with tensor cores but no bf16, else fp32; a measurement (`measured`:
    seconds per step relative to fp32, e.g. {"bf16": 9.1} from `probe.time_precisions`)
    that shows the picked half precision more than 1.5x slower than fp32 turns it into fp32.
    `allowed`: the precisions the calling stage implements (students: fp32/bf16, so `auto`
    on a V100 gives fp32 there). An explicit choice is kept (the user may want the numerics)
    with a one-line warning when it is likely slow here. Pure: no torch, no device needed.
    """
    req = str(requested).strip().lower()
    if req not in REQUESTS:
        raise UserError(f"precision {requested!r}: expected one of {', '.join(REQUESTS)}")
    if req == "auto":
        return _auto(cap, measured, tuple(allowed))
    warning = None if req == "fp32" else _explicit_warning(req, cap, _ratio(measured, req))
    return PrecisionChoice(req, f"{req}: asked for by the config", warning)


def resolve_precision(
    requested: str, device: str | torch.device, measured: Mapping[str, float] | None = None,
    allowed: tuple[str, ...] = PRECISIONS,
) -> PrecisionChoice:  # fmt: skip
    """`choose_precision` for a device of this machine: what a stage calls with its torch
    device and the config's precision string."""
    return choose_precision(requested, detect(str(device)), measured, allowed)


def precision_for_plan(
    requested: str, gpu: str | None, allowed: tuple[str, ...] = PRECISIONS
) -> PrecisionChoice:
    """`choose_precision` for `resources.<stage>.gpu` (None: the CPU row), no device needed."""
    return choose_precision(requested, capability_for_device_name(gpu or "cpu"), None, allowed)
