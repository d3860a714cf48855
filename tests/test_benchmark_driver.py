"""The Fashion-MNIST benchmark driver (benchmarks/fmnist_prism_vs_sre2l/run.py) without running
the benchmark: the run list, configs through the schema, skip/resume decisions, one fake submit."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "fmnist_prism_vs_sre2l" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("fmnist_bench_driver", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # puts the script's folder (its `driver` package) on sys.path
    return importlib.import_module("driver")


def _fake_run_dir(bench, out: Path, spec, finished: bool) -> Path:
    rd = bench.run_dir(out, spec)
    rd.mkdir(parents=True)
    text = yaml.safe_dump(spec.config, sort_keys=False)
    (rd / "config.input.yaml").write_text(text)
    (rd / "config.yaml").write_text(text)
    if finished:
        (rd / "report").mkdir()
        (rd / "report" / "report.done").write_text(json.dumps({"report": "report.md"}))
    return rd


def test_smoke_dry_run_lists_every_run(tmp_path):
    out = tmp_path / "smoke"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--dry-run", "--out", str(out)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "SMOKE MODE" in result.stdout
    lines = [line for line in result.stdout.splitlines() if not line.startswith("[bench]")]
    names = [line.split()[0] for line in lines]
    assert names[0] == "pool" and len(names) == 14  # pool + 5 main + 8 Table 2 rows
    assert all(" new " in line for line in lines)
    assert "--stages squeeze" in lines[0] and "--resume" not in result.stdout
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
        assert cfg["teachers"]["resnet18"]["weights"] == str(tmp_path / "pool/teachers/resnet18.pt")
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


def test_skip_resume_changed_broken(bench, tmp_path):
    out = tmp_path / "out"
    specs = bench.build_specs(bench.MODES["smoke"], out)
    pool, done, partial, changed, broken, new = specs[:6]
    _fake_run_dir(bench, out, done, finished=True)
    _fake_run_dir(bench, out, partial, finished=False)
    rd = _fake_run_dir(bench, out, changed, finished=True)
    edited = dict(changed.config, seed=99)
    (rd / "config.input.yaml").write_text(yaml.safe_dump(edited))
    bench.run_dir(out, broken).mkdir(parents=True)
    (bench.run_dir(out, broken) / "provenance.json").write_text("{}")
    assert bench.status(out, done) == "done"
    assert bench.status(out, partial) == "partial"
    assert bench.status(out, changed) == "changed"
    assert bench.status(out, broken) == "broken"
    assert bench.status(out, new) == "new"
    assert "--resume" in bench.command(out, partial, "partial", 2)
    assert "--resume" not in bench.command(out, new, "new", 2)

    # the pool: done when every squeezed teacher has weights and a marker; edits of base.yaml
    # outside what the teachers depend on do not invalidate it
    prd = _fake_run_dir(bench, out, pool, finished=False)
    assert bench.status(out, pool) == "partial"
    (prd / "teachers").mkdir()
    for name in bench.squeezed_teachers(pool):
        (prd / "teachers" / f"{name}.pt").write_bytes(b"x")
        (prd / "teachers" / f"{name}.done").write_text("{}")
    assert bench.status(out, pool) == "done"
    stored = yaml.safe_load((prd / "config.input.yaml").read_text())
    stored["recover"]["lr"] = 1.0
    (prd / "config.input.yaml").write_text(yaml.safe_dump(stored))
    assert bench.status(out, pool) == "done"
    stored["squeeze"]["lr"] = 1.0
    (prd / "config.input.yaml").write_text(yaml.safe_dump(stored))
    assert bench.status(out, pool) == "changed"


def test_runner_skips_done_and_times_a_fake_submit(bench, tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    specs = bench.build_specs(bench.MODES["smoke"], out)
    done, partial = specs[1], specs[2]
    _fake_run_dir(bench, out, done, finished=True)
    rd = _fake_run_dir(bench, out, partial, finished=False)
    # A stand-in for `prism-hpc`: argv = submit --resume RUN ...; logs two items, writes the marker
    fake = (
        "import sys, pathlib; rd = pathlib.Path(sys.argv[sys.argv.index('--resume') + 1]);"
        "print('[train] 1/1 done (resnet18-seed0, 1.5 s)');"
        "print('[report] 1/1 done (report, 0.5 s)');"
        "(rd / 'report').mkdir(exist_ok=True); (rd / 'report' / 'report.done').write_text('{}')"
    )
    monkeypatch.setattr(bench.runner, "cli", lambda: [sys.executable, "-c", fake])
    timings = bench.Timings(out / "timings.json")
    runner = bench.Runner(out, 1, timings)
    calls = []
    real_popen = subprocess.Popen

    def popen(cmd, *a, **kw):
        calls.append(cmd)
        return real_popen(cmd, *a, **kw)

    monkeypatch.setattr(bench.runner.subprocess, "Popen", popen)
    assert runner.run(done, "[1/2]") is True and calls == []  # finished: not launched
    assert runner.run(partial, "[2/2]") is True and len(calls) == 1
    assert "--resume" in calls[0] and str(rd) in calls[0]
    assert bench.status(out, partial) == "done"
    assert bench.stage_seconds(out, partial.name) == {"train": 1.5, "report": 0.5}
    attempts = json.loads((out / "timings.json").read_text())["runs"][partial.name]
    assert len(attempts) == 1 and attempts[0]["rc"] == 0 and attempts[0]["resume"] is True
    assert runner.run(partial, "[2/2]") is True and len(calls) == 1  # now skipped

    # the run dir deleted by hand: a fresh start, the old logs and timings no longer count
    shutil.rmtree(rd)
    monkeypatch.setattr(bench.runner, "cli", lambda: [sys.executable, "-c", "print('no marker')"])
    assert runner.run(partial, "[2/2]") is False and len(calls) == 2
    assert "--resume" not in calls[1]
    assert bench.stage_seconds(out, partial.name) == {}
    assert len(list((out / "logs" / "stale").glob(f"*{partial.name}.attempt1.log"))) == 1
    data = json.loads((out / "timings.json").read_text())
    assert len(data["runs"][partial.name]) == 1 and len(data["stale"][partial.name]) == 1


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
