"""One IPC slice across all classes: class chunks split over the ranks of a task.

Each chunk's result depends only on (seed, slice, chunk), never on which rank ran it, so the
images are identical for any world size; rank 0 gathers and is the only writer.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.data.index import initial_indices
from prism_hpc.recover.loop import pixel_bounds, recover_chunk
from prism_hpc.recover.sampler import Roles, sample_roles
from prism_hpc.seeding import derive_seed, generator


def class_chunks(num_classes: int, per_batch: int) -> list[list[int]]:
    return [
        list(range(a, min(a + per_batch, num_classes))) for a in range(0, num_classes, per_batch)
    ]


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


def _init_images(cfg, source, per_class, slice_index, classes, chunk, mean, std, device):
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
) -> dict[str, Any] | None:
    """Recover this rank's chunks; rank 0 returns uint8 images + provenance, others None."""
    rec = cfg.recover
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    bounds = pixel_bounds(stats[0], stats[1], device)
    iterations = 0 if rec.init_only else rec.iterations_for(slice_index)
    chunks = class_chunks(num_classes, rec.classes_per_batch)
    mine: list[dict[str, Any]] = []
    for c in range(rank, len(chunks), world_size):
        classes = chunks[c]
        start = time.time()
        x0, init_idx = _init_images(
            cfg, source, per_class, slice_index, classes, c, mean, std, device
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
        )  # fmt: skip
        pixels = (x.cpu() * std + mean).clamp_(0, 1)
        quantised = (pixels * 255).round_().to(torch.uint8)
        with torch.no_grad():
            logit_model = teachers[used[-1].logit]
            xq = ((quantised.float() / 255 - mean) / std).to(device)
            top1 = (logit_model(xq).argmax(1) == targets).float().mean().item()
        mine.append(
            {
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
                "seconds": round(time.time() - start, 3),
                "rank": rank,
            }
        )
    if world_size > 1:
        gathered: list = [None] * world_size if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        if rank != 0:
            return None
        mine = [c for part in gathered for c in part]
    mine.sort(key=lambda r: r["chunk"])
    images = np.concatenate([r["images"] for r in mine])
    labels = np.concatenate([np.asarray(r["classes"], np.int64) for r in mine])
    provenance = {
        "slice": slice_index,
        "iterations": iterations,
        "seed": cfg.seed,
        "roles_seed": derive_seed(cfg.seed, "recover-roles", slice_index),
        "scope": rec.scope,
        "world_size": world_size,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "chunks": [{k: v for k, v in r.items() if k != "images"} for r in mine],
    }
    first = mine[0]["roles"][0]
    provenance.update(first)  # slice-level logit/BN teachers (pre scope: the same for all)
    return {"images": images, "labels": labels, "provenance": provenance}
