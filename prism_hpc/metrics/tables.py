"""Markdown tables from loaded runs: paper Table 1 (accuracy), paired differences, teachers,
diversity; and the cell format every table shares.

Conventions:
- Accuracies are shown in percent (`prism_hpc.metrics.runs` converts on reading).
- A table cell pools every (recovery run, student seed) result of one row label, student
  architecture and IPC: mean ± sample std (ddof=1); a single result is its value alone (the
  table's note or an `n` column says how many results a cell has).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from prism_hpc.metrics.runs import RunInfo, as_percent

ARCH_NAMES = {
    "resnet18": "ResNet-18",
    "resnet34": "ResNet-34",
    "resnet50": "ResNet-50",
    "resnet101": "ResNet-101",
    "mobilenet_v2": "MobileNet-V2",
    "efficientnet_b0": "EfficientNet-B0",
    "shufflenet_v2_x0_5": "ShuffleNet-V2-0.5",
    "alexnet": "AlexNet",
}


def pretty_arch(arch: str) -> str:
    return ARCH_NAMES.get(arch, arch)


# ---------------------------------------------------------------------------------------------
# numbers


def mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """(mean, sample std with ddof=1 or None for n < 2, n)."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), None, 0
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None), len(a)


def fmt_mean_std(
    mean: float, std: float | None, n: int, digits: int = 1, show_n: bool = False
) -> str:
    """The one cell format: "mean ± std"; a single result (n = 1 or no std) is its value alone
    (with " (n=1)" if `show_n`); "-" for no result."""
    if n == 0 or math.isnan(mean):
        return "-"
    if std is None or n == 1:
        return f"{mean:.{digits}f}" + (" (n=1)" if show_n else "")
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def accuracy_cells(runs: list[RunInfo]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """(row, arch, ipc) -> {"values": [...], "mean", "std", "n"}; results.csv rows when a run
    has no metrics.json (then mean/std are the run's own aggregate)."""
    values: dict[tuple[str, str, int], list[float]] = {}
    aggregate: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in runs:
        for s in r.students:
            values.setdefault((r.row, s.arch, r.ipc), []).append(s.top1)
        for a in r.aggregated:
            key = (r.row, a["arch"], a["ipc"] if a["ipc"] is not None else r.ipc)
            if key not in values:
                aggregate[key] = {
                    "values": [],
                    "mean": a["mean"],
                    "std": a["std"],
                    "n": a["n"] or 0,
                    "from": "results.csv",
                }
    cells = {}
    for key, vals in values.items():
        m, s, n = mean_std(vals)
        cells[key] = {"values": vals, "mean": m, "std": s, "n": n, "from": "metrics.json"}
    for key, cell in aggregate.items():
        cells.setdefault(key, cell)
    return cells


def ordered(items) -> list:
    return list(dict.fromkeys(items))


def arch_order(archs: list[str]) -> list[str]:
    known = [a for a in ARCH_NAMES if a in archs]
    return known + [a for a in archs if a not in known]


def markdown_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A markdown table; `align` per column: "l" left, "r" right, "-" unaligned."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = [{"l": ":--", "r": "--:"}.get(a, "---") for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def accuracy_table(runs: list[RunInfo]) -> str:
    """Paper Table 1: rows = method, columns = student arch x IPC, cells = mean ± std (%).

    One table per data set (`data.source` + resolution) when the runs mix data sets. The best
    mean of each column is bold when there are several rows.
    """
    cells = accuracy_cells(runs)
    if not cells:
        return "_No finished student results (students/<arch>/seed<k>/metrics.json) yet._"
    blocks = []
    datasets = ordered(r.data_key for r in runs)
    for data_key in datasets:
        group = [r for r in runs if r.data_key == data_key]
        row_keys = ordered(r.row for r in group)
        sub = {
            k: v
            for k, v in cells.items()
            if k[0] in row_keys and any(r.row == k[0] and r.ipc == k[2] for r in group)
        }
        if not sub:
            continue
        archs = arch_order(ordered(k[1] for k in sub))
        ipcs = sorted({k[2] for k in sub})
        columns = [(a, i) for a in archs for i in ipcs if any((r, a, i) in sub for r in row_keys)]
        best = {}
        for col in columns:
            means = [sub[(r, *col)]["mean"] for r in row_keys if (r, *col) in sub]
            best[col] = max(means) if len(means) > 1 else None
        header = ["Method"] + [f"{pretty_arch(a)} (IPC={i})" for a, i in columns]
        rows = []
        for rk in row_keys:
            line = [rk]
            for col in columns:
                cell = sub.get((rk, *col))
                if cell is None:
                    line.append("-")
                    continue
                text = fmt_mean_std(cell["mean"], cell["std"], cell["n"])
                if best[col] is not None and cell["mean"] == best[col]:
                    text = f"**{text}**"
                line.append(text)
            rows.append(line)
        ns = sorted({c["n"] for c in sub.values()})
        title = f"**{data_key}**\n\n" if len(datasets) > 1 else ""
        note = (
            f"\n\nTop-1 accuracy [%] at the last epoch; mean ± sample std (ddof=1) over "
            f"n = {ns[0] if len(ns) == 1 else f'{ns[0]}-{ns[-1]}'} result(s) per cell "
            "(recovery runs × student seeds)."
        )
        if any(c.get("from") == "results.csv" for c in sub.values()):
            note += " Cells without per-seed metrics.json come from the run's results.csv."
        blocks.append(title + markdown_table(header, rows) + note)
    return "\n\n".join(blocks)


def paired_differences(runs: list[RunInfo], a: str, b: str) -> list[dict[str, Any]]:
    """Row `a` minus row `b`, paired on (arch, IPC, recovery seed, student seed).

    Per (arch, IPC): mean ± sample std of the differences and n pairs (empty if none pair).
    """
    table: dict[tuple[str, str, int, int, int], float] = {}
    for r in runs:
        if r.row in (a, b):
            for s in r.students:
                table[(r.row, s.arch, r.ipc, r.seed, s.seed)] = s.top1
    diffs: dict[tuple[str, int], list[float]] = {}
    for (row, arch, ipc, rseed, sseed), v in table.items():
        if row == a and (b, arch, ipc, rseed, sseed) in table:
            diffs.setdefault((arch, ipc), []).append(v - table[(b, arch, ipc, rseed, sseed)])
    out = []
    rank = {a: k for k, a in enumerate(ARCH_NAMES)}
    for (arch, ipc), d in sorted(diffs.items(), key=lambda kv: (rank.get(kv[0][0], 99), kv[0])):
        m, s, n = mean_std(d)
        out.append(
            {
                "a": a,
                "b": b,
                "arch": arch,
                "ipc": ipc,
                "mean": m,
                "std": s,
                "n": n,
                "wins": int(sum(x > 0 for x in d)),
            }
        )
    return out


def paired_table(runs: list[RunInfo], max_rows: int = 6) -> str | None:
    """Paired differences between every two row labels that share seeds (first label first)."""
    rows_keys = ordered(r.row for r in runs)[:max_rows]
    lines = []
    for i, a in enumerate(rows_keys):
        for b in rows_keys[i + 1 :]:
            # a - b in order of appearance, except that PRISM is always the minuend
            first, second = (b, a) if "prism" in b.lower() and "prism" not in a.lower() else (a, b)
            for d in paired_differences(runs, first, second):
                lines.append(
                    [
                        f"{d['a']} − {d['b']}",
                        pretty_arch(d["arch"]),
                        str(d["ipc"]),
                        fmt_mean_std(d["mean"], d["std"], d["n"], 2),
                        str(d["n"]),
                        f"{d['wins']}/{d['n']}",
                    ]
                )
    if not lines:
        return None
    header = ["Difference", "Student", "IPC", "Δ top-1 [pp] (mean ± std)", "pairs", "wins"]
    return markdown_table(header, lines) + (
        "\n\nPairs share recovery seed (`seed`) and student seed; std over pairs (ddof=1)."
    )


# ---------------------------------------------------------------------------------------------
# teachers and diversity


def teacher_roles(r: RunInfo, name: str) -> str:
    roles = []
    if name == r.get("recover.logit_teacher") or name in (r.get("recover.logit_pool") or []):
        roles.append("logit")
    if name in (r.get("recover.bn_always") or []) + (r.get("recover.bn_pool") or []):
        roles.append("BN")
    if r.get("relabel.mode") != "none" and name in (r.get("relabel.teachers") or []):
        roles.append("relabel")
    if name == r.get("metrics.extractor"):
        roles.append("extractor")
    return ", ".join(roles) or "-"


def teacher_table(runs: list[RunInfo]) -> str:
    """Teacher test top-1 [%]: one column per distinct teacher pool (runs sharing it merged)."""
    pools: dict[str, list[RunInfo]] = {}
    for r in runs:
        if r.teachers:
            pools.setdefault(json.dumps(r.teachers, sort_keys=True), []).append(r)
    if not pools:
        return "_No teachers/<name>.json found (teachers not squeezed in this run)._"
    names = ordered(n for rs in pools.values() for n in rs[0].teachers)
    header = ["Teacher", "Arch", "Role"]
    many = len(pools) > 1
    header += (
        [f"Test top-1 [%] ({', '.join(r.label for r in rs)})" for rs in pools.values()]
        if many
        else ["Test top-1 [%]"]
    )
    rows = []
    for n in names:
        members = [r for rs in pools.values() if n in rs[0].teachers for r in rs]
        ref = members[0]
        info = ref.teachers[n]
        roles = ordered(x for r in members for x in teacher_roles(r, n).split(", ") if x != "-")
        arch = info.get("arch") or ref.get(f"teachers.{n}.arch", "?")
        line = [n, str(arch), ", ".join(roles) or "-"]
        for rs in pools.values():
            v = as_percent(rs[0].teachers.get(n, {}).get("test_top1"))
            line.append(f"{v:.2f}" if v is not None else "-")
        rows.append(line)
    return markdown_table(header, rows, ["l", "l", "l"] + ["r"] * (len(header) - 3))


def _mean_pm_std(d: dict) -> str:
    """`mean ± std`; diversity is undefined with one image per class (IPC 1): `n/a`."""
    if d.get("mean") is None:
        return "n/a"
    return f"{d['mean']:.4f}" + (f" ± {d['std']:.4f}" if d.get("std") is not None else "")


def diversity_table(runs: list[RunInfo]) -> str | None:
    rows = []
    for r in runs:
        d = r.diversity
        if not d or not d.get("distilled"):
            continue
        dist, ref = d["distilled"], d.get("reference")
        rows.append(
            [
                r.label,
                f"{d.get('extractor', '?')} ({d.get('extractor_arch', '?')})",
                _mean_pm_std(dist),
                _mean_pm_std(ref) if ref else "-",
                f"{dist['mean'] - ref['mean']:+.4f}"
                if ref and dist.get("mean") is not None and ref.get("mean") is not None
                else "-",
                str(d.get("num_images", "?")),
            ]
        )
    if not rows:
        return None
    header = [
        "Run",
        "Extractor",
        "Distilled cos (mean ± std)",
        "Real reference cos",
        "Δ (distilled − real)",
        "Images",
    ]
    text = markdown_table(header, rows, ["l", "l", "r", "r", "r", "r"])
    text += (
        "\n\nIntra-class cosine similarity of penultimate features: mean over all pairs of "
        "images within a class, then mean ± std (ddof=0) over classes. Lower = more diverse. "
        "Reference: the real training images the distilled slots were initialised from "
        "(for noise-initialised runs: the real images of the same slots)."
    )
    ids = {r.diversity.get("extractor_identity") for r in runs if r.diversity}
    if len(ids) > 1:
        text += (
            "\n\n**Warning:** the runs measured diversity with different extractors "
            "(architecture or weights differ), so their numbers are not directly comparable."
        )
    warned = [
        r.label for r in runs if r.diversity and r.diversity.get("extractor_is_recovery_teacher")
    ]
    if warned:
        text += (
            f"\n\n**Note:** for {', '.join(warned)} the extractor is also a recovery teacher "
            "(`metrics.extractor` unset or set to a recovery teacher); that biases the metric."
        )
    return text


def pooled_diversity_table(runs: list[RunInfo]) -> str | None:
    """Diversity per row label over its runs (mean ± std over recovery runs), when pooled."""
    by_row: dict[str, list[RunInfo]] = {}
    for r in runs:
        if r.diversity and r.diversity.get("distilled"):
            by_row.setdefault(r.row, []).append(r)
    if not any(len(v) > 1 for v in by_row.values()):
        return None
    rows = []
    for rk, members in by_row.items():
        d = mean_std([m.diversity["distilled"]["mean"] for m in members])
        refs = [m.diversity["reference"]["mean"] for m in members if m.diversity.get("reference")]
        rows.append(
            [
                rk,
                str(len(members)),
                fmt_mean_std(*d, 4),
                fmt_mean_std(*mean_std(refs), 4) if refs else "-",
            ]
        )
    return markdown_table(["Method", "Runs", "Distilled cos", "Real reference cos"], rows) + (
        "\n\nMean ± sample std (ddof=1) over runs of each run's class-mean cosine similarity."
    )
