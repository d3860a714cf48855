"""Joint-over-classes batches (`recover.batching: joint`): the IPC slices of one recover item
optimised together, as G-VBSM, EDC and DELT do (several images of a class in one batch).

How it fits the stage interface: the group is the item's slices (`slices_per_task`
consecutive IPC indices, fixed by the config, never by the world size or a restart). The
group's classes are cut into chunks of `classes_per_batch`; one batch per chunk holds every
IPC position of the group for those classes, class-major (DELT's layout: a class's positions
side by side), and BN statistics are taken over the whole batch. A chunk's result depends on
(seed, group, chunk) only, chunks go to ranks round-robin, rank 0 gathers; the item still
writes one shard + marker per slice (each slice's shard holds its own IPC position of every
class). Each finished chunk is saved per (slice, chunk) in `recover/partial/` like a
cross-class chunk, so a restart loads finished chunks and redoes unfinished ones whole.

Per-image budgets inside a batch follow DELT's EarlyLate scheme (VILA-Lab/DELT
`recover/recover.py`, `get_round_imgs_indx`): the batch runs T = max T_i steps; the image of
IPC position i joins at step T - T_i and is optimised until the end. Before it joins it is
outside the forward pass and the statistics and does not change. As in DELT, one Adam and
one cosine schedule (and crop curriculum) over the batch's T: late images see the schedule's
tail. With one slice per group this is the cross-class batch bit for bit (same seeds, same
rows, every image from step 0).

As a schedule: a unit of work is one class chunk of the group, whose result is one record per
slice with rows in it; the driver (recover/driver.py) keeps and reloads those records in
`recover/partial/` like any other chunk's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from prism_hpc.config.schema import Config, OptimizeRecover
from prism_hpc.recover.context import SliceContext
from prism_hpc.recover.driver import Key, Record, Schedule, Work
from prism_hpc.recover.loop import Unit, recover_units
from prism_hpc.recover.schedules import (
    chunk_record,
    chunks_of,
    init_images,
    progress_log,
    slice_roles,
)
from prism_hpc.seeding import generator


def joint_rows(
    classes: list[int], group: list[int], members_of: dict[int, list[int] | None]
) -> list[tuple[int, int]]:
    """(class, slice) of each row of one joint batch, class-major; a slice that does not hold
    a class (`ipc: all`, shrinking slices) has no row for it."""
    def holds(s: int, c: int) -> bool:
        members = members_of.get(s)
        return members is None or c in members

    return [(c, s) for c in classes for s in group if holds(s, c)]


def joint_schedule(cfg: Config, rows: list[tuple[int, int]]) -> tuple[int, list[int]]:
    """(T, starts): the batch's steps (its longest budget) and the step at which each row
    joins (T - T_i for IPC position i; 0 for every row when budgets are equal)."""
    rec = cfg.recover
    if rec.init_only:
        return 0, [0] * len(rows)
    budgets = [rec.iterations_for(s) for _, s in rows]
    total = max(budgets)
    return total, [total - b for b in budgets]


@dataclass(frozen=True)
class JointWork(Work):
    """One class chunk of the group: a key per slice with rows in it."""

    keys: tuple[Key, ...]
    group: tuple[int, ...]
    chunk: int
    classes: tuple[int, ...]


class JointBatches(Schedule):
    """DELT, G-VBSM, EDC (`batching: joint`): the item's slices optimised together, one batch
    per class chunk holding every IPC position of the group for those classes."""

    @classmethod
    def applies(cls, rec) -> bool:
        return isinstance(rec, OptimizeRecover) and rec.batching == "joint"

    def phases(self, ctx: SliceContext, slices: list[int], done: frozenset[int]) -> list:
        group = tuple(slices)
        per = ctx.rec.classes_per_batch
        works = []
        # slices only shrink: the first holds every class
        for c, classes in enumerate(chunks_of(ctx.classes_of(group[0]), per)):
            held = dict.fromkeys(s for _, s in joint_rows(classes, list(group), ctx.members_of))
            works.append(JointWork(tuple((s, c) for s in held), group, c, tuple(classes)))
        return [works]

    def solve(self, ctx: SliceContext, work: JointWork) -> list[Record]:
        began = time.time()
        group, c = list(work.group), work.chunk
        rows = joint_rows(list(work.classes), group, ctx.members_of)
        inits: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
        for s, _ in work.keys:
            held = [cl for cl, rs in rows if rs == s]
            x0, idx = init_images(ctx, s, c, held)
            inits[s] = (x0, idx, held)
        x0 = torch.stack([inits[s][0][inits[s][2].index(cl)] for cl, s in rows])
        total, starts = joint_schedule(ctx.cfg, rows)
        key = group[0]  # the group's identity: groups are fixed by the config
        unit = Unit(
            x0.to(ctx.device), torch.tensor([cl for cl, _ in rows], device=ctx.device), total,
            generator(ctx.cfg.seed, "recover-augment", key, c),
            generator(ctx.cfg.seed, "recover-intra", key, c),
            slice_roles(ctx.cfg, key, c),
            progress=progress_log(ctx, f"slices {group[0]}-{group[-1]} chunk {c}", total),
            starts=None if len(set(starts)) == 1 else starts,
        )  # fmt: skip
        ((x, used, history),) = recover_units(
            [unit], ctx.teachers, ctx.hooks, ctx.rec, ctx.bounds, ctx.matcher
        )
        seconds = time.time() - began
        out = []
        for s, _ in work.keys:
            pick = [j for j, (_, rs) in enumerate(rows) if rs == s]
            _, idx, held = inits[s]
            record = chunk_record(ctx, c, held, (x[pick], used, history), idx, seconds)
            record["joint"] = {"group": group, "rows": len(rows), "start": starts[pick[0]],
                               "steps": total}  # fmt: skip
            out.append(record)
        return out

    def extra(self, ctx: SliceContext, slices: list[int]) -> dict[str, Any]:
        return {"batching": "joint", "group": list(slices)}
