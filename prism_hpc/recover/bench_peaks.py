"""The peak FLOP/s a benchmarked recovery step is compared with (`fraction_of_peak`): the
device table of `prism_hpc.cost.devices` on CUDA, the vector units on the CPU."""

from __future__ import annotations

import torch

from prism_hpc.cost.devices import DEVICES, guess_device


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
    note = (f"cpu: {cores} core(s) x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle ({unit}: "
            f"{lanes} lanes x FMA 2 x 2 units, assumed)")  # fmt: skip
    if precision == "bf16" and "avx512_bf16" in flags:
        per_cycle *= 2
        note += " x 2 (avx512_bf16)"
    return cores * ghz * 1e9 * per_cycle, note


def peak_flops(
    device: torch.device, precision: str, threads: int | None
) -> tuple[float | None, str]:
    """(peak FLOP/s for the precision the convolutions run in, how it was derived). CUDA: the
    datasheet's dense rate of the device table (fp32 convolutions at the tf32 rate, PyTorch's
    cuDNN default where the card has tensor cores for it)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        key = guess_device(name)
        if key is None:
            return None, f"no table entry for {name!r}"
        entry = DEVICES[key]
        return entry.peak(precision), f"datasheet {entry.label} {precision} dense"
    if device.type == "cpu":
        return cpu_peak(threads or torch.get_num_threads(), precision)
    return None, f"no peak for device {device.type}"
