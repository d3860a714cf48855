"""Offline relabel storage: one HDF5 file per chunk of epochs, read back by training.

Layout of `run_dir/relabel/epochs_SSSS-EEEE.h5` (one writer, tmp + rename, then a `.done`
marker next to it)::

    attrs: format, fingerprint, epoch_start, epoch_stop, num_images, num_classes, batch_size,
           storage, topk, mix, ensemble, teachers
    epoch_0007/
        order  int32 (N,)      crops int32 (N, 4)    flips uint8 (N,)   perm int32 (N,)
        lam    float32 (B,)    boxes int32 (B, 4)
        logits        float16 (N, K)            storage: fp16   (chunked per batch, gzip+shuffle)
        topk_values   float16 (N, k)            storage: topk
        topk_indices  int16|int32 (N, k)
        topk_rest     float16 (N,)              mean of the logits left out: their fill value

Rows are in visiting order (row k = position k of the epoch's plan), so a batch is a
contiguous slice. The fingerprint ties a file to the config and the distilled labels; training
refuses a file whose fingerprint does not match.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from prism_hpc.errors import UserError
from prism_hpc.relabel.augment import EpochPlan, build_batch, plan_from_config
from prism_hpc.store.atomic import atomic_path

FORMAT = "prism-relabel-v1"
GZIP_LEVEL = 4


# --------------------------------------------------------------------------- distilled set
class DistilledSet:
    """`distilled.h5` (DESIGN §4) read with plain h5py: uint8 images, labels, mean/std.

    Pixels are loaded into memory once when they fit `max_memory_bytes`; otherwise each batch
    reads its rows (sorted, as h5py requires) from the file.
    """

    def __init__(self, path: Path, max_memory_bytes: int = 4 << 30):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} not found (run the collect stage first)")
        with h5py.File(self.path, "r") as f:
            for key in ("images", "labels"):
                if key not in f:
                    raise UserError(f"{self.path}: dataset '{key}' missing")
            self.shape = tuple(f["images"].shape)
            self.labels = torch.from_numpy(f["labels"][()].astype(np.int64))
            if len(self.labels) and int(self.labels.min()) < 0:  # VDS fill value: lost shard
                raise UserError(f"{self.path}: labels hold the fill value -1 (a shard is missing)")
            self.num_classes = int(f.attrs.get("num_classes", int(self.labels.max()) + 1))
            self.mean = torch.tensor(np.asarray(f.attrs["mean"], dtype=np.float32))
            self.std = torch.tensor(np.asarray(f.attrs["std"], dtype=np.float32))
            self.ipc = int(np.bincount(self.labels.numpy(), minlength=self.num_classes).max())
            nbytes = int(np.prod(self.shape))
            self._pixels = torch.from_numpy(f["images"][()]) if nbytes <= max_memory_bytes else None
        if len(self.labels) != self.shape[0]:
            raise UserError(f"{self.path}: {self.shape[0]} images but {len(self.labels)} labels")
        self._file = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[3]

    def images(self, rows: torch.Tensor) -> torch.Tensor:
        """uint8 (n, C, H, W) for dataset rows `rows`, in that order."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        if self._pixels is not None:
            return self._pixels[rows]
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        uniq, inverse = torch.unique(rows, return_inverse=True)
        data = torch.from_numpy(self._file["images"][uniq.numpy()])
        return data[inverse]

    def labels_digest(self) -> str:
        return hashlib.sha256(self.labels.numpy().tobytes()).hexdigest()[:16]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------- chunks, sizes
def epoch_chunks(cfg) -> list[tuple[int, int]]:
    """[start, stop) epoch ranges, one per relabel task."""
    epochs, per = cfg.students.epochs, cfg.relabel.epochs_per_task
    return [(s, min(s + per, epochs)) for s in range(0, epochs, per)]


def chunk_key(start: int, stop: int) -> str:
    return f"epochs_{start:04d}-{stop - 1:04d}"


def chunk_path(run_dir: Path, start: int, stop: int) -> Path:
    return Path(run_dir) / "relabel" / f"{chunk_key(start, stop)}.h5"


def chunk_marker(run_dir: Path, start: int, stop: int) -> Path:
    return Path(run_dir) / "relabel" / f"{chunk_key(start, stop)}.done"


def index_dtype(num_classes: int):
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def label_bytes_per_visit(num_classes: int, storage: str, topk: int) -> int:
    """Uncompressed soft-label bytes per image per epoch (parameters excluded)."""
    if storage == "fp16":
        return 2 * num_classes
    k = min(topk, num_classes)
    return k * 2 + k * np.dtype(index_dtype(num_classes)).itemsize + 2


PARAM_BYTES_PER_VISIT = 4 + 16 + 1 + 4  # order, crop box, flip, partner


def estimate_storage_bytes(cfg, num_images: int, num_classes: int) -> int:
    per = label_bytes_per_visit(num_classes, cfg.relabel.storage, cfg.relabel.topk)
    return int(cfg.students.epochs * num_images * (per + PARAM_BYTES_PER_VISIT))


def fingerprint(cfg, distilled: DistilledSet) -> str:
    """What the stored plans and labels depend on (a changed value invalidates the files)."""
    rel = cfg.relabel
    key = {
        "seed": cfg.seed,
        "relabel": rel.model_dump(mode="json", exclude={"epochs_per_task", "batch_size"}),
        "teachers": {n: cfg.teachers[n].model_dump(mode="json") for n in rel.teachers},
        "batch_size": cfg.students.batch_size,
        "shape": list(distilled.shape),
        "labels": distilled.labels_digest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- soft labels
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


def write_relabel_chunk(
    cfg,
    path: Path,
    epochs: range,
    distilled: DistilledSet,
    ensemble,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> dict:
    """Plans + ensemble soft labels of `epochs`, written atomically to `path`."""
    rel = cfg.relabel
    n, k_all = len(distilled), distilled.num_classes
    mean, std = distilled.mean.to(device), distilled.std.to(device)
    bs = cfg.students.batch_size
    idx_dtype = index_dtype(k_all)
    k = min(rel.topk, k_all)
    start_time = time.time()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({
            "format": FORMAT,
            "fingerprint": fingerprint(cfg, distilled),
            "epoch_start": epochs.start,
            "epoch_stop": epochs.stop,
            "num_images": n,
            "num_classes": k_all,
            "batch_size": bs,
            "storage": rel.storage,
            "topk": k,
            "mix": rel.mix,
            "ensemble": rel.ensemble,
            "teachers": json.dumps(list(rel.teachers)),
        })  # fmt: skip
        for e in epochs:
            plan = plan_from_config(cfg, e, n, distilled.height, distilled.width)
            grp = f.create_group(f"epoch_{e:04d}")
            _write_plan(grp, plan)
            rows = min(bs, n)
            opts = {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": True}
            if rel.storage == "fp16":
                logits_ds = grp.create_dataset(
                    "logits", (n, k_all), np.float16, chunks=(rows, k_all), **opts
                )
            else:
                val_ds = grp.create_dataset(
                    "topk_values", (n, k), np.float16, chunks=(rows, k), **opts
                )
                idx_ds = grp.create_dataset(
                    "topk_indices", (n, k), idx_dtype, chunks=(rows, k), **opts
                )
                rest_ds = grp.create_dataset("topk_rest", (n,), np.float16, chunks=(rows,), **opts)
            for b in range(plan.num_batches):
                sl = plan.batch_slice(b)
                pixels = distilled.images(plan.order[sl]).to(device)
                x, _, _ = build_batch(pixels, plan, b, mean, std)
                logits = ensemble(x).float().cpu()
                if rel.storage == "fp16":
                    logits_ds[sl] = logits.half().numpy()
                else:
                    v, i, r = to_topk(logits, k)
                    val_ds[sl] = v.half().numpy()
                    idx_ds[sl] = i.numpy().astype(idx_dtype)
                    rest_ds[sl] = r.half().numpy()
            log(f"relabel epoch {e}: {plan.num_batches} batch(es) of <= {bs}")
    return {
        "epochs": [epochs.start, epochs.stop],
        "file": path.name,
        "bytes": path.stat().st_size,
        "seconds": round(time.time() - start_time, 2),
        "storage": rel.storage,
    }


def _write_plan(grp: h5py.Group, plan: EpochPlan) -> None:
    grp.attrs["mix"] = plan.mix
    grp.attrs["batch_size"] = plan.batch_size
    grp.create_dataset("order", data=plan.order.numpy().astype(np.int32))
    grp.create_dataset("crops", data=plan.crops.numpy().astype(np.int32))
    grp.create_dataset("flips", data=plan.flips.numpy().astype(np.uint8))
    grp.create_dataset("perm", data=plan.perm.numpy().astype(np.int32))
    grp.create_dataset("lam", data=plan.lam.numpy().astype(np.float32))
    grp.create_dataset("boxes", data=plan.boxes.numpy().astype(np.int32))


def _read_plan(grp: h5py.Group, epoch: int) -> EpochPlan:
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
    )


@dataclass
class StoredEpoch:
    """One stored epoch: its plan and lazy access to each batch's soft labels."""

    plan: EpochPlan
    group: h5py.Group
    num_classes: int

    def soft_labels(self, b: int) -> torch.Tensor:
        """Dense float32 logits (n, K) of batch `b`."""
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

    def __init__(self, cfg, run_dir: Path, distilled: DistilledSet):
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


def storage_summary(run_dir: Path) -> dict:
    """Files and bytes under run_dir/relabel (for logs and reports)."""
    files = sorted((Path(run_dir) / "relabel").glob("epochs_*.h5"))
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


__all__ = [
    "DistilledSet", "SoftLabelReader", "StoredEpoch", "chunk_key", "chunk_marker", "chunk_path",
    "epoch_chunks", "estimate_storage_bytes", "fingerprint", "from_topk", "human_bytes",
    "label_bytes_per_visit", "storage_summary", "to_topk", "write_relabel_chunk",
]  # fmt: skip
