"""`auto` for the speed options whose best value is a property of the device: `recover.pack`
and `students.channels_last`.

Why measured and not a rule: packing chunks paid off on one CPU and not on another (FACTS G:
no faster per image on an AVX2-only EPYC), and channels_last helps cuDNN and oneDNN by
different amounts per network. So `auto` reads what `prism-hpc bench recover --calibrate`
timed on this very device (the `settings` section of the calibration file,
`cost.calibration`), keyed by the GPU model or the CPU model with its instruction-set flags.
Without a measurement it keeps today's default (pack 1; channels_last on GPU only) and says
why, so a run never depends on a cache it does not have. Neither option changes the
objective, only rounding; that is also why `auto` is opt-in: a default that follows a cache
would make the last bits depend on which machine calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_hpc.cost.calibration import default_path, read_settings
from prism_hpc.cost.devices import DEVICES, guess_device
from prism_hpc.hardware.capability import CPU_FLAGS_SHOWN, DeviceCapability

PACK = "recover.pack"
CHANNELS_LAST = "students.channels_last"
PACK_TRIED = 4  # the packed value `bench recover --calibrate` times when --pack is 1


@dataclass(frozen=True)
class TunedChoice:
    """The value to use, one line saying why (for the stage log and `plan`), and whether a
    measurement decided it."""

    value: Any
    reason: str
    measured: bool = False


def device_key(cap: DeviceCapability) -> str:
    """The calibration's name for a device: `cuda:h100` (the cost table's name when it knows
    the GPU, else torch's), `cpu:AMD EPYC [avx2+avx512f+avx512_bf16]`."""
    if cap.kind == "cuda":
        return f"cuda:{guess_device(cap.name) or cap.name}"
    flags = "+".join(f for f in CPU_FLAGS_SHOWN if f in cap.cpu_flags) or "no simd flags"
    return f"cpu:{cap.name} [{flags}]"


def gpu_key(table_name: str) -> str | None:
    """`plan`'s key for `resources.<stage>.gpu` (a cost-table name); None when the table
    does not know it."""
    name = table_name.lower()
    return f"cuda:{name}" if name in DEVICES and DEVICES[name].is_gpu else None


def measured(key: str | None, setting: str, path: Path | None = None) -> dict[str, float]:
    """{value as text: seconds per unit of work} measured for `setting` on `key`; {} if none."""
    if key is None:
        return {}
    entry = (read_settings(path).get(key) or {}).get(setting) or {}
    return {str(k): float(v) for k, v in (entry.get("seconds") or {}).items()}


def _choose(key: str | None, setting: str, default: Any, parse, path: Path | None) -> TunedChoice:
    seconds = measured(key, setting, path)
    if len(seconds) < 2:
        where = key or "this device (not known before the task runs)"
        return TunedChoice(default, f"auto: {setting} {_text(default)}: no measurement for "
                                    f"{where} in {path or default_path()} (run `prism-hpc "
                                    "bench recover --calibrate` there)")  # fmt: skip
    best = min(seconds, key=seconds.get)
    shown = ", ".join(f"{v} {s * 1e3:.3g} ms" for v, s in sorted(seconds.items()))
    return TunedChoice(parse(best), f"auto: {setting} {best}: the faster measured on {key} "
                                    f"({shown})", True)  # fmt: skip


def _text(value: Any) -> str:
    if isinstance(value, bool):  # before int: True == 1
        return str(value).lower()
    return str(value)


def choose_pack(key: str | None, path: Path | None = None) -> TunedChoice:
    """`recover.pack: auto`: the faster measured pack (seconds per image-iteration), else 1."""
    return _choose(key, PACK, 1, int, path)


def choose_channels_last(key: str | None, cuda: bool, path: Path | None = None) -> TunedChoice:
    """`students.channels_last: auto`: the faster measured layout of a student training
    step, else the default (channels_last on CUDA, NCHW on a CPU)."""
    return _choose(key, CHANNELS_LAST, cuda, lambda v: v == "true", path)
