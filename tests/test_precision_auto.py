"""`recover.precision: auto` wired through: `plan` prices what the device runs natively and
says so, an explicit bf16 without native support warns at plan and submit, and the recover
task resolves auto on the device it has."""

from __future__ import annotations

import json

import pytest

from prism_hpc.config.load import config_from_dict
from prism_hpc.hardware.capability import cpu_capability, detect
from prism_hpc.stages import precision as stage_precision
from prism_hpc.stages.preflight import precision_warnings
from prism_hpc.stages.recover import _resolved_precision
from prism_hpc.workflow import TaskEnv
from tests.helpers import run_cli

IN1K = "configs/in1k_ipc50.yaml"


def _recover_estimate(*sets: str) -> dict:
    args = [a for s in sets for a in ("--set", s)]
    result = run_cli("plan", IN1K, "--json", *args)
    assert result.returncode == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    return next(s for s in stages if s["stage"] == "recover")["estimate"]


@pytest.mark.parametrize(("gpu", "expected"), [("v100", "fp16"), ("a100-80", "bf16"),
                                               ("h100", "bf16"), ("l40s", "bf16")])  # fmt: skip
def test_plan_prices_auto_per_gpu_and_says_so(gpu, expected):
    est = _recover_estimate(f"resources.recover.gpu={gpu}")
    assert est["precision"] == expected
    assert f"precision auto: {expected}" in est["cost_note"]
    assert not est["warnings"] or all("bf16" not in w for w in est["warnings"])


def test_explicit_bf16_on_a_v100_warns_in_plan_and_is_priced_as_asked():
    est = _recover_estimate("resources.recover.gpu=v100", "recover.precision=bf16")
    assert est["precision"] == "bf16"
    (warning,) = [w for w in est["warnings"] if "bf16" in w]
    assert "V100" in warning and "no native bf16" in warning


def test_submit_warns_for_bf16_on_a_cpu_without_it(tiny_cfg, monkeypatch):
    avx2 = cpu_capability(frozenset({"avx2", "fma"}), "AMD EPYC (AVX2)", 24.0, False)
    monkeypatch.setattr(stage_precision, "detect", lambda device: avx2)
    tiny_cfg["recover"]["precision"] = "bf16"
    (line,) = precision_warnings(config_from_dict(tiny_cfg))
    assert line.startswith("recover: bf16 on AMD EPYC (AVX2)") and "no native bf16" in line
    tiny_cfg["recover"]["precision"] = "auto"
    assert precision_warnings(config_from_dict(tiny_cfg)) == []


def test_the_task_resolves_auto_on_its_own_device(tiny_cfg, tmp_path):
    tiny_cfg["recover"]["precision"] = "auto"
    lines: list[str] = []
    env = TaskEnv(run_dir=tmp_path, log=lines.append)
    resolved = _resolved_precision(config_from_dict(tiny_cfg), env)
    native = detect("cpu").native_bf16
    assert resolved.recover.precision == ("bf16" if native else "fp32")
    assert len(lines) == 1 and lines[0].startswith(f"precision auto: {resolved.recover.precision}")
    tiny_cfg["recover"]["precision"] = "fp32"
    kept = _resolved_precision(config_from_dict(tiny_cfg), env)
    assert kept.recover.precision == "fp32"
