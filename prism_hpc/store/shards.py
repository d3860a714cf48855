"""Per-slice HDF5 shards: one writer per file, atomic rename, checksummed `.done` marker.

Layout of a shard: `images` uint8 (N, C, H, W) chunked one image per chunk, `labels` int64 (N,),
`ipc_index` int32 (N,), root attribute `provenance` (JSON). The marker next to it records
rows and the file's SHA-256, so a truncated or swapped file is detected before `collect`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from prism_hpc.store.atomic import atomic_path, file_sha256, read_marker, write_marker
from prism_hpc.store.integrity import check_outputs


def marker_for(shard: Path) -> Path:
    return Path(shard).with_suffix(".done")


def write_shard(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    ipc_index: np.ndarray,
    provenance: dict[str, Any],
    run_dir: Path | None = None,
    inputs: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Write the shard, then its marker (vouching for the file, and recording `inputs`, the
    upstream markers it was computed from); returns the marker payload."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n = images.shape[0]
    if images.ndim != 4 or len(labels) != n or len(ipc_index) != n:
        raise ValueError(f"shard {path}: inconsistent shapes {images.shape}, {len(labels)}")
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]), track_times=False)
        f.create_dataset("labels", data=np.asarray(labels, np.int64), track_times=False)
        f.create_dataset("ipc_index", data=np.asarray(ipc_index, np.int32), track_times=False)
        f.attrs["provenance"] = json.dumps(provenance, sort_keys=True)
    payload = {
        "rows": int(n),
        "shape": list(images.shape),
        "sha256": file_sha256(path),
        "file": path.name,
    }
    root = path.parent if run_dir is None else run_dir
    return write_marker(marker_for(path), payload, root, outputs=[path], inputs=inputs)


def validate_shard(
    path: Path, expected_rows: int | None = None, full: bool = True
) -> str | None:
    """None if the shard and its marker agree, else a one-line reason (`full`: hash it even
    when size and mtime match)."""
    path = Path(path)
    marker = read_marker(marker_for(path))
    if marker is None:
        return f"{path.name}: no .done marker"
    if not path.is_file():
        return f"{path.name}: marker present but file missing"
    if marker.get("outputs"):
        key = next(iter(marker["outputs"]))  # run-relative: recover/slice_N.h5
        root = path.parents[len(Path(key).parts) - 1]
        bad = check_outputs(root, marker, full=full)
        if bad:
            return bad[0]
    elif file_sha256(path) != marker.get("sha256"):
        return f"{path.name}: checksum differs from its marker"
    if expected_rows is not None and marker.get("rows") != expected_rows:
        return f"{path.name}: {marker.get('rows')} rows, expected {expected_rows}"
    return None


def read_shard(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        return {
            "images": f["images"][()],
            "labels": f["labels"][()],
            "ipc_index": f["ipc_index"][()],
            "provenance": json.loads(f.attrs["provenance"]),
        }
