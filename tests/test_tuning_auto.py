"""`recover.pack: auto` and `students.channels_last: auto` read the per-device measurement in
the calibration file (`bench recover --calibrate`): with one, the faster measured value; without
one, today's default, said once in the stage log. Explicit values and the defaults are
untouched (the demo's bits do not follow a cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from prism_hpc.cli import app
from prism_hpc.config.load import config_from_dict, deep_merge, load_config
from prism_hpc.cost import calibration
from prism_hpc.cost.calibration import Measured, read_calibration, read_settings, write_entry
from prism_hpc.errors import UserError
from prism_hpc.hardware.capability import detect
from prism_hpc.hardware.tuning import CHANNELS_LAST, PACK, device_key
from prism_hpc.stages import costing
from prism_hpc.stages.recover import RecoverStage
from prism_hpc.stages.tuning import planned_pack, resolved_pack, task_pack
from prism_hpc.train.student import use_channels_last, use_fused_optimizer
from tests.helpers import BASE

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty user cache: the calibration file is $XDG_CACHE_HOME/prism-hpc/calibration.json."""
    monkeypatch.delenv("PRISM_HPC_CALIBRATION", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    costing._calibration.cache_clear()
    yield tmp_path / "cache" / "prism-hpc" / "calibration.json"
    costing._calibration.cache_clear()


def _measure(key: str, name: str, seconds: dict) -> None:
    calibration.write_setting(key, name, seconds, "test")


def _cfg(tiny_cfg: dict, **recover) -> object:
    return config_from_dict(deep_merge(tiny_cfg, {"recover": recover}))


def test_pack_auto_takes_the_faster_measured_pack_of_this_device(tiny_cfg, cache):
    cfg = _cfg(tiny_cfg, pack="auto")
    here = device_key(detect("cpu"))
    none = task_pack(cfg, "cpu")
    assert none.value == 1 and not none.measured and "no measurement" in none.reason
    _measure(here, PACK, {"1": 0.020, "4": 0.012})
    fast = task_pack(cfg, "cpu")
    assert fast.value == 4 and fast.measured and here in fast.reason
    _measure(here, PACK, {"1": 0.020, "4": 0.031})  # packing did not pay off on this CPU
    assert task_pack(cfg, "cpu").value == 1
    _measure("cpu:another CPU [avx2]", PACK, {"1": 0.05, "8": 0.01})  # not this device
    assert task_pack(cfg, "cpu").value == 1


def test_the_recover_task_logs_the_pack_once_and_explicit_values_stay(tiny_cfg, cache):
    _measure(device_key(detect("cpu")), PACK, {"1": 0.02, "4": 0.01})
    lines: list[str] = []
    resolved = resolved_pack(_cfg(tiny_cfg, pack="auto"), "cpu", lines.append)
    assert resolved.recover.pack == 4
    assert len(lines) == 1 and lines[0].startswith("recover auto: recover.pack 4: the faster")
    for explicit in (1, 3):
        cfg = _cfg(tiny_cfg, pack=explicit)
        assert resolved_pack(cfg, "cpu", lines.append) is cfg
    assert len(lines) == 1
    assert config_from_dict(tiny_cfg).recover.pack == 1  # the default is not auto


def test_pack_auto_is_one_when_recovery_optimises_one_chunk_at_a_time(tiny_cfg, cache):
    _measure(device_key(detect("cpu")), PACK, {"1": 0.02, "4": 0.01})
    joint = _cfg(tiny_cfg, pack="auto", batching="joint")
    choice = task_pack(joint, "cpu")
    assert choice.value == 1 and "joint" in choice.reason
    with pytest.raises(UserError, match="set pack 1"):
        _cfg(tiny_cfg, pack=2, batching="joint")


def test_plan_prices_the_measured_pack_of_the_stage_gpu(cache):
    sets = ["recover.pack=auto", "resources.recover.gpu=h100"]
    cfg, _ = load_config(Path("configs/in1k_ipc50.yaml"), sets)
    assert planned_pack(cfg).value == 1
    before = RecoverStage().estimate(cfg)
    assert before["pack"] == 1 and "no measurement for cuda:h100" in before["cost_note"]
    _measure("cuda:h100", PACK, {"1": 0.004, "4": 0.002})
    costing._calibration.cache_clear()
    after = RecoverStage().estimate(cfg)
    assert after["pack"] == 4 and "recover.pack 4: the faster measured on cuda:h100" in (
        after["cost_note"])  # fmt: skip
    assert after["gpu_hours"] <= before["gpu_hours"]  # packs share launches
    plain, _ = load_config(Path("configs/in1k_ipc50.yaml"), sets[1:])
    assert "pack" not in RecoverStage().estimate(plain)


def test_channels_last_auto_on_cpu_with_and_without_a_measurement(cache):
    cfg = config_from_dict(deep_merge(BASE, {"students": {"channels_last": "auto"}}))
    lines: list[str] = []
    assert use_channels_last(cfg, CPU, lines.append) is False  # None's CPU choice
    assert lines[0].startswith("students auto: students.channels_last false: no measurement")
    _measure(device_key(detect("cpu")), CHANNELS_LAST, {"false": 0.030, "true": 0.021})
    assert use_channels_last(cfg, CPU, lines.append) is True
    assert "the faster measured on cpu:" in lines[1]
    assert use_fused_optimizer(cfg, CPU)  # rides with the chosen layout, as documented
    _measure(device_key(detect("cpu")), CHANNELS_LAST, {"false": 0.020, "true": 0.021})
    assert use_channels_last(cfg, CPU) is False
    default = config_from_dict(BASE)
    assert default.students.channels_last is None and not use_channels_last(default, CPU)


def test_entries_and_settings_keep_each_other(cache):
    write_entry("cpu", "train", Measured(1e9, 1, "x"))
    _measure("cpu:x [avx2]", PACK, {"1": 1.0, "2": 0.5})
    write_entry("cpu", "infer", Measured(2e9, 1, "y"))
    assert set(read_calibration()["cpu"]) == {"train", "infer"}
    assert read_settings()["cpu:x [avx2]"][PACK]["seconds"] == {"1": 1.0, "2": 0.5}
    data = json.loads(cache.read_text())
    data["settings"]["cpu:x [avx2]"][PACK]["seconds"]["2"] = -1
    cache.write_text(json.dumps(data))
    with pytest.raises(UserError, match="bench --calibrate"):
        read_settings()


def test_bench_calibrate_writes_both_settings_for_this_device(tmp_path, monkeypatch):
    cal = tmp_path / "cal.json"
    args = ["bench", "recover", "--res", "16", "--batch", "2", "--iters", "1", "--warmup", "0",
            "--no-memory", "--threads", "1", "--calibrate", "--calibration", str(cal),
            "--student-width", "0.25", "--student-batch", "4", "--json"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    here = device_key(detect("cpu"))
    found = read_settings(cal)[here]
    assert set(found[PACK]["seconds"]) == {"1", "4"}
    assert set(found[CHANNELS_LAST]["seconds"]) == {"false", "true"}
    assert set(read_calibration(cal)["cpu"]) == {"recover", "train", "infer"}
