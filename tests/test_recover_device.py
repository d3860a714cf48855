"""The accelerator path of the recovery loop, checked without an accelerator on `meta` tensors.

`meta` tensors have shapes and dtypes but no data: any op that mixes in a CPU tensor fails with
a device mismatch, and any read of a value (`.item()`, `float()`, `.tolist()`, a Python `if`
on a tensor) fails outright. The loop, the packed loop, the augmentation, the BN hooks (their
non-CPU `var_mean` branch and the channels_last input layout) and Adam must therefore run
there end to end, with exactly the host reads of the log points going through `loop._host`.
"""

from __future__ import annotations

import pytest
import torch

from prism_hpc.config.schema import AugmentConfig, OptimizeRecover
from prism_hpc.models.registry import create_model, freeze
from prism_hpc.recover import loop
from prism_hpc.recover.loop import Unit, pixel_bounds, recover_units
from prism_hpc.recover.objective import bn_hooks
from prism_hpc.seeding import generator

META = torch.device("meta")


@pytest.fixture(scope="module")
def teachers() -> dict:
    specs = {"r": "resnet18", "m": "mobilenet_v2", "s": "shufflenet_v2_x0_5"}
    return {
        n: freeze(create_model(a, 10, in_channels=3, resolution=16, width=0.25)).to(META)
        for n, a in specs.items()
    }


def _cfg(**kw) -> OptimizeRecover:
    aug = AugmentConfig(crop_scale=(0.5, 1.0), jitter=2, per_sample=True)
    return OptimizeRecover(
        logit_teacher="r", bn_always=["r"], bn_pool=["m", "s"], iterations=5, iteration_step=0,
        log_every=100, augment=aug, scope="intra", l2_scale=1e-3, **kw,
    )  # fmt: skip


@pytest.fixture
def host_reads(monkeypatch) -> list:
    reads: list = []

    def counted(value: torch.Tensor) -> float:
        reads.append(value.device.type)
        return 0.0

    monkeypatch.setattr(loop, "_host", counted)
    return reads


@pytest.mark.parametrize("memory", ["joint", "sequential"])
def test_loop_runs_on_meta_with_reads_only_at_log_points(teachers, host_reads, memory):
    cfg = _cfg(memory=memory)
    bounds = pixel_bounds([0.5] * 3, [0.5] * 3, META)
    x0 = torch.empty(4, 3, 16, 16, device=META)
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        unit = Unit(x0, torch.arange(4, device=META), 5, generator(0, "a"), generator(0, "b"), None)
        ((x, _, hist),) = recover_units([unit], teachers, hooks, cfg, bounds)
    assert x.device == META and x.shape == x0.shape
    assert [e["step"] for e in hist] == [1, 5]  # log_every 100: first and last step only
    assert host_reads == ["meta"] * 4  # (ce, bn) at each of the two log points, nothing else


def test_packed_loop_runs_on_meta(teachers, host_reads):
    cfg = _cfg(pack=2)
    bounds = pixel_bounds([0.5] * 3, [0.5] * 3, META)
    units = [
        Unit(
            torch.empty(n, 3, 16, 16, device=META),
            torch.arange(n, device=META),
            t,
            generator(0, "a", j),
            generator(0, "b", j),
            None,
        )
        for j, (n, t) in enumerate([(4, 5), (4, 4)])  # equal chunks: the one-pass var_mean branch
    ]
    with bn_hooks(teachers, cfg.first_bn_multiplier) as hooks:
        out = recover_units(units, teachers, hooks, cfg, bounds)
    assert [x.shape[0] for x, _, _ in out] == [4, 4]
    assert [[e["step"] for e in h] for _, _, h in out] == [[1, 5], [1, 4]]
    assert host_reads == ["meta"] * 8
