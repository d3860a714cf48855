"""`prism-hpc sweep`: spec expansion, dry run, a 2 x 2 grid end to end, resume, sweep status
and report."""

from __future__ import annotations

import json

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
    assert "(resume)" in again.stdout
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
