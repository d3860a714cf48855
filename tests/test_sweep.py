"""`prism-hpc sweep`: spec expansion, dry run, a 2 x 2 grid end to end, resume, sweep status
and report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from prism_hpc.errors import UserError
from prism_hpc.sweep.spec import load_spec
from tests.conftest import write_yaml
from tests.helpers import run_cli


def _spec(tmp_path, **data):
    base = tmp_path / "base.yaml"
    if not base.exists():
        write_yaml(base, {"name": "b", "teachers": {"r": {"arch": "resnet18"}}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", **data}, sort_keys=False))
    return path


def test_points_are_the_product_in_axis_order_with_stable_names(tmp_path):
    spec = load_spec(_spec(tmp_path, name="g", axes={"seed": [0, 1], "recover.ipc": [10, 50]},
                           set=["students.epochs=1"]))  # fmt: skip
    assert [p.name for p in spec.points] == ["g_seed0_ipc10", "g_seed0_ipc50", "g_seed1_ipc10",
                                             "g_seed1_ipc50"]  # fmt: skip
    assert spec.points[1].overrides == ("students.epochs=1", "seed=0", "recover.ipc=50")
    assert spec.points[1].coords == (("seed", 0), ("recover.ipc", 50))
    assert load_spec(tmp_path / "s.yaml").digest == spec.digest  # same spec, same grid
    other = load_spec(_spec(tmp_path, name="g", axes={"seed": [0, 2], "recover.ipc": [10, 50]}))
    assert other.digest != spec.digest


def test_a_configs_axis_names_points_by_file(tmp_path):
    for name in ("prism", "sre2l"):
        write_yaml(tmp_path / f"{name}.yaml", {"name": name, "teachers": {}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "axes": {"configs": ["prism.yaml", "sre2l.yaml"],
                                                          "seed": [3]}}, sort_keys=False))  # fmt: skip
    spec = load_spec(path)
    assert [(p.name, p.config.name) for p in spec.points] == [("m_prism_seed3", "prism.yaml"),
                                                              ("m_sre2l_seed3", "sre2l.yaml")]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"axes": {"seed": []}}, "axes.seed: expected a non-empty list"),
        ({"axes": {"seed": [1, 1]}}, "axes.seed: lists a value twice"),
        ({"axes": {"seed": [1]}, "colour": 1}, "unknown key 'colour'"),
        ({"axes": {"seed": [1]}, "throttle": 0}, "throttle = 0"),
        ({"axes": {"seed": [1]}, "set": ["nokey"]}, "set: expected a list of KEY.PATH=VALUE"),
        ({"axes": {"seed": [1]}, "name": "a b"}, "name = 'a b'"),
        ({"axes": {"configs": ["missing.yaml"]}}, "missing.yaml: config file not found"),
    ],
)
def test_bad_specs_are_refused_in_one_line(tmp_path, data, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_spec(_spec(tmp_path, **data))


def test_cli_bad_spec_exits_2_without_traceback(tmp_path):
    result = run_cli("sweep", _spec(tmp_path, axes={"seed": []}))
    assert result.returncode == 2
    assert "axes.seed" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dry_run_lists_points_and_creates_nothing(tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep", _spec(tmp_path, name="g", axes={"seed": [0, 1]}), "--out", out,
                     "--dry-run")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "g_seed0" in result.stdout and "g_seed1" in result.stdout
    assert "--set seed=1" in result.stdout
    assert not out.exists()


def test_grid_runs_resumes_and_reports_mean_and_std(tmp_path, tiny_cfg_pretrained):
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=1)
    cfg["students"].update(epochs=1)
    write_yaml(tmp_path / "base.yaml", cfg)
    spec = _spec(tmp_path, name="grid", axes={"method": ["A", "B"], "seed": [0, 1]})
    out = tmp_path / "sweep"
    result = run_cli("sweep", spec, "--out", out, "--backend", "local")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "sweep.json").read_text())
    assert [p["state"] for p in record["points"]] == ["launched"] * 4
    markers = sorted(out.glob("*/students/*/seed*/.done")) or sorted(out.rglob("*.done"))
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.done")}
    assert len({p.parts[len(out.parts)] for p in markers}) == 4  # every point trained

    again = run_cli("sweep", spec, "--out", out, "--backend", "local")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("(done)") == 4  # every item has its marker: nothing submitted
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.done")} == stamps  # nothing redone

    status = run_cli("status", out, "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["state"] for r in rows] == ["done"] * 4 and all(r["done"] == r["total"] for r in rows)

    report = run_cli("report", out)
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    for method in ("A", "B"):  # one row per method, mean ± std over the two seeds
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} "))
        assert "±" in row, row

    changed = _spec(tmp_path, name="grid", axes={"method": ["A", "C"], "seed": [0, 1]})
    refused = run_cli("sweep", changed, "--out", out)
    assert refused.returncode == 2 and "other points" in refused.stderr


def _listed_spec(tmp_path, first, points, **data):
    return _spec(tmp_path, name="l", first=first, points=points, **data)


def test_listed_points_keep_their_names_sets_and_stages(tmp_path):
    write_yaml(tmp_path / "other.yaml", {"name": "o", "teachers": {}})
    spec = load_spec(_listed_spec(
        tmp_path, [{"name": "pool", "stages": ["squeeze"], "set": ["squeeze.max_steps=5"]}],
        [{"name": "ipc2-a-s0", "set": ["seed=0"]}, {"name": "b", "config": "other.yaml"}],
        set=["students.epochs=1"],
    ))  # fmt: skip
    assert [p.name for p in spec.first] == ["pool"] and spec.first[0].stages == ("squeeze",)
    assert spec.first[0].overrides == ("students.epochs=1", "squeeze.max_steps=5")
    assert [(p.name, p.config.name, p.overrides) for p in spec.points] == [
        ("ipc2-a-s0", "base.yaml", ("students.epochs=1", "seed=0")),
        ("b", "other.yaml", ("students.epochs=1",)),
    ]
    assert [p.name for p in spec.every] == ["pool", "ipc2-a-s0", "b"]
    moved = load_spec(_listed_spec(tmp_path, [{"name": "pool"}], [{"name": "ipc2-a-s0"}]))
    assert moved.digest != spec.digest


@pytest.mark.parametrize(
    ("first", "points", "message"),
    [
        ([], [{"name": "a"}], "first: expected a non-empty list"),
        ([{"name": "a"}], [{"name": "a"}], "two points get the same name"),
        (None, [{"name": "a b"}], "points[0]: name = 'a b'"),
        (None, [{"name": "a", "colour": 1}], "points[0]: unknown key 'colour'"),
        (None, [{"name": "a", "config": "nope.yaml"}], "nope.yaml: config file not found"),
        (None, [{"name": "a", "stages": "recover"}], "points[0].stages: expected a non-empty"),
        (None, [{"name": "a", "set": ["x"]}], "points[0].set: expected a list of KEY.PATH"),
    ],
)
def test_bad_listed_points_are_refused_in_one_line(tmp_path, first, points, message):
    data = {"points": points} if first is None else {"first": first, "points": points}
    with pytest.raises(UserError, match=re.escape(message)):
        load_spec(_spec(tmp_path, **data))


def test_dry_run_shows_first_points_and_their_stages(tmp_path):
    spec = _listed_spec(tmp_path, [{"name": "pool", "stages": ["squeeze"]}], [{"name": "a"}])
    result = run_cli("sweep", spec, "--out", tmp_path / "out", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "1 point(s) after 1 first" in lines[0]
    assert lines[1].split() == ["pool:", "base.yaml", "--stages", "squeeze", "[first]"]


def _pool_sweep(tmp_path, cfg, points) -> Path:
    cfg["squeeze"].update(max_steps=5)
    cfg["recover"].update(ipc=1, iterations=2, iteration_step=0)
    write_yaml(tmp_path / "base.yaml", cfg)
    pool = tmp_path / "out" / "pool" / "teachers"
    uses_pool = ["squeeze.enabled=false"] + [
        f"teachers.{t}.weights={pool / t}.pt" for t in cfg["teachers"]
    ]
    listed = [{"stages": ["recover"], **p, "set": uses_pool + p.get("set", [])} for p in points]
    return _listed_spec(tmp_path, [{"name": "pool", "stages": ["squeeze"]}], listed)


def test_jobs_run_the_pool_first_then_points_side_by_side(tmp_path, tiny_cfg):
    """A pool squeezed first, two points loading its teachers and one bad point, 2 at once:
    the bad one fails alone (exit 1, named with its log), the rest finish; a rerun submits
    nothing that is done; sweep.json keeps every submit's seconds."""
    spec = _pool_sweep(tmp_path, tiny_cfg, [{"name": "a", "set": ["seed=0"]},
                                             {"name": "b", "set": ["seed=1"]},
                                             {"name": "bad", "set": ["recover.iterations=0"]}])  # fmt: skip
    out = tmp_path / "out"
    result = run_cli("sweep", spec, "--out", out, "--backend", "local", "--jobs", "2")
    assert result.returncode == 1, result.stderr
    assert "1 point(s) failed: bad (log" in result.stderr and str(out / "bad.log") in result.stderr
    assert sorted(p.name for p in (out / "pool" / "teachers").glob("*.pt")) == [
        f"{t}.pt" for t in sorted(tiny_cfg["teachers"])
    ]
    assert not list((out / "pool").glob("recover/*.done"))  # the pool only squeezed
    for name in ("a", "b"):
        assert len(list((out / name / "recover").glob("*.done"))) == 1  # ipc 1: one slice
        assert "$ " in (out / name).with_suffix(".log").read_text().splitlines()[0]
    record = json.loads((out / "sweep.json").read_text())
    states = {p["name"]: p["state"] for p in record["first"] + record["points"]}
    assert states == {"pool": "launched", "a": "launched", "b": "launched", "bad": "failed"}
    seconds = {p["name"]: [a["seconds"] for a in p["attempts"]] for p in record["points"]}
    assert all(len(s) == 1 and s[0] > 0 for s in seconds.values())

    again = run_cli("sweep", spec, "--out", out, "--backend", "local", "--jobs", "2")
    assert again.returncode == 1 and again.stdout.count("(done)") == 3
    record = json.loads((out / "sweep.json").read_text())
    assert [len(p["attempts"]) for p in record["points"]] == [1, 1, 2]  # only bad again
    rows = json.loads(run_cli("status", out, "--json").stdout)
    assert [(r["point"], r["state"]) for r in rows] == [
        ("pool", "done"), ("a", "done"), ("b", "done"), ("bad", "not started")]  # fmt: skip


def test_a_failed_first_point_starts_nothing_else(tmp_path, tiny_cfg):
    tiny_cfg["squeeze"]["lr"] = -1.0  # refused at submit: the pool never exists
    spec = _pool_sweep(tmp_path, tiny_cfg, [{"name": "a"}])
    out = tmp_path / "out"
    result = run_cli("sweep", spec, "--out", out, "--backend", "local", "--jobs", "2")
    assert result.returncode == 1 and "first point pool failed" in result.stderr
    assert not (out / "a").exists() and (out / "pool.log").is_file()


def test_a_folder_is_reused_by_a_spec_that_grows_it_only(tmp_path):
    """Every point the folder holds still in the spec, unchanged, plus new ones: reused (a
    benchmark gaining a method); a dropped or changed point: refused."""
    from prism_hpc.sweep.book import SweepBook
    from prism_hpc.sweep.run import SweepTarget, _check_folder

    folder = tmp_path / "out"
    folder.mkdir()
    first = [{"name": "pool", "stages": ["squeeze"]}]
    old = load_spec(_listed_spec(tmp_path, first, [{"name": "a", "set": ["seed=0"]}]))
    SweepBook(old, folder).write()
    grown = load_spec(_listed_spec(tmp_path, first, [{"name": "a", "set": ["seed=0"]},
                                                     {"name": "b"}]))  # fmt: skip
    _check_folder(SweepTarget(grown, folder))
    for points in ([{"name": "b"}], [{"name": "a", "set": ["seed=1"]}, {"name": "b"}]):
        other = load_spec(_listed_spec(tmp_path, first, points))
        with pytest.raises(UserError, match="other points"):
            _check_folder(SweepTarget(other, folder))
