"""Intra-class diversity: mean pairwise cosine similarity of penultimate features (paper §4.3).

For one class with features f_1..f_n, the value is the mean of cos(f_a, f_b) over all n(n-1)
ordered pairs a != b (the same as over the n(n-1)/2 unordered pairs); lower = more diverse.
The run's number is the mean +- std (population std, ddof=0: the classes are all the classes,
not a sample) of the per-class values (`prism_hpc.metrics.measure` computes it for a run).

Features: the input of the extractor's last `nn.Linear` layer during a forward pass (for
torchvision ResNet / MobileNet / EfficientNet / ShuffleNet the globally pooled features, for
AlexNet fc7), found by hooking every Linear layer, so wrappers such as `Renormalize` and timm
heads work unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from prism_hpc.errors import UserError

EMBED_CLASSES = 10  # classes whose features are kept for the 2-D embedding (paper Fig. 1)


@torch.no_grad()
def penultimate_features(
    model: nn.Module,
    images_normalised: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(N, D) float32 CPU features: the input of the last `nn.Linear` called in `forward`.

    `images_normalised`: (N, C, H, W), already normalised the way the model expects (the data's
    mean/std; `Renormalize` wrappers convert further). Works in eval mode (dropout in front of
    the classifier is then the identity).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(
            f"metrics.extractor: model {type(model).__name__} has no nn.Linear classifier "
            "whose input could serve as penultimate features"
        )
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    captured: list[torch.Tensor] = []

    def hook(_module, inputs):
        captured[:] = [inputs[0]]  # only the latest Linear input is kept

    modes = [(m, m.training) for m in model.modules()]  # restored one by one afterwards
    model.eval()
    handles = [m.register_forward_pre_hook(hook) for m in linears]
    out = []
    try:
        for start in range(0, len(images_normalised), batch_size):
            captured.clear()
            x = images_normalised[start : start + batch_size].to(device, torch.float32)
            model(x)
            if not captured:
                raise UserError(
                    f"metrics.extractor: {type(model).__name__}'s forward never called a Linear"
                )
            feats = captured[-1]
            out.append(feats.reshape(feats.shape[0], -1).float().cpu())
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def intra_class_cosine(features, labels, eps: float = 1e-12) -> dict[str, Any]:
    """Mean pairwise cosine similarity within each class, then mean +- std over classes.

    Returns `{"per_class": {class: value}, "mean": float, "std": float, "counts": {class: n},
    "skipped": [classes with fewer than 2 samples]}`. A zero feature vector has cosine 0 with
    everything.
    """
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if f.ndim != 2 or f.shape[0] != len(y):
        raise ValueError(f"features {tuple(f.shape)} and labels {y.shape} do not match")
    f = f / f.norm(dim=1, keepdim=True).clamp_min(eps)
    per_class: dict[int, float] = {}
    counts: dict[int, int] = {}
    skipped: list[int] = []
    for c in np.unique(y).tolist():
        fc = f[torch.from_numpy(y == c)]
        n = fc.shape[0]
        counts[int(c)] = int(n)
        if n < 2:
            skipped.append(int(c))
            continue
        # sum over all pairs of cos = ||sum_a f_a||^2; remove the n diagonal terms (each ~1,
        # exactly ||f_a||^2, which is 0 for a zero vector)
        total = fc.sum(0).pow(2).sum() - fc.pow(2).sum()
        per_class[int(c)] = float(total / (n * (n - 1)))
    values = np.array(list(per_class.values()), dtype=np.float64)
    return {
        "per_class": per_class,
        "mean": float(values.mean()) if len(values) else float("nan"),
        "std": float(values.std()) if len(values) else float("nan"),
        "counts": counts,
        "skipped": skipped,
    }


def per_class_values(result: dict[str, Any]) -> dict[int, float]:
    """`per_class` with int keys (JSON turns them into strings)."""
    return {int(k): float(v) for k, v in (result.get("per_class") or {}).items()}


def standardise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel for float images in [0, 1], shape (N, C, H, W)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images - m) / s


def normalise(pixels_uint8: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 pixels as the model input: scaled to [0, 1], then `standardise`d."""
    return standardise(torch.as_tensor(np.asarray(pixels_uint8)).float().div_(255), mean, std)


def embed_classes(num_classes: int, k: int = EMBED_CLASSES) -> list[int]:
    """Up to `k` classes spread evenly over the label range (all of them for <= k classes)."""
    if num_classes <= k:
        return list(range(num_classes))
    return sorted({round(float(v)) for v in np.linspace(0, num_classes - 1, k)})
