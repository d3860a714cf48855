"""The one recover driver: a task's slices -> work for each rank -> restart files -> rank 0
gathers and assembles each slice's shard content.

A synthesis method is a `Schedule` (recover/methods.py lists them): it says what a unit of
work is (`phases`: which (slice, chunk) results one `solve` makes) and how to solve one. The
driver owns everything else, the same for every method:

- rank assignment: the works of a phase are dealt round-robin, work i to rank i mod world
  size, in rounds of world-size works; each round is gathered on rank 0. The works depend on
  the config and the item only, never on the world size or a restart, and a work's result
  depends only on its seeds, so the images are bit-identical for any world size;
- restart files (`recover/partial/slice_NNNNN/chunk_CCCC.npz`, one per (slice, chunk), written
  atomically by the rank that solved it): a work whose unfinished slices all have their files
  is loaded, any other is solved whole, so a restart reproduces the uninterrupted result;
- slices whose shard is already written (`done`) get no work, no file and no result;
- assembly: a slice is yielded once its last work is in (rank 0: images in chunk order,
  labels, provenance; other ranks: None), in the item's slice order.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from prism_hpc.recover.context import SliceContext
from prism_hpc.seeding import derive_seed
from prism_hpc.store.atomic import atomic_path
from prism_hpc.store.layout import partial_chunk

Key = tuple[int, int]  # (IPC slice, chunk of that slice)
Record = dict[str, Any]  # one (slice, chunk): uint8 "images", "classes", "chunk", provenance


class Work:
    """A unit of work: the (slice, chunk) results one `Schedule.solve` makes, in order."""

    keys: tuple[Key, ...]


class Schedule:
    """What a synthesis method says to the driver. Subclasses set `applies` (which recover
    configs it runs) and implement `phases` and `solve`."""

    @classmethod
    def applies(cls, rec) -> bool:
        raise NotImplementedError

    def phases(
        self, ctx: SliceContext, slices: list[int], done: frozenset[int]
    ) -> list[list[Work]]:
        """The item's works, in phases (each phase's works are dealt to the ranks anew; the
        driver moves to the next phase once the current one is gathered). The works are fixed
        by the config and `slices`; `done` may only drop works that hold finished slices
        alone, never reshape the others (their restart files would no longer fit)."""
        raise NotImplementedError

    def solve(self, ctx: SliceContext, work: Work) -> list[Record]:
        """One record per key of `work`, in key order (without a "slice" entry)."""
        raise NotImplementedError

    def iterations(self, ctx: SliceContext, slice_index: int) -> int:
        """The slice's optimisation steps, for its provenance (here: the optimising
        methods' rule)."""
        rec = ctx.rec
        return 0 if rec.init_only else rec.iterations_for(slice_index)

    def scope(self, ctx: SliceContext) -> str:
        """When the slice's teacher roles were drawn, for its provenance."""
        return ctx.rec.scope

    def extra(self, ctx: SliceContext, slices: list[int]) -> dict[str, Any]:
        """Slice-level provenance of this method (after the chunks)."""
        return {}


# ------------------------------------------------------------------------------ restart files


def save_chunk(path: Path, result: Record) -> None:
    """A finished chunk: uint8 images + JSON metadata, written atomically."""
    meta = json.dumps({k: v for k, v in result.items() if k != "images"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=result["images"], meta=np.frombuffer(meta.encode(), np.uint8))


def load_chunk(path: Path) -> Record | None:
    """A saved chunk, or None when absent or unreadable (then it is recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            result = json.loads(data["meta"].tobytes().decode())
            result["images"] = data["images"]
    except (OSError, ValueError, KeyError):
        return None
    return result


def _kept(ctx: SliceContext, keys: list[Key]) -> list[Record] | None:
    """The saved records of `keys`, or None unless every one of them is there."""
    if ctx.progress_dir is None:
        return None
    loaded = [load_chunk(partial_chunk(ctx.progress_dir, s, c)) for s, c in keys]
    if any(r is None for r in loaded):
        return None
    for s, c in keys:
        ctx.log(f"slice {s} chunk {c}: finished before a restart, kept")
    return [{**r, "slice": s} for r, (s, _) in zip(loaded, keys, strict=True)]


def _run_work(
    ctx: SliceContext, schedule: Schedule, work: Work, done: frozenset[int]
) -> list[Record]:
    """One work's records of unfinished slices (each with its "slice"): kept, or solved."""
    needed = [k for k in work.keys if k[0] not in done]
    if not needed:
        return []
    kept = _kept(ctx, needed)
    if kept is not None:
        return kept
    out = []
    for (s, c), record in zip(work.keys, schedule.solve(ctx, work), strict=True):
        if s in done:  # its shard is written (and its partial folder gone)
            continue
        if ctx.progress_dir is not None:
            save_chunk(partial_chunk(ctx.progress_dir, s, c), record)
        out.append({**record, "slice": s})
    return out


# ------------------------------------------------------------------------------ the driver


def recover_item(
    ctx: SliceContext, schedule: Schedule, slices: list[int], done: Iterable[int] = ()
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Run an item's slices; yields (slice, shard content on rank 0 / None elsewhere) for
    every slice not in `done`. `slices` must be all the item's slices (finished ones in
    `done`): a method's works may span slices and must not depend on what a restart still
    has to do."""
    done = frozenset(done)
    buffered: dict[int, list[Record]] = {}
    for phase in schedule.phases(ctx, slices, done):
        last = {s: i for i, work in enumerate(phase) for s, _ in work.keys}
        for first in range(0, len(phase), ctx.world_size):
            index = first + ctx.rank
            mine = _run_work(ctx, schedule, phase[index], done) if index < len(phase) else []
            for record in _gather(ctx, mine):
                buffered.setdefault(record["slice"], []).append(record)
            end = min(first + ctx.world_size, len(phase)) - 1
            for s in slices:
                if s in done or s not in last or not first <= last[s] <= end:
                    continue
                if ctx.rank != 0:
                    yield s, None
                    continue
                rows = [{k: v for k, v in r.items() if k != "slice"} for r in buffered.pop(s)]
                yield s, assemble(ctx, schedule, s, rows, slices)


def _gather(ctx: SliceContext, mine: list[Record]) -> list[Record]:
    """Every rank's records on rank 0 (rank order); [] on the other ranks."""
    if ctx.world_size == 1:
        return mine
    gathered: list | None = [None] * ctx.world_size if ctx.rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    return [r for part in gathered for r in part] if ctx.rank == 0 else []


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def assemble(
    ctx: SliceContext, schedule: Schedule, slice_index: int, rows: list[Record],
    slices: list[int],
) -> dict[str, Any]:  # fmt: skip
    """One slice's shard content (images in chunk order, labels, provenance)."""
    rows.sort(key=lambda r: r["chunk"])
    cfg = ctx.cfg
    provenance = {
        "slice": slice_index,
        "iterations": schedule.iterations(ctx, slice_index),
        "seed": cfg.seed,
        "roles_seed": derive_seed(cfg.seed, "recover-roles", slice_index),
        "scope": schedule.scope(ctx),
        "world_size": ctx.world_size,
        "precision": getattr(cfg.recover, "precision", "fp32"),  # resolved by the task
        "peak_memory_mb": round(peak_memory_mb(ctx.device), 1),
        "chunks": [{k: v for k, v in r.items() if k != "images"} for r in rows],
        **schedule.extra(ctx, slices),
    }
    provenance.update(rows[0]["roles"][0])  # slice-level logit/BN teachers (pre: the same)
    return {
        "images": np.concatenate([r["images"] for r in rows]),
        "labels": np.concatenate([np.asarray(r["classes"], np.int64) for r in rows]),
        "provenance": provenance,
    }
