"""DELT's initialisation order: real images ranked by a teacher's confidence in their class.

DELT (VILA-Lab/DELT, `data_selection.py`) scores every training image with a ranker model by
its softmax probability of the true class, then per class picks the images that initialise
IPC positions 0, 1, 2, ...:

- `medium` (its default): scores sorted ascending, start at index ceil(n/2), then +1, -1, +2,
  -2, ... (DELT computes `mid + int(s * (k + 1) / 2)` with s = -1, +1, -1, ...);
- `top`: highest score first; `min`: lowest score first.

Differences, on purpose: DELT's pandas sort leaves ties in no particular order, ours is stable
(ties keep file order); DELT stops with an IndexError once `mid + k` leaves the class, we skip
positions outside the class and go on with the other side, so every image of a class gets a
slot (what `recover.ipc: all` needs); for a one-image class ceil(1/2) = 1 is out of range and
the only image is taken. The score is the softmax computed in float64 from the logits, so
near-certain images (fp32 probabilities of exactly 1.0) still sort by confidence.

The stage `stages/rank.py` writes the order once per run; every recover task reads it
(`load_order`), so all slices see the same order whatever runs them.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from prism_hpc.errors import UserError
from prism_hpc.store.atomic import atomic_path

CRITERIA = ("delt_medium", "delt_top", "delt_min")
RANK_BATCH = 256  # fixed: scores must not depend on how a machine batches the forward


def medium_positions(n: int) -> np.ndarray:
    """Positions (into the ascending sort of n scores) in DELT's `medium` visiting order."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    mid = min(math.ceil(n / 2), n - 1)
    out = [mid]
    k = 1
    while len(out) < n:
        for p in (mid + k, mid - k):
            if 0 <= p < n:
                out.append(p)
        k += 1
    return np.asarray(out, dtype=np.int64)


def class_order(scores: np.ndarray, criterion: str) -> np.ndarray:
    """Indices into one class's `scores`: slot i of the class initialises from index [i]."""
    scores = np.asarray(scores, dtype=np.float64)
    if criterion == "delt_medium":
        return np.argsort(scores, kind="stable")[medium_positions(len(scores))]
    if criterion == "delt_top":
        return np.argsort(-scores, kind="stable")
    if criterion == "delt_min":
        return np.argsort(scores, kind="stable")
    raise UserError(f"recover.init_order: unknown criterion {criterion!r} (known: {CRITERIA})")


def ranked_index(
    per_class: list[np.ndarray], scores: np.ndarray, criterion: str
) -> list[np.ndarray]:
    """Per class, its dataset positions in initialisation order (`per_class` in file order)."""
    return [idx[class_order(scores[idx], criterion)] for idx in per_class]


def true_class_scores(model, source, stats, device, batch_size: int = RANK_BATCH, workers: int = 0,
                      log=None) -> np.ndarray:  # fmt: skip
    """Softmax probability of the true class for every image of `source`, in file order.

    One fixed pass: batches of `batch_size` consecutive positions; with `workers` a DataLoader
    decodes ahead (ImageFolder) without changing which images form a batch."""
    import torch

    n = len(source.labels)
    labels = torch.as_tensor(source.labels, dtype=torch.int64)
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    starts = list(range(0, n, batch_size))
    batches = _batches(source, starts, batch_size, n, workers)
    out = np.empty(n, dtype=np.float64)
    with torch.no_grad():
        for b, (start, x) in enumerate(zip(starts, batches)):
            stop = min(start + batch_size, n)
            logits = model(((x - mean) / std).to(device)).double()
            p = torch.softmax(logits, dim=1).gather(1, labels[start:stop, None].to(device))
            out[start:stop] = p[:, 0].cpu().numpy()
            if log is not None and (b + 1) % 50 == 0:
                log(f"rank: {stop}/{n} images scored")
    return out


def _batches(source, starts, batch_size, n, workers):
    if workers <= 0:
        return (source.load(np.arange(s, min(s + batch_size, n))) for s in starts)
    import torch

    class _Batches(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(starts)

        def __getitem__(self, b: int):
            s = starts[b]
            return source.load(np.arange(s, min(s + batch_size, n)))

    return torch.utils.data.DataLoader(_Batches(), batch_size=None, num_workers=workers)


def save_order(
    path: Path, order: list[np.ndarray], scores: np.ndarray, info: dict[str, Any]
) -> None:
    """order.npz: `order` (all classes' positions, class after class), `counts` per class,
    every image's `scores`, and `info` (ranker, criterion) as JSON; written atomically."""
    buf = io.BytesIO()
    np.savez(
        buf,
        order=np.concatenate(order).astype(np.int64) if order else np.zeros(0, np.int64),
        counts=np.asarray([len(o) for o in order], dtype=np.int64),
        scores=np.asarray(scores, dtype=np.float64),
        info=np.frombuffer(json.dumps(info, sort_keys=True).encode(), np.uint8),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_order(path: Path, per_class: list[np.ndarray]) -> list[np.ndarray]:
    """The stored order, checked against the data (`per_class` in file order): each class
    must hold the same images, else the order belongs to other data (UserError)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            flat, counts = data["order"], data["counts"]
    except (OSError, ValueError, KeyError):
        raise UserError(
            f"{path}: no readable rank order (run the rank stage: recover.init_order is not file)"
        ) from None
    if len(counts) != len(per_class):
        raise UserError(f"{path}: order has {len(counts)} classes, the data {len(per_class)}")
    out = np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []
    for c, (ranked, files) in enumerate(zip(out, per_class)):
        if len(ranked) != len(files) or not np.array_equal(np.sort(ranked), np.sort(files)):
            raise UserError(f"{path}: class {c} of the order does not match the data's images")
    return out


def read_order_info(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as data:
        return json.loads(data["info"].tobytes().decode())
