"""FLOP counting of the architectures (prism_hpc.models.flops): against torchvision's published
numbers, the cache, and the calibration helper."""

from __future__ import annotations

import json

import pytest

from prism_hpc.errors import UserError
from prism_hpc.models import flops
from prism_hpc.models.flops import ModelSpec, arch_cost, arch_key, measure_step_flops

# torchvision's model docs list "GFLOPS" per model at 224 px, 1000 classes; they count
# multiply-accumulates, the counter counts 2 FLOPs per MAC.
TORCHVISION_GMACS = {
    "resnet18": 1.81,
    "resnet50": 4.09,
    "mobilenet_v2": 0.30,
    "efficientnet_b0": 0.39,
    "alexnet": 0.71,
    "shufflenet_v2_x0_5": 0.04,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PRISM_HPC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "flops"))


@pytest.mark.parametrize("arch", sorted(TORCHVISION_GMACS))
def test_forward_flops_match_torchvision_docs(arch):
    c = arch_cost(arch, 224, 3, 1000)
    assert c.fwd_flops / 2e9 == pytest.approx(TORCHVISION_GMACS[arch], rel=0.05)
    # backward to the input of a frozen model costs about one forward (no weight gradients)
    assert 0.9 * c.fwd_flops <= c.bwd_input_flops <= 1.1 * c.fwd_flops
    assert c.train_flops == c.fwd_flops + 2 * c.bwd_input_flops
    assert c.act_bytes > 0 and c.max_out_bytes > 0


def test_resnet18_activations_and_params():
    c = arch_cost("resnet18", 224, 3, 1000)
    assert c.params == 11_689_512  # torchvision's ResNet-18
    # saved activations per image: tens of MB at 224 px (batch 100: a few GB, paper Table 2)
    assert 20e6 < c.act_bytes < 60e6
    # the largest layer output: the stem conv's 64 x 112 x 112 fp32
    assert c.max_out_bytes == 64 * 112 * 112 * 4


def test_small_inputs_and_widths_are_counted_as_built():
    full = arch_cost("resnet18", 32, 1, 10)
    thin = arch_cost("resnet18", 32, 1, 10, width=0.5)
    assert thin.fwd_flops < full.fwd_flops / 3  # convs scale with width squared
    assert thin.params < full.params / 3


def test_cache_is_read_back_without_counting(monkeypatch):
    first = arch_cost("shufflenet_v2_x0_5", 64, 3, 10)
    monkeypatch.setattr(flops, "_count", lambda *a: pytest.fail("counted twice"))
    assert arch_cost("shufflenet_v2_x0_5", 64, 3, 10) == first
    data = json.loads(flops.cache_path().read_text())
    assert arch_key("shufflenet_v2_x0_5", 64, 3, 10, 1.0) in data["entries"]


def test_a_corrupt_cache_is_recounted():
    path = flops.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert arch_cost("alexnet", 64, 3, 10).fwd_flops > 0
    assert json.loads(path.read_text())["version"] == flops.CACHE_VERSION


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture"):
        arch_cost("resnet9000", 32, 3, 10)


@pytest.mark.parametrize("kind", ["train", "infer", "recover"])
def test_measure_step_flops_reports_the_counted_work(kind):
    m = measure_step_flops(ModelSpec("resnet18", 16, 1, 10, 0.25), 4, kind, steps=1, warmup=0)
    c = arch_cost("resnet18", 16, 1, 10, 0.25)
    per = {"train": c.train_flops, "infer": c.fwd_flops, "recover": c.recover_flops}[kind]
    assert m["flops"] == 4 * per
    assert m["flop_per_s"] == pytest.approx(m["flops"] / m["seconds"])
