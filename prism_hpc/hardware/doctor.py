"""`prism-hpc doctor`: what this machine (and, with a config, this run) is ready for.

Run where the jobs run (a compute node: `srun prism-hpc doctor CONFIG --device cuda`): the
login node's torch, CPU flags and file systems are often not the compute node's. Every check
says ok / warn / fail / skip with one line of detail; a `fail` is something that would break
a run (the CLI exits 1 naming each), a `warn` something that makes it slower or riskier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError
from prism_hpc.hardware.capability import (
    CPU_FLAGS_SHOWN,
    DeviceCapability,
    PrecisionChoice,
    choose_precision,
    detect,
    parse_device,
    read_cpuinfo,
)
from prism_hpc.hardware.checks import Check, first_line
from prism_hpc.hardware.probe import ProbeResult


@dataclass
class DoctorReport:
    device: str
    checks: list[Check] = field(default_factory=list)
    capability: DeviceCapability | None = None
    precision: PrecisionChoice | None = None  # what `precision: auto` resolves to here
    probe: ProbeResult | None = None

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` object: `ok`, `failed` (names), the capability, the precision that
        `auto` resolves to, the probe's timings, and every check in order."""
        choice = self.precision
        return {
            "device": self.device,
            "ok": not self.failed(),
            "failed": [c.name for c in self.failed()],
            "capability": self.capability.to_dict() if self.capability else None,
            "precision": {"auto": choice.precision, "reason": choice.reason} if choice else None,
            "probe": self.probe.to_dict() if self.probe else None,
            "checks": [c.to_dict() for c in self.checks],
        }


def _driver_cuda_version() -> str | None:
    """The newest CUDA the installed driver supports (`cuDriverGetVersion`, as nvidia-smi's
    "CUDA Version"), or None where libcuda cannot be asked."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
        raw = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(raw)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return f"{raw.value // 1000}.{raw.value % 1000 // 10}"


def _torch_checks(kind: str) -> list[Check]:
    """torch and its CUDA build against the driver; the GPUs visible."""
    import torch

    built = torch.version.cuda
    checks = [Check("torch", "ok", f"torch {torch.__version__}, CUDA build {built or 'none'}, "
                    f"{torch.get_num_threads()} intra-op threads")]  # fmt: skip
    if not torch.cuda.is_available():
        why = (f"no CUDA device visible (torch built with CUDA {built})" if built
               else "torch is a CPU-only build")  # fmt: skip
        status = "fail" if kind == "cuda" else "skip"
        return [*checks, Check("cuda", status, why), Check("gpus", "skip", "none visible")]
    driver = _driver_cuda_version()
    older = driver and built and tuple(map(int, driver.split("."))) < tuple(
        map(int, built.split(".")[:2]))  # fmt: skip
    detail = f"CUDA {built} build, driver supports CUDA {driver or 'unknown'}"
    if older:
        detail += " (older driver: only minor-version compatibility; PTX JIT may fail)"
    checks.append(Check("cuda", "warn" if older else "ok", detail, {"driver": driver}))
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 1e9, 1),
                     "capability": [p.major, p.minor]})  # fmt: skip
    shown = "; ".join(f"{g['index']}: {g['name']}, {g['memory_gb']} GB, "
                      f"{g['capability'][0]}.{g['capability'][1]}" for g in gpus)  # fmt: skip
    checks.append(Check("gpus", "ok", f"{len(gpus)} visible: {shown}", {"gpus": gpus}))
    return checks


def _cpu_check() -> Check:
    name, flags = read_cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    have = [f for f in CPU_FLAGS_SHOWN if f in flags]
    lacks = [f for f in CPU_FLAGS_SHOWN if f not in flags]
    detail = f"{name}, {cores} usable cores; has {', '.join(have) or 'none of'}" + (
        f"; lacks {', '.join(lacks)}" if lacks else "")  # fmt: skip
    return Check("cpu", "ok", detail, {"name": name, "cores": cores, "flags": have})


def _native_check(cap: DeviceCapability) -> Check:
    if cap.kind == "cuda":
        cc = cap.cuda_capability or (0, 0)
        why = f"compute capability {cc[0]}.{cc[1]}"
    else:
        why = "+".join(f for f in CPU_FLAGS_SHOWN if f in cap.cpu_flags) or "no relevant flags"
    bf16 = "native" if cap.native_bf16 else f"not native ({cap.why_no_bf16()})"
    fp16 = "native" if cap.native_fp16 else "not native"
    said = "" if cap.torch_bf16 is None else f"; torch reports bf16 supported: {cap.torch_bf16}"
    return Check("native_precision", "ok", f"{cap.label()}: bf16 {bf16}, fp16 {fp16} ({why})"
                 f"{said}", {"native_bf16": cap.native_bf16, "native_fp16": cap.native_fp16,
                             "torch_bf16": cap.torch_bf16})  # fmt: skip


def _probe_check(device: str) -> tuple[Check, ProbeResult | None]:
    from prism_hpc.hardware.probe import time_precisions

    try:
        result = time_precisions(device)
    except RuntimeError as err:
        return Check("probe", "fail", f"timing a conv step failed: {first_line(err)}"), None
    parts = []
    for t in result.timings:
        if t.error:
            parts.append(f"{t.precision} failed ({t.error})")
        elif t.seconds_per_step is None:
            parts.append(f"{t.precision} {t.ratio:.1f}x fp32 (pilot only)")
        else:
            rel = "" if t.precision == "fp32" else f" ({t.ratio:.2f}x)"
            parts.append(f"{t.precision} {t.seconds_per_step * 1e3:.1f} ms{rel}")
    fp32 = result.timings[0]
    status = "fail" if fp32.error else "ok"
    detail = (f"conv fwd+bwd to the input, {result.resolution} px x {result.batch}: "
              f"{'; '.join(parts)} [{result.total_s:.1f} s]")  # fmt: skip
    return Check("probe", status, detail, {"total_s": result.total_s}), result


def _precision_checks(
    cap: DeviceCapability, cfg: Config | None, measured: dict[str, float] | None
) -> tuple[list[Check], PrecisionChoice]:
    auto = choose_precision("auto", cap, measured)
    basis = "measured" if measured else "by rule"
    detail = f"{auto.reason} ({basis})"
    checks = [Check("precision", "ok", detail, {"auto": auto.precision, "basis": basis})]
    if cfg is None:
        return checks, auto
    asks = {"recover": getattr(cfg.recover, "precision", "fp32"),  # RDED: no autocast
            "relabel": cfg.relabel.precision if cfg.relabel.mode != "none" else None,
            "students": cfg.students.requested_precision()}  # fmt: skip
    for stage, requested in asks.items():
        if requested is None:
            continue
        asked = choose_precision(requested, cap, measured)
        status = "warn" if asked.warning else "ok"
        detail = asked.warning or f"{stage}.precision {requested} -> {asked.precision} here"
        checks.append(Check(f"{stage}_precision", status, detail, {"precision": asked.precision}))
    return checks, auto


DEVICE_CHECKS = ("native_precision", "probe", "precision", "channels_last", "compile",
                 "distributed")  # fmt: skip


def _device_checks(
    report: DoctorReport, cfg: Config | None, quick: bool, try_compile: bool
) -> None:
    """The checks that need the device itself, appended to `report`."""
    from prism_hpc.hardware.distcheck import check_distributed
    from prism_hpc.hardware.probe import check_channels_last, check_compile

    cap, device = report.capability, report.device
    report.checks.append(_native_check(cap))
    if quick:
        report.checks.append(Check("probe", "skip", "not run (--quick)"))
    else:
        check, report.probe = _probe_check(device)
        report.checks.append(check)
    measured = report.probe.ratios() if report.probe else None
    checks, report.precision = _precision_checks(cap, cfg, measured)
    report.checks += checks
    report.checks.append(check_channels_last(device))
    report.checks.append(check_compile(device, try_compile))
    if quick:
        report.checks.append(Check("distributed", "skip", "not run (--quick)"))
    else:
        report.checks.append(check_distributed(device))


def run_doctor(
    device: str = "cpu", cfg: Config | None = None, quick: bool = False,
    try_compile: bool = False, storage_gb: float | None = None,
) -> DoctorReport:  # fmt: skip
    """Every check for `device` (and `cfg`, when given). `quick` skips the timing probe and
    the two-process distributed check (seconds each); `try_compile` really compiles (tens of
    seconds on a CPU); `storage_gb` is what the plan writes, for the free-space check.
    A bad device string raises UserError (bad input, exit 2), an absent device is a failed
    check (exit 1) and its device checks are skipped."""
    kind, _ = parse_device(device)
    report = DoctorReport(device)
    report.checks += _torch_checks(kind)
    report.checks.append(_cpu_check())
    try:
        report.capability = detect(device)
    except UserError as err:
        if not any(c.status == "fail" for c in report.checks):  # e.g. cuda:3 of 2 GPUs
            report.checks.append(Check("device", "fail", first_line(err)))
        report.checks += [Check(name, "skip", f"{device} not available") for name in DEVICE_CHECKS]
    if report.capability is not None:
        _device_checks(report, cfg, quick, try_compile)
    if cfg is not None:
        from prism_hpc.hardware.configcheck import config_checks

        report.checks += config_checks(cfg, storage_gb)
    return report
