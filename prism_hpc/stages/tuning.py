"""`recover.pack: auto` resolved from the device's measurement (prism_hpc/hardware/tuning.py):
`plan` prices the value the calibration file gives for `resources.recover`'s device (its GPU,
or this machine's CPU when the local backend will run here), the recover task the value for
the device it really has. Each says why in one line."""

from __future__ import annotations

from prism_hpc.config.schema import Config
from prism_hpc.cost.devices import DEFAULT_GPU
from prism_hpc.hardware.capability import detect
from prism_hpc.hardware.tuning import TunedChoice, choose_pack, device_key, gpu_key


def _fixed(cfg: Config) -> TunedChoice | None:
    """The pack when `auto` has nothing to decide: an explicit value, RDED (no packs), or a
    recovery that optimises one chunk at a time (matching, joint batching)."""
    rec = cfg.recover
    pack = getattr(rec, "pack", 1)
    if pack != "auto":
        return TunedChoice(pack, f"pack {pack}: asked for by the config")
    if rec.matching.enabled or rec.batching == "joint":
        why = "recover.matching" if rec.matching.enabled else "recover.batching joint"
        return TunedChoice(1, f"auto: recover.pack 1: {why} optimises one chunk at a time")
    return None


def planned_pack(cfg: Config, local_cpu: bool = False) -> TunedChoice:
    """For pricing: the measurement of the device `resources.recover` names (a GPU default
    when it asks for GPUs); a CPU stage is this machine's CPU with `local_cpu`, else unknown
    until the task runs (pack 1 is priced)."""
    fixed = _fixed(cfg)
    if fixed is not None:
        return fixed
    res = cfg.resources.for_stage("recover")
    if res.gpus_per_node:  # as `cost.model.stage_device` prices it
        key = gpu_key(res.gpu or DEFAULT_GPU)
    else:
        key = device_key(detect("cpu")) if local_cpu else None
    return choose_pack(key)


def task_pack(cfg: Config, device: str) -> TunedChoice:
    """Inside a recover task: the measurement of the device the task has."""
    fixed = _fixed(cfg)
    return fixed if fixed is not None else choose_pack(device_key(detect(device)))


def resolved_pack(cfg: Config, device: str, log=None) -> Config:
    """The config with `recover.pack: auto` replaced by the task's value; `log` gets the
    one line saying why (the main rank's log)."""
    if getattr(cfg.recover, "pack", 1) != "auto":
        return cfg
    choice = task_pack(cfg, device)
    if log is not None:
        log(f"recover {choice.reason}")
    return cfg.model_copy(update={"recover": cfg.recover.model_copy(
        update={"pack": choice.value})})  # fmt: skip
