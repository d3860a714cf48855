"""Where the images come from, and the teacher pool that squeeze trains or loads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_serializer, model_validator

from prism_hpc.config.common import Strict
from prism_hpc.config.priors import Prior, PriorChoice, resolve_prior


class DataConfig(Strict):
    source: Literal["fashion_mnist", "imagefolder"] = "fashion_mnist"
    root: Path = Path("/usr/share/datasets/fashion-mnist")
    train_dir: str = "train"  # imagefolder only: sub-folders of `root`
    val_dir: str = "val"
    resolution: int = Field(32, ge=8, le=1024)
    channels: Literal[1, 3] = 1
    num_classes: int | None = Field(None, ge=2)  # None: taken from the data
    mean: list[float] | None = None  # None: the source's default
    std: list[float] | None = None
    class_names: list[str] | None = None
    train_limit_per_class: int | None = Field(None, ge=1)  # squeeze: first N per class

    @model_validator(mode="after")
    def _stats_match_channels(self) -> DataConfig:
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and len(value) != self.channels:
                raise ValueError(f"{key} needs {self.channels} value(s), got {len(value)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("std values must be > 0")
        return self


class TeacherSpec(Strict):
    """One architecture of the teacher pool.

    `weights`: `squeeze` (trained by the pipeline), `random` (benchmarks), `torchvision`
    (the package's default pretrained weights; needs internet or a warm cache) or a local
    file path (`torch.load(weights_only=True)`, plain state_dict or timm checkpoint).
    """

    arch: str
    width: float = Field(1.0, gt=0, le=4)  # < 1 thins the model (CPU demos)
    weights: str = "squeeze"
    key_map: Literal["by_name", "by_position"] = "by_name"
    mean: list[float] | None = None  # the teacher's own input normalisation, if it differs
    std: list[float] | None = None
    # What a statistic (BN-set) teacher is matched on: `bn` (BatchNorm running statistics),
    # `norm_stats` (LayerNorm/GroupNorm input statistics over the training set, computed by
    # the statistics stage), `none`; `auto`: what its layers allow (config/priors.py)
    prior: PriorChoice = "auto"

    def resolved_prior(self) -> Prior:
        return resolve_prior(self.prior, self.arch)

    @model_serializer(mode="wrap")
    def _omit_auto_prior(self, handler):
        """`prior: auto` is left out of dumps: the resolved config, and the soft-label
        fingerprint made from it, stay what they were before the key existed."""
        data = handler(self)
        if self.prior == "auto" and isinstance(data, dict):
            data.pop("prior", None)
        return data


class SqueezeConfig(Strict):
    enabled: bool = True
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    # CPU intra-op threads, fixed like recover.cpu_threads: teachers are then bit-identical
    # under any local concurrency on one hardware kind (other instruction sets: other last bits)
    cpu_threads: int = Field(1, ge=1)
