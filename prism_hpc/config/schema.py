"""The experiment schema. Every section rejects unknown keys so that a typo fails loudly.

Defaults are the paper's ImageNet-1K settings (FACTS §A) unless a comment says otherwise;
`configs/fmnist_demo.yaml` shrinks them for a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from prism_hpc.config.common import CropScale, Strict
from prism_hpc.config.data import DataConfig, SqueezeConfig, TeacherSpec
from prism_hpc.config.recover import AugmentConfig, MatchingConfig, RdedConfig, RecoverConfig
from prism_hpc.config.resources import (
    DEVICE_NAMES,
    RESOURCE_DEFAULTS,
    Resources,
    StageResources,
)
from prism_hpc.config.train import MetricsConfig, RelabelConfig, StudentsConfig

__all__ = [
    "DEVICE_NAMES", "RESOURCE_DEFAULTS", "AugmentConfig", "Config", "CropScale",
    "DataConfig", "MatchingConfig", "MetricsConfig", "RdedConfig", "RecoverConfig",
    "RelabelConfig", "Resources", "SqueezeConfig", "StageResources", "Strict",
    "StudentsConfig", "TeacherSpec",
]

class Config(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    seed: int = Field(0, ge=0)
    backend: Literal["auto", "local", "slurm", "debug"] = "auto"
    # the compute nodes cannot download: `weights: torchvision` must already be in the
    # $TORCH_HOME cache at submit time (checked by preflight; a warning otherwise)
    offline: bool = False
    run_root: Path = Path("runs")
    method: str = "PRISM"  # free label for result tables (PRISM, SRe2L, ablation row)
    data: DataConfig = Field(default_factory=DataConfig)
    teachers: dict[str, TeacherSpec]
    squeeze: SqueezeConfig = Field(default_factory=SqueezeConfig)
    recover: RecoverConfig = Field(default_factory=RecoverConfig)
    relabel: RelabelConfig = Field(default_factory=RelabelConfig)
    students: StudentsConfig = Field(default_factory=StudentsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _teachers_known(self) -> Config:
        pool = set(self.teachers)
        used = {"recover": self.recover.teacher_names()}
        if self.recover.init_order != "file":
            used["recover.ranker"] = [self.recover.ranker_name()]
        if self.relabel.mode != "none":
            used["relabel.teachers"] = self.relabel.teachers
        if self.metrics.extractor:
            used["metrics.extractor"] = [self.metrics.extractor]
        for where, names in used.items():
            missing = [n for n in names if n not in pool]
            if missing:
                raise ValueError(
                    f"{where} names teacher(s) {missing} that are not in `teachers` "
                    f"(known: {sorted(pool)})"
                )
        return self

    @model_validator(mode="after")
    def _no_duplicates(self) -> Config:
        """The same name twice is always a slip (a teacher counted twice in the BN mean, two
        students written into one folder): refuse it with the key and the repeated value."""
        lists = {
            "recover.bn_always": self.recover.bn_always,
            "recover.bn_pool": self.recover.bn_pool,
            "recover.logit_pool": self.recover.logit_pool,
            "relabel.teachers": self.relabel.teachers,
            "students.archs": self.students.archs,
            "students.seeds": self.students.seeds,
            "data.class_names": self.data.class_names or [],
        }
        for key, values in lists.items():
            seen = set()
            for v in values:
                if v in seen:
                    raise ValueError(f"{key} lists {v!r} twice")
                seen.add(v)
        shuffle, rec = self.relabel.shuffle_patches, self.recover
        if shuffle > 1 and rec.synthesis == "rded" and shuffle != rec.rded.factor:
            raise ValueError(
                f"relabel.shuffle_patches = {shuffle} must be 1 or recover.rded.factor "
                f"({rec.rded.factor}): the strips are the stitched patches"
            )
        both = set(self.recover.bn_always) & set(self.recover.bn_pool)
        if both:
            raise ValueError(f"recover.bn_pool repeats {sorted(both)} of recover.bn_always")
        k_max, pool = self.recover.k_max, len(self.recover.bn_pool)
        if k_max is not None and k_max > pool:
            raise ValueError(f"recover.k_max = {k_max} is larger than recover.bn_pool ({pool})")
        return self
