"""The experiment schema. Every section rejects unknown keys so that a typo fails loudly.

Defaults are the paper's ImageNet-1K settings (FACTS §A) unless a comment says otherwise;
`configs/fmnist_demo.yaml` shrinks them for a CPU.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from prism_hpc.config.common import CropScale, Strict, first_repeat
from prism_hpc.config.data import DataConfig, SqueezeConfig, TeacherSpec
from prism_hpc.config.recover import (
    DEFAULT_SYNTHESIS,
    AugmentConfig,
    MatchingConfig,
    OptimizeRecover,
    RdedConfig,
    RdedRecover,
    RecoverBase,
    RecoverConfig,
)
from prism_hpc.config.resources import (
    DEVICE_NAMES,
    RESOURCE_DEFAULTS,
    Resources,
    StageResources,
)
from prism_hpc.config.tracking import TrackingConfig
from prism_hpc.config.train import MetricsConfig, RelabelConfig, StudentsConfig

__all__ = [
    "DEVICE_NAMES", "RESOURCE_DEFAULTS", "AugmentConfig", "Config", "CropScale",
    "DataConfig", "MatchingConfig", "MetricsConfig", "OptimizeRecover", "RdedConfig",
    "RdedRecover", "RecoverBase", "RecoverConfig", "RelabelConfig", "Resources",
    "SqueezeConfig", "StageResources", "Strict", "StudentsConfig", "TeacherSpec",
]

class Config(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    seed: int = Field(0, ge=0)
    backend: str = "auto"  # an executor's name or auto, checked by hpc (it knows the names)
    # the compute nodes cannot download: `weights: torchvision` must already be in the
    # $TORCH_HOME cache at submit time (checked by preflight; a warning otherwise)
    offline: bool = False
    run_root: Path = Path("runs")
    method: str = "PRISM"  # free label for result tables (PRISM, SRe2L, ablation row)
    data: DataConfig = Field(default_factory=DataConfig)
    teachers: dict[str, TeacherSpec]
    squeeze: SqueezeConfig = Field(default_factory=SqueezeConfig)
    recover: RecoverConfig = Field(default_factory=OptimizeRecover)
    relabel: RelabelConfig = Field(default_factory=RelabelConfig)
    students: StudentsConfig = Field(default_factory=StudentsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    resources: Resources = Field(default_factory=Resources)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_synthesis(cls, data):
        """`recover.synthesis` may be left out: the optimising methods are the default."""
        rec = data.get("recover") if isinstance(data, dict) else None
        if isinstance(rec, dict) and "synthesis" not in rec:
            data = {**data, "recover": {**rec, "synthesis": DEFAULT_SYNTHESIS}}
        return data

    @model_validator(mode="after")
    def _teachers_known(self) -> Config:
        pool = set(self.teachers)
        used = {"recover": self.recover.teacher_names()}
        if ranker := self.recover.ranker_name():
            used["recover.ranker"] = [ranker]
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
        """The same name twice is always a slip (two students written into one folder): refuse
        it with the key and the repeated value. (The recover lists check themselves: their
        type is `common.Unique`.)"""
        lists = {
            "relabel.teachers": self.relabel.teachers,
            "students.archs": self.students.archs,
            "students.seeds": self.students.seeds,
            "data.class_names": self.data.class_names or [],
        }
        for key, values in lists.items():
            repeated, value = first_repeat(values)
            if repeated:
                raise ValueError(f"{key} lists {value!r} twice")
        shuffle, rec = self.relabel.shuffle_patches, self.recover
        if shuffle > 1 and isinstance(rec, RdedRecover) and shuffle != rec.rded.factor:
            raise ValueError(
                f"relabel.shuffle_patches = {shuffle} must be 1 or recover.rded.factor "
                f"({rec.rded.factor}): the strips are the stitched patches"
            )
        return self
