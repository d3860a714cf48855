"""DD-Ranking's LRS / HLR / IOR: the formulas against hand values, run matching, the report."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from prism_hpc.metrics import ddranking
from prism_hpc.metrics.report import write_report
from prism_hpc.metrics.runs import load_runs


def test_formulas_against_hand_values():
    # HLR = real-hard - syn-hard, IOR = syn-any - rdm-any (percentage points)
    assert ddranking.hlr(90.0, 60.0) == pytest.approx(30.0)
    assert ddranking.ior(70.0, 50.0) == pytest.approx(20.0)
    # a = 0.5 * 0.20 - 0.5 * 0.30 = -0.05; (e^-0.05 - e^-1) / (e - e^-1) = 0.5833502 / 2.3504024
    assert ddranking.lrs(30.0, 20.0) == pytest.approx(24.819154, abs=1e-6)
    # a = 0: (1 - 1/e) / (e - 1/e) = 0.2689414; the ends of alpha's range map onto 0 and 100 %
    assert ddranking.lrs(10.0, 10.0) == pytest.approx(26.894142, abs=1e-6)
    assert ddranking.lrs(0.0, 100.0, weight=1.0) == pytest.approx(100.0)
    assert ddranking.lrs(100.0, 0.0, weight=0.0) == pytest.approx(0.0, abs=1e-12)
    # another weight: a = 0.3 * 0.20 - 0.7 * 0.30 = -0.15
    expected = 100 * (math.exp(-0.15) - math.exp(-1)) / (math.e - math.exp(-1))
    assert ddranking.lrs(30.0, 20.0, weight=0.3) == pytest.approx(expected)
    assert expected == pytest.approx(20.967837, abs=1e-6)
    with pytest.raises(ValueError, match="weight must lie in"):
        ddranking.lrs(1.0, 1.0, weight=1.5)


RELABEL_SOFT = {"mode": "offline", "teachers": ["resnet18"], "crop_scale": [0.25, 1.0]}
RELABEL_HARD = {"mode": "none", "teachers": [], "crop_scale": [0.25, 1.0]}
STUDENTS_SOFT = {"archs": ["resnet18"], "seeds": [0, 1], "epochs": 100, "loss": "mse_gt"}
STUDENTS_HARD = {"archs": ["resnet18"], "seeds": [0, 1], "epochs": 100, "loss": "ce"}


def _run(tmp_path, name, method, recover, relabel, students, top1s, seed=0):
    """A run dir as the report reads it: config.yaml and finished students (top-1 in %)."""
    d = tmp_path / name
    cfg = {"name": name, "method": method, "seed": seed,
           "data": {"source": "fashion_mnist", "resolution": 32},
           "recover": recover, "relabel": relabel, "students": students}  # fmt: skip
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    for k, top1 in enumerate(top1s):
        s = d / "students" / "resnet18" / f"seed{k}"
        s.mkdir(parents=True)
        metrics = {"arch": "resnet18", "seed": k, "method": method, "final": {"top1": top1},
                   "units": "percent"}  # fmt: skip
        (s / "metrics.json").write_text(json.dumps(metrics))
        (s / ".done").write_text("")
    return d


def _prism_rec(**kw):
    return {"ipc": 10, "init": "real", "iterations": 100, "lr": 0.05, **kw}


def test_rows_match_the_runs_that_supply_each_accuracy(tmp_path):
    prism = _run(tmp_path, "prism", "PRISM", _prism_rec(), RELABEL_SOFT, STUDENTS_SOFT, [70, 72])
    hard = _run(tmp_path, "prism_hard", "PRISM hard", _prism_rec(), RELABEL_HARD, STUDENTS_HARD,
                [58, 62])  # fmt: skip
    rdm = _run(tmp_path, "random", "Random real", _prism_rec(init_only=True), RELABEL_SOFT,
               STUDENTS_SOFT, [49, 51])  # fmt: skip
    rdm_hard = _run(tmp_path, "random_hard", "Random real hard", _prism_rec(init_only=True),
                    RELABEL_HARD, STUDENTS_HARD, [10, 10])  # other eval: not PRISM's rdm-any
    full = _run(tmp_path, "full", "Full real", {"ipc": "all", "init": "real", "init_only": True},
                RELABEL_HARD, STUDENTS_HARD, [89, 91])  # fmt: skip
    # a second method without its hard-label or random partners
    cda = _run(tmp_path, "cda", "CDA", _prism_rec(lr=0.25, init="noise"), RELABEL_SOFT,
               {**STUDENTS_SOFT, "epochs": 50}, [66])  # fmt: skip
    runs = load_runs([prism, hard, rdm, rdm_hard, full, cda])
    rows = {r.method: r for r in ddranking.lrs_rows(runs)}
    # the PRISM hard run is PRISM's syn-hard, not a row; init-only runs are never rows
    assert set(rows) == {"PRISM", "CDA"}
    p = rows["PRISM"]
    assert (p.syn_any, p.syn_hard, p.rdm_any, p.real_hard) == (71.0, 60.0, 50.0, 90.0)
    assert p.hlr == pytest.approx(30.0) and p.ior == pytest.approx(21.0)
    # a = (21 - 30) / 200 = -0.045
    lrs = 100 * (math.exp(-0.045) - math.exp(-1)) / (math.e - math.exp(-1))
    assert p.lrs == pytest.approx(lrs) and p.missing == []
    c = rows["CDA"]
    assert c.syn_any == 66.0 and c.real_hard == 90.0
    assert c.syn_hard is None and c.rdm_any is None and c.lrs is None and c.hlr is None
    assert c.missing == ["syn_hard", "rdm_any"]


def test_hard_label_method_is_its_own_syn_hard(tmp_path):
    a = _run(tmp_path, "a", "SRe2L hard", _prism_rec(), RELABEL_HARD, STUDENTS_HARD, [40])
    rows = ddranking.lrs_rows(load_runs([a]))
    assert len(rows) == 1 and rows[0].syn_any == rows[0].syn_hard == 40.0
    assert rows[0].missing == ["rdm_any", "real_hard"]


def test_report_shows_scores_and_names_the_missing_runs(tmp_path):
    prism = _run(tmp_path, "prism", "PRISM", _prism_rec(), RELABEL_SOFT, STUDENTS_SOFT, [70, 72])
    hard = _run(tmp_path, "prism_hard", "PRISM hard", _prism_rec(), RELABEL_HARD, STUDENTS_HARD,
                [58, 62])  # fmt: skip
    rdm = _run(tmp_path, "random", "Random real", _prism_rec(init_only=True), RELABEL_SOFT,
               STUDENTS_SOFT, [49, 51])  # fmt: skip
    out = tmp_path / "report"
    write_report([prism, hard, rdm], out, compute_diversity=False)
    text = (out / "report.md").read_text()
    assert "## DD-Ranking scores" in text
    row = next(line for line in text.splitlines() if line.startswith("| PRISM | ResNet-18"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:] == ["71.0", "60.0", "50.0", "-", "-", "+21.0", "-"]
    assert "real_hard (PRISM ResNet-18 IPC 10): a full-real run (recover.ipc: all" in text
    summary = json.loads((out / "report.json").read_text())["ddranking"]
    assert summary[0]["ior"] == pytest.approx(21.0) and summary[0]["lrs"] is None
    assert summary[0]["missing"] == ["real_hard"]
