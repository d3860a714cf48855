"""The measurement behind `students.channels_last: auto`: one student training step (forward,
backward, AdamW update) in NCHW and in channels_last on this device.

Why time it rather than assume: channels_last is cuDNN's fast layout, while on a CPU oneDNN
gains or loses by network and instruction set. Steps alternate between the two layouts and
the minimum per layout counts, so a burst of load from a neighbour hits both alike
(`probe._rounds`). `bench recover --calibrate` records the result per device.
"""

from __future__ import annotations

import time
from typing import Any

from prism_hpc.hardware.probe import _first_calls, _rounds
from prism_hpc.models.flops import ModelSpec


def _stepper(spec: ModelSpec, batch: int, device: Any, channels_last: bool):
    import torch

    from prism_hpc.models.registry import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_model(spec.arch, spec.num_classes, spec.channels, spec.resolution,
                           spec.width).to(device).train()  # fmt: skip
        x = torch.randn(batch, spec.channels, spec.resolution, spec.resolution, device=device)
    y = torch.arange(batch, device=device) % spec.num_classes
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step() -> float:
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    return step


def time_student_layouts(
    spec: ModelSpec, batch: int, device: str = "cpu", rounds: int = 5, budget_s: float = 5.0
) -> dict[str, float]:
    """{"false": s, "true": s}: the fastest training step of `spec` in NCHW and in
    channels_last (a layout the device cannot run is left out)."""
    import torch

    dev = torch.device(device)
    steps = {str(cl).lower(): _stepper(spec, batch, dev, cl) for cl in (False, True)}
    kept, _ = _first_calls(steps)
    return _rounds({k: steps[k] for k in kept}, rounds, budget_s) if kept else {}
