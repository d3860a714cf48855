"""The one reader of `distilled.h5` (DESIGN §4): every consumer (relabel, training, diversity,
report, tables, export) opens the distilled set through `DistilledSet`, so its layout is known
in one place.

Labels, IPC indices and attributes are read once at open; pixels stay in the file unless they
fit `max_memory_bytes` (ImageNet-1K IPC 50 is ~7.5 GB). The HDF5 handle is opened lazily and
re-opened in a forked or spawned worker (h5py handles neither pickle nor survive a fork), so
one object can be handed to DataLoader workers. A Virtual Dataset whose source shard went
missing reads the fill value -1: opening refuses such a file with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np

from prism_hpc.errors import UserError
from prism_hpc.store.layout import distilled_file

DEFAULT_MEMORY_BYTES = 4 << 30


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DistilledSet:
    """uint8 images `(N, C, H, W)`, int64 labels, IPC indices and the file's attributes."""

    def __init__(self, path: Path, max_memory_bytes: int = DEFAULT_MEMORY_BYTES):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no distilled.h5 (run the collect stage first)")
        try:
            with h5py.File(self.path, "r") as f:
                for key in ("images", "labels"):
                    if key not in f:
                        raise UserError(f"{self.path}: dataset '{key}' missing")
                self.shape: tuple[int, ...] = tuple(f["images"].shape)
                self.labels = np.asarray(f["labels"][()], dtype=np.int64)
                n = len(self.labels)
                ipc = f["ipc_index"][()] if "ipc_index" in f else np.zeros(n)
                self.ipc_index = np.asarray(ipc, dtype=np.int64)
                attrs = dict(f.attrs)
                nbytes = int(np.prod(self.shape))
                self._pixels = f["images"][()] if nbytes <= max_memory_bytes else None
        except OSError as err:
            raise UserError(f"{self.path}: not a readable distilled set ({err})") from None
        if (self.labels < 0).any() or (self.ipc_index < 0).any():
            raise UserError(
                f"{self.path}: reads fill values -1 (a recover shard is missing or unreadable; "
                "re-collect)"
            )
        if len(self.labels) != self.shape[0]:
            raise UserError(f"{self.path}: {self.shape[0]} images but {len(self.labels)} labels")
        self._read_attrs(attrs)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _read_attrs(self, attrs: dict[str, Any]) -> None:
        labels = self.labels
        fallback = int(labels.max()) + 1 if len(labels) else 0
        self.num_classes = int(attrs.get("num_classes", fallback))
        names = attrs.get("class_names")
        self.class_names = [_text(n) for n in names] if names is not None else []
        if len(self.class_names) != self.num_classes:
            self.class_names = [f"class {c}" for c in range(self.num_classes)]
        channels = self.shape[1] if len(self.shape) > 1 else 1
        self.mean = [float(v) for v in np.atleast_1d(attrs.get("mean", [0.5] * channels))]
        self.std = [float(v) for v in np.atleast_1d(attrs.get("std", [0.5] * channels))]
        self.method = _text(attrs.get("method", ""))
        self.config_text = _text(attrs.get("config", ""))
        self.layout = _text(attrs.get("layout", ""))
        try:
            provenance = json.loads(_text(attrs.get("slice_provenance", "[]")))
        except ValueError:
            provenance = []
        self.slice_provenance: list[dict[str, Any]] = (
            provenance if isinstance(provenance, list) else []
        )
        counts = np.bincount(labels, minlength=self.num_classes) if len(labels) else [0]
        self.ipc = int(np.max(counts))

    # ---- shape ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def height(self) -> int:
        return self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[3]

    # ---- pixels ---------------------------------------------------------------------------
    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")  # a forked worker must not reuse the parent's
            self._pid = os.getpid()
        return self._file

    def read(self, rows: slice | np.ndarray | Any) -> np.ndarray:
        """uint8 `(n, C, H, W)` for a slice or row positions in any order (repeats allowed)."""
        if isinstance(rows, slice):
            if self._pixels is not None:
                return self._pixels[rows]
            return self._handle()["images"][rows]
        rows = np.asarray(rows, dtype=np.int64)
        if self._pixels is not None:
            return self._pixels[rows]
        if len(rows) == 0:
            return np.zeros((0, *self.image_shape), np.uint8)
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py needs increasing positions
        return self._handle()["images"][uniq][inverse.reshape(-1)]

    def images(self, rows: Any):
        """The same pixels as a torch uint8 tensor (training and relabel work in torch)."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(self.read(np.asarray(rows))))

    def iter_batches(self, batch_size: int):
        """(start row, uint8 pixels) in file order."""
        for start in range(0, len(self), batch_size):
            yield start, self.read(slice(start, min(start + batch_size, len(self))))

    def rows_of_classes(self, classes, max_ipc: int | None = None) -> np.ndarray:
        """Row positions of the given classes, class-major then by IPC index."""
        rows = []
        for c in classes:
            r = np.flatnonzero(self.labels == c)
            r = r[np.argsort(self.ipc_index[r], kind="stable")]
            rows.append(r if max_ipc is None else r[:max_ipc])
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    def pairs(self) -> set[tuple[int, int]]:
        """Every (class, IPC index) present."""
        return set(zip(self.labels.tolist(), self.ipc_index.tolist()))

    def labels_digest(self) -> str:
        """Ties stored soft labels to exactly these labels (relabel fingerprint)."""
        return hashlib.sha256(self.labels.tobytes()).hexdigest()[:16]

    # ---- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_distilled(run_dir: Path, max_memory_bytes: int = 0) -> DistilledSet:
    """The distilled set of a run directory (pixels read on demand by default)."""
    return DistilledSet(distilled_file(run_dir), max_memory_bytes=max_memory_bytes)


def read_attr_text(path: Path, name: str) -> str | None:
    """One text attribute of `distilled.h5` without loading labels (a copied run dir that kept
    only the distilled set still says which config made it)."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get(name)
    except OSError:
        return None
    return None if value is None else _text(value)
