"""`results.md` / `results.csv` of finished students: mean ± std over seeds per (method,
architecture, IPC), what `prism-hpc collect` writes next to the run.

`results.md` is laid out like the paper's Table 1 (rows: methods; columns: architecture x IPC;
cells: final top-1 in %, in the format of `tables.fmt_mean_std`); `results.csv` has one row per
(method, arch, IPC) with top-1 / top-5 (final and best) statistics and the seeds used. Method
and IPC are those the train stage recorded in each `metrics.json`. Only students with a
completion marker count.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prism_hpc.metrics.runs import StudentResult, read_students, student_result
from prism_hpc.metrics.tables import fmt_mean_std, markdown_table, mean_std, ordered
from prism_hpc.store import layout
from prism_hpc.store.atomic import atomic_write_text

STATS = ("top1", "top5", "best_top1", "best_top5")  # StudentResult fields, percent


def aggregate(rows: Iterable[StudentResult | dict[str, Any]]) -> list[dict[str, Any]]:
    """Group students (`StudentResult`s or `metrics.json` dicts) by (method, arch, ipc).

    Accuracies in %: `<stat>_mean`, `<stat>_std` (sample std; 0 for one seed, nan for none)
    for top1, top5, best_top1, best_top5; plus `n` and the sorted `seeds`.
    """
    groups: dict[tuple[str, str, int], list[StudentResult]] = {}
    for r in rows:
        s = r if isinstance(r, StudentResult) else student_result(r)
        if s is not None:
            groups.setdefault((s.method, s.arch, int(s.ipc or 0)), []).append(s)
    out = []
    for (method, arch, ipc), members in sorted(groups.items()):
        entry: dict[str, Any] = {"method": method, "arch": arch, "ipc": ipc, "n": len(members)}
        for stat in STATS:
            values = [getattr(s, stat) for s in members if getattr(s, stat) is not None]
            mean, std, n = mean_std(values)
            entry[f"{stat}_mean"] = mean
            entry[f"{stat}_std"] = std if std is not None else (0.0 if n else float("nan"))
        entry["seeds"] = sorted(s.seed for s in members)
        out.append(entry)
    return out


def _cell(entry: dict[str, Any] | None, metric: str) -> str:
    if entry is None:
        return "-"
    return fmt_mean_std(entry[f"{metric}_mean"], entry[f"{metric}_std"], entry["n"])


def results_markdown(agg: list[dict[str, Any]], metric: str = "top1") -> str:
    """Rows: methods (first-seen order); columns: arch x IPC (sorted by IPC within arch)."""
    methods = ordered(e["method"] for e in agg)
    archs = ordered(e["arch"] for e in agg)
    columns = [(a, ipc) for a in archs for ipc in sorted({e["ipc"] for e in agg if e["arch"] == a})]
    index = {(e["method"], e["arch"], e["ipc"]): e for e in agg}
    label = {"top1": "Top-1", "top5": "Top-5"}.get(metric, metric)
    header = ["Method"] + [f"{a} IPC {ipc}" for a, ipc in columns]
    rows = [[m] + [_cell(index.get((m, a, ipc)), metric) for a, ipc in columns] for m in methods]
    seeds = sorted({e["n"] for e in agg})
    return (
        f"{label} accuracy (%) of students trained on the distilled sets: mean ± std over "
        "seeds.\n\n"
        + markdown_table(header, rows, ["-"] * len(header))
        + f"\n\nSeeds per cell: {', '.join(map(str, seeds)) or '-'}.\n"
    )


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
    """Aggregate the finished students of `run_dirs`; write out_dir/results.md and results.csv.

    Returns the two paths [results.md, results.csv].
    """
    students = [s for d in run_dirs for s in read_students(Path(d))[0] if s.done]
    agg = aggregate(students)
    out_dir = Path(out_dir)
    md, csv_path = layout.results_md(out_dir), layout.results_csv(out_dir)
    atomic_write_text(md, results_markdown(agg))
    atomic_write_text(csv_path, results_csv(agg))
    return [md, csv_path]
