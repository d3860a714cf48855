"""The Fashion-MNIST benchmark driver (benchmarks/fmnist_prism_vs_sre2l) without running the
benchmark: the run list, configs through the schema, the sweep spec it hands to `prism-hpc
sweep`, refusing changed runs, and stage times read from the items' markers."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MODULE = "benchmarks.fmnist_prism_vs_sre2l.run"


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("benchmarks.fmnist_prism_vs_sre2l.driver")


@pytest.fixture(scope="module")
def shared():
    return importlib.import_module("benchmarks.fmnist_shared.runlist")


def _fake_run_dir(shared, out: Path, spec) -> Path:
    rd = shared.run_dir(out, spec)
    rd.mkdir(parents=True)
    text = yaml.safe_dump(spec.config, sort_keys=False)
    (rd / "config.input.yaml").write_text(text)
    (rd / "config.yaml").write_text(text)
    return rd


def test_smoke_dry_run_is_the_sweeps_dry_run(tmp_path):
    out = tmp_path / "smoke"
    result = subprocess.run(
        [sys.executable, "-m", MODULE, "--smoke", "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "SMOKE MODE" in result.stdout
    assert "13 point(s) after 1 first" in result.stdout  # 5 main + 8 Table 2 rows
    lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    names = [line.split(":")[0] for line in lines]
    assert names[0] == "pool" and len(names) == 14 and len(set(names)) == 14
    assert lines[0].endswith("--stages squeeze  [first]")
    assert not any("[exists" in line for line in lines)
    assert not out.exists()  # a dry run writes nothing


def test_run_lists_and_merged_configs(bench, tmp_path):
    full = bench.build_specs(bench.MODES["full"], tmp_path)
    bench.validate(full)  # every merged config passes the real schema
    groups = [s.group for s in full]
    assert groups.count("pool") == 1 and groups.count("table2") == 16
    main = [s for s in full if s.group == "main"]
    assert len(main) == 2 * (3 + 2 * 2 * 3)  # IPC x (baseline seeds + init x method x seed)
    for s in main:
        cfg = s.config
        assert cfg["students"]["seeds"] == [0, 1, 2] and cfg["squeeze"]["enabled"] is False
        assert cfg["teachers"]["resnet18"]["weights"] == str(
            tmp_path / "runs/pool/teachers/resnet18.pt"
        )
        # the same number of student steps at every IPC, one relabel file, one evaluation
        assert cfg["students"]["epochs"] * s.ipc == 1000
        assert cfg["relabel"]["epochs_per_task"] == cfg["students"]["epochs"]
        assert cfg["students"]["eval_every"] == cfg["students"]["epochs"]
    baseline = [s for s in main if s.variant == "real_images"]
    assert all(s.config["recover"]["init_only"] and s.init == "real" for s in baseline)
    sre2l = [s for s in main if s.variant == "sre2l"]
    assert all(s.config["recover"]["bn_pool"] == [] for s in sre2l)
    assert {s.init for s in sre2l} == {"real", "noise"}
    t2 = [s for s in full if s.group == "table2"]
    assert all(s.ipc == 10 and s.config["relabel"]["mode"] == "none" for s in t2)
    assert {s.config["method"] for s in t2} == {
        yaml.safe_load((bench.VARIANTS / f"{row}.yaml").read_text())["method"]
        for row, _ in bench.TABLE2_ROWS
    }
    for mode in ("quick", "smoke"):
        bench.validate(bench.build_specs(bench.MODES[mode], tmp_path))
    assert len(bench.build_specs(bench.MODES["quick"], tmp_path)) < len(full)


def test_the_run_list_becomes_a_sweep_spec_with_the_pool_first(bench, shared, tmp_path):
    from prism_hpc.sweep.spec import load_spec

    out = tmp_path / "out"
    specs = bench.build_specs(bench.MODES["smoke"], out)
    spec = load_spec(shared.write_sweep(out, "smoke", specs))
    assert [p.name for p in spec.first] == ["pool"] and spec.first[0].stages == ("squeeze",)
    assert [p.name for p in spec.points] == [s.name for s in specs[1:]]
    for s, point in zip(specs[1:], spec.points, strict=True):
        assert yaml.safe_load(point.config.read_text()) == s.config  # the merged config as is
        assert point.overrides == () and point.stages is None
    pool_weights = shared.pool_dir(out) / "teachers" / "resnet18.pt"
    assert specs[1].config["teachers"]["resnet18"]["weights"] == str(pool_weights)
    again = load_spec(shared.write_sweep(out, "smoke", specs))
    assert again.digest == spec.digest  # the same mode gives the same sweep: it resumes


def test_a_run_started_from_another_config_is_refused(bench, shared, tmp_path):
    out = tmp_path / "out"
    specs = bench.build_specs(bench.MODES["smoke"], out)
    pool, same, changed = specs[:3]
    _fake_run_dir(shared, out, same)
    rd = _fake_run_dir(shared, out, changed)
    (rd / "config.input.yaml").write_text(yaml.safe_dump(dict(changed.config, seed=99)))
    assert shared.changed_runs(out, specs) == [changed.name]
    # the pool: only what the teachers depend on counts
    prd = _fake_run_dir(shared, out, pool)
    stored = yaml.safe_load((prd / "config.input.yaml").read_text())
    stored["recover"]["lr"] = 1.0
    (prd / "config.input.yaml").write_text(yaml.safe_dump(stored))
    assert shared.changed_runs(out, specs) == [changed.name]
    stored["squeeze"]["lr"] = 1.0
    (prd / "config.input.yaml").write_text(yaml.safe_dump(stored))
    assert shared.changed_runs(out, specs) == ["pool", changed.name]


def test_stage_times_come_from_the_markers(bench, shared, tmp_path):
    """The report's stage columns: the `item_seconds` of the items' markers (no log line)."""
    from benchmarks.fmnist_shared.timing import item_times, stage_seconds
    from prism_hpc.stages import registry
    from prism_hpc.store.rundir import RunDir

    out = tmp_path / "out"
    spec = bench.build_specs(bench.MODES["smoke"], out)[1]
    rd = _fake_run_dir(shared, out, spec)
    assert stage_seconds(rd) == {}
    cfg = RunDir(rd).load_config()
    for name, seconds in (("train", 1.5), ("report", 0.5)):
        stage = registry().by_name(name)
        (marker,) = stage.markers(rd, stage.items(cfg)[0])
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"id": name, "item_seconds": seconds}))
    assert item_times(rd) == [("train", "resnet18-seed0", 1.5), ("report", "report", 0.5)]
    assert stage_seconds(rd) == {"train": 1.5, "report": 0.5}
    assert stage_seconds(tmp_path / "missing") == {}


def test_estimate_orders_the_modes(bench, tmp_path):
    costs = {
        "recover_iter_s": {"sre2l": 0.03, "prism": 0.07},
        "calibration": {"student_step_s": 0.15, "eval_image_s": 0.0012, "relabel_visit_s": 0.003},
        "squeeze_step_s": 0.4, "squeeze_overhead_s": 15.0,
    }  # fmt: skip
    walls = {
        m: bench.estimate_wall(bench.build_specs(bench.MODES[m], tmp_path), costs, 2)["wall_s"]
        for m in ("full", "quick", "smoke")
    }
    assert walls["full"] > walls["quick"] > walls["smoke"] > 0


def test_publish_copies_the_report_and_replaces_stale_figures(bench, tmp_path):
    out, dest = tmp_path / "out", tmp_path / "dest"
    (out / "figures" / "ipc10-real" / "figures").mkdir(parents=True)
    (out / "BENCHMARKS.md").write_text("see [figures/ipc10-real/report.md]\n")
    (out / "figures" / "ipc10-real" / "report.md").write_text("new report\n")
    (out / "figures" / "ipc10-real" / "figures" / "grid.png").write_bytes(b"png")
    (dest / "figures" / "old-group").mkdir(parents=True)
    (dest / "figures" / "old-group" / "stale.png").write_bytes(b"old")

    bench.publish(out, dest)

    assert (dest / "BENCHMARKS.md").read_text() == "see [figures/ipc10-real/report.md]\n"
    assert (dest / "figures" / "ipc10-real" / "report.md").read_text() == "new report\n"
    assert (dest / "figures" / "ipc10-real" / "figures" / "grid.png").read_bytes() == b"png"
    assert not (dest / "figures" / "old-group").exists()
