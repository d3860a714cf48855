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

    def batches(self, pin: bool = False):
        if self._pixels is not None:
            for start in range(0, len(self), self.batch_size):
                sl = slice(start, start + self.batch_size)
                yield self._pixels[sl], self.labels[sl]
            return
        from torch.utils.data import DataLoader

        rows = _SourceRows(self.source, self.indices)
        extra = {"prefetch_factor": 4} if self.workers else {}
        loader = DataLoader(rows, batch_size=self.batch_size, num_workers=self.workers,
                            pin_memory=pin, **extra)  # fmt: skip
        yield from loader


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: EvalData,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (fractions) of `model` on `data` (counts summed on the device:
    one host sync at the end)."""
    was_training = model.training
    model.eval()
    m, s = mean.to(device).view(1, -1, 1, 1), std.to(device).view(1, -1, 1, 1)
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    total = 0
    nb = device.type == "cuda"
    cl = next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    for x, y in data.batches(pin=nb):
        x, y = ((x.to(device, non_blocking=nb).float() - m) / s), y.to(device, non_blocking=nb)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with half_autocast(device, precision):
            out = model(x).float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top == y.view(-1, 1)
        counts += torch.stack([hit[:, 0].sum(), hit.any(1).sum()])
        total += len(y)
    model.train(was_training)
    correct1, correct5 = (int(v) for v in counts.tolist())
    return {"top1": correct1 / max(total, 1), "top5": correct5 / max(total, 1)}


HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def half_autocast(device: torch.device, precision: str):
    """Autocast on the device's type (CUDA or CPU) for a resolved `bf16` / `fp16`; fp32: no
    context at all, so the fp32 path is the code it always was."""
    if precision in HALF:
        return torch.autocast(device.type, dtype=HALF[precision])
    return contextlib.nullcontext()
