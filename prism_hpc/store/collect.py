"""Collect per-slice shards into `distilled.h5` (DESIGN §4).

Default: a Virtual Dataset whose sources are the shards by *relative* path (the run dir can be
moved). A VDS with a missing source silently reads the fill value, so every shard is validated
first and `labels`/`ipc_index` use the sentinel -1, which is checked after writing.
`consolidate=True` copies the pixels instead (one self-contained file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from prism_hpc.store.atomic import atomic_path
from prism_hpc.store.shards import validate_shard

SENTINEL = -1


class MissingSlices(Exception):
    def __init__(self, problems: dict[int, str]):
        self.problems = problems
        listed = ", ".join(str(s) for s in sorted(problems))
        first = next(iter(problems.values()))
        super().__init__(f"missing or invalid slice(s): {listed} (first: {first})")


def collect_shards(
    shard_paths: dict[int, Path],
    rows_per_slice: int | dict[int, int],
    out: Path,
    attrs: dict[str, Any],
    consolidate: bool = False,
) -> dict[str, Any]:
    """Validate all shards, then write `out` atomically. Raises MissingSlices listing them.
    `rows_per_slice`: one count for all, or per slice (identical-size distillation)."""
    if isinstance(rows_per_slice, int):
        rows_per_slice = dict.fromkeys(shard_paths, rows_per_slice)
    problems = {}
    for s, p in shard_paths.items():
        reason = validate_shard(p, rows_per_slice[s])
        if reason:
            problems[s] = reason
    if problems:
        raise MissingSlices(problems)
    order = sorted(shard_paths)
    provenance = []
    with h5py.File(shard_paths[order[0]], "r") as f:
        img_shape = f["images"].shape[1:]
    n = sum(rows_per_slice[s] for s in order)
    offsets = dict(zip(order, np.cumsum([0] + [rows_per_slice[s] for s in order]).tolist()))
    out = Path(out)
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            if consolidate:
                images = f.create_dataset(
                    "images", (n, *img_shape), np.uint8, chunks=(1, *img_shape), track_times=False
                )
                labels = np.empty(n, np.int64)
                ipc = np.empty(n, np.int32)
                for s in order:
                    with h5py.File(shard_paths[s], "r") as src:
                        rows = slice(offsets[s], offsets[s] + rows_per_slice[s])
                        images[rows] = src["images"][()]
                        labels[rows] = src["labels"][()]
                        ipc[rows] = src["ipc_index"][()]
                        provenance.append(json.loads(src.attrs["provenance"]))
                f.create_dataset("labels", data=labels, track_times=False)
                f.create_dataset("ipc_index", data=ipc, track_times=False)
            else:
                layouts = {
                    "images": h5py.VirtualLayout((n, *img_shape), np.uint8),
                    "labels": h5py.VirtualLayout((n,), np.int64),
                    "ipc_index": h5py.VirtualLayout((n,), np.int32),
                }
                for s in order:
                    rel = os.path.relpath(shard_paths[s], out.parent)
                    count = rows_per_slice[s]
                    rows = slice(offsets[s], offsets[s] + count)
                    for name, layout in layouts.items():
                        shape = (count, *img_shape) if name == "images" else (count,)
                        layout[rows] = h5py.VirtualSource(rel, name, shape=shape)
                    with h5py.File(shard_paths[s], "r") as src:
                        provenance.append(json.loads(src.attrs["provenance"]))
                f.create_virtual_dataset("images", layouts["images"], fillvalue=0)
                f.create_virtual_dataset("labels", layouts["labels"], fillvalue=SENTINEL)
                f.create_virtual_dataset("ipc_index", layouts["ipc_index"], fillvalue=SENTINEL)
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["slice_provenance"] = json.dumps(provenance, sort_keys=True)
            f.attrs["layout"] = "consolidated" if consolidate else "virtual"
        _check_no_sentinel(tmp)
    return {"rows": n, "slices": order, "layout": "consolidated" if consolidate else "virtual"}


def _check_no_sentinel(path: Path) -> None:
    """Read back through the VDS: a fill value means a source could not be opened.

    HDF5 resolves relative sources against the folder of the virtual file, and the temp file
    sits next to the final one, so no change of working directory is needed (a chdir would also
    break relative run dirs such as `runs/...` and race with other threads).
    """
    with h5py.File(path, "r") as f:
        if (f["labels"][()] == SENTINEL).any() or (f["ipc_index"][()] == SENTINEL).any():
            raise MissingSlices({-1: "a shard could not be read through the VDS"})
