"""Offline relabel: replay each epoch's plan through the teacher ensemble and store the logits.

The file format (and its reader, which training uses) is `prism_hpc.store.softlabels`; this
module only computes what goes into it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from prism_hpc.relabel.augment import build_batch, plan_from_config
from prism_hpc.store.distilled import DistilledSet
from prism_hpc.store.softlabels import fingerprint, soft_label_writer


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
    mean = torch.tensor(distilled.mean, dtype=torch.float32).to(device)
    std = torch.tensor(distilled.std, dtype=torch.float32).to(device)
    bs = cfg.students.batch_size
    start_time = time.time()
    attrs = {
        "fingerprint": fingerprint(cfg, distilled),
        "epoch_start": epochs.start,
        "epoch_stop": epochs.stop,
        "num_images": n,
        "num_classes": k_all,
        "batch_size": bs,
        "storage": rel.storage,
        "topk": min(rel.topk, k_all),
        "mix": rel.mix,
        "ensemble": rel.ensemble,
        "teachers": json.dumps(list(rel.teachers)),
        "precision": getattr(ensemble, "precision", "fp32"),  # what the teachers ran in
    }
    path = Path(path)
    with soft_label_writer(path, attrs) as out:
        for e in epochs:
            plan = plan_from_config(cfg, e, n, distilled.height, distilled.width)
            stored = out.epoch(plan)
            for b in range(plan.num_batches):
                sl = plan.batch_slice(b)
                pixels = distilled.images(plan.order[sl]).to(device)
                x, _, _ = build_batch(pixels, plan, b, mean, std)
                stored.write(sl, ensemble(x).float().cpu())
            log(f"relabel epoch {e}: {plan.num_batches} batch(es) of <= {bs}")
    return {
        "epochs": [epochs.start, epochs.stop],
        "file": path.name,
        "bytes": path.stat().st_size,
        "seconds": round(time.time() - start_time, 2),
        "storage": rel.storage,
        "precision": attrs["precision"],
    }
