"""The PRISM objective pinned against hand computations (FACTS §A).

loss = CE(f_logit(A(x)), y) + r_bn / K * sum_k sum_l m_l (||rv_l - var_l||_2 + ||rm_l - mean_l||_2)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prism_hpc.config.schema import AugmentConfig, OptimizeRecover
from prism_hpc.recover import augment
from prism_hpc.recover.loss import Part, recovery_loss
from prism_hpc.recover.objective import Share, bn_divisor, bn_hooks, image_priors, teacher_terms
from prism_hpc.recover.sampler import Roles


class BNNet(nn.Module):
    """BN on the input -> 1x1 conv -> BN -> ReLU -> global pool -> linear, with set statistics."""

    def __init__(self, channels: int = 2, hidden: int = 3, classes: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bn_in = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn_mid = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            for bn in (self.bn_in, self.bn_mid):
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        h = torch.relu(self.bn_mid(self.conv(self.bn_in(x))))
        return self.fc(h.mean((2, 3)))


class NoBNNet(nn.Module):
    """A teacher without BN layers (AlexNet's situation)."""

    def __init__(self, channels: int = 2, classes: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = nn.Conv2d(channels, 3, 3, padding=1)
        self.fc = nn.Linear(3, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def hand_bn_sum(model: BNNet, x: np.ndarray, first_multiplier: float) -> float:
    """numpy float64: BN-input statistics over (N, H, W), biased variance, plain L2 norms."""

    def term(inp, bn):
        mean = inp.mean(axis=(0, 2, 3))
        var = inp.var(axis=(0, 2, 3))  # ddof=0: biased
        rm = bn.running_mean.double().numpy()
        rv = bn.running_var.double().numpy()
        return np.linalg.norm(rv - var) + np.linalg.norm(rm - mean)

    def bn_eval(inp, bn):
        shape = (1, -1, 1, 1)
        rm = bn.running_mean.double().numpy().reshape(shape)
        rv = bn.running_var.double().numpy().reshape(shape)
        w = bn.weight.double().numpy().reshape(shape)
        b = bn.bias.double().numpy().reshape(shape)
        return (inp - rm) / np.sqrt(rv + bn.eps) * w + b

    t1 = term(x, model.bn_in)
    h = bn_eval(x, model.bn_in)
    conv = np.einsum("oc,nchw->nohw", model.conv.weight.double().numpy()[:, :, 0, 0], h)
    t2 = term(conv, model.bn_mid)
    return first_multiplier * t1 + t2


def _x(seed=1, n=5, c=2, size=6, dtype=torch.float64):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("multiplier", [10.0, 1.0, 0.0])
def test_bn_term_equals_hand_computation(multiplier):
    model = BNNet().double()
    x = _x()
    with bn_hooks({"t": model}, multiplier) as hooks:
        ((_, ce, bn),) = teacher_terms(model, hooks["t"], [Share(x, None, 1.0)], grouped=False)
    assert ce is None
    assert bn.item() == pytest.approx(hand_bn_sum(model, x.numpy(), multiplier), rel=1e-12)


def test_bn_term_float32_matches_float64_hand_computation():
    model = BNNet()
    x = _x(dtype=torch.float32)
    with bn_hooks({"t": model}, 10.0) as hooks:
        ((_, _, bn),) = teacher_terms(model, hooks["t"], [Share(x, None, 1.0)], grouped=False)
    assert bn.item() == pytest.approx(hand_bn_sum(model, x.double().numpy(), 10.0), rel=1e-5)


def test_first_bn_multiplier_scales_only_the_first_layer():
    model = BNNet().double()
    x = _x()
    sums = {}
    for m in (1.0, 10.0):
        with bn_hooks({"t": model}, m) as hooks:
            sums[m] = teacher_terms(model, hooks["t"], [Share(x, None, 1.0)],
                                    grouped=False)[0][2].item()  # fmt: skip
    first_only = hand_bn_sum(model, x.numpy(), 1.0) - hand_bn_sum(model, x.numpy(), 0.0)
    assert sums[10.0] - sums[1.0] == pytest.approx(9 * first_only, rel=1e-10)


def test_ce_term_equals_hand_computation_and_logit_only_skips_bn():
    model = BNNet().double()
    x = _x()
    y = torch.tensor([0, 1, 2, 3, 1])
    with bn_hooks({"t": model}, 10.0) as hooks:
        ((loss, ce, bn),) = teacher_terms(model, hooks["t"], [Share(x, y, None)], grouped=False)
        assert hooks["t"].terms == []  # hooks inactive for a logit-only teacher
    with torch.no_grad():
        logits = model(x).numpy()
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    hand = -logp[np.arange(5), y.numpy()].mean()
    assert bn is None
    assert ce.item() == pytest.approx(hand, rel=1e-12)
    assert loss.item() == pytest.approx(hand, rel=1e-12)


def test_hooks_removed_after_use_even_on_error():
    model = BNNet()
    with pytest.raises(RuntimeError), bn_hooks({"t": model}, 10.0):
        assert len(model.bn_in._forward_hooks) == 1
        raise RuntimeError("boom")
    assert not model.bn_in._forward_hooks and not model.bn_mid._forward_hooks


def _cfg(**kw) -> OptimizeRecover:
    base = {
        "logit_teacher": "a", "bn_always": [], "bn_pool": [], "r_bn": 0.01,
        "augment": AugmentConfig(crop_scale=(1.0, 1.0), flip=False, jitter=0),
    }  # fmt: skip
    base.update(kw)
    return OptimizeRecover(**base)


IDENTITY = augment.AugmentDraw([(0, 0, 6, 6)], [False], (0, 0))


@pytest.mark.parametrize(
    "reduction,count_bnless,k", [("mean", False, 2), ("mean", True, 3), ("sum", False, 1)]
)
def test_reduction_and_count_bnless(reduction, count_bnless, k):
    teachers = {"a": BNNet(seed=0).double(), "b": BNNet(seed=1).double(), "c": NoBNNet().double()}
    x = _x().requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 1])
    cfg = _cfg(reduction=reduction, count_bnless=count_bnless, r_bn=0.01)
    roles = Roles("a", ("a", "b", "c"))
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        assert bn_divisor(roles.bn, hooks, reduction, count_bnless) == k
        total, ce, bn = recovery_loss(Part(x, y, roles, IDENTITY), teachers, hooks, cfg,
                                      backward=False)  # fmt: skip
    xn = x.detach().numpy()
    bn_hand = hand_bn_sum(teachers["a"], xn, 10.0) + hand_bn_sum(teachers["b"], xn, 10.0)
    assert bn.item() == pytest.approx(bn_hand, rel=1e-12)
    ce_hand = nn.functional.cross_entropy(teachers["a"](x.detach()), y).item()
    assert ce.item() == pytest.approx(ce_hand, rel=1e-12)
    assert total.item() == pytest.approx(ce_hand + 0.01 / k * bn_hand, rel=1e-12)


def test_teacher_in_both_roles_runs_once_and_bnless_bn_teacher_not_at_all():
    teachers = {"a": BNNet(seed=0), "c": NoBNNet()}
    calls = {"a": 0, "c": 0}
    for name, model in teachers.items():
        model.register_forward_hook(lambda *a, n=name: calls.__setitem__(n, calls[n] + 1))
    x = _x(dtype=torch.float32).requires_grad_(True)
    for memory in ("joint", "sequential"):  # sequential: a BN-less BN teacher used to crash
        cfg = _cfg(memory=memory)
        with bn_hooks(teachers, 10.0) as hooks:
            part = Part(x, torch.zeros(5, dtype=torch.long), Roles("a", ("a", "c")), IDENTITY)
            recovery_loss(part, teachers, hooks, cfg, backward=True)
    assert calls == {"a": 2, "c": 0}


def test_image_priors_are_deepinversions():
    x = _x()
    xn = x.numpy()
    diffs = [
        xn[:, :, :, :-1] - xn[:, :, :, 1:],
        xn[:, :, :-1, :] - xn[:, :, 1:, :],
        xn[:, :, 1:, :-1] - xn[:, :, :-1, 1:],
        xn[:, :, :-1, :-1] - xn[:, :, 1:, 1:],
    ]
    tv = sum(np.linalg.norm(d.ravel()) for d in diffs)
    l2 = np.linalg.norm(xn.ravel())
    assert image_priors(x, 0.0, 0.0).item() == 0.0
    assert image_priors(x, 0.5, 0.0).item() == pytest.approx(0.5 * l2, rel=1e-12)
    assert image_priors(x, 0.0, 0.25).item() == pytest.approx(0.25 * tv, rel=1e-12)


def test_gradient_matches_finite_differences_float64():
    """Whole objective (crop + resize + flip + roll, CE, BN with multiplier, priors) in float64."""
    teachers = {"a": BNNet(seed=0).double(), "b": BNNet(seed=1).double()}
    cfg = _cfg(r_bn=0.5, l2_scale=0.01, tv_scale=0.02)
    draw = augment.AugmentDraw([(1, 0, 4, 5)], [True], (2, 1))
    roles = Roles("a", ("a", "b"))
    y = torch.tensor([0, 1, 2, 3, 1])
    x = _x(size=6).requires_grad_(True)
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        recovery_loss(Part(x, y, roles, draw), teachers, hooks, cfg, backward=True)
        grad = x.grad.detach().clone()

        def f(z):
            return recovery_loss(Part(z, y, roles, draw), teachers, hooks, cfg, backward=False)[0]

        g = torch.Generator().manual_seed(3)
        eps = 1e-6
        for _ in range(4):
            v = torch.randn(x.shape, generator=g, dtype=torch.float64)
            with torch.no_grad():
                fd = (f(x + eps * v) - f(x - eps * v)).item() / (2 * eps)
            analytic = (grad * v).sum().item()
            assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-9)
    assert math.isfinite(grad.abs().sum().item()) and grad.abs().sum() > 0
