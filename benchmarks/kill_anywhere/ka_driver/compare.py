"""A continued run against the uninterrupted reference, bit for bit (timing fields aside)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TIMING_KEYS = ("seconds", "time", "wall", "elapsed")  # metrics fields that differ run to run


def _h5_datasets(path: Path) -> dict[str, Any]:
    import h5py
    import numpy as np

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as fh:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])

        fh.visititems(visit)
    return out


def _same_array(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _strip_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items()
                if not any(t in k.lower() for t in TIMING_KEYS)}  # fmt: skip
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def compare_runs(ref: Path, run: Path) -> list[str]:
    """Names of everything that differs from the reference (empty: bit-identical)."""
    import torch

    diffs: list[str] = []
    ref_markers = {str(p.relative_to(ref)) for p in ref.rglob("*.done") if "logs" not in p.parts}
    run_markers = {str(p.relative_to(run)) for p in run.rglob("*.done")} if run.is_dir() else set()
    diffs += [f"missing marker {m}" for m in sorted(ref_markers - run_markers)]
    diffs += [f"extra marker {m}" for m in sorted(run_markers - ref_markers)]

    def pairs(pattern: str) -> list[tuple[Path, Path]]:
        found = []
        for r in sorted(ref.glob(pattern)):
            other = run / r.relative_to(ref)
            if not other.is_file():
                diffs.append(f"missing {r.relative_to(ref)}")
            else:
                found.append((r, other))
        return found

    for r, o in pairs("distilled.h5"):
        a, b = _h5_datasets(r), _h5_datasets(o)
        for name in ("images", "labels", "ipc_index"):
            if name not in a or name not in b or not _same_array(a[name], b[name]):
                diffs.append(f"distilled.h5:{name}")
    for r, o in pairs("relabel/*.h5"):
        a, b = _h5_datasets(r), _h5_datasets(o)
        rel = r.relative_to(ref)
        diffs += [f"{rel}:{n}" for n in sorted(set(a) | set(b))
                  if n not in a or n not in b or not _same_array(a[n], b[n])]  # fmt: skip
    for r, o in pairs("students/*/*/metrics.json"):
        a = _strip_timing(json.loads(r.read_text()))
        b = _strip_timing(json.loads(o.read_text()))
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diffs.append(f"{r.relative_to(ref)}:{','.join(keys)}")
    for r, o in pairs("teachers/*.pt"):
        a = torch.load(r, weights_only=True, map_location="cpu")
        b = torch.load(o, weights_only=True, map_location="cpu")
        rel = r.relative_to(ref)
        for name in sorted(set(a) | set(b)):
            x, y = a.get(name), b.get(name)
            if x is None or y is None or not _same_array(x.numpy(), y.numpy()):
                diffs.append(f"{rel}:{name}")
    return diffs
