"""Runs and their results, read from run directories (what the report and the tables show).

Everything is read defensively from files other stages write (`config.yaml`, `teachers/*.json`,
`students/<arch>/seed<k>/metrics.json`, `results.csv`, `distilled.h5` attributes,
`diversity.json`): a missing or half-written file drops that number, never the report.

Conventions:
- Accuracies are held in percent. A student `top1` <= 1 is read as a fraction (what `squeeze`
  writes), a value > 1 or a file with `"units": "percent"` as percent.
- The row label is the config's `method`; when runs of one label differ in `recover.init`,
  the init is appended ("PRISM (noise init)"), so real- and noise-initialised runs never pool.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from prism_hpc.store import layout
from prism_hpc.store.distilled import read_attr_text
from prism_hpc.store.layout import DONE_NAME, METRICS_NAME  # the students' output layout


@dataclass
class StudentResult:
    arch: str
    seed: int
    top1: float  # percent
    top5: float | None = None
    best_top1: float | None = None
    best_top5: float | None = None
    method: str = ""  # as the train stage recorded it in metrics.json
    ipc: int | None = None
    done: bool = True  # the train stage's completion marker is present
    source: str = "metrics.json"


@dataclass
class RunInfo:
    path: Path
    cfg: dict[str, Any]
    method: str
    ipc: int
    init: str
    seed: int
    data_key: str
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)
    students: list[StudentResult] = field(default_factory=list)
    aggregated: list[dict[str, Any]] = field(default_factory=list)  # results.csv fallback rows
    diversity: dict[str, Any] | None = None
    provenance: list[dict[str, Any]] = field(default_factory=list)
    incomplete_students: list[str] = field(default_factory=list)
    label: str = ""  # unique display label (set by `load_runs`)
    row: str = ""  # table row key (set by `load_runs`)

    def get(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.cfg
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def as_percent(value: Any, percent: bool | None = None) -> float | None:
    """`value` in percent (`percent=None`: a value > 1 is percent already), None if no number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(v):
        return None
    if percent is None:
        percent = v > 1.0
    return v if percent else 100.0 * v


def _pick(d: Any, *paths: str) -> Any:
    for path in paths:
        node = d
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return node
    return None


def student_result(
    data: dict[str, Any], arch: str = "", seed: int = -1, done: bool = True
) -> StudentResult | None:
    """One student's `metrics.json` (accuracies to percent), None without a final top-1.

    `arch` / `seed`: used when the file does not name them (the folder names do).
    """
    raw = {
        "top1": _pick(data, "final.top1", "final_top1", "top1"),
        "top5": _pick(data, "final.top5", "final_top5", "top5"),
        "best": _pick(data, "best.top1", "best_top1"),
        "best5": _pick(data, "best.top5", "best_top5"),
    }
    units = str(data.get("units", "")).lower()
    if units in ("percent", "%"):
        percent = True
    elif units == "fraction":
        percent = False
    else:  # one decision per file: percent if any accuracy exceeds 1
        numbers = [v for v in raw.values() if isinstance(v, (int, float))]
        percent = any(v > 1.0 for v in numbers)
    top1 = as_percent(raw["top1"], percent)
    if top1 is None:
        return None
    ipc = data.get("ipc")
    return StudentResult(
        arch=str(data.get("arch") or arch),
        seed=int(data.get("seed", seed)),
        top1=top1,
        top5=as_percent(raw["top5"], percent),
        best_top1=as_percent(raw["best"], percent),
        best_top5=as_percent(raw["best5"], percent),
        method=str(data.get("method") or ""),
        ipc=int(ipc) if isinstance(ipc, (int, float)) else None,
        done=done,
    )


def read_students(run_dir: Path) -> tuple[list[StudentResult], list[str]]:
    """(students with a final accuracy, notes on metrics files that were skipped or odd).

    The train stage writes `metrics.json` and then a `.done` marker next to it; a result
    without the marker is counted (`done=False`) but named in the notes.
    """
    out, notes = [], []
    for path in layout.student_files(run_dir, METRICS_NAME):
        data = _read_json(path)
        where = f"{path.parent.parent.name}/{path.parent.name}"
        if not isinstance(data, dict):
            notes.append(f"{where} (unreadable, skipped)")
            continue
        done = (path.parent / DONE_NAME).is_file()
        match = re.fullmatch(r"seed(\d+)", path.parent.name)
        seed = int(match.group(1)) if match else -1
        result = student_result(data, path.parent.parent.name, seed, done)
        if result is None:
            notes.append(f"{where} (no final top-1, skipped)")
            continue
        if not done:
            notes.append(f"{where} (no .done marker, counted)")
        out.append(result)
    return out, notes


def read_results_csv(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of the train stage's `results.csv` (accuracies already in percent there)."""
    path = layout.results_csv(run_dir)
    rows = []
    try:
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                mean = as_percent(r.get("top1_mean"), percent=True)
                if mean is None or not r.get("arch"):
                    continue
                rows.append(
                    {
                        "method": r.get("method") or "",
                        "arch": r["arch"],
                        "ipc": int(float(r["ipc"])) if r.get("ipc") else None,
                        "mean": mean,
                        "std": as_percent(r.get("top1_std"), percent=True),
                        "n": int(float(r.get("n") or r.get("n_seeds") or 0)) or None,
                    }
                )
    except (OSError, ValueError, KeyError):
        return []
    return rows


def read_diversity(run_dir: Path) -> dict[str, Any] | None:
    return _read_json(layout.diversity_json(run_dir))


def read_features(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = layout.diversity_features(run_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(layout.config_file(run_dir).read_text())
        if isinstance(data, dict):
            return data
    except (OSError, yaml.YAMLError):
        pass
    # a copied run dir that kept only distilled.h5
    text = read_attr_text(layout.distilled_file(run_dir), "config")
    try:
        data = yaml.safe_load(text or "")
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _read_provenance(run_dir: Path) -> list[dict[str, Any]]:
    text = read_attr_text(layout.distilled_file(run_dir), "slice_provenance")
    try:
        data = json.loads(text or "[]")
    except ValueError:
        return []
    return data if isinstance(data, list) else []


def load_run(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    rec = cfg.get("recover", {}) if isinstance(cfg.get("recover"), dict) else {}
    data = cfg.get("data", {}) if isinstance(cfg.get("data"), dict) else {}
    teachers = {}
    for path in layout.teacher_infos(run_dir):
        info = _read_json(path)
        if isinstance(info, dict):
            teachers[path.stem] = info
    students, incomplete = read_students(run_dir)
    return RunInfo(
        path=run_dir,
        cfg=cfg,
        method=str(cfg.get("method") or "run"),
        ipc=0 if rec.get("ipc") == "all" else int(rec.get("ipc", 0) or 0),  # all: full data
        init=str(rec.get("init", "real")),
        seed=int(cfg.get("seed", 0) or 0),
        data_key=f"{data.get('source', '?')} {data.get('resolution', '?')} px",
        teachers=teachers,
        students=students,
        aggregated=[] if students else read_results_csv(run_dir),
        diversity=read_diversity(run_dir),
        provenance=_read_provenance(run_dir),
        incomplete_students=incomplete,
    )


def load_runs(run_dirs: list[Path]) -> list[RunInfo]:
    """Load runs and give each a table row key and a unique display label."""
    runs = [load_run(Path(p)) for p in run_dirs]
    inits: dict[str, set[str]] = {}
    for r in runs:
        inits.setdefault(r.method, set()).add(r.init)
    for r in runs:
        r.row = r.method if len(inits[r.method]) == 1 else f"{r.method} ({r.init} init)"
    labels: dict[str, int] = {}
    for r in runs:
        labels[r.row] = labels.get(r.row, 0) + 1
    used: set[str] = set()
    for r in runs:
        label = r.row if labels[r.row] == 1 else f"{r.row}, seed {r.seed}"
        while label in used:
            label = f"{label} [{r.path.name}]"
        used.add(label)
        r.label = label
    return runs
