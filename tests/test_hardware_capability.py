"""The precision rule per device class, the GPU-name table `plan` relies on, device parsing,
CPU flag reading, and the timing probe (small sizes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prism_hpc.config.schema import DEVICE_NAMES
from prism_hpc.errors import UserError
from prism_hpc.hardware.capability import (
    capability_for_device_name,
    choose_precision,
    cpu_capability,
    cuda_capability,
    cuda_capability_for_gpu_name,
    detect,
    parse_device,
    precision_for_plan,
    read_cpuinfo,
)

AVX2 = cpu_capability({"avx2", "fma"}, "AVX2 EPYC")
AVX512 = cpu_capability({"avx2", "avx512f", "avx512bw"}, "Skylake-SP")
ZEN4 = cpu_capability({"avx2", "avx512f", "avx512_bf16"}, "Zen 4")
SPR = cpu_capability({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16"}, "SPR")
AMX_ONLY = cpu_capability({"amx_bf16"}, "AMX")
V100 = cuda_capability(7, 0, "Tesla V100")
T4 = cuda_capability(7, 5, "Tesla T4")
A100 = cuda_capability(8, 0, "A100")
L40S = cuda_capability(8, 9, "L40S")
H100 = cuda_capability(9, 0, "H100")
PASCAL = cuda_capability(6, 1, "GTX 1080")
ALL = [AVX2, AVX512, ZEN4, SPR, AMX_ONLY, V100, T4, A100, L40S, H100, PASCAL]


@pytest.mark.parametrize(
    ("cap", "auto"),
    [(AVX2, "fp32"), (AVX512, "fp32"), (ZEN4, "bf16"), (SPR, "bf16"), (AMX_ONLY, "bf16"),
     (V100, "fp16"), (T4, "fp16"), (A100, "bf16"), (L40S, "bf16"), (H100, "bf16"),
     (PASCAL, "fp32")],
    ids=lambda v: getattr(v, "name", v),
)  # fmt: skip
def test_auto_picks_the_native_half_precision_per_device_class(cap, auto):
    choice = choose_precision("auto", cap)
    assert choice.precision == auto
    assert choice.warning is None
    assert cap.name in choice.reason


def test_native_flags_not_what_torch_claims():
    # torch says bf16 works on any AVX-512 CPU and on a V100 (emulation counts); the rule
    # goes by the instruction set / compute capability
    assert not cpu_capability({"avx512f"}, torch_bf16=True).native_bf16
    assert not cuda_capability(7, 0, torch_bf16=True).native_bf16
    assert ZEN4.native_bf16 and not ZEN4.native_fp16 and SPR.native_fp16
    assert V100.native_fp16 and T4.native_fp16 and not PASCAL.native_fp16


@pytest.mark.parametrize("cap", ALL, ids=lambda c: c.name)
def test_explicit_fp32_never_warns(cap):
    choice = choose_precision("fp32", cap, {"bf16": 9.0, "fp16": 12.0})
    assert (choice.precision, choice.warning) == ("fp32", None)


def test_explicit_bf16_without_native_bf16_keeps_it_and_warns_once():
    choice = choose_precision("bf16", V100)
    assert choice.precision == "bf16"
    assert "Tesla V100 (cuda 7.0)" in choice.warning and "emulated" in choice.warning
    assert "7.0 < 8.0" in choice.warning and "\n" not in choice.warning
    cpu = choose_precision("BF16", AVX2)
    assert cpu.precision == "bf16" and "AVX2 EPYC (cpu)" in cpu.warning
    assert "avx512_bf16" in cpu.warning and "several times slower" in cpu.warning


def test_a_measured_slowdown_is_named_in_the_warning():
    warning = choose_precision("bf16", AVX2, measured={"bf16": 9.1}).warning
    assert "measured 9.1x the time of fp32" in warning and "emulated" not in warning


@pytest.mark.parametrize("cap", [ZEN4, SPR, A100, L40S, H100], ids=lambda c: c.name)
def test_explicit_bf16_on_native_devices_is_quiet(cap):
    assert choose_precision("bf16", cap).warning is None


def test_explicit_bf16_measured_slow_on_a_native_device_warns():
    assert "measured 3.0x" in choose_precision("bf16", A100, {"bf16": 3.0}).warning


def test_explicit_fp16_on_a_cpu_warns_unless_measured_fast():
    for cap in (AVX2, ZEN4, SPR):
        assert "fp16 on" in choose_precision("fp16", cap).warning
    assert "use bf16" in choose_precision("fp16", ZEN4).warning
    assert "use fp32" in choose_precision("fp16", AVX2).warning
    assert choose_precision("fp16", SPR, {"fp16": 0.8}).warning is None
    assert choose_precision("fp16", V100).warning is None
    assert "no fast fp16" in choose_precision("fp16", PASCAL).warning


def test_a_measurement_turns_a_slow_auto_choice_into_fp32():
    slow = choose_precision("auto", ZEN4, measured={"bf16": 3.2, "fp16": 12.0})
    assert slow.precision == "fp32" and "measured 3.20x" in slow.reason
    noisy = choose_precision("auto", ZEN4, measured={"bf16": 1.2})  # within timing noise
    assert noisy.precision == "bf16" and "measured 1.20x" in noisy.reason
    # a measurement never turns an emulated precision into the choice
    assert choose_precision("auto", AVX2, measured={"bf16": 0.5}).precision == "fp32"
    assert choose_precision("auto", V100, measured={"fp16": 5.0}).precision == "fp32"


def test_auto_stays_within_what_the_stage_implements():
    students = ("fp32", "bf16")
    assert choose_precision("auto", V100, allowed=students).precision == "fp32"
    assert "runs only fp32/bf16" in choose_precision("auto", T4, allowed=students).reason
    assert choose_precision("auto", H100, allowed=students).precision == "bf16"
    assert precision_for_plan("auto", "v100", allowed=students).precision == "fp32"


def test_an_unknown_request_is_bad_input():
    with pytest.raises(UserError, match="precision 'fp8': expected one of auto, fp32"):
        choose_precision("fp8", A100)


@pytest.mark.parametrize(
    ("name", "cc"),
    [("Tesla V100-SXM2-32GB", (7, 0)), ("Tesla T4", (7, 5)), ("NVIDIA A100-SXM4-80GB", (8, 0)),
     ("NVIDIA A10G", (8, 6)), ("NVIDIA L40S", (8, 9)), ("NVIDIA GeForce RTX 4090", (8, 9)),
     ("NVIDIA H100 80GB HBM3", (9, 0)), ("NVIDIA H200", (9, 0)), ("NVIDIA GH200 480GB", (9, 0)),
     ("a100-40", (8, 0)), ("rtx4090", (8, 9)), ("Quadro RTX 4000", None), ("cpu", None)],
)  # fmt: skip
def test_compute_capability_from_a_gpu_name(name, cc):
    assert cuda_capability_for_gpu_name(name) == cc


EXPECTED_PLAN = {"v100": "fp16", "a100-40": "bf16", "a100-80": "bf16", "h100": "bf16",
                 "h200": "bf16", "l40s": "bf16", "rtx4090": "bf16", "cpu": "fp32"}  # fmt: skip


def test_plan_can_resolve_auto_for_every_device_it_prices():
    assert set(EXPECTED_PLAN) == set(DEVICE_NAMES)
    for name in DEVICE_NAMES:
        cap = capability_for_device_name(name)
        assert precision_for_plan("auto", name).precision == EXPECTED_PLAN[name], name
        assert cap.kind == ("cpu" if name == "cpu" else "cuda")
    assert capability_for_device_name("h200").memory_gb == 141
    assert precision_for_plan("auto", None).precision == "fp32"  # no gpu: the CPU row
    assert precision_for_plan("auto", "t4").precision == "fp16"
    assert "emulated" in precision_for_plan("bf16", "v100").warning
    with pytest.raises(UserError, match="device 'mi300x': compute capability not known"):
        capability_for_device_name("mi300x")


@pytest.mark.parametrize(
    ("text", "parsed"), [("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
                         ("cuda:1", ("cuda", 1)), (" CUDA:0 ", ("cuda", 0))],
)  # fmt: skip
def test_parse_device(text, parsed):
    assert parse_device(text) == parsed


@pytest.mark.parametrize("text", ["foo", "cpu:0", "cuda:-1", "gpu", "cuda:x", ""])
def test_parse_device_refuses_other_strings(text):
    with pytest.raises(UserError, match="expected cpu, cuda or cuda:N"):
        parse_device(text)


def test_read_cpuinfo_x86_and_aarch64(tmp_path):
    x86 = tmp_path / "x86"
    first = "processor\t: 0\nmodel name\t: AMD EPYC 9354\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    x86.write_text(first + "\nprocessor\t: 1\nmodel name\t: other\nflags\t: fpu\n")
    name, flags = read_cpuinfo(x86)
    assert name == "AMD EPYC 9354" and {"avx2", "avx512_bf16"} <= flags and "fpu" in flags
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd4f\n")
    _, arm_flags = read_cpuinfo(arm)
    assert cpu_capability(arm_flags).native_bf16
    name, flags = read_cpuinfo(tmp_path / "absent")
    assert name and flags == frozenset()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo")
def test_detect_cpu_agrees_with_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("flags"))
    flags = set(line.split(":")[1].split())
    cap = detect("cpu")
    assert cap.kind == "cpu" and cap.memory_gb > 0
    assert cap.native_bf16 == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert isinstance(cap.to_dict()["native_bf16"], bool)


def test_importing_the_package_and_the_cli_is_cheap():
    code = ("import sys, prism_hpc.hardware.capability, prism_hpc.hardware.doctor, "
            "prism_hpc.hardware.probe, prism_hpc.cli_doctor; "
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_probe_times_every_precision_and_reports_ratios_to_fp32():
    from prism_hpc.hardware.probe import time_precisions

    result = time_precisions("cpu", resolution=32, batch=2, repeats=2)
    by = {t.precision: t for t in result.timings}
    assert list(by) == ["fp32", "bf16", "fp16"]
    assert by["fp32"].ratio == 1.0 and by["fp32"].seconds_per_step > 0
    for t in by.values():
        assert t.error is None and t.ratio > 0 and t.pilot_s > 0
    assert set(result.ratios()) == {"fp32", "bf16", "fp16"}
    assert result.threads == 1 and result.to_dict()["timings"]["fp32"]["ratio"] == 1.0


def test_channels_last_and_compile_checks_answer_without_compiling():
    from prism_hpc.hardware.probe import check_channels_last, check_compile

    assert check_channels_last("cpu").status == "ok"
    compiled = check_compile("cpu")
    assert compiled.status in ("ok", "warn") and compiled.data.get("tried") in (False, None)


@pytest.fixture
def fake_v100(monkeypatch):
    """torch.cuda answering like a node with one V100 (no GPU needed)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    import torch

    from prism_hpc.hardware import capability

    props = SimpleNamespace(name="Tesla V100-SXM2-32GB", major=7, minor=0, total_memory=32e9)
    for attr, value in {"is_available": lambda: True, "device_count": lambda: 1,
                        "current_device": lambda: 0, "get_device_properties": lambda i: props,
                        "device": lambda i: nullcontext(),
                        "is_bf16_supported": lambda: True}.items():  # fmt: skip
        monkeypatch.setattr(torch.cuda, attr, value)
    capability._detect.cache_clear()
    yield
    capability._detect.cache_clear()


def test_detect_cuda_goes_by_compute_capability_not_torchs_claim(fake_v100):
    cap = detect("cuda")
    assert (cap.kind, cap.cuda_capability, cap.torch_bf16) == ("cuda", (7, 0), True)
    assert not cap.native_bf16 and round(cap.memory_gb) == 32
    assert choose_precision("auto", cap).precision == "fp16"
    with pytest.raises(UserError, match="cuda:1: only 1 CUDA device"):
        detect("cuda:1")


def test_doctor_lists_the_gpus_it_sees(fake_v100):
    from prism_hpc.hardware.doctor import _torch_checks

    checks = {c.name: c for c in _torch_checks("cuda")}
    assert checks["cuda"].status in ("ok", "warn")
    assert checks["gpus"].status == "ok" and "Tesla V100-SXM2-32GB, 32.0 GB, 7.0" in checks[
        "gpus"].detail  # fmt: skip


def test_a_capped_onednn_vetoes_the_cpu_bf16_flag(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 on a Zen 4: the flag is there, torch says no bf16, and bf16
    runs emulated (~160x slower than fp32 for a conv here): auto must give fp32."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = cpu_capability({"avx2", "avx512f", "avx512_bf16"}, "Zen 4", torch_bf16=False)
    assert not capped.native_bf16
    choice = choose_precision("auto", capped)
    assert choice.precision == "fp32"
    assert "oneDNN does not use it (ONEDNN_MAX_CPU_ISA=AVX2)" in choice.reason
    assert choose_precision("bf16", capped).warning is not None
    unknown = cpu_capability({"avx512_bf16"}, "Zen 4", torch_bf16=None)  # torch not asked
    assert unknown.native_bf16 and choose_precision("auto", unknown).precision == "bf16"


def test_detect_follows_the_onednn_cap_in_a_fresh_process():
    code = ("from prism_hpc.hardware.capability import detect; c = detect('cpu'); "
            "print(c.torch_bf16, c.native_bf16)")  # fmt: skip
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert out.stdout.split() == ["False", "False"], out.stderr
