"""Teacher-ensemble soft labels.

`norm_mean` (official PRISM relabel): each teacher's logits for the whole batch are rescaled
to the mean Frobenius norm across teachers, then averaged:

    n_k = ||L_k||_F,  n = mean_k n_k,  out = mean_k (n / n_k) * L_k

so that a teacher with large logits does not dominate. `mean` is the plain average.
The norm is over the *batch* (the optimizer-step batch of the plan), so soft labels depend on
batch composition; teacher forwards may be chunked for memory without changing the result.
Teacher forwards run under `relabel.precision`'s autocast (inference: no loss scaling); the
logits are combined in fp32 whatever it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from prism_hpc.hardware.capability import PrecisionChoice, resolve_precision

EPS = 1e-12
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def combine_logits(
    logits: Sequence[torch.Tensor],
    method: str = "norm_mean",
    sq_norm_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Combine per-teacher logits (each (B, K)) into one (B, K) float32 tensor.

    `sq_norm_reduce`: for a batch split over ranks, a function that sums the per-teacher
    squared norms (a (T,) tensor) over ranks, e.g. an all_reduce; None: this is the whole batch.
    """
    stack = torch.stack([t.float() for t in logits])  # (T, B, K)
    if method == "mean":
        return stack.mean(0)
    if method != "norm_mean":
        raise ValueError(f"unknown ensemble method {method!r} (norm_mean | mean)")
    sq = stack.pow(2).sum(dim=(1, 2))  # (T,)
    if sq_norm_reduce is not None:
        sq = sq_norm_reduce(sq)
    norms = sq.sqrt().clamp_min(EPS)
    scale = norms.mean() / norms  # (T,)
    return (stack * scale.view(-1, 1, 1)).mean(0)


class Ensemble:
    """Frozen teachers that turn a normalised batch into one soft-label logit tensor."""

    def __init__(self, teachers: dict[str, nn.Module], method: str = "norm_mean", chunk: int = 50,
                 precision: str = "fp32"):  # fmt: skip
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        self.teachers = teachers
        self.method = method
        self.chunk = max(1, chunk)
        self.precision = precision  # resolved: fp32 | bf16 | fp16

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for model in self.teachers.values():
            with self._autocast(x.device):
                parts = [model(x[i : i + self.chunk]).float()
                         for i in range(0, len(x), self.chunk)]  # fmt: skip
            out.append(torch.cat(parts))
        return out

    def _autocast(self, device: torch.device):
        """fp32: no context (the code it always was); bf16/fp16: autocast on the device."""
        if self.precision in HALF:
            return torch.autocast(device.type, dtype=HALF[self.precision])
        return nullcontext()

    @torch.no_grad()
    def __call__(
        self, x: torch.Tensor, sq_norm_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        return combine_logits(self.teacher_logits(x), self.method, sq_norm_reduce)


def relabel_precision(cfg, device: torch.device | str) -> PrecisionChoice:
    """`relabel.precision` on `device` by the capability rule every stage shares (auto: bf16
    where native, fp16 on CUDA without it, else fp32)."""
    return resolve_precision(cfg.relabel.precision, device)


def load_ensemble(
    cfg, run_dir: Path, device: torch.device | str = "cpu", precision: str = "fp32"
) -> Ensemble:
    """The `relabel.teachers` of the config as frozen eval models on `device`, run in the
    resolved `precision`."""
    from prism_hpc.models.teachers import load_teacher

    teachers = {n: load_teacher(cfg, n, Path(run_dir), device) for n in cfg.relabel.teachers}
    return Ensemble(teachers, cfg.relabel.ensemble, cfg.relabel.batch_size, precision)
