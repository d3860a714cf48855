"""Which precision recovery runs in: `recover.precision: auto` resolved per device from its
capability (prism_hpc/hardware/capability.py), the same rule for `plan`, `submit` and the
task itself, so what is priced is what runs."""

from __future__ import annotations

from prism_hpc.config.schema import Config
from prism_hpc.hardware.capability import (
    PrecisionChoice,
    capability_for_device_name,
    choose_precision,
    detect,
)


def requested(cfg: Config) -> str:
    """What the config asks for (RDED runs no autocast: fp32)."""
    return getattr(cfg.recover, "precision", "fp32")


def planned_precision(cfg: Config, local_cpu: bool = False) -> PrecisionChoice:
    """For pricing and warnings before anything runs: the device `resources.recover` names
    (`gpu`, else a GPU default when it asks for GPUs, else a CPU); `local_cpu`: this
    machine's CPU (the local backend runs here)."""
    res = cfg.resources.for_stage("recover")
    if res.gpus_per_node:
        cap = capability_for_device_name(res.gpu or "a100-80")
    elif local_cpu:
        cap = detect("cpu")
    else:
        cap = capability_for_device_name(res.gpu or "cpu")
    return choose_precision(requested(cfg), cap)


def task_precision(cfg: Config, device: str) -> PrecisionChoice:
    """Inside a recover task: the rule applied to the device the task really has."""
    return choose_precision(requested(cfg), detect(device))
