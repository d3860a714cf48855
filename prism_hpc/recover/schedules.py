"""The cross-class schedules: a unit of work is one chunk of classes of one IPC slice
(PRISM, SRe2L, CDA; G-VBSM/EDC matching on such chunks), a pack of such chunks
(`recover.pack`), or one chunk of RDED's selected crops. Plus what every optimising schedule
shares: the chunking, role draws, initial images and the record of a finished chunk."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from prism_hpc.config.schema import Config, OptimizeRecover, RdedRecover
from prism_hpc.data.index import initial_indices
from prism_hpc.recover.context import SliceContext
from prism_hpc.recover.driver import Key, Record, Schedule, Work
from prism_hpc.recover.edc import rded_init
from prism_hpc.recover.loop import Result, Unit, recover_units
from prism_hpc.recover.rded import rded_chunk
from prism_hpc.recover.sampler import Roles, sample_roles
from prism_hpc.seeding import generator


def chunks_of(classes: list[int], per_batch: int) -> list[list[int]]:
    """Cross-class batches of a slice's classes, `per_batch` at a time, in class order."""
    return [classes[a : a + per_batch] for a in range(0, len(classes), per_batch)]


def slice_roles(cfg: Config, slice_index: int, chunk: int) -> Roles | None:
    """Pre: one draw per slice; per_batch: one per (slice, chunk); intra: None (every step)."""
    rec = cfg.recover
    if rec.scope == "intra":
        return None
    key = (slice_index,) if rec.scope == "pre" else (slice_index, chunk)
    return sample_roles(rec, generator(cfg.seed, "recover-roles", *key))


def init_images(
    ctx: SliceContext, slice_index: int, chunk: int, classes: list[int]
) -> tuple[torch.Tensor, list[int]]:
    """Normalised initial images of `classes` in a slice's chunk (CPU) and the dataset
    positions of real ones: real (slot i of each class), noise keyed by (seed, slice, chunk),
    or RDED's stitched crops (EDC)."""
    cfg = ctx.cfg
    if cfg.recover.init == "rded":  # EDC: RDED's stitched real crops (recover/edc.py)
        return rded_init(ctx, slice_index, classes)
    if cfg.recover.init == "real":
        idx = initial_indices(ctx.per_class, slice_index, classes)
        return (ctx.source.load(idx) - ctx.mean) / ctx.std, idx.tolist()
    g = generator(cfg.seed, "recover-init", slice_index, chunk)
    shape = (len(classes), cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    return torch.randn(shape, generator=g), []


def progress_log(ctx: SliceContext, label: str, steps: int):
    """A unit's progress callback: one log line per logged step."""
    return lambda e: ctx.log(
        f"{label}: step {e['step']}/{steps} ce {e['ce']:.4f} bn {e['bn']:.4f}"
    )


def chunk_record(
    ctx: SliceContext, chunk: int, classes: list[int], result: Result, init_idx: list[int],
    seconds: float,
) -> Record:  # fmt: skip
    """A finished chunk: uint8 images, the logit teacher's top-1 on them, its provenance."""
    x, used, history = result
    quantised = ctx.quantise(x)
    targets = torch.tensor(classes, device=ctx.device)
    with torch.no_grad():
        logits = ctx.teachers[used[-1].logit](ctx.normalise(quantised))
        top1 = (logits.argmax(1) == targets).float().mean().item()
    return {
        "chunk": chunk,
        "classes": classes,
        "images": quantised.numpy(),
        "init_indices": init_idx,
        "roles": [r.to_json() for r in used[:16]],
        "roles_changes": len(used),
        "final_ce": history[-1]["ce"],
        "final_bn": history[-1]["bn"],
        "first_bn": history[0]["bn"],
        "history": history,
        "logit_top1": top1,
        "seconds": round(seconds, 3),
        "rank": ctx.rank,
    }


@dataclass(frozen=True)
class ChunkWork(Work):
    """Cross-class chunks (one, or a pack): their keys and each one's classes."""

    keys: tuple[Key, ...]
    classes: tuple[tuple[int, ...], ...]


class CrossClass(Schedule):
    """PRISM, SRe2L, CDA (and matching on cross-class batches): a unit of work is one chunk
    of `classes_per_batch` classes of one IPC slice, optimised alone; one phase per slice, so
    a task writes each slice's shard before it starts the next."""

    @classmethod
    def applies(cls, rec) -> bool:
        return isinstance(rec, OptimizeRecover)

    def phases(self, ctx: SliceContext, slices: list[int], done: frozenset[int]) -> list:
        per = ctx.rec.classes_per_batch
        return [
            [ChunkWork(((s, c),), (tuple(cl),))
             for c, cl in enumerate(chunks_of(ctx.classes_of(s), per))]
            for s in slices
            if s not in done
        ]  # fmt: skip

    def solve(self, ctx: SliceContext, work: ChunkWork) -> list[Record]:
        """The work's chunks optimised together (a pack of one: alone)."""
        began = time.time()
        rec = ctx.rec
        units, inits = [], []
        for (s, c), classes in zip(work.keys, work.classes, strict=True):
            x0, init_idx = init_images(ctx, s, c, list(classes))
            steps = 0 if rec.init_only else rec.iterations_for(s)
            units.append(Unit(
                x0.to(ctx.device), torch.tensor(classes, device=ctx.device), steps,
                # CPU generators on any device: augment draws CPU scalars (a CUDA generator
                # fails there), and the draws are then the same on CPU and GPU.
                generator(ctx.cfg.seed, "recover-augment", s, c),
                generator(ctx.cfg.seed, "recover-intra", s, c),
                slice_roles(ctx.cfg, s, c),
                progress=progress_log(ctx, f"slice {s} chunk {c}", steps),
            ))  # fmt: skip
            inits.append(init_idx)
        results = recover_units(units, ctx.teachers, ctx.hooks, rec, ctx.bounds, ctx.matcher)
        seconds = time.time() - began
        return [
            chunk_record(ctx, c, list(classes), result, init_idx, seconds)
            for (_, c), classes, result, init_idx in zip(
                work.keys, work.classes, results, inits, strict=True
            )
        ]


class PackedChunks(CrossClass):
    """`recover.pack: k`: k cross-class chunks optimised at once, across the task's slices
    (Fashion-MNIST has one chunk per slice, ImageNet ten): the task's (slice, chunk) units in
    order, k at a time, all in one phase. The packs depend on the task's slices only, so they
    (and the images, bit for bit) are the same for any world size and after a restart. Each
    chunk's result is its separate run's up to fp32 rounding (loop.recover_units)."""

    @classmethod
    def applies(cls, rec) -> bool:
        return isinstance(rec, OptimizeRecover) and rec.pack > 1

    def phases(self, ctx: SliceContext, slices: list[int], done: frozenset[int]) -> list:
        per, k = ctx.rec.classes_per_batch, ctx.rec.pack
        units = [((s, c), tuple(cl)) for s in slices
                 for c, cl in enumerate(chunks_of(ctx.classes_of(s), per))]  # fmt: skip
        packs = [units[a : a + k] for a in range(0, len(units), k)]
        return [[ChunkWork(tuple(u for u, _ in p), tuple(cl for _, cl in p)) for p in packs]]

    def solve(self, ctx: SliceContext, work: ChunkWork) -> list[Record]:
        return [{**r, "packed_with": len(work.keys)} for r in super().solve(ctx, work)]

    def extra(self, ctx: SliceContext, slices: list[int]) -> dict[str, Any]:
        return {"pack": ctx.rec.pack}


class RdedSelection(CrossClass):
    """RDED (`synthesis: rded`, recover/rded.py): no optimisation; a unit of work is one
    chunk of classes of one slice, each class's image stitched from its best-scored crops."""

    @classmethod
    def applies(cls, rec) -> bool:
        return isinstance(rec, RdedRecover)

    def solve(self, ctx: SliceContext, work: ChunkWork) -> list[Record]:
        ((s, c),) = work.keys
        return [rded_chunk(ctx, s, c, list(work.classes[0]))]

    def iterations(self, ctx: SliceContext, slice_index: int) -> int:
        return 0

    def scope(self, ctx: SliceContext) -> str:
        return "pre"  # RDED draws no roles; the shard format keeps the field (its default)
