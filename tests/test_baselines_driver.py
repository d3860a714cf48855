"""The multi-method benchmark driver (benchmarks/fmnist_baselines/run.py) without running it:
methods found from their configs, one protocol, and partner runs that supply every DD-Ranking
number (checked with the report's own matching in `prism_hpc.metrics.ddranking`)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prism_hpc.metrics import ddranking
from prism_hpc.metrics.runs import RunInfo, StudentResult

REPO = Path(__file__).resolve().parent.parent
MODULE = "benchmarks.fmnist_baselines.run"


@pytest.fixture(scope="module")
def specs_mod():
    return importlib.import_module("benchmarks.fmnist_baselines.suite.specs")


def test_every_mode_builds_valid_configs_and_finds_every_method(specs_mod, tmp_path):
    methods = specs_mod.discover_methods()
    keys = [m.key for m in methods]
    expected = ["prism"] + sorted(
        p.stem.removeprefix("fmnist_") for p in (REPO / "configs" / "baselines").glob("fmnist_*.yaml")
    )  # fmt: skip
    assert keys == expected
    for mode in specs_mod.MODES.values():
        specs = specs_mod.build_specs(mode, tmp_path, methods)
        specs_mod.validate(specs)
        assert [s.name for s in specs[:2]] == ["pool", "full_real-hard"]
        assert len({s.name for s in specs}) == len(specs)


def test_one_protocol_a_method_differs_only_in_recover(specs_mod, tmp_path):
    mode = specs_mod.MODES["quick"]
    specs = specs_mod.build_specs(mode, tmp_path, only={"prism", "sre2l", "cda", "delt"})
    soft = [s for s in specs if s.group == "method"]
    ref = soft[0].config
    for s in soft:
        for sec in ("data", "relabel", "students", "metrics", "teachers"):
            assert s.config[sec] == ref[sec], (s.name, sec)
        assert s.config["students"]["seeds"] == [0] and s.config["students"]["epochs"] == 100
    sre2l = yaml.safe_load((REPO / "configs/baselines/fmnist_sre2l.yaml").read_text())["recover"]
    run = next(s for s in soft if s.name == "ipc10-sre2l-noise-s1").config["recover"]
    assert run["iterations"] == sre2l["iterations"] // 2 and run["init"] == "noise"
    assert {k: v for k, v in run.items() if k not in ("iterations", "ipc", "cpu_threads")} == {
        k: v for k, v in sre2l.items() if k not in ("iterations", "ipc")
    }
    other = next(s for s in soft if s.name == "ipc10-sre2l-real-s0").config["recover"]
    assert other["init"] == "real" and other["lr"] == 0.05  # the sibling's init_real.yaml
    delt = next(s for s in soft if s.name == "ipc10-delt-real-s0").config["recover"]
    assert (delt["iterations"], delt["iteration_step"]) == (100, 12)  # 200/25 halved
    assert not any(s.name.startswith("ipc10-delt-noise") for s in specs)  # real init only
    teachers = {t["weights"] for t in ref["teachers"].values()}
    assert teachers == {str((tmp_path / "runs" / "pool" / "teachers" / f"{n}.pt").resolve())
                        for n in ref["teachers"]}  # fmt: skip


def _fake(spec, top1: float) -> RunInfo:
    rec = spec.config["recover"]
    info = RunInfo(
        path=Path(spec.name), cfg=spec.config, method=spec.config["method"],
        ipc=0 if rec["ipc"] == "all" else rec["ipc"], init=rec.get("init", "real"),
        seed=spec.config["seed"], data_key="fashion_mnist 32 px",
        students=[StudentResult("resnet18", s, top1) for s in spec.config["students"]["seeds"]],
    )  # fmt: skip
    info.row = f"{info.method} ({info.init} init)"  # as load_runs labels a two-init method
    return info


def test_partner_runs_supply_every_ddranking_number(specs_mod, tmp_path):
    """Accuracies by role (method 60, syn-hard 40, random subset 50, full real 90): every method
    row finds all four, HLR = 90 - 40, IOR = 60 - 50."""
    specs = specs_mod.build_specs(specs_mod.MODES["quick"], tmp_path)
    top1 = {"method": 60.0, "hard": 40.0, "rdm": 50.0, "real": 90.0}
    runs = [_fake(s, top1[s.group]) for s in specs[1:]]
    rows = ddranking.lrs_rows(runs)
    methods = {s.config["method"] for s in specs if s.group == "method"}
    assert {r.method.split(" (")[0] for r in rows} == methods
    for r in rows:
        assert r.missing == [], r
        assert (r.hlr, r.ior) == (50.0, 10.0)
        assert r.lrs == pytest.approx(ddranking.lrs(50.0, 10.0))


def test_dry_run_lists_runs_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", MODULE, "--smoke", "--dry-run", "--out", str(out), "--methods",
         "sre2l,delt"], capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = [line.split(":")[0].strip() for line in done.stdout.splitlines()
             if line.startswith("  ")]  # the sweep's dry run: one line per point  # fmt: skip
    assert names == ["pool", "full_real-hard", "ipc2-delt-real-s0", "ipc2-delt-real-hard-s0",
                     "ipc2-sre2l-noise-s0", "ipc2-sre2l-noise-hard-s0", "ipc2-random_real-s0",
                     "ipc2-sre2l-real-s0", "ipc2-sre2l-real-hard-s0"]  # other init last  # fmt: skip
    assert not out.exists()
    bad = subprocess.run([sys.executable, "-m", MODULE, "--smoke", "--dry-run", "--methods",
                          "nope"], capture_output=True, text=True, check=False, cwd=REPO)  # fmt: skip
    assert bad.returncode != 0 and "--methods: unknown ['nope']" in bad.stderr
