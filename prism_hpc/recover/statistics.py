"""Layer statistics for G-VBSM / EDC matching, and their one-off precomputation.

Which layers: every `BatchNorm2d` and (with `conv`) every `Conv2d` of a teacher, in
`named_modules` order (the official hooks' order, so the first one, a ResNet's `conv1`, gets
the first-layer multiplier). What is measured is each layer's *input*, as the official
`BNFeatureHook` / `ConvFeatureHook` do:
- channel statistics: mean and biased variance per channel over (N, H, W);
- patch statistics (conv layers): the input resized (bilinear) up to multiples of 16, cut
  into 16x16 patches; per patch position, mean and biased variance over (N, C, 16, 16);
- per-sample versions of both (over (H, W), resp. (C, 16, 16)) for EDC's per-class statistics.

The precomputation (`compute_statistics`) walks the training set once, in a fixed order with
a fixed batch size, and stores (tensors only, `torch.load(weights_only=True)`):
- `global/<layer>/{mean,var,patch_mean,patch_var}` (conv layers): the image-weighted mean of
  the per-batch statistics (the official accumulation: sum of stat_b * n_b / N);
- `class/<layer>/{mean,var[,patch_mean,patch_var]}` (BN and conv layers, `per_class`): per
  class, the mean over its images of the per-sample statistics (EDC's `pre_hook_fn`), shape
  (classes, C) resp. (classes, patches);
- `meta/class_count` (images per class) and `meta/images`.
BN layers need no global entry: their running statistics are in the model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

PATCH = 16


def stat_layers(model: nn.Module, conv: bool = True) -> list[tuple[str, str, nn.Module]]:
    """(name, kind, module) of the matched layers in module order; kind: `bn` or `conv`."""
    out = []
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            out.append((name, "bn", module))
        elif conv and isinstance(module, nn.Conv2d):
            out.append((name, "conv", module))
    return out


def _up16(n: int) -> int:
    """The next multiple of 16 (the official `div_sixteen_mul`)."""
    return -(-n // PATCH) * PATCH


def patch_rows(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, P, C*16*16): the 16x16 patches of x resized up to multiples of 16
    (bilinear, as the official hooks), one row per (image, patch position). The definition;
    the statistics use the equal, much cheaper `patch_moments`."""
    n, c, h, w = x.shape
    hh, ww = _up16(h), _up16(w)
    if (hh, ww) != (h, w):
        x = F.interpolate(x, size=(hh, ww), mode="bilinear", align_corners=False)
    u, v = hh // PATCH, ww // PATCH
    x = x.reshape(n, c, u, PATCH, v, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, u * v, c * PATCH * PATCH)


def _axis_blocks(n: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """For one axis of length n resized (bilinear) to `_up16(n)` and cut into 16-blocks:
    `mean_w` (blocks, n), the weights giving each block's mean from the unresized axis, and
    `gram` (blocks, n, n), giving its mean of products (A_b^T A_b / 16 for the block's
    16 rows A_b of the resize matrix). The resize matrix is read off F.interpolate itself."""
    m = _up16(n)
    if m == n:
        resize = torch.eye(n, device=device, dtype=dtype)
    else:
        eye = torch.eye(n, device=device, dtype=dtype).reshape(1, n, n, 1)
        resize = F.interpolate(eye, size=(m, 1), mode="bilinear", align_corners=False)
        resize = resize[0, :, :, 0].T  # (m, n): resized = resize @ axis
    blocks = resize.reshape(m // PATCH, PATCH, n)
    return blocks.mean(1), torch.einsum("bka,bkc->bac", blocks, blocks) / PATCH


def patch_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m1, m2), each (N, C, U, V): the mean and the mean square, per image, channel and
    16x16 patch, of x resized up to multiples of 16, *without building the resized tensor*.

    Why: at small resolution the resize is most of the data (a 2x2 map becomes 16x16, 64x),
    and the statistics stage and G-VBSM's loss do this for every conv layer. Bilinear resize
    is separable and linear (resized = R_h x R_w^T), so a patch's mean is b_i^T x d_j and
    its mean square is <G_i x H_j, x> with the per-block weights of `_axis_blocks`; when no
    resize is needed both are plain 16x16 average pools. `patch_rows` is the direct
    definition the tests compare this with."""
    h, w = x.shape[-2:]
    if (_up16(h), _up16(w)) == (h, w):
        return F.avg_pool2d(x, PATCH), F.avg_pool2d(x * x, PATCH)
    bh, gh = _axis_blocks(h, x.device, x.dtype)
    bw, gw = _axis_blocks(w, x.device, x.dtype)
    m1 = torch.einsum("ua,ncab,vb->ncuv", bh, x, bw)
    left = torch.einsum("uak,nckw->ncuaw", gh, x)  # G_i x: (N, C, U, h, w)
    both = torch.einsum("ncuaw,vwq->ncuvaq", left, gw)  # G_i x H_j
    return m1, (both * x[:, :, None, None]).sum(dim=(-2, -1))


Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def shifted_moments(x: torch.Tensor) -> Moments:
    """(m1, m2, shift): `patch_moments` of x minus a scalar shift (the batch mean, detached),
    which leaves the variance unchanged and makes E[x^2] - E[x]^2 lose far less to rounding.
    Compute once per layer when both batch and per-sample statistics are wanted."""
    shift = x.detach().mean()
    return (*patch_moments(x - shift), shift)


def _patch_var_mean(moments: Moments, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch (var, mean) over `dims` of the moments (plus each patch's pixels), flattened
    row-major over patch positions."""
    m1, m2, shift = moments
    mean = m1.mean(dim=dims)
    var = (m2.mean(dim=dims) - mean * mean).clamp(min=0)
    return var.flatten(-2), (mean + shift).flatten(-2)


def batch_patch_stats(
    x: torch.Tensor, moments: Moments | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(var, mean), each (P,): per patch position over the whole batch (N, C, 16, 16)."""
    return _patch_var_mean(moments or shifted_moments(x), (0, 1))


def sample_stats(
    x: torch.Tensor, patch: bool, moments: Moments | None = None
) -> dict[str, torch.Tensor]:
    """Per-sample statistics: mean/var (N, C) over (H, W); patch_mean/var (N, P) over
    (C, 16, 16)."""
    var, mean = torch.var_mean(x, dim=(2, 3), unbiased=False)
    out = {"mean": mean, "var": var}
    if patch:
        pvar, pmean = _patch_var_mean(moments or shifted_moments(x), (1,))
        out.update(patch_mean=pmean, patch_var=pvar)
    return out


def _channel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.var_mean(x, dim=(0, 2, 3), unbiased=False)


@torch.no_grad()
def compute_statistics(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    conv: bool = True,
    patch: bool = True,
    per_class: bool = False,
) -> dict[str, torch.Tensor]:
    """One pass of `model` (eval) over `batches` of (normalised images, labels); see the
    module docstring for what is returned. Sums are kept in float64, stored as float32."""
    layers = stat_layers(model, conv)
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros(num_classes, dtype=torch.float64)
    seen = {"n": 0, "labels": None}

    def add(key: str, value: torch.Tensor) -> None:
        value = value.double()
        sums[key] = sums[key] + value if key in sums else value

    def hook_for(name: str, kind: str):
        def hook(module, inputs, output) -> None:
            x = inputs[0].float()
            n = x.shape[0]
            moments = shifted_moments(x) if patch and kind == "conv" else None  # once per layer
            if kind == "conv":
                var, mean = _channel(x)
                add(f"global/{name}/mean", mean * n)
                add(f"global/{name}/var", var * n)
                if patch:
                    pvar, pmean = batch_patch_stats(x, moments)
                    add(f"global/{name}/patch_mean", pmean * n)
                    add(f"global/{name}/patch_var", pvar * n)
            if per_class:
                labels = seen["labels"].to(x.device)
                for stat, values in sample_stats(x, patch and kind == "conv", moments).items():
                    acc = values.new_zeros((num_classes, values.shape[1]), dtype=torch.float64)
                    acc.index_add_(0, labels, values.double())
                    add(f"class/{name}/{stat}", acc.cpu())

        return hook

    handles = [m.register_forward_hook(hook_for(n, k)) for n, k, m in layers]
    was_training = model.training
    model.eval()
    try:
        for images, labels in batches:
            labels = torch.as_tensor(labels, dtype=torch.long)
            seen["labels"] = labels
            model(images)
            seen["n"] += images.shape[0]
            count += torch.bincount(labels.cpu(), minlength=num_classes).double()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total = seen["n"]
    if total == 0:
        raise ValueError("no training images to compute statistics from")
    out: dict[str, torch.Tensor] = {}
    for key, value in sums.items():
        if key.startswith("global/"):
            out[key] = (value.cpu() / total).float()
        else:
            out[key] = (value / count.clamp(min=1).unsqueeze(1)).float()
    out["meta/class_count"] = count.long()
    out["meta/images"] = torch.tensor(total)
    return out


def statistic_indices(labels, limit_per_class: int | None):
    """Training positions the statistics are computed over, in file order: every image, or
    the first `limit_per_class` of each class."""
    import numpy as np

    labels = np.asarray(labels)
    if limit_per_class is None:
        return np.arange(len(labels))
    keep = [np.flatnonzero(labels == c)[:limit_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def training_batches(source, indices, batch_size: int, mean, std, device):
    """(normalised images, labels) of `indices` in order, `batch_size` at a time."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    for a in range(0, len(indices), batch_size):
        idx = indices[a : a + batch_size]
        x = (source.load(idx) - m) / s
        yield x.to(device), torch.as_tensor(source.labels[idx], dtype=torch.long)
