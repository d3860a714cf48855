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
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError
from prism_hpc.recover.loop import pixel_bounds, recover_chunk
from prism_hpc.recover.slices import (
    _assemble,
    _chunk_record,
    _init_images,
    chunk_progress_path,
    chunks_of,
    load_chunk,
    save_chunk,
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


def recover_group(
    cfg: Config,
    group: list[int],
    teachers: dict[str, nn.Module],
    hooks: dict,
    source,
    per_class: list[np.ndarray],
    num_classes: int,
    stats: tuple[list[float], list[float]],
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    log=print,
    progress_dir: Path | None = None,
    members_of: dict[int, list[int] | None] | None = None,
    done: set[int] | frozenset = frozenset(),
    matcher=None,
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Recover the item's slices `group` jointly; yields (slice, result) for every slice not
    in `done`, in slice order (rank 0: `recover_slice`'s result, other ranks None).

    `group` must be all the item's slices (finished ones in `done`): the batches depend on
    the group, never on what a restart still has to do."""
    if getattr(cfg.recover, "synthesis", "optimize") != "optimize":
        raise UserError("recover.batching joint optimises images: use it with synthesis optimize")
    members_of = members_of or {}
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    bounds = pixel_bounds(stats[0], stats[1], device)
    first = members_of.get(group[0])  # slices only shrink: the first holds every class
    chunks = chunks_of(list(range(num_classes)) if first is None else first,
                       cfg.recover.classes_per_batch)  # fmt: skip
    mine: list[dict[str, Any]] = []
    for c in range(rank, len(chunks), world_size):
        mine += _joint_chunk(
            cfg, group, c, chunks[c], teachers, hooks, source, per_class, mean, std, bounds,
            device, rank, log, progress_dir, members_of, done, matcher,
        )  # fmt: skip
    if world_size > 1:
        gathered: list = [None] * world_size if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        mine = [r for part in gathered for r in part] if rank == 0 else []
    for s in group:
        if s in done:
            continue
        if rank != 0:
            yield s, None
            continue
        rows = [{k: v for k, v in r.items() if k != "slice"} for r in mine if r["slice"] == s]
        iterations = 0 if cfg.recover.init_only else cfg.recover.iterations_for(s)
        extra = {"batching": "joint", "group": list(group)}
        yield s, _assemble(cfg, s, iterations, rows, world_size, device, extra)


def _joint_chunk(
    cfg, group, c, classes, teachers, hooks, source, per_class, mean, std, bounds, device,
    rank, log, progress_dir, members_of, done, matcher,
) -> list[dict[str, Any]]:  # fmt: skip
    """One class chunk of the group: loaded when every unfinished slice saved it, else
    optimised whole. Returns one record per slice (with its `slice`), in group order."""
    rows = joint_rows(classes, group, members_of)
    slices = [s for s in group if any(rs == s for _, rs in rows)]
    paths = {s: chunk_progress_path(progress_dir, s, c) for s in slices} if progress_dir else {}
    needed = [s for s in slices if s not in done]
    if not needed:  # only finished slices have rows here (`ipc: all`)
        return []
    if paths:
        loaded = {s: load_chunk(paths[s]) for s in needed}
        if all(r is not None for r in loaded.values()):
            log(f"slices {group[0]}-{group[-1]} chunk {c}: finished before a restart, kept")
            return [{**loaded[s], "slice": s} for s in needed]
    began = time.time()
    inits: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
    for s in slices:
        held = [cl for cl, rs in rows if rs == s]
        x0, idx = _init_images(cfg, source, per_class, s, held, c, mean, std, device, teachers)
        inits[s] = (x0, idx, held)
    x0 = torch.stack([inits[s][0][inits[s][2].index(cl)] for cl, s in rows])
    targets = torch.tensor([cl for cl, _ in rows], device=device)
    total, starts = joint_schedule(cfg, rows)
    key = group[0]  # the group's identity: groups are fixed by the config
    x, used, history = recover_chunk(
        x0.to(device), targets, teachers, hooks, cfg.recover, total, bounds,
        aug_gen=generator(cfg.seed, "recover-augment", key, c),
        role_gen=generator(cfg.seed, "recover-intra", key, c),
        fixed_roles=slice_roles(cfg, key, c),
        progress=lambda e: log(
            f"slices {group[0]}-{group[-1]} chunk {c}: step {e['step']}/{total} "
            f"ce {e['ce']:.4f} bn {e['bn']:.4f}"
        ),
        matcher=matcher,
        starts=None if len(set(starts)) == 1 else starts,
    )  # fmt: skip
    seconds = time.time() - began
    out = []
    for s in slices:
        pick = [j for j, (_, rs) in enumerate(rows) if rs == s]
        _, idx, held = inits[s]
        record = _chunk_record(
            c, held, x[pick], used, history, idx, teachers, targets[pick], mean, std, device,
            seconds, rank,
        )  # fmt: skip
        record["joint"] = {"group": list(group), "rows": len(rows), "start": starts[pick[0]],
                           "steps": total}  # fmt: skip
        if s in done:  # its shard is written (and its partial folder gone)
            continue
        if progress_dir is not None:
            save_chunk(paths[s], record)
        out.append({**record, "slice": s})
    return out
