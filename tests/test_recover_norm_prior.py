"""Norm-statistic priors (recover/norm_prior.py) against hand computations in float64.

The LayerNorm case: a (B=2, N=3, C=2) token input with

    x[:, :, 0] = [[0, 1, 2], [3, 4, 5]]   -> mean 2.5, biased var 17.5 / 6 = 35 / 12
    x[:, :, 1] = [[1, 1, 1], [3, 3, 3]]   -> mean 2,   biased var 1

(statistics per channel over B and N). References chosen so the norms are round:
mean - ref_mean = (3, -4) (norm 5), var - ref_var = (0.6, 0.8) (norm 1), so the layer's term,
x10 for the first (here only) layer, is 10 * (1 + 5) = 60. Its gradient wrt x[b, n, c] is

    10 * ( u_c * 2 (x - mean_c) / 6 + w_c / 6 ),  u = (0.6, 0.8), w = (3, -4) / 5
    channel 0: 2 x - 4      -> [-4, -2, 0, 2, 4, 6]
    channel 1: 8/3 (x - 2) - 4/3   -> x = 1: -4, x = 3: 4/3

The same numbers are fed, channels first, to timm's LayerNorm2d and to a GroupNorm (channels
in dim 1): treating those as channels-last fails the case. Reducing over the wrong axes makes
`test_term_and_gradient_by_hand` fail, checked once by monkeypatching
`norm_prior._other_dims`: statistics per token over C -> a shape error in all three cases;
over B only (per (N, C)) -> term 101.65 instead of 60.
"""

from __future__ import annotations

import pytest
import torch
from timm.layers import LayerNorm2d
from torch import nn

from prism_hpc.recover.norm_prior import (
    NormStatistics,
    compute_norm_statistics,
    grouped_norm_stats,
    norm_channel_stats,
)

X = torch.tensor(
    [[[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]], [[3.0, 3.0], [4.0, 3.0], [5.0, 3.0]]],
    dtype=torch.float64,
)  # (B=2, N=3, C=2): x[b, n, c]
MEAN = torch.tensor([2.5, 2.0], dtype=torch.float64)
VAR = torch.tensor([35 / 12, 1.0], dtype=torch.float64)
REF_MEAN = MEAN - torch.tensor([3.0, -4.0], dtype=torch.float64)  # (-0.5, 6.0)
REF_VAR = VAR - torch.tensor([0.6, 0.8], dtype=torch.float64)
TERM = 10 * (1 + 5)
GRAD = torch.tensor(
    [[[-4.0, -4.0], [-2.0, -4.0], [0.0, -4.0]], [[2.0, 4 / 3], [4.0, 4 / 3], [6.0, 4 / 3]]],
    dtype=torch.float64,
)


def _case(kind: str) -> tuple[nn.Module, torch.Tensor, str]:
    """(net, input, layer name) of the same numbers seen by three layer kinds: a LayerNorm
    over the last dim of (B, N, C); timm's LayerNorm2d and a GroupNorm, whose channels are
    dim 1 of (B, C, 1, N) (x[b, c, 0, n] = X[b, n, c])."""
    if kind == "layernorm":
        return nn.Sequential(nn.LayerNorm(2)), X.clone(), "0"
    channels_first = X.permute(0, 2, 1).unsqueeze(2).contiguous()  # (2, 2, 1, 3)
    layer = LayerNorm2d(2) if kind == "layernorm2d" else nn.GroupNorm(2, 2)
    return nn.Sequential(nn.Identity(), layer), channels_first, "1"


def _as_case(kind: str, t: torch.Tensor) -> torch.Tensor:
    return t if kind == "layernorm" else t.permute(0, 2, 1).unsqueeze(2)


@pytest.mark.parametrize("kind", ["layernorm", "layernorm2d", "groupnorm"])
def test_term_and_gradient_by_hand(kind):
    net, x, layer = _case(kind)
    net = net.double().eval()
    ref = {f"norm/{layer}/mean": REF_MEAN, f"norm/{layer}/var": REF_VAR}
    hook = NormStatistics(net, 10.0, ref)
    assert hook.has_bn  # it has a statistic term: counts in K like a BN teacher
    x.requires_grad_(True)
    hook.active = True
    net(x)
    hook.active = False
    term = hook.collect()
    assert term.dtype == torch.float64
    torch.testing.assert_close(term, torch.tensor(float(TERM), dtype=torch.float64))
    term.backward()
    torch.testing.assert_close(x.grad, _as_case(kind, GRAD), rtol=1e-12, atol=1e-12)
    hook.remove()


def test_statistics_by_hand_and_swapped_axes_differ():
    var, mean = norm_channel_stats(X, -1)
    torch.testing.assert_close(mean, MEAN)
    torch.testing.assert_close(var, VAR)
    # what a swap of the axes would compute: per token over C -- other shape, other values
    wrong_var, wrong_mean = torch.var_mean(X, dim=-1, unbiased=False)
    assert wrong_mean.shape == (2, 3) and wrong_mean[0, 0] == 0.5 and wrong_var[0, 0] == 0.25


def test_inactive_and_first_layer_multiplier():
    net = nn.Sequential(nn.LayerNorm(2), nn.LayerNorm(2)).double().eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    ref = {"norm/0/mean": REF_MEAN, "norm/0/var": REF_VAR,
           "norm/1/mean": torch.zeros(2, dtype=torch.float64),
           "norm/1/var": torch.ones(2, dtype=torch.float64)}  # fmt: skip
    hook = NormStatistics(net, 10.0, ref)
    net(X)  # not active: nothing recorded
    assert hook.collect().item() == 0.0
    hook.active = True
    net(X)
    # the second layer sees the first one's output (unit weight, zero bias); x1, not x10
    out = nn.functional.layer_norm(X, (2,))
    v, m = torch.var_mean(out, dim=(0, 1), unbiased=False)
    second = torch.linalg.vector_norm(1 - v) + torch.linalg.vector_norm(m)
    torch.testing.assert_close(hook.collect(), TERM + second)
    hook.remove()


def test_missing_reference_is_refused():
    from prism_hpc.errors import TaskFailed

    with pytest.raises(TaskFailed, match="norm/0/var"):
        NormStatistics(nn.Sequential(nn.LayerNorm(2)), 10.0, {"norm/0/mean": REF_MEAN})


def test_grouped_statistics_are_per_chunk():
    """Packed chunks: one set of statistics per group of leading rows, never over the
    concatenation; trailing rows (logit-only chunks) take no part and get no gradient."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    var, mean = grouped_norm_stats(x, -1, [2, 3])
    for i, (a, b) in enumerate([(0, 2), (2, 5)]):
        v, m = norm_channel_stats(x[a:b], -1)
        torch.testing.assert_close(var[i], v)
        torch.testing.assert_close(mean[i], m)
    (var.sum() + mean.sum()).backward()
    assert torch.all(x.grad[5:] == 0)


def test_precomputed_statistics_are_the_training_set_moments():
    """Two uneven batches (Chan's merge) give the moments of the whole pass; so does any
    other batch size."""
    g = torch.Generator().manual_seed(1)
    data = torch.randn(7, 2, 3, 3, generator=g, dtype=torch.float64) * 3 + 1
    net = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), LayerNorm2d(2)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))

    def batches(size):
        return [(data[a : a + size], torch.zeros(0)) for a in range(0, 7, size)]

    stats = compute_norm_statistics(net, batches(4))  # 4 + 3 images
    var, mean = torch.var_mean(data, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(stats["norm/1/mean"], mean.float())
    torch.testing.assert_close(stats["norm/1/var"], var.float())
    assert stats["meta/images"].item() == 7
    other = compute_norm_statistics(net, batches(2))
    torch.testing.assert_close(other["norm/1/var"], stats["norm/1/var"])
