"""`recover.precision`: bf16/fp16 autocast of the teachers with fp32 islands, fp16 loss scaling.

Stated tolerances (CPU, bf16 autocast, the four demo architectures at 16 px, 8 images):
objective within 1e-3 relative of fp32 (measured ~2e-5), BN sum within 1e-4 (measured
<= 1.5e-5), CE within 2e-3 (measured ~2e-4); the input gradient's cosine to the fp32 gradient
> 0.9 and relative L2 error < 0.5 (measured 0.96-0.97 and 0.26-0.29: the teachers' backward
runs in bf16, which is what bf16 gives up). The BN statistics island is pinned on its own: each
BN layer's term equals the float64 term of the same (bf16) layer input to 1e-5 (measured
~1e-7; computed in bf16 arithmetic instead it is off by ~2e-4).
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from prism_hpc.config.schema import AugmentConfig, OptimizeRecover
from prism_hpc.models.registry import create_model, freeze
from prism_hpc.recover import augment, loop
from prism_hpc.recover.loop import Unit, pixel_bounds, recover_units
from prism_hpc.recover.loss import Part, recovery_loss
from prism_hpc.recover.objective import BNStatistics, bn_hooks
from prism_hpc.recover.precision import autocast, loss_scaler
from prism_hpc.recover.sampler import Roles
from prism_hpc.seeding import generator

SIZE = 16
SPECS = {
    "r": ("resnet18", 0.25), "m": ("mobilenet_v2", 0.25),
    "s": ("shufflenet_v2_x0_5", 0.5), "e": ("efficientnet_b0", 0.25),
}  # fmt: skip


def _warm(arch: str, width: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, 10, in_channels=3, resolution=SIZE, width=width)
    model.train()
    with torch.no_grad():  # running statistics away from the 0/1 defaults
        for _ in range(3):
            model(torch.randn(16, 3, SIZE, SIZE) * 0.7 + 0.2)
    return freeze(model).to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def teachers() -> dict:
    return {n: _warm(a, w) for n, (a, w) in SPECS.items()}


def _cfg(**kw) -> OptimizeRecover:
    base = {
        "logit_teacher": "r", "bn_always": ["r"], "bn_pool": ["m", "s", "e"], "r_bn": 0.05,
        "iterations": 10, "iteration_step": 0, "lr": 0.1, "log_every": 1,
        "augment": AugmentConfig(crop_scale=(0.5, 1.0), jitter=2),
    }  # fmt: skip
    base.update(kw)
    return OptimizeRecover(**base)


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_objective_and_gradient_within_tolerance_of_fp32(teachers, seed):
    roles = Roles("r", ("r", "m", "s", "e"))
    x0 = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(8)
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = _cfg(precision=precision)
        d = augment.draw(cfg.augment, SIZE, 8, generator(seed, "aug"))
        x = x0.clone().requires_grad_(True)
        with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
            total, ce, bn = recovery_loss(Part(x, y, roles, d), teachers, hooks, cfg, True)
        assert total.dtype == ce.dtype == bn.dtype == x.grad.dtype == torch.float32
        out[precision] = (total.item(), ce.item(), bn.item(), x.grad)
    (t32, c32, b32, g32), (t16, c16, b16, g16) = out["fp32"], out["bf16"]
    assert t16 == pytest.approx(t32, rel=1e-3)
    assert b16 == pytest.approx(b32, rel=1e-4)
    assert c16 == pytest.approx(c32, rel=2e-3)
    assert F.cosine_similarity(g16.flatten(), g32.flatten(), 0) > 0.9
    assert ((g16 - g32).norm() / g32.norm()).item() < 0.5
    assert t16 != t32  # bf16 did run in bf16


@pytest.mark.parametrize("groups", [None, [4, 4]], ids=["one-chunk", "packed"])
def test_bn_statistics_are_an_fp32_island(teachers, groups):
    """Under bf16 autocast the BN layers' inputs are bf16; each layer's term must still be the
    fp32 (here: float64-checked) term of that input, per chunk when packed."""
    model = teachers["m"]
    stats = BNStatistics(model, 10.0)
    inputs: list[tuple[torch.nn.Module, torch.Tensor]] = []
    handles = [
        layer.register_forward_hook(lambda mod, i, o: inputs.append((mod, i[0].detach())))
        for layer in stats.layers
    ]
    try:
        stats.active, stats.groups = True, groups
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)))
        terms = stats.terms
    finally:
        stats.remove()
        for h in handles:
            h.remove()
    assert len(terms) == len(inputs) == len(stats.layers) > 40
    assert inputs[0][1].dtype == torch.bfloat16  # the island has something to do
    for i, ((layer, xin), term) in enumerate(zip(inputs, terms, strict=True)):
        assert term.dtype == torch.float32
        ref = []
        for part in torch.split(xin.double(), groups or [xin.shape[0]]):
            var, mean = torch.var_mean(part, dim=(0, 2, 3), unbiased=False)
            ref.append(
                torch.linalg.vector_norm(layer.running_var.double() - var)
                + torch.linalg.vector_norm(layer.running_mean.double() - mean)
            )
        expected = torch.stack(ref) * (10.0 if i == 0 else 1.0)
        torch.testing.assert_close(term.double().view(-1), expected, rtol=1e-5, atol=0)


def test_bf16_images_and_adam_stay_fp32(teachers):
    cfg = _cfg(precision="bf16", iterations=3)
    x0 = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.3
    bounds = pixel_bounds([0.5] * 3, [0.5] * 3, "cpu")
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        unit = Unit(x0, torch.arange(4), 3, generator(0, "a"), generator(0, "b"),
                    Roles("r", ("r", "m")))  # fmt: skip
        ((x, _, hist),) = recover_units([unit], teachers, hooks, cfg, bounds)
    assert x.dtype == torch.float32 and not torch.equal(x, x0)
    assert [e["step"] for e in hist] == [1, 2, 3]


def test_fp16_dynamic_loss_scaling_skips_overflow_and_lowers_the_scale(teachers, monkeypatch):
    """fp16: an overflowing scaled gradient skips the Adam step (images unchanged) and halves
    the scale; with the default scale the steps run and the losses stay finite."""
    cfg = _cfg(precision="fp16")
    x0 = (torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.3).clamp(
        -0.9, 0.9
    )  # inside the pixel bounds: the clamp after the step changes nothing
    bounds = pixel_bounds([0.5] * 3, [0.5] * 3, "cpu")
    made = []

    def huge(cfg, device):
        made.append(torch.amp.GradScaler(device.type, init_scale=2.0**100))
        return made[-1]

    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        args = (teachers, hooks, cfg, bounds)
        roles = Roles("r", ("r", "m"))

        def unit(steps: int) -> list[Unit]:
            return [Unit(x0, torch.arange(4), steps, generator(0, "a"), generator(0, "b"), roles)]

        with monkeypatch.context() as mp:
            mp.setattr(loop, "loss_scaler", huge)
            ((x, _, _),) = recover_units(unit(1), *args)
        assert torch.equal(x, x0)  # the step was skipped
        assert made[0].get_scale() == 2.0**99
        ((x, _, hist),) = recover_units(unit(3), *args)
    assert not torch.equal(x, x0)
    assert all(torch.isfinite(torch.tensor([e["ce"], e["bn"]])).all() for e in hist)


def test_precision_config_has_no_amp_alias():
    assert OptimizeRecover().precision == "auto" and OptimizeRecover().pack == 1  # issue 24
    assert OptimizeRecover(precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="amp"):  # 0.x keeps no old spellings
        OptimizeRecover(amp="bf16")
    with pytest.raises(ValueError):
        OptimizeRecover(pack=0)


def test_fp32_path_has_no_autocast():
    assert isinstance(autocast(_cfg(), torch.device("cpu")), nullcontext)
    assert loss_scaler(_cfg(precision="bf16"), torch.device("cpu")) is None
