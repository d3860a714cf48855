"""Offline soft labels on disk: the one writer and the one reader of `relabel/*.h5`.

Layout of `run_dir/relabel/epochs_SSSS-EEEE.h5` (one writer, tmp + rename, then a `.done`
marker next to it)::

    attrs: format, fingerprint, epoch_start, epoch_stop, num_images, num_classes, batch_size,
           storage, topk, mix, ensemble, teachers, precision (the teachers' resolved autocast;
           absent in files written before it was recorded)
    epoch_0007/
        order  int32 (N,)      crops int32 (N, 4)    flips uint8 (N,)   perm int32 (N,)
        lam    float32 (B,)    boxes int32 (B, 4)
        logits        float16 (N, K)            storage: fp16   (chunked per batch, gzip+shuffle)
        topk_values   float16 (N, k)            storage: topk
        topk_indices  int16|int32 (N, k)
        topk_rest     float16 (N,)              mean of the logits left out: their fill value

Rows are in visiting order (row k = position k of the epoch's plan), so a batch is a
contiguous slice. The fingerprint ties a file to the config and the distilled labels; training
refuses a file whose fingerprint does not match. `EpochPlan` is the record this format stores
(relabel draws plans, training replays them); it lives here so both sides share one definition.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from prism_hpc.errors import UserError
from prism_hpc.store import layout
from prism_hpc.store.atomic import atomic_path

if TYPE_CHECKING:
    import torch  # imported where tensors are made, so planning and status stay light

FORMAT = "prism-relabel-v1"
GZIP_LEVEL = 4
PARAM_BYTES_PER_VISIT = 4 + 16 + 1 + 4  # order, crop box, flip, partner


@dataclass
class EpochPlan:
    """All random parameters of one epoch. Row k of the per-visit arrays is visit k."""

    epoch: int
    batch_size: int
    mix: str  # none | cutmix | mixup
    order: torch.Tensor  # int64 (N,): dataset row visited at position k
    crops: torch.Tensor  # int32 (N, 4): top, left, height, width in source pixels
    flips: torch.Tensor  # bool (N,)
    perm: torch.Tensor  # int64 (N,): mix partner of position k, as a position in its batch
    lam: torch.Tensor  # float32 (B,): weight of the original image (CutMix: exact area share)
    boxes: torch.Tensor  # int32 (B, 4): y0, y1, x0, x1 of the pasted CutMix box (else 0)
    # RDED patch shuffle (relabel.shuffle_patches > 1): int8 (N, 2, factor) column and row
    # strip orders per visit (relabel/patches.py); None: off (every other method)
    shuffles: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.order)

    @property
    def num_batches(self) -> int:
        return len(self.lam)

    def batch_slice(self, b: int) -> slice:
        return slice(b * self.batch_size, min((b + 1) * self.batch_size, len(self.order)))


# --------------------------------------------------------------------------- names and sizes
def epoch_chunks(cfg) -> list[tuple[int, int]]:
    """[start, stop) epoch ranges, one per relabel task."""
    epochs, per = cfg.students.epochs, cfg.relabel.epochs_per_task
    return [(s, min(s + per, epochs)) for s in range(0, epochs, per)]


def chunk_key(start: int, stop: int) -> str:
    return layout.softlabel_key(start, stop)


def chunk_path(run_dir: Path, start: int, stop: int) -> Path:
    return layout.softlabel_chunk(run_dir, start, stop)


def chunk_marker(run_dir: Path, start: int, stop: int) -> Path:
    return layout.softlabel_marker(run_dir, start, stop)


def index_dtype(num_classes: int):
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def label_bytes_per_visit(num_classes: int, storage: str, topk: int) -> int:
    """Uncompressed soft-label bytes per image per epoch (parameters excluded)."""
    if storage == "fp16":
        return 2 * num_classes
    k = min(topk, num_classes)
    return k * 2 + k * np.dtype(index_dtype(num_classes)).itemsize + 2


def estimate_storage_bytes(cfg, num_images: int, num_classes: int) -> int:
    per = label_bytes_per_visit(num_classes, cfg.relabel.storage, cfg.relabel.topk)
    return int(cfg.students.epochs * num_images * (per + PARAM_BYTES_PER_VISIT))


def fingerprint(cfg, distilled) -> str:
    """What the stored plans and labels depend on (a changed value invalidates the files)."""
    rel = cfg.relabel
    # shuffle_patches off leaves the fingerprint of older files unchanged; precision moves
    # only the last bits, like the hardware (the resolved one is in the file's attrs)
    skip = {"epochs_per_task", "batch_size", "precision"}
    if rel.shuffle_patches == 1:
        skip.add("shuffle_patches")
    key = {
        "seed": cfg.seed,
        "relabel": rel.model_dump(mode="json", exclude=skip),
        "teachers": {n: cfg.teachers[n].model_dump(mode="json") for n in rel.teachers},
        "batch_size": cfg.students.batch_size,
        "shape": list(distilled.shape),
        "labels": distilled.labels_digest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def storage_summary(run_dir: Path) -> dict:
    """Files and bytes under run_dir/relabel (for logs and reports)."""
    files = layout.softlabel_chunks(run_dir)
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --------------------------------------------------------------------------- top-k coding
def to_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values, indices, rest mean) of float logits (n, K)."""
    k = min(k, logits.shape[1])
    values, indices = logits.topk(k, dim=1)
    rest = (logits.sum(1) - values.sum(1)) / max(logits.shape[1] - k, 1)
    return values, indices, rest


def from_topk(
    values: torch.Tensor, indices: torch.Tensor, rest: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Dense float32 logits: stored top-k entries, every other class at the stored rest mean."""
    dense = rest.float().view(-1, 1).expand(-1, num_classes).clone()
    return dense.scatter_(1, indices.long(), values.float())


# --------------------------------------------------------------------------- writer
def _write_plan(grp: h5py.Group, plan: EpochPlan) -> None:
    grp.attrs["mix"] = plan.mix
    grp.attrs["batch_size"] = plan.batch_size
    grp.create_dataset("order", data=plan.order.numpy().astype(np.int32))
    grp.create_dataset("crops", data=plan.crops.numpy().astype(np.int32))
    grp.create_dataset("flips", data=plan.flips.numpy().astype(np.uint8))
    grp.create_dataset("perm", data=plan.perm.numpy().astype(np.int32))
    grp.create_dataset("lam", data=plan.lam.numpy().astype(np.float32))
    grp.create_dataset("boxes", data=plan.boxes.numpy().astype(np.int32))
    if plan.shuffles is not None:
        grp.create_dataset("shuffles", data=plan.shuffles.numpy().astype(np.int8))


class EpochWriter:
    """Soft labels of one stored epoch, written batch by batch (rows in visiting order)."""

    def __init__(self, grp: h5py.Group, n: int, num_classes: int, storage: str, k: int, rows: int):
        opts = {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
        self.storage, self.k = storage, k
        self.idx_dtype = index_dtype(num_classes)
        if storage == "fp16":
            self.logits = grp.create_dataset(
                "logits", (n, num_classes), np.float16, chunks=(rows, num_classes), **opts
            )
        else:
            self.values = grp.create_dataset(
                "topk_values", (n, k), np.float16, chunks=(rows, k), **opts
            )
            self.indices = grp.create_dataset(
                "topk_indices", (n, k), self.idx_dtype, chunks=(rows, k), **opts
            )
            self.rest = grp.create_dataset("topk_rest", (n,), np.float16, chunks=(rows,), **opts)

    def write(self, sl: slice, logits: torch.Tensor) -> None:
        """float logits (n, K) of the rows `sl`, stored as the file's `storage` says."""
        if self.storage == "fp16":
            self.logits[sl] = logits.half().numpy()
        else:
            v, i, r = to_topk(logits, self.k)
            self.values[sl] = v.half().numpy()
            self.indices[sl] = i.numpy().astype(self.idx_dtype)
            self.rest[sl] = r.half().numpy()


class SoftLabelFile:
    """One chunk file being written: attributes, then `epoch(plan)` per stored epoch."""

    def __init__(self, f: h5py.File, attrs: dict[str, Any]):
        self._f = f
        self.num_images, self.num_classes = int(attrs["num_images"]), int(attrs["num_classes"])
        self.storage, self.k = str(attrs["storage"]), int(attrs["topk"])
        self.rows = max(1, min(int(attrs["batch_size"]), self.num_images))
        f.attrs.update({"format": FORMAT, **attrs})

    def epoch(self, plan: EpochPlan) -> EpochWriter:
        grp = self._f.create_group(f"epoch_{plan.epoch:04d}")
        _write_plan(grp, plan)
        return EpochWriter(grp, self.num_images, self.num_classes, self.storage, self.k, self.rows)


@contextlib.contextmanager
def soft_label_writer(path: Path, attrs: dict[str, Any]) -> Iterator[SoftLabelFile]:
    """Write a chunk file atomically: nothing appears at `path` unless the block completes."""
    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        yield SoftLabelFile(f, attrs)


# --------------------------------------------------------------------------- reader
def _read_plan(grp: h5py.Group, epoch: int) -> EpochPlan:
    import torch

    return EpochPlan(
        epoch=epoch,
        batch_size=int(grp.attrs["batch_size"]),
        mix=str(grp.attrs["mix"]),
        order=torch.from_numpy(grp["order"][()].astype(np.int64)),
        crops=torch.from_numpy(grp["crops"][()]),
        flips=torch.from_numpy(grp["flips"][()].astype(bool)),
        perm=torch.from_numpy(grp["perm"][()].astype(np.int64)),
        lam=torch.from_numpy(grp["lam"][()]),
        boxes=torch.from_numpy(grp["boxes"][()]),
        shuffles=torch.from_numpy(grp["shuffles"][()]) if "shuffles" in grp else None,
    )


@dataclass
class StoredEpoch:
    """One stored epoch: its plan and lazy access to each batch's soft labels."""

    plan: EpochPlan
    group: h5py.Group
    num_classes: int

    def soft_labels(self, b: int) -> torch.Tensor:
        """Dense float32 logits (n, K) of batch `b`."""
        import torch

        sl = self.plan.batch_slice(b)
        g = self.group
        if "logits" in g:
            return torch.from_numpy(g["logits"][sl]).float()
        return from_topk(
            torch.from_numpy(g["topk_values"][sl]),
            torch.from_numpy(g["topk_indices"][sl].astype(np.int64)),
            torch.from_numpy(g["topk_rest"][sl]),
            self.num_classes,
        )


class SoftLabelReader:
    """Reads the relabel files of a run, opening one chunk file at a time (lazily)."""

    def __init__(self, cfg, run_dir: Path, distilled):
        self.run_dir = Path(run_dir)
        self.chunks = epoch_chunks(cfg)
        self.expected = fingerprint(cfg, distilled)
        self.num_classes = distilled.num_classes
        self._open: tuple[tuple[int, int], h5py.File] | None = None

    def _file_for(self, epoch: int) -> h5py.File:
        chunk = next((c for c in self.chunks if c[0] <= epoch < c[1]), None)
        if chunk is None:
            raise UserError(f"relabel: epoch {epoch} is outside students.epochs")
        if self._open is not None and self._open[0] == chunk:
            return self._open[1]
        self.close()
        path, marker = chunk_path(self.run_dir, *chunk), chunk_marker(self.run_dir, *chunk)
        if not path.is_file() or not marker.is_file():
            raise UserError(f"relabel: {path} missing or incomplete (run the relabel stage)")
        f = h5py.File(path, "r")
        found = f.attrs.get("fingerprint")
        if found != self.expected:
            f.close()
            raise UserError(
                f"relabel: {path} was written for another config or distilled set "
                f"(fingerprint {found} != {self.expected}); delete it and rerun relabel"
            )
        self._open = (chunk, f)
        return f

    def epoch(self, epoch: int) -> StoredEpoch:
        f = self._file_for(epoch)
        grp = f[f"epoch_{epoch:04d}"]
        return StoredEpoch(_read_plan(grp, epoch), grp, self.num_classes)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
