"""Soft labels, students and metrics: everything after the distilled set exists."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from prism_hpc.config.common import CropScale, Strict


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
    crop_scale: CropScale = (0.25, 1.0)
    flip: bool = True
    mix: Literal["cutmix", "mixup", "none"] = "cutmix"
    mix_alpha: float = Field(1.0, gt=0)
    storage: Literal["fp16", "topk"] = "fp16"
    topk: int = Field(10, ge=1)
    epochs_per_task: int = Field(25, ge=1)
    # RDED's ShufflePatches: each visit's image cut into a factor x factor grid, column and row
    # strips put in random order before the crop (relabel/patches.py); 1 = off
    shuffle_patches: int = Field(1, ge=1, le=8)
    # Autocast of the teacher forwards (inference: no loss scaling). `auto`: the capability
    # rule recovery uses (hardware/capability.py), resolved by each task on its own device:
    # bf16 where native, fp16 on CUDA without bf16 (V100, T4), else fp32. Not part of the
    # label files' fingerprint (like the hardware kind, it moves only the last bits); the
    # resolved value is in each file's attrs and marker.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    @model_validator(mode="after")
    def _check_relabel(self) -> RelabelConfig:
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
    width: float = Field(1.0, gt=0, le=4)  # < 1 thins the student (CPU demos); 1 = torchvision
    # Hard-label term after CutMix/Mixup: `original` = the unmixed label (official SRe2L/PRISM
    # code), `mixed` = lam * CE(y) + (1 - lam) * CE(y_partner).
    ce_target: Literal["original", "mixed"] = "original"
    amp: bool = True  # false: `precision: auto` means fp32 (the old off switch)
    eval_limit: int | None = Field(None, ge=1)  # evaluate on the first N test images (quick runs)
    eval_workers: int = Field(4, ge=0)  # DataLoader workers for ImageFolder validation
    cpu_threads: int | None = Field(None, ge=1)  # fixed intra-op threads on CPU (determinism)
    # auto: the capability rule of recovery (hardware/capability.py) on the task's device:
    # bf16 where native (CUDA >= 8.0, CPUs with AVX512-BF16/AMX), fp16 with loss scaling
    # (torch.amp.GradScaler) on CUDA without bf16, else fp32; recorded in metrics.json
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # None: on GPU only (CPU default keeps results bitwise); auto: the faster of the two as
    # `bench recover --calibrate` measured on this device, None's choice without a measurement
    channels_last: bool | Literal["auto"] | None = None
    fused_optimizer: bool | None = None  # None: with channels_last (the rounding-only fast path)
    workers: int = Field(1, ge=0)  # DataLoader workers building step batches (0: in-process)
    prefetch: int = Field(4, ge=1)  # step batches each worker prepares ahead
    log_every: int = Field(100, ge=1)  # steps between progress lines (the only host syncs)

    def requested_precision(self) -> str:
        """What the capability rule is asked for: `precision`, with `amp: false` turning
        auto into fp32."""
        return "fp32" if self.precision == "auto" and not self.amp else self.precision


class MetricsConfig(Strict):
    """Diversity metric: penultimate features of `extractor` (a teacher-pool name that should
    not be a recovery teacher; None: the first student architecture's trained model is not
    available before training, so the logit teacher is used with a warning)."""

    extractor: str | None = None
    batch_size: int = Field(256, ge=1)
