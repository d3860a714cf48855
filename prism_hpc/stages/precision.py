"""Which precision a stage runs in: `recover.precision`, `relabel.precision` and
`students.precision` (`auto` by default) resolved per device from its capability
(prism_hpc/hardware/capability.py): one rule for `plan`, `submit` and the task itself, so
what is priced is what runs."""

from __future__ import annotations

from prism_hpc.config.schema import Config
from prism_hpc.hardware.capability import (
    PrecisionChoice,
    capability_for_device_name,
    choose_precision,
    detect,
)

STAGES = ("recover", "relabel", "train")  # the stages with a precision key
KEYS = {"recover": "recover.precision", "relabel": "relabel.precision",
        "train": "students.precision"}  # fmt: skip


def requested(cfg: Config, stage: str = "recover") -> str:
    """What the config asks `stage` to run in (RDED runs no autocast: fp32; `students.amp:
    false` turns auto into fp32)."""
    if stage == "train":
        return cfg.students.requested_precision()
    if stage == "relabel":
        return cfg.relabel.precision
    return getattr(cfg.recover, "precision", "fp32")


def planned_precision(
    cfg: Config, local_cpu: bool = False, stage: str = "recover"
) -> PrecisionChoice:
    """For pricing and warnings before anything runs: the device `resources.<stage>` names
    (`gpu`, else a GPU default when it asks for GPUs, else a CPU); `local_cpu`: this
    machine's CPU (the local backend runs here)."""
    res = cfg.resources.for_stage(stage)
    if res.gpus_per_node:
        cap = capability_for_device_name(res.gpu or "a100-80")
    elif local_cpu:
        cap = detect("cpu")
    else:
        cap = capability_for_device_name(res.gpu or "cpu")
    return choose_precision(requested(cfg, stage), cap)


def task_precision(cfg: Config, device: str, stage: str = "recover") -> PrecisionChoice:
    """Inside a task: the rule applied to the device the task really has."""
    return choose_precision(requested(cfg, stage), detect(device))
