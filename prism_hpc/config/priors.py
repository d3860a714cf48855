"""Which statistic prior a teacher gives recovery when its config says `prior: auto`.

A statistic teacher (a member of a BN set) is matched on the input statistics of its
normalisation layers: `bn` (BatchNorm: its running statistics), `norm_stats` (LayerNorm /
GroupNorm: statistics the `statistics` stage measures once over the training set) or `none`.
The default is what the architecture's layers allow: `bn` if it has BatchNorm layers, else
`norm_stats` if it has LayerNorm/GroupNorm layers, else `none`.

Why from the architecture's *name*: `status` and the statistics stage's `items` must know,
without importing torch, which teachers need a statistics pass. The table below was read off
the built models (torchvision's and timm's); `plan`/`submit` (recover/checks.py) and every
recover task build the model and refuse, in one line, a name the table gets wrong for its
layers, asking for an explicit `prior`; `tests/test_norm_teachers.py` checks the table
against the layers of every torchvision model and a list of timm families.
"""

from __future__ import annotations

import re
from typing import Literal

Prior = Literal["bn", "norm_stats", "none"]
PriorChoice = Literal["auto", "bn", "norm_stats", "none"]

# No normalisation layer at all (torchvision names; timm's plain VGG, ResMLP and NF-Nets).
_NO_NORM = re.compile(r"^(alexnet|squeezenet1_[01]|vgg\d+|resmlp_|nfnet_|dm_nfnet_|nf_)")
# LayerNorm / GroupNorm and no BatchNorm: ViTs and their relatives, ConvNeXt (torchvision,
# timm and the registry's own `vit_mini` / `convnext_mini`), Swin, MetaFormers (PoolFormer's
# GroupNorm), MLP-Mixers. Hybrids with BatchNorm (LeViT, XCiT, MaxViT, CoAtNet, TinyViT,
# MobileViT, EfficientFormer) are `bn` and stay out of this list.
_NORM = re.compile(
    r"^(vit_|deit|convnext|swin|beit|eva|cait|mixer_|poolformer|crossvit|twins|pvt_v2|"
    r"coat_lite|mvitv2|edgenext|gcvit|davit|caformer|convformer|focalnet|hiera|gmlp|"
    r"sequencer|pit_|tnt_|convit|nest_|samvit|flexivit|vitamin|mambaout|rdnet)"
)


def default_prior(arch: str) -> Prior:
    """The prior of an architecture's layers, from its registry name (`timm:` stripped)."""
    name = arch.removeprefix("timm:")
    if _NO_NORM.match(name) and not name.endswith("_bn"):
        return "none"
    if _NORM.match(name):
        return "norm_stats"
    return "bn"


def resolve_prior(choice: PriorChoice, arch: str) -> Prior:
    """An explicit choice wins; `auto` is the architecture's default."""
    return default_prior(arch) if choice == "auto" else choice
