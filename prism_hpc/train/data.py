"""The student input pipeline: one DataLoader item = this rank's part of one optimizer step.

Item `i` of `StepBatches` is batch `i % B` of epoch `i // B` (B batches per epoch), so one
iterator runs over every remaining epoch: its workers live for the whole training and prepare
the next epoch's first batches while the current one ends (persistent workers without a restart
per epoch). A worker reads, for its rank only, the rows of the rank's positions plus their
CutMix/Mixup partners, replays the stored crops/flips/mix of those positions (bit-identical to
`build_batch` on the whole batch: every operation is per image or per element) and slices the
stored soft labels. HDF5 files are opened lazily inside each worker (FACTS E): `DistilledSet`
re-opens per process, the soft-label reader is created on first use in the process.

Batch semantics (`rank_pieces`): a step batch of n images is cut into `grad_accum` contiguous
micro-batches (BatchNorm's batch) and each micro-batch into `world_size` contiguous pieces;
rank r forwards piece r of every micro-batch. With one rank this is the micro-batching of a
single GPU; with sync BN, W ranks compute exactly the same statistics and gradients.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prism_hpc.config.schema import Config
from prism_hpc.relabel.augment import crop_flip, plan_from_config
from prism_hpc.relabel.patches import shuffle_patches
from prism_hpc.store.distilled import DistilledSet
from prism_hpc.store.softlabels import EpochPlan, SoftLabelReader


def rank_pieces(n: int, grad_accum: int, world_size: int, rank: int) -> list[np.ndarray] | None:
    """Positions (within the step batch) that `rank` forwards, one array per micro-batch;
    None when the batch is smaller than the world (every rank skips it: tiny sets only)."""
    if n < world_size:
        return None
    micro = max(1, min(grad_accum, n // world_size))  # every rank gets >= 1 image per micro
    return [np.array_split(m, world_size)[rank] for m in np.array_split(np.arange(n), micro)]


def replay_positions(
    pixels: torch.Tensor,
    plan: EpochPlan,
    b: int,
    positions: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, float, np.ndarray]:
    """Batch `b` of `plan` at `positions` only: crop + flip + normalise + mix.

    `pixels`: uint8 images of `need` (returned; sorted unique positions of `positions` and
    their mix partners), in that order. Returns (x, partner positions, lam, need); equals
    `build_batch(all rows)[0][positions]` exactly.
    """
    sl = plan.batch_slice(b)
    perm = plan.perm[sl].numpy()
    need = np.unique(np.concatenate([positions, perm[positions]]))
    x = pixels.float() / 255.0 if not pixels.is_floating_point() else pixels.float()
    if plan.shuffles is not None:  # RDED's patch shuffle, as relabel applied it
        x = shuffle_patches(x, plan.shuffles[sl][need])
    x = crop_flip(x, plan.crops[sl][need], plan.flips[sl][need], pixels.shape[-1])
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    x = (x - m) / s
    at = np.searchsorted(need, positions)
    partner = torch.from_numpy(perm[positions])
    lam = float(plan.lam[b])
    if plan.mix == "none":
        return x[at], partner, 1.0, need
    x_pos, x_par = x[at], x[np.searchsorted(need, perm[positions])]
    if plan.mix == "mixup":
        return lam * x_pos + (1.0 - lam) * x_par, partner, lam, need
    y0, y1, x0, x1 = (int(v) for v in plan.boxes[b])
    out = x_pos.clone()
    out[:, :, y0:y1, x0:x1] = x_par[:, :, y0:y1, x0:x1]
    return out, partner, lam, need


class StepBatches(torch.utils.data.Dataset):
    """This rank's share of every optimizer step from `start_epoch` on (see module doc)."""

    def __init__(
        self, cfg: Config, run_dir: Path, distilled: DistilledSet, start_epoch: int,
        rank: int = 0, world_size: int = 1,
    ):  # fmt: skip
        self.cfg, self.run_dir, self.distilled = cfg, Path(run_dir), distilled
        self.rank, self.world_size = rank, world_size
        self.offline = cfg.relabel.mode == "offline"
        st = cfg.students
        self.num_batches = -(-len(distilled) // st.batch_size)
        self.start, self.stop = start_epoch, st.epochs
        self.mean = torch.tensor(distilled.mean, dtype=torch.float32)
        self.std = torch.tensor(distilled.std, dtype=torch.float32)
        self.labels = torch.from_numpy(distilled.labels)
        self._reader: SoftLabelReader | None = None
        self._pid: int | None = None
        self._epoch: tuple[int, EpochPlan, Any] | None = None

    def __len__(self) -> int:
        return (self.stop - self.start) * self.num_batches

    def __getstate__(self) -> dict[str, Any]:  # spawn: h5py handles never travel
        state = dict(self.__dict__)
        state["_reader"], state["_pid"], state["_epoch"] = None, None, None
        return state

    def _plan(self, epoch: int) -> tuple[EpochPlan, Any]:
        if self._pid != os.getpid():  # a worker: open its own files
            self._reader, self._epoch, self._pid = None, None, os.getpid()
        if self._epoch is None or self._epoch[0] != epoch:
            if self.offline:
                if self._reader is None:
                    self._reader = SoftLabelReader(self.cfg, self.run_dir, self.distilled)
                stored = self._reader.epoch(epoch)
                self._epoch = (epoch, stored.plan, stored)
            else:
                d = self.distilled
                plan = plan_from_config(self.cfg, epoch, len(d), d.height, d.width)
                self._epoch = (epoch, plan, None)
        return self._epoch[1], self._epoch[2]

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch, b = divmod(int(i), self.num_batches)
        epoch += self.start
        plan, stored = self._plan(epoch)
        sl = plan.batch_slice(b)
        n = sl.stop - sl.start
        pieces = rank_pieces(n, self.cfg.students.grad_accum, self.world_size, self.rank)
        item: dict[str, Any] = {"epoch": epoch, "batch": b, "n": n}
        if pieces is None:
            return {**item, "skip": True}
        positions = np.concatenate(pieces)
        order = plan.order[sl].numpy()
        perm = plan.perm[sl].numpy()
        need = np.unique(np.concatenate([positions, perm[positions]]))
        pixels = self.distilled.images(order[need])
        x, partner, lam, _ = replay_positions(pixels, plan, b, positions, self.mean, self.std)
        item.update(
            skip=False, x=x, lam=lam, sizes=[len(p) for p in pieces],
            y=self.labels[order[positions]], y_b=self.labels[order[partner.numpy()]],
        )  # fmt: skip
        if stored is not None:
            item["soft"] = stored.soft_labels(b)[torch.from_numpy(positions)]
        return item


def step_loader(dataset: StepBatches, workers: int, prefetch: int, pin: bool):
    """Items in order (no shuffling: the plans fix the order), no collation (an item is a
    batch), `workers` processes each `prefetch` items ahead, pinned memory for the GPU."""
    from torch.utils.data import DataLoader

    extra = {"prefetch_factor": prefetch} if workers > 0 else {}
    return DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin, **extra
    )
