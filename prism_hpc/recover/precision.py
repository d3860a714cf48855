"""How the teachers run: memory layout, `recover.precision` (autocast, fp16 loss scaling) and
`recover.compile`. Every choice here changes speed or rounding only, never the objective."""

from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
from torch import nn

from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.recover.objective import fp32

HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_teachers(
    teachers: dict[str, nn.Module], cfg: OptimizeRecover
) -> dict[str, nn.Module]:
    """Per-task teacher set-up for speed (benchmarks/recover_speed.md): weights in
    channels_last (converted in place; faster convolutions with oneDNN on CPU and cuDNN on
    GPU, no effect on values beyond rounding) and, with `cfg.compile`, one `torch.compile`
    wrapper per model, cached so that every chunk of a task reuses the compiled code. The BN
    hooks stay on the original modules; dynamo traces them into the compiled graph."""
    out = {}
    for name, model in teachers.items():
        model.to(memory_format=torch.channels_last)  # idempotent, no copy when already so
        if cfg.precision in HALF:
            grouped_convs_in_fp32(model)
        if cfg.compile:
            compiled = _COMPILED.get(model)
            if compiled is None:
                compiled = _COMPILED[model] = torch.compile(model)
            model = compiled
        out[name] = model
    return out


def _fp32_forward(forward):
    def run(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return forward(fp32(x))
        return forward(x)

    return run


def grouped_convs_in_fp32(model: nn.Module) -> None:
    """Under CPU autocast, grouped (depthwise) convolutions run in fp32: oneDNN's bf16
    kernels for them are slower than its fp32 ones on this hardware (mobilenet_v2 /
    efficientnet_b0 / shufflenet got 1.2-1.7x slower in bf16, recover_speed.md), while the
    dense convolutions gain ~2x. No effect on GPU or outside autocast; installed once."""
    for module in model.modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.groups > 1
            and not getattr(module, "_prism_fp32_island", False)
        ):
            module.forward = _fp32_forward(module.forward)
            module._prism_fp32_island = True


def autocast(cfg: OptimizeRecover, device: torch.device):
    """Autocast of the teacher forwards (and so their backward) for `recover.precision` bf16 /
    fp16; the BN hooks and the CE are fp32 islands (objective.fp32_island), the images and
    Adam stay fp32. fp32: no context at all (bit-identical to a run without the option)."""
    if cfg.precision in HALF and device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, dtype=HALF[cfg.precision])
    return nullcontext()


def loss_scaler(cfg: OptimizeRecover, device: torch.device):
    """fp16: dynamic loss scaling (torch.amp.GradScaler: the scale halves on an inf/nan
    gradient, whose step is skipped, and doubles after 2000 clean steps); else None. Its
    inf check reads one flag back to the host per step: the one sync fp16 costs (bf16 has
    fp32's range and needs no scaling)."""
    if cfg.precision == "fp16":
        return torch.amp.GradScaler(device.type)
    return None


def scaled(loss: torch.Tensor, scaler) -> torch.Tensor:
    """The loss as its backward sees it (times the fp16 loss scale, if any)."""
    return scaler.scale(loss) if scaler is not None else loss


def device_layout(xa: torch.Tensor) -> torch.Tensor:
    """On an accelerator the augmented batch goes to the teachers in channels_last (cuDNN's
    fast layout, matching the weights); on CPU it is left as it is (oneDNN converts, and the
    default path stays bit-identical)."""
    if xa.device.type != "cpu":
        return xa.contiguous(memory_format=torch.channels_last)
    return xa
