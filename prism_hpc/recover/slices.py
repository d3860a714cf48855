"""One IPC slice across all classes: class chunks split over the ranks of a task.

Each chunk's result depends only on (seed, slice, chunk), never on which rank ran it, so the
images are identical for any world size; rank 0 gathers and is the only writer. With a
`progress_dir`, every finished chunk is also saved there (one writer per file, atomic), so a
preempted or timed-out task resumes at its first unfinished chunk with bit-identical results.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.data.index import initial_indices
from prism_hpc.recover.loop import PackUnit, pixel_bounds, recover_chunk, recover_packed
from prism_hpc.recover.rded import rded_chunk
from prism_hpc.recover.sampler import Roles, sample_roles
from prism_hpc.seeding import derive_seed, generator
from prism_hpc.store.atomic import atomic_path


def class_chunks(num_classes: int, per_batch: int) -> list[list[int]]:
    return chunks_of(list(range(num_classes)), per_batch)


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


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def chunk_progress_path(progress_dir: Path, slice_index: int, chunk: int) -> Path:
    return Path(progress_dir) / f"slice_{slice_index:05d}" / f"chunk_{chunk:04d}.npz"


def save_chunk(path: Path, result: dict[str, Any]) -> None:
    """A finished chunk: uint8 images + JSON metadata, written atomically."""
    meta = json.dumps({k: v for k, v in result.items() if k != "images"})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, images=result["images"], meta=np.frombuffer(meta.encode(), np.uint8))


def load_chunk(path: Path) -> dict[str, Any] | None:
    """A saved chunk, or None when absent or unreadable (then it is recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            result = json.loads(data["meta"].tobytes().decode())
            result["images"] = data["images"]
    except (OSError, ValueError, KeyError):
        return None
    return result


def _init_images(cfg, source, per_class, slice_index, classes, chunk, mean, std, device,
                 teachers=None):  # fmt: skip
    if cfg.recover.init == "rded":  # EDC: RDED's stitched real crops (recover/edc.py)
        from prism_hpc.recover.edc import rded_init

        return rded_init(cfg, source, per_class, slice_index, classes, mean, std, device, teachers)
    if cfg.recover.init == "real":
        idx = initial_indices(per_class, slice_index, classes)
        x = source.load(idx)
        return (x - mean) / std, idx.tolist()
    g = generator(cfg.seed, "recover-init", slice_index, chunk)
    shape = (len(classes), cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
    return torch.randn(shape, generator=g), []


def recover_slice(
    cfg: Config,
    slice_index: int,
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
    members: list[int] | None = None,
    matcher=None,
) -> dict[str, Any] | None:
    """Recover this rank's chunks; rank 0 returns uint8 images + provenance, others None.
    `matcher`: G-VBSM / EDC statistic matching (recover/gvbsm.py) for every chunk."""
    rec = cfg.recover
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    bounds = pixel_bounds(stats[0], stats[1], device)
    rded = rec.synthesis == "rded"  # no optimisation: scored real crops (recover/rded.py)
    iterations = 0 if rec.init_only or rded else rec.iterations_for(slice_index)
    if members is None:  # every class (an integer ipc); `ipc: all` gives the slice's classes
        members = list(range(num_classes))
    chunks = chunks_of(members, rec.classes_per_batch)
    mine: list[dict[str, Any]] = []
    for c in range(rank, len(chunks), world_size):
        saved = chunk_progress_path(progress_dir, slice_index, c) if progress_dir else None
        if saved is not None and (done := load_chunk(saved)) is not None:
            log(f"slice {slice_index} chunk {c}: finished before a restart, kept")
            mine.append(done)
            continue
        classes = chunks[c]
        if rded:
            mine.append(rded_chunk(
                cfg, slice_index, classes, c, teachers, source, per_class, mean, std, device,
                rank,
            ))  # fmt: skip
            if saved is not None:
                save_chunk(saved, mine[-1])
            continue
        start = time.time()
        x0, init_idx = _init_images(
            cfg, source, per_class, slice_index, classes, c, mean, std, device, teachers
        )
        targets = torch.tensor(classes, device=device)
        roles = slice_roles(cfg, slice_index, c)
        x, used, history = recover_chunk(
            x0.to(device), targets, teachers, hooks, rec, iterations, bounds,
            # CPU generator on any device: augment draws CPU scalars (a CUDA generator fails
            # there), and the draws are then the same on CPU and GPU.
            aug_gen=generator(cfg.seed, "recover-augment", slice_index, c),
            role_gen=generator(cfg.seed, "recover-intra", slice_index, c),
            fixed_roles=roles,
            progress=lambda e, c=c: log(
                f"slice {slice_index} chunk {c}: step {e['step']}/{iterations} "
                f"ce {e['ce']:.4f} bn {e['bn']:.4f}"
            ),
            matcher=matcher,
        )  # fmt: skip
        mine.append(
            _chunk_record(
                c, classes, x, used, history, init_idx, teachers, targets, mean, std, device,
                time.time() - start, rank,
            )
        )  # fmt: skip
        if saved is not None:
            save_chunk(saved, mine[-1])
    if world_size > 1:
        gathered: list = [None] * world_size if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if rank != 0:
            return None
        mine = [c for part in gathered for c in part]
    return _assemble(cfg, slice_index, iterations, mine, world_size, device)


def _chunk_record(
    c, classes, x, used, history, init_idx, teachers, targets, mean, std, device, seconds, rank
) -> dict[str, Any]:
    """A finished chunk: uint8 images, the logit teacher's top-1 on them, its provenance."""
    pixels = (x.cpu() * std + mean).clamp_(0, 1)
    quantised = (pixels * 255).round_().to(torch.uint8)
    with torch.no_grad():
        logit_model = teachers[used[-1].logit]
        xq = ((quantised.float() / 255 - mean) / std).to(device)
        top1 = (logit_model(xq).argmax(1) == targets).float().mean().item()
    return {
        "chunk": c,
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
        "rank": rank,
    }


def _assemble(cfg, slice_index, iterations, mine, world_size, device, extra=None) -> dict:
    """One slice's shard content (images in chunk order, labels, provenance)."""
    mine.sort(key=lambda r: r["chunk"])
    images = np.concatenate([r["images"] for r in mine])
    labels = np.concatenate([np.asarray(r["classes"], np.int64) for r in mine])
    provenance = {
        "slice": slice_index,
        "iterations": iterations,
        "seed": cfg.seed,
        "roles_seed": derive_seed(cfg.seed, "recover-roles", slice_index),
        "scope": cfg.recover.scope,
        "world_size": world_size,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "chunks": [{k: v for k, v in r.items() if k != "images"} for r in mine],
        **(extra or {}),
    }
    first = mine[0]["roles"][0]
    provenance.update(first)  # slice-level logit/BN teachers (pre scope: the same for all)
    return {"images": images, "labels": labels, "provenance": provenance}


def recover_slices_packed(
    cfg: Config,
    slices: list[int],
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
) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """`recover.pack: k`: k chunks optimised at once, across the slices of the task
    (Fashion-MNIST has one chunk per slice, ImageNet ten). Yields (slice, result) for every
    slice not in `done`, in slice order; rank 0 gets `recover_slice`'s result, other ranks
    None. Each chunk's result is its separate run's up to fp32 rounding (`recover_packed`).

    The packs depend on the task's slices only: its (slice, chunk) units in order, k at a
    time; pack p goes to rank p mod world_size, a round of world_size packs is gathered at
    once, and a slice is yielded when its last pack is in. So the packs, and the images bit
    for bit, are the same for any world size and after a restart: `slices` must be all the
    task's slices, finished ones in `done` (a pack that also holds units of a finished slice is
    recomputed whole; a pack whose units all have progress files is loaded). Memory holds the
    unfinished slices of one round."""
    rec = cfg.recover
    k = rec.pack
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    bounds = pixel_bounds(stats[0], stats[1], device)
    members_of = members_of or {}
    chunks_of_slice = {}
    for s in slices:
        members = members_of.get(s)
        chunks_of_slice[s] = chunks_of(
            list(range(num_classes)) if members is None else members, rec.classes_per_batch
        )
    units = [(s, c) for s in slices for c in range(len(chunks_of_slice[s]))]
    packs = [units[a : a + k] for a in range(0, len(units), k)]
    last_pack = {s: max(i for i, p in enumerate(packs) for u in p if u[0] == s) for s in slices}
    buffered: dict[int, list[dict[str, Any]]] = {}
    for first in range(0, len(packs), world_size):
        mine: list[dict[str, Any]] = []
        index = first + rank
        pack = packs[index] if index < len(packs) else []
        if pack and any(s not in done for s, _ in pack):
            mine = _run_pack(
                cfg, pack, chunks_of_slice, teachers, hooks, source, per_class, mean, std,
                bounds, device, rank, log, progress_dir,
            )  # fmt: skip
            mine = [r for r in mine if r["slice"] not in done]
        if world_size > 1:
            gathered: list = [None] * world_size if rank == 0 else None
            dist.gather_object(mine, gathered, dst=0)
            mine = [c for part in gathered for c in part] if rank == 0 else []
        for r in mine:
            buffered.setdefault(r["slice"], []).append(r)
        last = min(first + world_size, len(packs)) - 1
        for s in slices:
            if s in done or not first <= last_pack[s] <= last:
                continue
            if rank != 0:
                yield s, None
                continue
            rows = [{k2: v for k2, v in r.items() if k2 != "slice"} for r in buffered.pop(s)]
            iterations = 0 if rec.init_only else rec.iterations_for(s)
            yield s, _assemble(cfg, s, iterations, rows, world_size, device, {"pack": k})


def _run_pack(
    cfg, pack, chunks_of_slice, teachers, hooks, source, per_class, mean, std, bounds, device,
    rank, log, progress_dir,
) -> list[dict[str, Any]]:  # fmt: skip
    """One pack: loaded when every unit has a progress file, else optimised whole."""
    rec = cfg.recover
    saved = [chunk_progress_path(progress_dir, s, c) if progress_dir else None for s, c in pack]
    if all(p is not None for p in saved):
        loaded = [load_chunk(p) for p in saved]
        if all(r is not None for r in loaded):
            for s, c in pack:
                log(f"slice {s} chunk {c}: finished before a restart, kept")
            return [{**r, "slice": s} for r, (s, _) in zip(loaded, pack)]
    began = time.time()
    units, meta = [], []
    for s, c in pack:
        classes = chunks_of_slice[s][c]
        x0, init_idx = _init_images(
            cfg, source, per_class, s, classes, c, mean, std, device, teachers
        )
        targets = torch.tensor(classes, device=device)
        iterations = 0 if rec.init_only else rec.iterations_for(s)
        units.append(
            PackUnit(
                x0.to(device), targets, iterations,
                generator(cfg.seed, "recover-augment", s, c),
                generator(cfg.seed, "recover-intra", s, c),
                slice_roles(cfg, s, c),
                progress=lambda e, s=s, c=c, t=iterations: log(
                    f"slice {s} chunk {c}: step {e['step']}/{t} "
                    f"ce {e['ce']:.4f} bn {e['bn']:.4f}"
                ),
            )
        )  # fmt: skip
        meta.append((s, c, classes, init_idx, targets))
    results = recover_packed(units, teachers, hooks, rec, bounds)
    seconds = time.time() - began
    out = []
    for (s, c, classes, init_idx, targets), (x, used, history), path in zip(meta, results, saved):
        record = _chunk_record(
            c, classes, x, used, history, init_idx, teachers, targets, mean, std, device,
            seconds, rank,
        )  # fmt: skip
        record["packed_with"] = len(pack)
        if path is not None:
            save_chunk(path, record)
        out.append({**record, "slice": s})
    return out
