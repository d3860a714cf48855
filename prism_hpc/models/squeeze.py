"""Train a teacher of the run's pool on the real data (the squeeze stage's science).

SGD + Nesterov with a one-cycle schedule, seeded shifts and flips: enough for the small CPU
teachers of the Fashion-MNIST demo; real ImageNet runs give pretrained weights instead.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import open_source, source_stats
from prism_hpc.models.teachers import build_untrained
from prism_hpc.seeding import derive_seed, generator
from prism_hpc.store import layout
from prism_hpc.store.atomic import atomic_path


@torch.no_grad()
def evaluate_top1(model, source, mean, std, device, batch_size: int = 500) -> float:
    """Top-1 on every image of `source` (the test split)."""
    model.eval()
    correct = 0
    for start in range(0, len(source), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(source))).numpy()
        x = ((source.load(idx) - mean) / std).to(device)
        y = torch.as_tensor(source.labels[idx], device=device)
        correct += (model(x).argmax(1) == y).sum().item()
    return correct / len(source)


def _augment(x: torch.Tensor, g: torch.Generator, pad: int) -> torch.Tensor:
    """Random shift (pad + crop) and flip, batch-wise, seeded: enough for a CPU teacher."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad,) * 4, mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    x = xp[..., dy : dy + h, dx : dx + w]
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _training_subset(labels: np.ndarray, per_class: int | None) -> np.ndarray | None:
    """`data.train_limit_per_class`: the first N images of each class (None: all of them)."""
    if per_class is None:
        return None
    labels = np.asarray(labels)
    keep = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def train_teacher(
    cfg: Config, name: str, run_dir: Path, device,
    log: Callable[[str], None] = print, progress: Callable[[dict], None] = lambda info: None,
) -> dict[str, Any]:  # fmt: skip
    """Train teacher `name`, save `teachers/<name>.pt` + `.json` atomically; returns the info."""
    sq = cfg.squeeze
    if torch.device(device).type == "cpu":
        # fixed, like recovery: conv backward differs in the last bits between thread counts,
        # and teachers feed everything downstream (bit-identical demo per hardware kind)
        torch.set_num_threads(sq.cpu_threads)
    torch.manual_seed(derive_seed(cfg.seed, "squeeze-init", name))
    model = build_untrained(cfg, cfg.teachers[name], run_dir).to(device)
    train = open_source(cfg.data, "train", run_dir)
    test = open_source(cfg.data, "test", run_dir)
    m, s = source_stats(cfg.data)
    mean = torch.tensor(m).view(1, -1, 1, 1)
    std = torch.tensor(s).view(1, -1, 1, 1)
    steps_per_epoch = math.ceil(len(train) / sq.batch_size)
    steps = max(1, int(sq.epochs * steps_per_epoch))
    if sq.max_steps:
        steps = min(steps, sq.max_steps)
    opt = torch.optim.SGD(
        model.parameters(), lr=sq.lr, momentum=0.9, nesterov=True, weight_decay=sq.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=sq.lr, total_steps=steps)
    g = generator(cfg.seed, "squeeze", name)
    pool = _training_subset(train.labels, cfg.data.train_limit_per_class)
    n = len(train) if pool is None else len(pool)
    if pool is not None:  # epochs count the subset
        steps = max(1, int(sq.epochs * math.ceil(n / sq.batch_size)))
        steps = min(steps, sq.max_steps) if sq.max_steps else steps
    order = torch.randperm(n, generator=g)
    pad = max(1, cfg.data.resolution // 16)
    start = time.time()
    model.train()
    for step in range(steps):
        pos = (step * sq.batch_size) % n
        if pos + sq.batch_size > n:
            order = torch.randperm(n, generator=g)
            pos = 0
        idx = order[pos : pos + sq.batch_size].numpy()
        if pool is not None:
            idx = pool[idx]
        x = _augment((train.load(idx) - mean) / std, g, pad).to(device)
        y = torch.as_tensor(train.labels[idx], device=device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            progress({"step": step + 1, "steps": steps, "loss": round(loss.item(), 4)})
    top1 = evaluate_top1(model, test, mean, std, device)
    log(f"squeeze {name}: {steps} steps, test top-1 {top1:.4f}")
    out = layout.teacher_weights(run_dir, name)
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    info = {
        "teacher": name,
        "arch": cfg.teachers[name].arch,
        "test_top1": top1,
        "steps": steps,
        "seconds": round(time.time() - start, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }
    with atomic_path(layout.teacher_info(run_dir, name)) as tmp:
        tmp.write_text(json.dumps(info, indent=1))
    return info
