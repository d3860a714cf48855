"""Model registry: adaptation, safe weight loading, freezing, BN enumeration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prism_hpc.errors import UserError
from prism_hpc.models.registry import bn_layers, create_model, freeze, load_weights


@pytest.mark.parametrize(
    "arch,width",
    [("resnet18", 0.25), ("mobilenet_v2", 0.5), ("shufflenet_v2_x0_5", 1.0),
     ("efficientnet_b0", 0.5), ("alexnet", 1.0), ("timm:resnet10t", 1.0)],
)  # fmt: skip
def test_small_input_models_keep_resolution(arch, width):
    model = create_model(arch, num_classes=7, in_channels=1, resolution=32, width=width).eval()
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and first.stride == (1, 1) and first.kernel_size == (3, 3)


def test_large_input_keeps_stem():
    model = create_model("resnet18", 1000, 3, 224)
    assert model.conv1.stride == (2, 2) and isinstance(model.maxpool, nn.MaxPool2d)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's count


def test_width_thins_resnet():
    slim = create_model("resnet18", 10, 1, 32, width=0.25)
    assert slim.conv1.out_channels == 16 and slim.fc.in_features == 128


def test_unknown_arch_is_user_error():
    with pytest.raises(UserError, match="model 'resnet1800': unknown architecture"):
        create_model("resnet1800", 10)


def test_weights_roundtrip_by_name_and_position(tmp_path):
    a = create_model("resnet18", 10, 1, 32, width=0.25)
    torch.save({"state_dict": {"module." + k: v for k, v in a.state_dict().items()}},
               tmp_path / "ckpt.pth")  # fmt: skip
    b = load_weights(create_model("resnet18", 10, 1, 32, width=0.25), tmp_path / "ckpt.pth")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    renamed = {f"t{i}": v for i, v in enumerate(a.state_dict().values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    c = create_model("resnet18", 10, 1, 32, width=0.25)
    load_weights(c, tmp_path / "renamed.pth", key_map="by_position")
    assert torch.equal(c.fc.weight, a.fc.weight)
    with pytest.raises(UserError, match="does not fit"):
        load_weights(create_model("resnet18", 10, 1, 32, width=0.5), tmp_path / "ckpt.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    torch.save({"x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match=r"evil.pt is a pickled object \(it needs print\) that "
                       r"torch.load\(weights_only=True\) refuses; save a state_dict"):
        load_weights(create_model("resnet18", 10, 1, 32, width=0.25), tmp_path / "evil.pt")


def test_a_corrupt_checkpoint_is_named_not_explained_by_torch(tmp_path):
    """A zip that is no checkpoint (cut short, a wrong download) passes the magic-byte check;
    torch's message is then shown, after saying which file it is."""
    bad = tmp_path / "cut.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    with pytest.raises(UserError, match=r"cut.pt is not a loadable torch checkpoint \("):
        load_weights(create_model("resnet18", 10, 1, 32, width=0.25), bad)


def test_freeze_and_bn_order():
    model = freeze(create_model("resnet18", 10, 1, 32, width=0.25))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    layers = bn_layers(model)
    assert layers[0] is model.bn1 and len(layers) == 20
