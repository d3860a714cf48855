"""Evaluation of a student on the test split (ImageNet: the 1000-class val folder) with the
validation view, in memory when small, else through DataLoader workers."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import open_source


class _SourceRows(torch.utils.data.Dataset):
    """One test image per item, for DataLoader workers (ImageFolder decoding)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i : i + 1]
        return self.source.load(j)[0], int(self.source.labels[j[0]])


class EvalData:
    """The test split with the validation view (FACTS §A): in memory when small, else a
    DataLoader over the source (ImageFolder: Resize(res*256/224) + CenterCrop(res))."""

    def __init__(self, cfg: Config, limit: int | None = None, run_dir: Path | None = None):
        self.source = open_source(cfg.data, "test", run_dir)
        n = len(self.source)
        self.indices = np.arange(min(n, limit) if limit else n)
        self.labels = torch.as_tensor(self.source.labels[self.indices])
        self.batch_size = cfg.students.eval_batch_size
        self.workers = cfg.students.eval_workers
        self._pixels = None
        if cfg.data.source == "fashion_mnist":
            self._pixels = self.source.load(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self):
        if self._pixels is not None:
            for start in range(0, len(self), self.batch_size):
                sl = slice(start, start + self.batch_size)
                yield self._pixels[sl], self.labels[sl]
            return
        from torch.utils.data import DataLoader

        rows = _SourceRows(self.source, self.indices)
        loader = DataLoader(rows, batch_size=self.batch_size, num_workers=self.workers)
        yield from loader


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: EvalData,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    amp: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (fractions) of `model` on `data`."""
    was_training = model.training
    model.eval()
    m, s = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
    correct1 = correct5 = total = 0
    autocast = amp_context(device, amp)
    for x, y in data.batches():
        x, y = ((x.to(device).float() - m) / s), y.to(device)
        with autocast:
            out = model(x).float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top == y.view(-1, 1)
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(1).sum())
        total += len(y)
    model.train(was_training)
    return {"top1": correct1 / max(total, 1), "top5": correct5 / max(total, 1)}


def amp_context(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked for; a no-op elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
