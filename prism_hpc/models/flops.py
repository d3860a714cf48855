"""FLOPs and activation bytes of an architecture at a resolution, counted once and cached.

Why here: the cost model (`prism_hpc.cost`) is a peer of `models` and must not build models;
the stages ask this module for the numbers and hand them to `cost`. Counting happens on the
meta device (no memory, no arithmetic) with `torch.utils.flop_counter.FlopCounterMode`, so it
costs the model's construction only (~0.1-1 s; ResNet-101 is the slowest here), and the results
are cached in `$PRISM_HPC_CACHE_DIR` (else `$XDG_CACHE_HOME/prism-hpc`, else
`~/.cache/prism-hpc`) as `flops.json`, keyed by (arch, resolution, channels, classes, width).

Per image, for the frozen eval-mode model (the recovery's and relabel's view):
- `fwd_flops`: one forward; `bwd_input_flops`: the backward to the input without weight
  gradients (what recovery pays); training adds the weight gradients, priced as a second
  backward of the same size (the counter's grouped-conv weight-gradient formula over-counts
  depthwise convolutions by ~20x, so it is not used);
- `act_bytes`: fp32 bytes autograd saves for the backward (difference of batch 2 and batch 1,
  so the saved weights cancel out); `max_out_bytes`: the largest single layer output.

Torch is imported inside the functions: `plan` imports this module without paying for torch
until a count is actually missing from the cache.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prism_hpc.errors import UserError
from prism_hpc.store.atomic import atomic_write_text

CACHE_VERSION = 1


@dataclass(frozen=True)
class ArchCost:
    fwd_flops: float
    bwd_input_flops: float
    act_bytes: float
    max_out_bytes: float
    params: int

    @property
    def train_flops(self) -> float:
        """Forward + backward to the inputs + weight gradients (~ one more backward)."""
        return self.fwd_flops + 2 * self.bwd_input_flops

    @property
    def recover_flops(self) -> float:
        return self.fwd_flops + self.bwd_input_flops


def cache_path() -> Path:
    base = os.environ.get("PRISM_HPC_CACHE_DIR")
    if base:
        return Path(base) / "flops.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "prism-hpc" / "flops.json"


def arch_key(arch: str, resolution: int, channels: int, num_classes: int, width: float) -> str:
    return f"{arch}|{resolution}|{channels}|{num_classes}|{width:g}"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    return data.get("entries") or {}


def _count(arch: str, resolution: int, channels: int, num_classes: int, width: float) -> ArchCost:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from prism_hpc.models.registry import create_model, freeze

    with torch.device("meta"):
        model = freeze(create_model(arch, num_classes, channels, resolution, width))
    largest = [0]

    def on_out(_m, _i, out) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(on_out) for m in leaves]

    def saved(n: int, flops: bool) -> tuple[float, float, float]:
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        x = torch.zeros(n, channels, resolution, resolution, device="meta", requires_grad=True)
        with (
            FlopCounterMode(display=False) as fwd_counter,
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            y = model(x)
        if not flops:
            return total[0], 0.0, 0.0
        with FlopCounterMode(display=False) as bwd_counter:
            y.float().sum().backward()
        return total[0], fwd_counter.get_total_flops(), bwd_counter.get_total_flops()

    one, fwd, bwd = saved(1, flops=True)
    per_image_out = largest[0]
    for h in handles:
        h.remove()
    two, _, _ = saved(2, flops=False)
    return ArchCost(
        fwd_flops=float(fwd),
        bwd_input_flops=float(bwd),
        act_bytes=float(max(0, two - one)),
        max_out_bytes=float(per_image_out),
        params=sum(p.numel() for p in model.parameters()),
    )


def arch_cost(
    arch: str, resolution: int, channels: int, num_classes: int, width: float = 1.0,
    cache: Path | None = None,
) -> ArchCost:  # fmt: skip
    """Per-image costs of `arch` (see the module doc), from the cache or counted now."""
    path = cache or cache_path()
    key = arch_key(arch, resolution, channels, num_classes, width)
    entries = _read_cache(path)
    if key in entries:
        return ArchCost(**entries[key])
    try:
        cost = _count(arch, resolution, channels, num_classes, width)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - an architecture the meta device cannot run
        raise UserError(f"cannot count the FLOPs of {arch} at {resolution} px: {err}") from None
    entries = _read_cache(path)  # another process may have added entries meanwhile
    entries[key] = asdict(cost)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            path, json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1) + "\n"
        )
    except OSError:
        pass  # a read-only home only costs a recount next time
    return cost


@dataclass(frozen=True)
class ModelSpec:
    """An architecture as built for a run: input resolution and channels, classes, width."""

    arch: str
    resolution: int
    channels: int
    num_classes: int
    width: float = 1.0


def measure_step_flops(
    model: ModelSpec, batch: int, kind: str, steps: int = 5, warmup: int = 2,
    device: str = "cpu", threads: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Median seconds of one step of `model` on random data, and the FLOP/s that implies with
    this module's FLOP count: `train` = forward, backward, SGD update; `infer` = no-grad
    forward; `recover` = frozen eval-mode forward and backward to the images (the recovery
    step without its BN-statistics hooks and Adam update). What `bench calibrate` records."""
    import torch

    from prism_hpc.models.registry import create_model

    if kind not in ("train", "infer", "recover"):
        raise UserError(f"kind {kind!r}: expected train, infer or recover")
    arch, resolution, channels, num_classes = (
        model.arch, model.resolution, model.channels, model.num_classes
    )
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device)
        torch.manual_seed(0)
        net = create_model(arch, num_classes, channels, resolution, model.width).to(dev)
        x = torch.randn(batch, channels, resolution, resolution, device=dev)
        y = torch.arange(batch, device=dev) % num_classes
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        if kind == "recover":
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            x.requires_grad_(True)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            if kind == "train":
                net.train()
                loss = torch.nn.functional.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            elif kind == "recover":
                x.grad = None
                torch.nn.functional.cross_entropy(net(x), y).backward()
            else:
                net.eval()
                with torch.no_grad():
                    net(x)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    cost = arch_cost(arch, resolution, channels, num_classes, model.width)
    per_image = {"train": cost.train_flops, "recover": cost.recover_flops}.get(kind, cost.fwd_flops)
    seconds, fastest = statistics.median(times), min(times)
    return {"seconds": seconds, "fastest_s": fastest, "flops": per_image * batch,
            "flop_per_s": per_image * batch / seconds,
            "flop_per_s_fastest": per_image * batch / fastest}  # fmt: skip
