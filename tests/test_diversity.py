"""Intra-class cosine diversity on constructed inputs, and penultimate features per family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prism_hpc.metrics.diversity import embed_classes, intra_class_cosine, penultimate_features
from prism_hpc.models.registry import create_model, freeze
from prism_hpc.models.teachers import Renormalize


def test_identical_images_give_one():
    torch.manual_seed(0)
    model = freeze(create_model("resnet18", 3, in_channels=1, resolution=16, width=0.125))
    a, b = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16, 16)
    images = torch.cat([a.repeat(4, 1, 1, 1), b.repeat(3, 1, 1, 1)])
    labels = [0, 0, 0, 0, 1, 1, 1]
    result = intra_class_cosine(penultimate_features(model, images, batch_size=3), labels)
    assert result["per_class"] == pytest.approx({0: 1.0, 1: 1.0}, abs=1e-6)
    assert result["mean"] == pytest.approx(1.0, abs=1e-6)
    assert result["std"] == pytest.approx(0.0, abs=1e-6)


def test_orthogonal_features_give_zero():
    result = intra_class_cosine(torch.eye(5) * torch.arange(1, 6).view(-1, 1), [3] * 5)
    assert result["per_class"] == {3: pytest.approx(0.0, abs=1e-12)}
    assert result["mean"] == pytest.approx(0.0, abs=1e-12)


def test_per_class_grouping_and_std_over_classes():
    same = np.array([[1.0, 2.0, 0.0]] * 3)  # class 7: identical directions -> 1
    ortho = np.eye(3) * 4.0  # class 2: orthogonal -> 0
    features = np.concatenate([ortho[:1], same, ortho[1:]])  # interleaved rows
    labels = np.array([2, 7, 7, 7, 2, 2])
    result = intra_class_cosine(features, labels)
    assert result["per_class"] == pytest.approx({2: 0.0, 7: 1.0})
    assert result["counts"] == {2: 3, 7: 3}
    assert result["mean"] == pytest.approx(0.5)
    assert result["std"] == pytest.approx(0.5)  # population std over the two classes


def test_hand_computed_three_vectors():
    # cos(a,b) = 1/sqrt2, cos(a,c) = 0, cos(b,c) = 1/sqrt2 (scale does not matter)
    features = [[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]]
    result = intra_class_cosine(features, [0, 0, 0])
    assert result["per_class"][0] == pytest.approx((2 / math.sqrt(2)) / 3)
    assert result["mean"] == pytest.approx(math.sqrt(2) / 3)
    # negative similarities count as they are: a pair pointing opposite gives -1
    assert intra_class_cosine([[1.0, 0.0], [-1.0, 0.0]], [4, 4])["mean"] == pytest.approx(-1.0)


def test_singleton_class_is_skipped_and_zero_vectors_are_safe():
    result = intra_class_cosine(
        [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0]], [0, 0, 1, 1, 2]
    )
    assert result["skipped"] == [2]
    assert result["per_class"] == pytest.approx({0: 1.0, 1: 0.0})


@pytest.mark.parametrize(
    "arch", ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5", "alexnet"]
)
def test_penultimate_features_is_the_classifier_input(arch):
    torch.manual_seed(0)
    width = 1.0 if arch == "alexnet" else 0.25  # AlexNet has no width knob
    model = freeze(create_model(arch, 10, in_channels=1, resolution=32, width=width))
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    x = torch.randn(5, 1, 32, 32)
    feats = penultimate_features(model, x, batch_size=2)
    assert feats.shape == (5, last.in_features)
    # the classifier applied to the features gives the model's logits
    torch.testing.assert_close(last(feats), model(x), rtol=1e-4, atol=1e-4)


def test_penultimate_features_resnet_is_pooled_output_and_wrapper_works():
    torch.manual_seed(0)
    model = freeze(create_model("resnet18", 10, in_channels=1, resolution=32, width=0.25))
    x = torch.randn(4, 1, 32, 32)
    body = nn.Sequential(*list(model.children())[:-1], nn.Flatten())
    torch.testing.assert_close(penultimate_features(model, x), body(x))
    wrapped = Renormalize(model, ([0.5], [0.25]), ([0.0], [1.0]))
    torch.testing.assert_close(penultimate_features(wrapped, x), body(x * 0.25 + 0.5))


def test_embed_classes_spreads_over_labels():
    assert embed_classes(4) == [0, 1, 2, 3]
    chosen = embed_classes(1000)
    assert len(chosen) == 10 and chosen[0] == 0 and chosen[-1] == 999


def test_penultimate_features_restores_each_module_mode():
    model = create_model("resnet18", 10, in_channels=1, resolution=16, width=0.125)
    model.train()
    model.layer1.eval()
    penultimate_features(model, torch.randn(2, 1, 16, 16))
    assert model.training and model.layer2.training and not model.layer1.training
