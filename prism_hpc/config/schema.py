"""The experiment schema. Every section rejects unknown keys so that a typo fails loudly.

Defaults are the paper's ImageNet-1K settings (FACTS §A) unless a comment says otherwise;
`configs/fmnist_demo.yaml` shrinks them for a CPU.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGE_NAMES = ("squeeze", "rank", "recover", "collect", "relabel", "train", "report")


class Strict(BaseModel):
    # inf/nan are never a meaningful learning rate, scale or weight: refuse them with the key
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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


class SqueezeConfig(Strict):
    enabled: bool = True
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    # CPU intra-op threads, fixed like recover.cpu_threads: teachers are then bit-identical
    # on any machine and under any local concurrency
    cpu_threads: int = Field(1, ge=1)


class AugmentConfig(Strict):
    crop_scale: tuple[float, float] = (0.08, 1.0)
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
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area, ratio fixed at 1
    score_batch: int = Field(256, ge=1)  # observer forward chunk (memory only)

    @model_validator(mode="after")
    def _check_rded(self) -> RdedConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"rded.crop_scale must satisfy 0 < lo <= hi <= 1, got {lo, hi}")
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


class RecoverConfig(Strict):
    preset: Literal["clean", "official"] = "clean"
    matching: MatchingConfig = Field(default_factory=MatchingConfig)  # G-VBSM / EDC
    # How a slice's images are made: `optimize` (PRISM, SRe2L, CDA, DELT: the recovery loop)
    # or `rded` (scored real crops stitched, no optimisation; the `rded` block)
    synthesis: Literal["optimize", "rded"] = "optimize"
    rded: RdedConfig = Field(default_factory=RdedConfig)
    # images per class; `all`: identical-size distillation (every real image once: slice i
    # holds the classes with more than i images, so slices shrink instead of stopping at the
    # smallest class)
    ipc: Annotated[int, Field(ge=1)] | Literal["all"] = 50
    ipc_start: int = Field(0, ge=0)
    slices_per_task: int = Field(1, ge=1)
    iterations: int = Field(4000, ge=1)
    iteration_step: int = Field(500, ge=0)  # T_i = iterations - step * (i mod period)
    iteration_period: int = Field(8, ge=1)
    lr: float = Field(0.05, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    classes_per_batch: int = Field(100, ge=1)
    r_bn: float = Field(0.01, ge=0)
    first_bn_multiplier: float = Field(10.0, ge=0)
    reduction: Literal["mean", "sum"] = "mean"
    count_bnless: bool = False  # official: True (AlexNet counts in K without a BN layer)
    l2_scale: float = Field(0.0, ge=0)
    tv_scale: float = Field(0.0, ge=0)
    # rded (EDC): each class starts from the RDED image of its slice (`rded` block, observer
    # = logit_teacher; recover/edc.py)
    init: Literal["real", "noise", "rded"] = "real"
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
    logit_teacher: str | None = "resnet18"
    logit_pool: list[str] = Field(default_factory=list)  # non-empty: logit teacher drawn
    # The (drawn) logit teacher is also a BN teacher: single-teacher alignment (phi = theta).
    bn_include_logit: bool = False
    bn_always: list[str] = Field(default_factory=lambda: ["resnet18"])
    bn_pool: list[str] = Field(
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
    # fp16 adds dynamic loss scaling. `amp: bf16` (older spelling) is read as precision bf16.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Chunks (or IPC slices) of a task optimised at once: one forward per teacher on the
    # concatenation of the chunks that drew it, BN statistics per chunk (docs/recover.md).
    pack: int = Field(1, ge=1)
    compile: bool = False  # torch.compile each teacher once per process (first steps slow)
    log_every: int = Field(100, ge=1)
    # CPU intra-op threads per rank. Fixed (not "all cores") because conv backward differs in
    # the last bits between thread counts, which would make images depend on the world size.
    cpu_threads: int = Field(1, ge=1)
    deterministic: bool = True  # cuDNN deterministic kernels on GPU

    @model_validator(mode="before")
    @classmethod
    def _amp_alias(cls, data):
        if isinstance(data, dict) and "amp" in data:
            data = dict(data)
            amp = data.pop("amp")
            if amp not in ("none", "bf16"):
                raise ValueError(f"recover.amp must be none or bf16 (use precision), got {amp!r}")
            if "precision" in data and amp == "bf16" and data["precision"] != "bf16":
                raise ValueError("recover.amp: bf16 contradicts recover.precision")
            data.setdefault("precision", "bf16" if amp == "bf16" else "fp32")
        return data

    @model_validator(mode="after")
    def _check(self) -> RecoverConfig:
        if self.iteration_step * (self.iteration_period - 1) >= self.iterations:
            raise ValueError(
                "iteration_step * (iteration_period - 1) must be < iterations "
                f"({self.iteration_step} * {self.iteration_period - 1} >= {self.iterations})"
            )
        if self.logit_teacher is None and not self.logit_pool:
            raise ValueError("set logit_teacher or a non-empty logit_pool")
        lo, hi = self.augment.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {lo, hi}")
        if self.matching.enabled and self.pack > 1:
            raise ValueError("recover.matching needs pack 1 (one backbone per step, per chunk)")
        if self.synthesis == "rded":
            if self.ipc == "all" or self.init_only or self.pack > 1 or self.logit_pool:
                raise ValueError(
                    "synthesis rded needs an integer ipc, init_only false, pack 1 and one "
                    "observer (logit_teacher, no logit_pool)"
                )
            if self.logit_teacher is None:
                raise ValueError("synthesis rded: set logit_teacher (the observer)")
            if self.batching != "cross_class" or self.matching.enabled or self.init_order != "file":
                raise ValueError(
                    "synthesis rded makes no optimisation batches: set batching cross_class, "
                    "matching.enabled false and init_order file"
                )
        if self.init_order != "file" and self.init != "real":
            raise ValueError(
                f"recover.init_order {self.init_order} orders real images: set recover.init real"
            )
        if self.init_order != "file" and self.ranker is None and self.logit_teacher is None:
            raise ValueError(f"recover.init_order {self.init_order}: set recover.ranker")
        if self.batching == "joint" and self.pack > 1:
            raise ValueError(
                "recover.batching joint optimises a task's slices at once already: set pack 1"
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

    def matching_backbones(self) -> list[str]:
        """The backbones the matching schedule cycles through, in order."""
        return list(dict.fromkeys(self.matching.backbones)) or self.teacher_names()

    def ranker_name(self) -> str | None:
        """The rank stage's model (`ranker`, else the logit teacher)."""
        return self.ranker or self.logit_teacher


class RelabelConfig(Strict):
    mode: Literal["offline", "online", "none"] = "offline"
    teachers: list[str] = Field(
        default_factory=lambda: ["resnet18", "mobilenet_v2", "alexnet", "shufflenet_v2_x0_5"]
    )
    ensemble: Literal["norm_mean", "mean"] = "norm_mean"
    # Teacher forward chunk (memory only). The batches that crops, mixes and the ensemble's
    # per-batch norm rescaling refer to are the student's `students.batch_size` batches, so
    # relabel and training always line up (docs/relabel_train.md).
    batch_size: int = Field(50, ge=1)
    crop_scale: tuple[float, float] = (0.25, 1.0)
    flip: bool = True
    mix: Literal["cutmix", "mixup", "none"] = "cutmix"
    mix_alpha: float = Field(1.0, gt=0)
    storage: Literal["fp16", "topk"] = "fp16"
    topk: int = Field(10, ge=1)
    epochs_per_task: int = Field(25, ge=1)
    # RDED's ShufflePatches: each visit's image cut into a factor x factor grid, column and row
    # strips put in random order before the crop (relabel/patches.py); 1 = off
    shuffle_patches: int = Field(1, ge=1, le=8)

    @model_validator(mode="after")
    def _check_relabel(self) -> RelabelConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"relabel.crop_scale must satisfy 0 < lo <= hi <= 1, got {lo, hi}")
        if self.mode != "none" and not self.teachers:
            raise ValueError("relabel.teachers is empty (set relabel.mode: none for hard labels)")
        return self


class StudentsConfig(Strict):
    """Batch semantics (independent of the GPU count): `batch_size` is the optimizer-step batch
    over all ranks (= the relabel plan batch); it is cut into `grad_accum` micro-batches, and a
    micro-batch (batch_size / grad_accum images) is what BatchNorm normalises together; DDP
    splits each micro-batch over the ranks, so with `sync_bn` any world size equals one GPU.
    Official recipe: batch_size 50, grad_accum 2 (BN batch 25) on one GPU."""

    archs: list[str] = Field(default_factory=lambda: ["resnet18"])
    seeds: list[int] = Field(default_factory=lambda: [0])
    epochs: int = Field(300, ge=1)
    batch_size: int = Field(50, ge=1)
    grad_accum: int = Field(1, ge=1)
    # DDP: BatchNorm statistics over the whole micro-batch across ranks (else each GPU's BN
    # sees batch_size / grad_accum / world_size images)
    sync_bn: bool = True
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0)
    loss: Literal["mse_gt", "mae_gt", "kl", "soft_ce", "ce"] = "mse_gt"  # mae_gt: Table 3a
    ce_weight: float = Field(0.1, ge=0)
    temperature: float = Field(1.0, gt=0)
    schedule: Literal["cosine", "ssrs", "ssrs_continuous", "smooth_cosine"] = "ssrs"
    zeta: float = Field(2.5, gt=0)
    ema: float | None = Field(None, gt=0, lt=1)
    eval_every: int = Field(10, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    pretrained_cfg: None = None  # reserved
    width: float = Field(1.0, gt=0, le=4)  # < 1 thins the student (CPU demos); 1 = torchvision
    # Hard-label term after CutMix/Mixup: `original` = the unmixed label (official SRe2L/PRISM
    # code), `mixed` = lam * CE(y) + (1 - lam) * CE(y_partner).
    ce_target: Literal["original", "mixed"] = "original"
    amp: bool = True  # bf16 autocast on GPU; ignored on CPU
    eval_limit: int | None = Field(None, ge=1)  # evaluate on the first N test images (quick runs)
    eval_workers: int = Field(4, ge=0)  # DataLoader workers for ImageFolder validation
    cpu_threads: int | None = Field(None, ge=1)  # fixed intra-op threads on CPU (determinism)
    # auto: bf16 autocast on GPU when `amp`, fp32 on CPU; bf16: autocast also on CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | None = None  # None: on GPU only (CPU default keeps results bitwise)
    fused_optimizer: bool | None = None  # None: with channels_last (the rounding-only fast path)
    workers: int = Field(1, ge=0)  # DataLoader workers building step batches (0: in-process)
    prefetch: int = Field(4, ge=1)  # step batches each worker prepares ahead
    log_every: int = Field(100, ge=1)  # steps between progress lines (the only host syncs)


class MetricsConfig(Strict):
    """Diversity metric: penultimate features of `extractor` (a teacher-pool name that should
    not be a recovery teacher; None: the first student architecture's trained model is not
    available before training, so the logit teacher is used with a warning)."""

    extractor: str | None = None
    batch_size: int = Field(256, ge=1)


# Device kinds the cost model knows (`prism_hpc.cost.devices` holds their numbers; a test keeps
# the two lists equal). Here because the config layer validates names and must not import cost.
DEVICE_NAMES = ("v100", "a100-40", "a100-80", "h100", "h200", "l40s", "rtx4090", "cpu")

SIGNALS = ("USR1", "USR2", "TERM", "INT", "HUP", "ALRM", "URG")
SIGNAL_SPEC = re.compile(r"(?:SIG)?(?:" + "|".join(SIGNALS) + r")@([1-9]\d{0,4})")


class StageResources(Strict):
    """SLURM and local resources of one stage; unset fields inherit `resources.default`."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int | None = Field(None, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    cpus_per_task: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    tasks_per_node: int | None = Field(None, ge=1)
    setup: list[str] | None = None
    sbatch_extra: dict[str, str | int | bool] | None = None
    array_parallelism: int | None = Field(None, ge=1)
    max_array_size: int | None = Field(None, ge=1)  # None: read from `scontrol show config`
    concurrency: int | None = Field(None, ge=1)  # local backend: items run at once
    # Warning signal SIG@SECONDS before the time limit (sbatch --signal; the delay is capped at
    # a fifth of time_min). Checkpointable stages (training) requeue on it and resume.
    signal: str | None = None
    # device kind `plan` prices the stage on (DEVICE_NAMES); None: cpu without GPUs, else the
    # estimate assumes a100-80 and says so. Requests nothing from SLURM (use constraint/gres).
    gpu: str | None = None

    @field_validator("gpu")
    @classmethod
    def _gpu_known(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in DEVICE_NAMES:
            raise ValueError(f"unknown device {v!r} (known: {', '.join(DEVICE_NAMES)})")
        return v.lower() if v is not None else v

    @field_validator("signal")
    @classmethod
    def _signal_spec(cls, v: str | None) -> str | None:
        m = SIGNAL_SPEC.fullmatch(v) if v is not None else None
        if v is not None and (m is None or int(m.group(1)) > 65535):
            raise ValueError(
                f"{v!r}: expected SIGNAL@SECONDS, e.g. USR2@90 (signals: {', '.join(SIGNALS)}; "
                "seconds 1-65535)"
            )
        return v

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        """Values go into `#SBATCH --key=value` lines (shell-quoted); a newline would end the
        comment and start a shell line, so control characters are refused outright."""
        if v is not None and any(ord(ch) < 32 for ch in v):
            raise ValueError("must be a single line without control characters")
        return v

    @field_validator("setup")
    @classmethod
    def _setup_words(cls, v: list[str] | None) -> list[str] | None:
        import shlex

        for line in v or []:
            if any(ord(ch) < 32 for ch in line):
                raise ValueError("setup lines must be single lines")
            try:
                shlex.split(line)
            except ValueError as err:
                raise ValueError(f"setup line {line!r}: {err}") from None
        return v

    @field_validator("sbatch_extra")
    @classmethod
    def _extra_one_line(cls, v):
        for key, value in (v or {}).items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", key):
                raise ValueError(f"sbatch option name {key!r} must look like 'mail_type'")
            if any(ord(ch) < 32 for ch in str(value)):
                raise ValueError(f"value of {key!r} must be a single line")
        return v


RESOURCE_DEFAULTS = StageResources(
    time_min=60,
    mem_gb=8,
    cpus_per_task=1,
    gpus_per_node=0,
    tasks_per_node=1,
    setup=[],
    sbatch_extra={},
    concurrency=1,
    signal="USR2@90",
)


class Resources(Strict):
    default: StageResources = Field(default_factory=StageResources)
    squeeze: StageResources = Field(default_factory=StageResources)
    rank: StageResources = Field(default_factory=StageResources)
    statistics: StageResources = Field(default_factory=StageResources)
    recover: StageResources = Field(default_factory=StageResources)
    collect: StageResources = Field(default_factory=StageResources)
    relabel: StageResources = Field(default_factory=StageResources)
    train: StageResources = Field(default_factory=StageResources)
    report: StageResources = Field(default_factory=StageResources)

    def for_stage(self, stage: str) -> StageResources:
        """Stage value, else `default`, else the built-in default (a stage without a block of
        its own, e.g. a plug-in stage, takes `default`)."""
        merged = RESOURCE_DEFAULTS.model_dump()
        for layer in (self.default, getattr(self, stage, self.default)):
            merged.update({k: v for k, v in layer.model_dump().items() if v is not None})
        return StageResources(**merged)


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
