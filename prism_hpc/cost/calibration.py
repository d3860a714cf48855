"""Measured throughputs that `plan` prefers over the device table.

`prism-hpc bench recover --calibrate` writes one entry per (device, kind of work): the FLOP/s a
real step sustained on this machine, with the threads and set-up it was measured with. The
file lives in the user cache (`$PRISM_HPC_CALIBRATION`, else
`$XDG_CACHE_HOME/prism-hpc/calibration.json`, else `~/.cache/prism-hpc/calibration.json`),
because it describes a machine, not an experiment.

Beside the throughputs, `settings` holds what the speed options measured per device (one
device = a GPU model, or a CPU model with its instruction-set flags): seconds per unit of
work for each value of `recover.pack` and `students.channels_last`, which their `auto`
values read (`hardware.tuning`), so that a choice comes from this device's measurement and
not from one machine's experience.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prism_hpc.cost.devices import KINDS, device
from prism_hpc.errors import UserError
from prism_hpc.store.atomic import atomic_write_text

VERSION = 1


def default_path() -> Path:
    env = os.environ.get("PRISM_HPC_CALIBRATION")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prism-hpc" / "calibration.json"


def read_calibration(path: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{device: {kind: entry}}; a missing file is an empty calibration, a broken one an error
    (silently pricing with the table after a user calibrated would be worse)."""
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = data["entries"]
        if data.get("version") != VERSION or not isinstance(entries, dict):
            raise ValueError("unexpected layout")
        for dev, kinds in entries.items():
            device(dev)
            for kind, entry in kinds.items():
                rates = [entry.get("flop_per_s") or 1.0, *(entry.get("archs") or {}).values()]
                if kind not in KINDS or min(float(r) for r in rates) <= 0:
                    raise ValueError(f"bad entry {dev}/{kind}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"calibration file {path}: {err} (delete it or re-run bench --calibrate)")
    return entries


@dataclass(frozen=True)
class Measured:
    """One measurement of a kind of work: FLOP/s (0: only per-architecture rates), the CPU
    threads it ran on (None on a GPU), how it was set up, and FLOP/s per architecture key
    (`models.flops.arch_key`), preferred over `flop_per_s` because depthwise networks
    sustain a few times fewer FLOP/s than ResNets."""

    flop_per_s: float
    threads: int | None
    setup: str
    precision: str = "fp32"
    archs: dict[str, float] = field(default_factory=dict)


def write_entry(dev: str, kind: str, measured: Measured, path: Path | None = None) -> Path:
    """Add or replace one (device, kind) entry, keeping the others."""
    if kind not in KINDS:
        raise UserError(f"calibration kind {kind!r}: expected one of {', '.join(KINDS)}")
    path = Path(path) if path is not None else default_path()
    entries = read_calibration(path)
    entries.setdefault(device(dev).name, {})[kind] = {
        "flop_per_s": float(measured.flop_per_s) or None,  # 0: only per-architecture rates
        "archs": {k: float(v) for k, v in measured.archs.items()},
        "threads": measured.threads,
        "precision": measured.precision,
        "setup": measured.setup,
        "host": socket.gethostname(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write(path, entries, read_settings(path))
    return path


def _write(path: Path, entries: dict, settings: dict) -> None:
    """Both sections, atomically (writing one keeps the other)."""
    data: dict[str, Any] = {"version": VERSION, "entries": entries}
    if settings:
        data["settings"] = settings
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_settings(path: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{device key: {setting: {"seconds": {value: s}, "setup": ..., "measured_at": ...}}};
    {} without a file or a section (a broken section is an error, as for the entries)."""
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text()).get("settings") or {}
        for dev, found in settings.items():
            for name, entry in found.items():
                if min(float(v) for v in entry["seconds"].values()) <= 0:
                    raise ValueError(f"bad setting {dev}/{name}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"calibration file {path}: {err} (delete it or re-run bench --calibrate)")
    return settings


def write_setting(
    dev_key: str, name: str, seconds: dict[str, float], setup: str, path: Path | None = None
) -> Path:
    """Record one speed option's timings on one device (`seconds`: option value as text ->
    seconds per the same unit of work), keeping every other entry and setting."""
    path = Path(path) if path is not None else default_path()
    settings = read_settings(path)
    settings.setdefault(dev_key, {})[name] = {
        "seconds": {str(k): float(v) for k, v in seconds.items()},
        "setup": setup,
        "host": socket.gethostname(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write(path, read_calibration(path), settings)
    return path


def lookup(
    entries: dict[str, dict[str, dict[str, Any]]], dev: str, kind: str
) -> dict[str, Any] | None:
    """The entry for (device, kind), or None (then the table prices it)."""
    return (entries.get(dev) or {}).get(kind)
