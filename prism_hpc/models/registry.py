"""Build torchvision and timm models by name, adapted to channels, classes and resolution.

Names are torchvision builder names (`resnet18`, `mobilenet_v2`, ...) or `timm:<name>`.
Images of 64 px or less get a small-input stem (first conv stride 1, 3x3; no stem max-pool),
the usual CIFAR-style adaptation, so 28-32 px inputs keep enough spatial resolution.
`width` < 1 thins the families that have a width knob, which makes CPU teachers cheap.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

from prism_hpc.errors import UserError
from prism_hpc.models.small import SMALL_ARCHS

SMALL_INPUT_MAX = 64


def available_archs() -> list[str]:
    """torchvision's classification builders and the registry's own (models/small.py)."""
    return sorted(torchvision.models.list_models(module=torchvision.models) + list(SMALL_ARCHS))


def _slim_resnet(arch: str, num_classes: int, width: float) -> nn.Module:
    """torchvision ResNet with every stage's planes scaled by `width`."""
    block, layers = {
        "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
        "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
        "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
        "resnet101": (tv_resnet.Bottleneck, [3, 4, 23, 3]),
    }[arch]

    def scaled(planes: int) -> int:
        return max(8, round(planes * width))

    class SlimResNet(tv_resnet.ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # first stage: the stem's width is scaled too
                self.inplanes = scaled(64)
            return super()._make_layer(block, scaled(planes), blocks, stride, dilate)

    model = SlimResNet(block, layers, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, scaled(64), 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(scaled(64))
    model.fc = nn.Linear(scaled(512) * block.expansion, num_classes)
    return model


def _slim_efficientnet(arch: str, num_classes: int, width: float) -> nn.Module:
    from torchvision.models import efficientnet as tv_eff

    settings, last_channel = tv_eff._efficientnet_conf(arch, width_mult=width, depth_mult=width)
    return tv_eff.EfficientNet(settings, 0.2, last_channel=last_channel, num_classes=num_classes)


def _slim_shufflenet(num_classes: int, width: float) -> nn.Module:
    from torchvision.models.shufflenetv2 import ShuffleNetV2

    stages = [24] + [max(8, round(c * width / 2) * 2) for c in (48, 96, 192)] + [1024]
    return ShuffleNetV2([4, 8, 4], stages, num_classes=num_classes)


def _build_torchvision(arch: str, num_classes: int, width: float) -> nn.Module:
    if width != 1.0:
        if arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
            return _slim_resnet(arch, num_classes, width)
        if arch == "mobilenet_v2":
            return torchvision.models.mobilenet_v2(num_classes=num_classes, width_mult=width)
        if arch.startswith("efficientnet_b"):
            return _slim_efficientnet(arch, num_classes, width)
        if arch.startswith("shufflenet_v2"):
            return _slim_shufflenet(num_classes, width)
        raise UserError(f"model '{arch}': width={width} is not supported for this family")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            return parent, leaf, module
    raise UserError(f"model {type(model).__name__} has no Conv2d to adapt")


def _adapt_stem(model: nn.Module, in_channels: int, small_input: bool) -> None:
    parent, leaf, conv = _first_conv(model)
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    if small_input:
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
    if in_channels != conv.in_channels or small_input:
        new = nn.Conv2d(
            in_channels, conv.out_channels, kernel, stride, padding, bias=conv.bias is not None
        )
        setattr(parent, leaf, new)
    if small_input:
        for attr in ("maxpool",):  # resnet / shufflenet stem pooling
            if isinstance(getattr(model, attr, None), nn.MaxPool2d):
                setattr(model, attr, nn.Identity())


def create_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    resolution: int = 224,
    width: float = 1.0,
) -> nn.Module:
    """Build an untrained model; weights come from `load_weights`."""
    small = resolution <= SMALL_INPUT_MAX
    if arch.startswith("timm:"):
        import timm

        name = arch.removeprefix("timm:")
        if not timm.is_model(name):
            raise UserError(f"model '{arch}': unknown timm model")
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    elif arch in SMALL_ARCHS:  # built for the data's size and channels: no stem to adapt
        return SMALL_ARCHS[arch](num_classes, in_channels, resolution, width)
    else:
        if arch not in available_archs():
            raise UserError(
                f"model '{arch}': unknown architecture (expected a torchvision name such as "
                "resnet18, mobilenet_v2, efficientnet_b0, shufflenet_v2_x0_5, alexnet, "
                "or timm:<name>)"
            )
        model = _build_torchvision(arch, num_classes, width)
    _adapt_stem(model, in_channels, small)
    if arch == "alexnet" and small:
        # AlexNet's three 3x3/2 max-pools need >= 15 px after the stem; keep its 6x6 head.
        model.features[2] = nn.Identity()
    return model


def _unwrap_checkpoint(obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_checkpoint(obj[key])
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {k.removeprefix("module."): v for k, v in tensors.items()}
    raise UserError("checkpoint holds no state_dict")  # caller adds the path


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_PROTO = 0x80  # the legacy format: a pickle of protocol 2 or later


def _read_checkpoint(path: Path) -> object:
    """`torch.load(weights_only=True)`, its failures said in terms of the file: torch's own
    messages suggest the unsafe `weights_only=False`, or name internals (`pop from empty
    list`) that do not tell a user what is wrong with the file."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise UserError(f"{path} is not a torch checkpoint (empty)")
    if not head.startswith(ZIP_MAGIC) and head[0] != PICKLE_PROTO:
        raise UserError(f"{path} is not a torch checkpoint (not a zip/pickle file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f" (it needs {found.group(1)})" if found else ""
        raise UserError(
            f"{path} is a pickled object{what} that torch.load(weights_only=True) refuses; "
            "save a state_dict with torch.save(model.state_dict(), ...)"
        ) from None
    except Exception as err:  # noqa: BLE001 - truncated or corrupt file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a loadable torch checkpoint ({first})") from None


def load_weights(model: nn.Module, path: str | Path, key_map: str = "by_name") -> nn.Module:
    """Load a local checkpoint with `weights_only=True` (no pickled code from shared disks).

    `by_position` pairs tensors in file order with the model's state_dict order; it is for
    re-packaged checkpoints whose key names differ but whose layout matches.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    state = _unwrap_checkpoint(_read_checkpoint(path))
    if key_map == "by_position":
        target = model.state_dict()
        if len(target) != len(state):
            raise UserError(
                f"{path}: {len(state)} tensors, model {type(model).__name__} has {len(target)}"
            )
        state = {k: v for k, v in zip(target, state.values(), strict=True)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch
        detail = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(f"{path}: does not fit {type(model).__name__}: {detail}") from None
    if missing or unexpected:
        raise UserError(
            f"{path}: does not fit {type(model).__name__}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BN uses running statistics) and no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """BatchNorm2d layers in forward-definition order (the first one gets the multiplier)."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module, int]]:
    """(name, module, channel dim of its input) of every LayerNorm / GroupNorm in module
    order: GroupNorm and channels-first LayerNorms (timm's and torchvision's `LayerNorm2d`,
    whose inputs are (B, C, H, W)) have their channels in dim 1, every other LayerNorm in
    the last dim ((B, N, C), (B, H, W, C), (B, C))."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm):
            out.append((name, m, 1))
        elif isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1:
                raise UserError(
                    f"{name}: LayerNorm over {tuple(m.normalized_shape)}: norm_stats matches "
                    "LayerNorms over one (channel) dimension only"
                )
            out.append((name, m, 1 if "2d" in type(m).__name__.lower() else -1))
    return out


def layer_prior(model: nn.Module) -> str:
    """What a model's layers allow (config/priors.py): bn, norm_stats or none."""
    if bn_layers(model):
        return "bn"
    return "norm_stats" if norm_layers(model) else "none"
