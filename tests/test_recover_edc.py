"""EDC (recover/edc.py): category-aware matching picks the batch's classes' statistics, the
RDED-image init, and the students' smoothing schedule, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prism_hpc.config.schema import OptimizeRecover, RdedConfig
from prism_hpc.errors import UserError
from prism_hpc.recover.context import SliceContext
from prism_hpc.recover.edc import class_reference, rded_init
from prism_hpc.recover.gvbsm import StatMatcher
from prism_hpc.recover.rded import Observer, rded_class_image
from prism_hpc.train.schedules import lr_factor
from tests.helpers import conv_bn_net, hooked_terms, reference_stats, two_level_batch


def class_stats() -> dict[str, torch.Tensor]:
    """Class 0: the global reference values; class 1: exactly the two-level batch's own
    statistics (mean 4, var 5, patch means 3 / 5, patch variances 4 / 4)."""
    stats = reference_stats()
    for layer in ("0", "1"):
        stats[f"class/{layer}/mean"] = torch.tensor([[0.0], [4.0]])
        stats[f"class/{layer}/var"] = torch.tensor([[1.0], [5.0]])
    stats["class/0/patch_mean"] = torch.tensor([[0.0, 0.0], [3.0, 5.0]])
    stats["class/0/patch_var"] = torch.tensor([[1.0, 1.0], [4.0, 4.0]])
    return stats


def edc_matching(**over) -> OptimizeRecover:
    m = {"enabled": True, "backbones": ["net"], "momentum": 0.0, "class_aware": True, **over}
    return OptimizeRecover(logit_teacher="net", bn_always=["net"], bn_pool=[], matching=m)


def test_class_reference_is_the_mean_over_the_batch_images_classes():
    stats = {"class/l/mean": torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])}
    ref = lambda t: class_reference(stats, "l", "mean", torch.tensor(t)).tolist()
    assert ref([1, 1]) == [10.0, 11.0]
    assert ref([2]) == [20.0, 21.0]
    assert ref([0, 2]) == [10.0, 11.0]
    assert ref([0, 0, 2]) == pytest.approx([20 / 3, 23 / 3])  # a repeated class counts twice
    with pytest.raises(UserError, match="per-class var"):
        class_reference(stats, "l", "var", torch.tensor([0]))


def test_category_aware_terms_by_hand():
    """term = 0.5 x global + 0.5 x class term. Targets [1, 1]: the class term is 0 (class 1 is
    the batch itself), so the term halves; [0, 0]: the class term equals the global one;
    [0, 1]: BN class term |3 - 5| + |2 - 4| = 4 -> 0.5 x 8 + 0.5 x 4 = 6. Without
    class_aware the term is the global one whatever the targets."""
    net = conv_bn_net()
    x = two_level_batch()
    global_conv = 10 * (4 + 4 + math.sqrt(34) + math.sqrt(18))
    m = StatMatcher({"net": net}, edc_matching(), {"net": class_stats()})
    conv, bn = hooked_terms(m, net, x, torch.tensor([1, 1]))
    assert conv == pytest.approx(0.5 * global_conv, rel=1e-6) and bn == pytest.approx(4.0)
    conv, bn = hooked_terms(m, net, x, torch.tensor([0, 0]))
    assert conv == pytest.approx(global_conv, rel=1e-6) and bn == pytest.approx(8.0)
    _, bn = hooked_terms(m, net, x, torch.tensor([0, 1]))
    assert bn == pytest.approx(6.0)
    m.remove()
    plain = StatMatcher({"net": net}, edc_matching(class_aware=False), {"net": class_stats()})
    assert hooked_terms(plain, net, x, torch.tensor([1, 1]))[1] == pytest.approx(8.0)
    plain.remove()


def test_matcher_refuses_statistics_without_classes():
    with pytest.raises(UserError, match="lack class/0/mean"):
        StatMatcher({"net": conv_bn_net()}, edc_matching(), {"net": reference_stats()})
    with pytest.raises(UserError, match="no precomputed statistics"):
        StatMatcher({"net": conv_bn_net()}, edc_matching(), {})


class TinySource:
    """Eight 8x8 one-channel images of two classes (positions 0-3 class 0, 4-7 class 1)."""

    def __init__(self):
        g = torch.Generator().manual_seed(5)
        self.pixels = torch.rand(8, 1, 8, 8, generator=g)
        self.labels = np.array([0] * 4 + [1] * 4)

    def load(self, indices) -> torch.Tensor:
        return self.pixels[torch.as_tensor(np.asarray(indices))]


def test_rded_init_is_the_slice_rded_image_quantised():
    class Cfg:  # the fields rded_init reads
        seed = 3

        class recover:
            logit_teacher = "obs"
            rded = RdedConfig(factor=1, candidates=2, crops=2)

        class data:
            resolution = 8

    torch.manual_seed(0)
    observer = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    source = TinySource()
    per_class = [np.arange(4), np.arange(4, 8)]
    mean, std = torch.tensor([0.5]).view(1, -1, 1, 1), torch.tensor([0.25]).view(1, -1, 1, 1)
    ctx = SliceContext(Cfg, {"obs": observer}, {}, source, per_class, ([0.5], [0.25]))
    x0, sources = rded_init(ctx, 1, [0, 1])
    obs = Observer(observer, 8, mean, std, torch.device("cpu"))
    for row, c in enumerate([0, 1]):
        image, record = rded_class_image(Cfg.recover.rded, obs, source, per_class[c], 3, 1, c)
        want = ((image * 255).round() / 255 - mean[0]) / std[0]
        torch.testing.assert_close(x0[row], want)
        assert sources[row] == record["sources"][0] and sources[row] in per_class[c]
    with pytest.raises(UserError, match="observer"):
        rded_init(SliceContext(Cfg, {}, {}, source, per_class, ([0.5], [0.25])), 1, [0])


def test_smooth_cosine_is_the_ssrs_cosine_without_its_tail():
    """EDC's `--ls-type cos --st 2`: 0.5 (1 + cos(pi e / (2 E))) for every epoch."""
    assert lr_factor("smooth_cosine", 0, 300, 2.0) == 1.0
    assert lr_factor("smooth_cosine", 150, 300, 2.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("smooth_cosine", 300, 300, 2.0) == pytest.approx(0.5)
    # ssrs (EDC's cos2) equals it up to 5E/6 and then drops to its linear tail
    assert lr_factor("ssrs", 100, 300, 2.0) == lr_factor("smooth_cosine", 100, 300, 2.0)
    assert lr_factor("ssrs", 280, 300, 2.0) == pytest.approx(0.75 * (1 - 280 / 300))
    assert lr_factor("smooth_cosine", 280, 300, 2.0) > 0.5
