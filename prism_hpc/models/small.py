"""The registry's own small LayerNorm networks: CPU-cheap teachers without BatchNorm.

`vit_mini` (a timm VisionTransformer) and `convnext_mini` (a timm ConvNeXt) give the
Fashion-MNIST demo statistic teachers whose prior is `norm_stats` (recover/norm_prior.py),
next to the thinned torchvision CNNs. Both are built for the data's resolution and channels
directly (patch size, image size, input channels), so the registry's small-input stem
adaptation, which would break a ViT's fixed token grid, is not applied to them. `width`
scales their channels like the CNNs' width knob.
"""

from __future__ import annotations

from torch import nn

from prism_hpc.errors import UserError


def _channels(base: int, width: float, multiple: int) -> int:
    return max(multiple, round(base * width / multiple) * multiple)


def _patch(resolution: int, small: int, large: int) -> int:
    """Small patches at Fashion-MNIST sizes (28-32 px: 7x7-8x8 tokens), ViT's at ImageNet's."""
    for p in (small, small // 2, 1) if resolution <= 64 else (large,):
        if resolution % p == 0:
            return p
    raise UserError(f"resolution {resolution} is not a multiple of the patch size {large}")


def vit_mini(num_classes: int, in_channels: int, resolution: int, width: float) -> nn.Module:
    """4 blocks, 4 heads, 64 channels (x width), MLP ratio 2, class token, patch 4 up to
    64 px (16 above): ~0.15 M parameters at width 1."""
    from timm.models.vision_transformer import VisionTransformer

    heads = 4
    return VisionTransformer(
        img_size=resolution, patch_size=_patch(resolution, 4, 16), in_chans=in_channels,
        num_classes=num_classes, embed_dim=_channels(64, width, 4 * heads), depth=4,
        num_heads=heads, mlp_ratio=2.0,
    )  # fmt: skip


def convnext_mini(num_classes: int, in_channels: int, resolution: int, width: float) -> nn.Module:
    """Four stages of one block each, 16/32/64/128 channels (x width), 3x3 depthwise kernels,
    a 2x2 patchify stem up to 64 px (timm then strides stage 0 too) and output stride 16 (the
    last stage dilated, not strided), so 32 px is seen at 8, 4, 2, 2 px and 28 px at 7, 3, 1,
    1 px (a strided last stage would need a 2x2 kernel on a 1x1 map); timm's 4x4 stem above
    64 px; no layer scale (it starts every block at ~identity, too slow for a few hundred CPU
    steps). LayerNorm2d (channels first) in the stem, the downsampling layers and the head;
    LayerNorm (channels last) in the blocks.

    Not a 1x1 stem: on one input channel, the stem's LayerNorm over the channels of a 1x1
    convolution of a single pixel value keeps little more than its sign, and the network
    did not learn (chance level after 120 SGD steps at lr 0.1; 2x2: 82 % on 2000 test images)."""
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(
        in_chans=in_channels, num_classes=num_classes, depths=(1, 1, 1, 1),
        dims=tuple(_channels(d, width, 8) for d in (16, 32, 64, 128)), kernel_sizes=3,
        ls_init_value=None, patch_size=2 if resolution <= 64 else 4, output_stride=16,
    )  # fmt: skip


SMALL_ARCHS = {"vit_mini": vit_mini, "convnext_mini": convnext_mini}
