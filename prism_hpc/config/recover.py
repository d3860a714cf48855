"""The recover section: how each IPC slice's images are made (PRISM and its baselines).

`synthesis` picks the method family and with it the keys that exist: `optimize` (PRISM,
SRe2L, CDA, DELT, G-VBSM, EDC: the recovery loop) or `rded` (scored real crops, stitched). A
key of the other family is an unknown key, so a combination that means nothing cannot be
written; the checks left in the validators are about values.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from prism_hpc.config.common import CropScale, Strict, Unique


class AugmentConfig(Strict):
    crop_scale: CropScale = (0.08, 1.0)
    flip: bool = True
    jitter: int = Field(32, ge=0)
    per_sample: bool = False  # official: one crop for the whole batch
    # CDA (curriculum data augmentation, VILA-Lab/SRe2L CDA/recover_cda_in1k.py): the crop
    # lower bound starts at `curriculum_start` and falls to crop_scale[0] over the first
    # `curriculum_milestone` of each image's iterations (then stays there); `none` (PRISM,
    # SRe2L) keeps crop_scale fixed. CDA's ImageNet recipe: cosine, milestone 1, start 1.0.
    curriculum: Literal["none", "step", "linear", "cosine"] = "none"
    curriculum_milestone: float = Field(1.0, ge=0, le=1)
    curriculum_start: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _check_curriculum(self) -> AugmentConfig:
        lo, hi = self.crop_scale
        if self.curriculum != "none" and not lo <= self.curriculum_start <= hi:
            raise ValueError(
                "augment.curriculum_start must lie inside crop_scale "
                f"({lo} <= start <= {hi}), got {self.curriculum_start}"
            )
        return self


class RdedConfig(Strict):
    """RDED (Sun et al., CVPR 2024; code LINs-lab/RDED): no optimisation. Per class and IPC
    slice, `candidates` real images, `crops` random square crops of each scored by the observer
    (`recover.logit_teacher`), the best crop per image kept, the `factor**2` best of those
    stitched into one image (docs/baselines.md)."""

    factor: int = Field(2, ge=1, le=8)  # RDED: 2 for 224 px ImageNet sets, 1 for 32/64 px sets
    candidates: int = Field(30, ge=1)  # real images per class per slice (RDED mipc / ipc)
    crops: int = Field(5, ge=1)  # RDED --num-crop
    crop_scale: CropScale = (0.08, 1.0)  # RandomResizedCrop area, ratio fixed at 1
    score_batch: int = Field(256, ge=1)  # observer forward chunk (memory only)

    @model_validator(mode="after")
    def _check_rded(self) -> RdedConfig:
        if self.candidates < self.factor**2:
            raise ValueError(
                f"rded.candidates = {self.candidates} < factor**2 = {self.factor**2}: every "
                "patch of an image comes from a different real image"
            )
        return self


class MatchingConfig(Strict):
    """G-VBSM / EDC statistic matching (recover/gvbsm.py, docs/baselines.md). Off: the PRISM
    objective, untouched. On: each step one backbone (`schedule` over `backbones`) gives the
    CE and aligns the statistics of its BN inputs and, with `conv`, of its conv inputs (per
    channel mean/var, 16x16-patch mean/var) against statistics the `statistics` stage
    precomputed once over the training set; `r_bn` and `first_bn_multiplier` weigh them."""

    enabled: bool = False
    backbones: list[str] = Field(default_factory=list)  # []: recover.teacher_names() in order
    schedule: Literal["round_robin", "random"] = "round_robin"  # official: round_robin
    conv: bool = True  # conv-input statistics (G-VBSM "convolution statistics")
    patch: bool = True  # and their 16x16-patch statistics
    # EMA of the synthetic statistics inside a chunk (the value matched; the gradient is the
    # current batch's): G-VBSM 0.4, EDC 0.8; 0 = plain batch statistics
    momentum: float = Field(0.4, ge=0, lt=1)
    # EDC category-aware matching: (1 - class_weight) x global term + class_weight x the
    # same term against the mean of the batch's classes' statistics (EDC: 0.5)
    class_aware: bool = False
    class_weight: float = Field(0.5, ge=0, le=1)
    # G-VBSM data densification (its `nuc_norm` term, 1.0 on ImageNet): per class in the
    # batch, KL between softmax(eig / tau) and log_softmax(eig) of the Gram matrix of
    # `densify_pool`-pooled images; zero for a class with one image in the batch
    densify: float = Field(0.0, ge=0)
    tau: float = Field(4.0, gt=0)
    densify_pool: int = Field(32, ge=1)
    stats_batch_size: int = Field(256, ge=1)  # statistics stage: fixed order, fixed batches
    stats_limit_per_class: int | None = Field(None, ge=1)  # None: data.train_limit_per_class

    @property
    def needs_statistics(self) -> bool:
        return self.enabled and (self.conv or self.class_aware)


class NormStatsConfig(Strict):
    """The statistics stage's pass for `prior: norm_stats` teachers (recover/norm_prior.py):
    one un-augmented forward over the training set in file order. The stored statistics are
    the training set's own (population) moments, so the batch size changes only rounding."""

    batch_size: int = Field(256, ge=1)
    limit_per_class: int | None = Field(None, ge=1)  # None: data.train_limit_per_class


class RecoverBase(Strict):
    """What every synthesis method has: which IPC slices, how a task's work is cut, the task's
    threads. The methods below add their own keys and say which teachers they load."""

    synthesis: str
    # images per class; `all`: identical-size distillation (every real image once: slice i
    # holds the classes with more than i images, so slices shrink instead of stopping at the
    # smallest class)
    ipc: Annotated[int, Field(ge=1)] | Literal["all"] = 50
    ipc_start: int = Field(0, ge=0)
    slices_per_task: int = Field(1, ge=1)
    classes_per_batch: int = Field(100, ge=1)  # classes of one chunk of a slice
    logit_teacher: str | None = "resnet18"
    log_every: int = Field(100, ge=1)
    # CPU intra-op threads per rank. Fixed (not "all cores") because conv backward differs in
    # the last bits between thread counts, which would make images depend on the world size.
    cpu_threads: int = Field(1, ge=1)
    deterministic: bool = True  # cuDNN deterministic kernels on GPU

    def teacher_names(self) -> list[str]:
        """Every model a recover task loads, in a fixed order."""
        raise NotImplementedError

    def iterations_for(self, ipc_index: int) -> int:
        """Optimisation steps of IPC slice `ipc_index` (its budget T_i)."""
        raise NotImplementedError

    def ranker_name(self) -> str | None:
        """The rank stage's model; None: the initial images are not ranked (no rank item)."""
        return None


class OptimizeRecover(RecoverBase):
    """The recovery loop: Adam on the pixels against CE + BN-statistics alignment (PRISM,
    SRe2L, CDA, DELT) or statistic matching (G-VBSM, EDC); docs/recover.md."""

    synthesis: Literal["optimize"] = "optimize"
    preset: Literal["clean", "official"] = "clean"
    matching: MatchingConfig = Field(default_factory=MatchingConfig)  # G-VBSM / EDC
    norm_stats: NormStatsConfig = Field(default_factory=NormStatsConfig)  # prior: norm_stats
    iterations: int = Field(4000, ge=1)
    iteration_step: int = Field(500, ge=0)  # T_i = iterations - step * (i mod period)
    iteration_period: int = Field(8, ge=1)
    lr: float = Field(0.05, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    r_bn: float = Field(0.01, ge=0)
    first_bn_multiplier: float = Field(10.0, ge=0)
    reduction: Literal["mean", "sum"] = "mean"
    count_bnless: bool = False  # official: True (AlexNet counts in K without a BN layer)
    l2_scale: float = Field(0.0, ge=0)
    tv_scale: float = Field(0.0, ge=0)
    # rded (EDC): each class starts from the RDED image of its slice (`rded` block, observer
    # = logit_teacher; recover/edc.py)
    init: Literal["real", "noise", "rded"] = "real"
    rded: RdedConfig = Field(default_factory=RdedConfig)  # read only by init rded
    # Which real image initialises IPC slot i of class c: `file` = the i-th in file order
    # (PRISM/SRe2L); `delt_medium` / `delt_top` / `delt_min` = DELT's orders by the ranker's
    # true-class probability (recover/ranking.py), computed once by the `rank` stage
    init_order: Literal["file", "delt_medium", "delt_top", "delt_min"] = "file"
    ranker: str | None = None  # the rank stage's model; None: logit_teacher
    # `cross_class`: a batch = one IPC slice across a chunk of classes (PRISM, SRe2L);
    # `joint`: the `slices_per_task` slices of a task optimised together, a batch = all their
    # IPC positions of a chunk of classes, BN statistics over the whole batch (DELT, G-VBSM,
    # EDC; recover/joint.py, docs/baselines.md)
    batching: Literal["cross_class", "joint"] = "cross_class"
    # No optimisation: store the initial images (real or noise) unchanged, quantised to uint8 like
    # every distilled set. The "initial images" baseline row, relabeled and trained exactly like
    # the recovered sets; teachers still run once to record CE/BN/top-1 of the initial images.
    init_only: bool = False
    # non-empty: the logit teacher is drawn from it
    logit_pool: Annotated[list[str], Unique] = Field(default_factory=list)
    # The (drawn) logit teacher is also a BN teacher: single-teacher alignment (phi = theta).
    bn_include_logit: bool = False
    bn_always: Annotated[list[str], Unique] = Field(default_factory=lambda: ["resnet18"])
    bn_pool: Annotated[list[str], Unique] = Field(
        default_factory=lambda: ["mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5", "alexnet"]
    )
    sampler: Literal["include_prob", "uniform"] = "include_prob"
    include_prob: float = Field(0.5, ge=0, le=1)
    k_max: int | None = Field(None, ge=1)
    scope: Literal["pre", "per_batch", "intra"] = "pre"
    resample_logit: bool = False  # intra scope: also redraw the logit teacher every step
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    memory: Literal["joint", "sequential"] = "joint"
    # Autocast of the teachers' forward/backward (BN statistics, BN loss, CE, Adam stay fp32);
    # fp16 adds dynamic loss scaling. `auto`: per device from its capability (bf16 where
    # native: CUDA >= 8.0, CPUs with AVX512-BF16/AMX; fp16 on older CUDA; else fp32), resolved
    # by the recover task and priced by `plan` (docs/hardware.md).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Chunks (or IPC slices) of a task optimised at once: one forward per teacher on the
    # concatenation of the chunks that drew it, BN statistics per chunk (docs/recover.md).
    # auto: the faster that `bench recover --calibrate` measured on the task's device (pack 1
    # without one, or with matching / joint batching); opt-in: packing moves the last bits
    pack: Annotated[int, Field(ge=1)] | Literal["auto"] = 1
    compile: bool = False  # torch.compile each teacher once per process (first steps slow)

    @model_validator(mode="after")
    def _check(self) -> OptimizeRecover:
        if self.iteration_step * (self.iteration_period - 1) >= self.iterations:
            raise ValueError(
                "iteration_step * (iteration_period - 1) must be < iterations "
                f"({self.iteration_step} * {self.iteration_period - 1} >= {self.iterations})"
            )
        if self.logit_teacher is None and not self.logit_pool:
            raise ValueError("set logit_teacher or a non-empty logit_pool")
        if self.matching.enabled and self.pack != "auto" and self.pack > 1:
            raise ValueError("recover.matching needs pack 1 (one backbone per step, per chunk)")
        if self.batching == "joint" and self.pack != "auto" and self.pack > 1:
            raise ValueError(
                "recover.batching joint optimises a task's slices at once already: set pack 1"
            )
        if self.init_order != "file" and self.init != "real":
            raise ValueError(
                f"recover.init_order {self.init_order} orders real images: set recover.init real"
            )
        if self.init_order != "file" and self.ranker is None and self.logit_teacher is None:
            raise ValueError(f"recover.init_order {self.init_order}: set recover.ranker")
        both = set(self.bn_always) & set(self.bn_pool)
        if both:
            raise ValueError(f"recover.bn_pool repeats {sorted(both)} of recover.bn_always")
        if self.k_max is not None and self.k_max > len(self.bn_pool):
            raise ValueError(
                f"recover.k_max = {self.k_max} is larger than recover.bn_pool ({len(self.bn_pool)})"
            )
        return self

    def iterations_for(self, ipc_index: int) -> int:
        """DELT-style varying budget: later IPC indices stop earlier."""
        return self.iterations - self.iteration_step * (ipc_index % self.iteration_period)

    def teacher_names(self) -> list[str]:
        names = ([self.logit_teacher] if self.logit_teacher else []) + self.logit_pool
        names += self.bn_always + self.bn_pool
        if self.matching.enabled:
            names += self.matching.backbones
        return list(dict.fromkeys(names))

    def statistic_candidates(self) -> list[str]:
        """Every teacher that can end up in a BN set (always, pool, logit with
        bn_include_logit): the teachers whose `prior` matters."""
        names = list(self.bn_always) + list(self.bn_pool)
        if self.bn_include_logit:
            names += ([self.logit_teacher] if self.logit_teacher else []) + list(self.logit_pool)
        return list(dict.fromkeys(names))

    def matching_backbones(self) -> list[str]:
        """The backbones the matching schedule cycles through, in order."""
        return list(dict.fromkeys(self.matching.backbones)) or self.teacher_names()

    def ranker_name(self) -> str | None:
        """The rank stage's model (`ranker`, else the logit teacher) when the initial images
        are ranked (`init_order` not `file`)."""
        return None if self.init_order == "file" else self.ranker or self.logit_teacher


class RdedRecover(RecoverBase):
    """RDED: no optimisation. Each image is stitched from the observer's (`logit_teacher`)
    best-scored real crops of its slice's candidate block (`rded`; docs/baselines.md)."""

    synthesis: Literal["rded"] = "rded"
    ipc: int = Field(50, ge=1)
    logit_teacher: str = "resnet18"  # the observer
    rded: RdedConfig = Field(default_factory=RdedConfig)

    @field_validator("ipc", mode="before")
    @classmethod
    def _whole_slices(cls, value):
        if value == "all":
            raise ValueError(
                "synthesis rded needs an integer ipc (its candidate blocks are cut per IPC slice)"
            )
        return value

    @property
    def init(self) -> Literal["real"]:
        """Where the images come from, for readers that ask any method (the preflight's
        images-per-class check, the diversity metric's real reference): real crops."""
        return "real"

    def iterations_for(self, ipc_index: int) -> int:
        return 0

    def teacher_names(self) -> list[str]:
        return [self.logit_teacher]


# The recover section: the member is chosen by `synthesis` (absent: optimize, filled in by
# Config), so each method's keys are checked against its own model.
RecoverConfig = Annotated[OptimizeRecover | RdedRecover, Field(discriminator="synthesis")]
DEFAULT_SYNTHESIS = "optimize"
