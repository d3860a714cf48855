"""Results tables: mean +- std over seeds per (method, architecture, IPC).

`results.md` is laid out like the paper's Table 1 (rows: methods; columns: architecture x IPC;
cells: final top-1 in %, mean +- sample std over seeds); `results.csv` has one row per
(method, arch, IPC) with top-1 / top-5 (final and best) statistics and the seeds used.
Only students with a completion marker count.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prism_hpc.store.atomic import atomic_write_text

DONE_NAME = ".done"


def student_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.json of every finished student under run_dir/students (sorted)."""
    rows = []
    for path in sorted((Path(run_dir) / "students").glob("*/seed*/metrics.json")):
        if not (path.parent / DONE_NAME).is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["run_dir"] = str(run_dir)
        rows.append(data)
    return rows


def _stats(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group student rows by (method, arch, ipc); accuracies in % (mean, sample std)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("final", {}).get("top1") is None:
            continue
        groups.setdefault((str(r["method"]), str(r["arch"]), int(r["ipc"])), []).append(r)
    out = []
    for (method, arch, ipc), rs in sorted(groups.items()):
        entry: dict[str, Any] = {"method": method, "arch": arch, "ipc": ipc, "n": len(rs)}
        for which in ("final", "best"):
            for metric in ("top1", "top5"):
                vals = [100.0 * r[which][metric] for r in rs if r[which].get(metric) is not None]
                mean, std = _stats(vals) if vals else (float("nan"), float("nan"))
                prefix = metric if which == "final" else f"best_{metric}"
                entry[f"{prefix}_mean"], entry[f"{prefix}_std"] = mean, std
        entry["seeds"] = sorted(int(r["seed"]) for r in rs)
        out.append(entry)
    return out


def _cell(entry: dict[str, Any] | None, metric: str) -> str:
    if entry is None:
        return "-"
    mean, std = entry[f"{metric}_mean"], entry[f"{metric}_std"]
    return f"{mean:.1f}" if entry["n"] == 1 else f"{mean:.1f} ± {std:.1f}"


def results_markdown(agg: list[dict[str, Any]], metric: str = "top1") -> str:
    """Rows: methods (first-seen order); columns: arch x IPC (sorted by IPC within arch)."""
    methods = list(dict.fromkeys(e["method"] for e in agg))
    archs = list(dict.fromkeys(e["arch"] for e in agg))
    columns = [(a, ipc) for a in archs for ipc in sorted({e["ipc"] for e in agg if e["arch"] == a})]
    index = {(e["method"], e["arch"], e["ipc"]): e for e in agg}
    label = {"top1": "Top-1", "top5": "Top-5"}.get(metric, metric)
    lines = [
        f"{label} accuracy (%) of students trained on the distilled sets: mean ± std over seeds.",
        "",
        "| Method | " + " | ".join(f"{a} IPC {ipc}" for a, ipc in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for m in methods:
        cells = [_cell(index.get((m, a, ipc)), metric) for a, ipc in columns]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    seeds = sorted({n for e in agg for n in [e["n"]]})
    lines += ["", f"Seeds per cell: {', '.join(map(str, seeds)) or '-'}."]
    return "\n".join(lines) + "\n"


CSV_FIELDS = [
    "method", "arch", "ipc", "n", "top1_mean", "top1_std", "top5_mean", "top5_std",
    "best_top1_mean", "best_top1_std", "best_top5_mean", "best_top5_std", "seeds",
]  # fmt: skip


def results_csv(agg: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for e in agg:
        row = {k: e[k] for k in CSV_FIELDS}
        row["seeds"] = " ".join(map(str, e["seeds"]))
        for k in CSV_FIELDS[4:-1]:
            row[k] = f"{e[k]:.2f}"
        writer.writerow(row)
    return buf.getvalue()


def write_results(run_dirs: Iterable[Path], out_dir: Path) -> list[Path]:
    """Aggregate the students of `run_dirs`; write out_dir/results.md and results.csv.

    Returns the two paths [results.md, results.csv].
    """
    rows = [r for d in run_dirs for r in student_metrics(Path(d))]
    agg = aggregate(rows)
    out_dir = Path(out_dir)
    md, csv_path = out_dir / "results.md", out_dir / "results.csv"
    atomic_write_text(md, results_markdown(agg))
    atomic_write_text(csv_path, results_csv(agg))
    return [md, csv_path]
