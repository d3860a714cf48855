"""G-VBSM matching (recover/gvbsm.py, recover/statistics.py, stages/statistics.py): the
conv-input statistic term, its EMA, the precomputed statistics, the backbone schedule, data
densification and the statistics stage, against values computed by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prism_hpc.config.load import config_from_dict
from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.recover.gvbsm import StatMatcher, densify_loss, pick_backbone, smoothed
from prism_hpc.recover.loop import Unit, pixel_bounds, recover_units
from prism_hpc.recover.statistics import (
    batch_patch_stats,
    compute_statistics,
    patch_rows,
    sample_stats,
    stat_layers,
)
from prism_hpc.seeding import generator
from prism_hpc.stages.statistics import StatisticsStage, statistics_path
from prism_hpc.workflow import TaskEnv
from tests.conftest import TINY
from tests.helpers import conv_bn_net, hooked_terms, reference_stats, two_level_batch


def matching(**over) -> OptimizeRecover:
    m = {"enabled": True, "backbones": ["net"], "momentum": 0.0, **over}
    return OptimizeRecover(logit_teacher="net", bn_always=["net"], bn_pool=[], matching=m)


def test_layers_in_module_order():
    net = conv_bn_net()
    assert [(n, k) for n, k, _ in stat_layers(net)] == [("0", "conv"), ("1", "bn")]
    assert [(n, k) for n, k, _ in stat_layers(net, conv=False)] == [("1", "bn")]


def test_patch_statistics_by_hand():
    var, mean = batch_patch_stats(two_level_batch())
    assert mean.tolist() == [3.0, 5.0] and var.tolist() == [4.0, 4.0]
    # 8x8 inputs are resized up to 16x16 first: one patch holding the whole image
    assert patch_rows(torch.ones(3, 2, 8, 8)).shape == (3, 1, 2 * 16 * 16)


@pytest.mark.parametrize(
    "shape", [(4, 3, 2, 2), (3, 2, 8, 8), (5, 2, 20, 20), (3, 4, 32, 32), (2, 3, 7, 5),
              (2, 2, 16, 20), (3, 2, 1, 1), (2, 2, 48, 33)],
)  # fmt: skip
def test_patch_moments_equal_the_resized_patches(shape):
    """The cheap separable form (no resized tensor) = var/mean of the explicit 16x16 patches
    of the bilinearly resized input, batch and per-sample, values and gradients (float64)."""
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2 + 3).relu()
    x.requires_grad_(True)
    rows = patch_rows(x)
    want = [*torch.var_mean(rows, dim=(0, 2), unbiased=False),
            *torch.var_mean(rows, dim=2, unbiased=False)]  # fmt: skip
    per_sample = sample_stats(x, patch=True)
    got = [*batch_patch_stats(x), per_sample["patch_var"], per_sample["patch_mean"]]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in want]
    grad_want = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, want, strict=True)), x)[0]
    grad_got = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, got, strict=True)), x)[0]
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-12)


def test_conv_and_bn_terms_by_hand():
    """conv (first layer, x10): |1-5| + |0-4| + ||(3,5)|| + ||(3,3)||; BN: |1-5| + |0-4|.
    Removing the conv statistics (conv: false) leaves the BN term alone."""
    net = conv_bn_net()
    x = two_level_batch()
    m = StatMatcher({"net": net}, matching(), {"net": reference_stats()})
    conv, bn = hooked_terms(m, net, x)
    assert conv == pytest.approx(10 * (4 + 4 + math.sqrt(34) + math.sqrt(18)), rel=1e-6)
    assert bn == pytest.approx(8.0, rel=1e-6)
    m.remove()
    only_bn = StatMatcher({"net": net}, matching(conv=False), {})
    assert hooked_terms(only_bn, net, x) == pytest.approx([10 * 8.0])  # BN is now first
    only_bn.remove()
    no_patch = StatMatcher({"net": net}, matching(patch=False), {"net": reference_stats()})
    assert hooked_terms(no_patch, net, x)[0] == pytest.approx(80.0, rel=1e-6)
    no_patch.remove()


def test_momentum_matches_the_ema_and_restarts_per_chunk():
    """momentum 0.5, a second batch x + 1 (mean 5): matched mean 4.5; BN term 4 + 4.5."""
    net = conv_bn_net()
    x = two_level_batch()
    m = StatMatcher({"net": net}, matching(momentum=0.5), {"net": reference_stats()})
    hooked_terms(m, net, x)
    conv, bn = hooked_terms(m, net, x + 1)
    assert bn == pytest.approx(4 + 4.5, rel=1e-6)
    patch_means = math.sqrt(3.5**2 + 5.5**2)
    assert conv == pytest.approx(10 * (4 + 4.5 + patch_means + math.sqrt(18)), rel=1e-6)
    m.reset()
    assert hooked_terms(m, net, x + 1)[1] == pytest.approx(4 + 5, rel=1e-6)
    m.remove()


def test_smoothed_value_is_the_ema_gradient_the_current_batch():
    v = torch.tensor([2.0, 4.0], requires_grad=True)
    out, ema = smoothed(v, torch.tensor([0.0, 0.0]), 0.25)
    assert out.tolist() == [1.5, 3.0] and ema.tolist() == [1.5, 3.0]
    out.sum().backward()
    assert v.grad.tolist() == [1.0, 1.0]
    first, state = smoothed(torch.tensor([7.0]), None, 0.9)
    assert first.item() == 7.0 and state.item() == 7.0


def test_precomputed_statistics_equal_a_direct_computation():
    """Global: image-weighted mean of the batch statistics; per class: mean over the class's
    images of per-image statistics (20x20 inputs: the patch path resizes)."""
    g = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(3, 1, 20, 20, generator=g), torch.tensor([0, 1, 1])),
        (torch.randn(2, 1, 20, 20, generator=g), torch.tensor([2, 0])),
    ]
    net = conv_bn_net()
    stats = compute_statistics(net, batches, num_classes=3, per_class=True)
    n = torch.tensor([3.0, 2.0])
    for key, fn in [("mean", lambda x: x.mean()), ("var", lambda x: x.var(unbiased=False))]:
        want = sum(fn(b[0]) * k for b, k in zip(batches, n, strict=True)) / 5
        assert stats[f"global/0/{key}"].item() == pytest.approx(want.item(), rel=1e-5)
    pm = sum(batch_patch_stats(b[0])[1] * k for b, k in zip(batches, n, strict=True)) / 5
    torch.testing.assert_close(stats["global/0/patch_mean"], pm)
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    for c in range(3):
        own = images[labels == c]
        means = own.mean(dim=(1, 2, 3))
        variances = own.var(dim=(1, 2, 3), unbiased=False)
        for layer in ("0", "1"):  # the conv's and the BN's input (the same x here)
            assert stats[f"class/{layer}/mean"][c].item() == pytest.approx(means.mean().item())
            assert stats[f"class/{layer}/var"][c].item() == pytest.approx(
                variances.mean().item(), rel=1e-5
            )
    assert "class/1/patch_mean" not in stats  # BN layers: channel statistics only
    assert stats["meta/class_count"].tolist() == [2, 2, 1]
    assert "global/1/mean" not in stats  # BN: the running statistics are in the model


def test_schedule_round_robin_and_seeded_draws():
    names = ["a", "b", "c"]
    g = generator(0, "recover-intra", 0, 0)
    assert [pick_backbone(names, "round_robin", s, g) for s in range(5)] == list("abcab")
    g1, g2 = generator(7, "x"), generator(7, "x")
    drawn = [pick_backbone(names, "random", s, g1) for s in range(12)]
    want = [names[int(torch.randint(3, (), generator=g2))] for _ in range(12)]
    assert drawn == want and len(set(drawn)) > 1


def test_densify_by_hand():
    """pool 1, one channel: image z = its mean. Two images a, b of one class: Gram
    eigenvalues 0 and a^2 + b^2; KL(softmax(eig / tau) || softmax(eig)). Singletons: 0."""
    x = torch.stack([torch.full((1, 4, 4), 0.6), torch.full((1, 4, 4), 0.8),
                     torch.full((1, 4, 4), 3.0)])  # fmt: skip
    targets = torch.tensor([0, 0, 1])
    eig = torch.tensor([0.0, 0.36 + 0.64])
    q, log_p = torch.softmax(eig / 4, 0), torch.log_softmax(eig, 0)
    want = float((q * (q.log() - log_p)).sum())
    assert float(densify_loss(x, targets, tau=4.0, pool=1)) == pytest.approx(want, rel=1e-5)
    assert float(densify_loss(x, torch.tensor([0, 1, 2]), 4.0, 1)) == 0.0  # cross-class batch


def test_recover_chunk_alternates_backbones():
    """Two backbones round robin: the roles the loop records alternate, the logit teacher
    is the step's backbone, and the images move."""
    torch.manual_seed(0)
    nets = {n: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
            for n in ("a", "b")}  # fmt: skip
    for net in nets.values():
        net.requires_grad_(False)
    rec = OptimizeRecover(
        logit_teacher="a", bn_always=["a"], bn_pool=["b"], iterations=4, iteration_step=0,
        matching={"enabled": True, "conv": False, "momentum": 0.4},
        augment={"crop_scale": [1.0, 1.0], "flip": False, "jitter": 0},
    )  # fmt: skip
    m = StatMatcher(nets, rec, {})
    x0 = torch.randn(3, 1, 8, 8)
    unit = Unit(x0, torch.tensor([0, 1, 2]), 4, generator(0, "a"), generator(0, "b"), None)
    ((x, used, history),) = recover_units([unit], nets, {}, rec,
                                          pixel_bounds([0.5], [0.5], "cpu"), m)  # fmt: skip
    assert [(r.logit, r.bn) for r in used] == [("a", ("a",)), ("b", ("b",))] * 2
    assert not torch.equal(x, x0) and history[-1]["bn"] > 0
    m.remove()


def test_config_refuses_pack_and_plain_configs_have_no_statistics():
    with pytest.raises(ValueError, match="pack 1"):
        OptimizeRecover(pack=2, matching={"enabled": True})
    cfg = config_from_dict(copy.deepcopy(TINY))
    assert StatisticsStage().items(cfg) == []  # PRISM: the stage adds nothing


def test_statistics_stage_writes_seals_and_detects_changes(tmp_path, tiny_cfg_pretrained):
    data = tiny_cfg_pretrained
    data["recover"]["matching"] = {"enabled": True, "stats_limit_per_class": 3,
                                   "stats_batch_size": 8}  # fmt: skip
    cfg = config_from_dict(data)
    stage = StatisticsStage()
    items = stage.items(cfg)
    assert [i.payload["teacher"] for i in items] == ["resnet18", "shufflenet"]
    item = items[0]
    assert not stage.is_done(tmp_path, item)
    stage.run(cfg, item, TaskEnv(run_dir=tmp_path, log=lambda m: None))
    path = statistics_path(tmp_path, "resnet18")
    stats = torch.load(path, weights_only=True)
    assert stats["meta/images"].item() == 30 and stats["meta/class_count"].tolist() == [3] * 10
    assert any(k.startswith("global/") and k.endswith("/patch_var") for k in stats)
    assert stage.is_done(tmp_path, item)  # the runner skips it now
    torch.save({"meta/images": torch.tensor(0)}, path)  # a changed file: not done any more
    assert stage.problems(tmp_path, item)


def test_gvbsm_and_edc_configs_carry_their_mechanism():
    """configs/baselines: G-VBSM's and EDC's ImageNet recipes (their recover.sh) and their
    Fashion-MNIST scalings; joint batches of several IPC positions per class."""
    from pathlib import Path

    from prism_hpc.config.load import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "baselines"
    rec = {n: load_config(root / f"{n}.yaml")[0].recover
           for n in ("fmnist_gvbsm", "in1k_gvbsm_ipc50", "fmnist_edc", "in1k_edc_ipc50")}  # fmt: skip
    four = ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5"]
    for name, r in rec.items():
        m = r.matching
        assert m.enabled and m.schedule == "round_robin" and m.conv and m.patch
        assert r.batching == "joint" and r.iteration_step == 0 and r.first_bn_multiplier == 10
        assert r.matching_backbones()[:4] == four and m.needs_statistics
        if "gvbsm" in name:
            assert (m.momentum, m.densify, m.tau, m.class_aware) == (0.4, 1.0, 4.0, False)
            assert r.init == "noise" and r.lr == 0.1 and r.r_bn == 0.01
        else:
            assert (m.momentum, m.densify, m.class_aware, m.class_weight) == (0.8, 0.0, True, 0.5)
            assert r.init == "rded" and r.lr == 0.05 and r.r_bn == 0.1
            assert r.augment.crop_scale == (0.5, 1.0) and r.augment.jitter == 0
    g, e = rec["in1k_gvbsm_ipc50"], rec["in1k_edc_ipc50"]
    assert (g.iterations, g.classes_per_batch * g.slices_per_task) == (4000, 80)
    assert (e.iterations, e.classes_per_batch * e.slices_per_task) == (1000, 80)
    assert e.matching_backbones() == [*four, "alexnet"]
