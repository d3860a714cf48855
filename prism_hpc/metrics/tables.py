"""Result tables from run directories: paper Table 1 (accuracy) and Table 2 (ablation) layouts.

Everything is read defensively from files other stages write (`config.yaml`, `teachers/*.json`,
`students/<arch>/seed<k>/metrics.json`, `results.csv`, `distilled.h5` attributes,
`diversity.json`): a missing or half-written file drops that number, never the report.

Conventions:
- Accuracies are shown in percent. A student `top1` <= 1 is read as a fraction (what `squeeze`
  writes), a value > 1 or a file with `"units": "percent"` as percent.
- A table cell pools every (recovery run, student seed) result of one row label, student
  architecture and IPC: mean +- sample std (ddof=1), "(n=1)" when there is a single result.
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


@dataclass
class StudentResult:
    arch: str
    seed: int
    top1: float  # percent
    top5: float | None = None
    best_top1: float | None = None
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


# ---------------------------------------------------------------------------------------------
# reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _as_percent(value: Any, percent: bool | None = None) -> float | None:
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


def read_students(run_dir: Path) -> tuple[list[StudentResult], list[str]]:
    """(students with a final accuracy, notes on metrics files that were skipped or odd).

    The train stage writes `metrics.json` and then a `.done` marker next to it; a result
    without the marker is counted but named in the notes.
    """
    out, notes = [], []
    for path in sorted(Path(run_dir).glob("students/*/seed*/metrics.json")):
        data = _read_json(path)
        where = f"{path.parent.parent.name}/{path.parent.name}"
        if not isinstance(data, dict):
            notes.append(f"{where} (unreadable, skipped)")
            continue
        raw = {
            "top1": _pick(data, "final.top1", "final_top1", "top1"),
            "top5": _pick(data, "final.top5", "final_top5", "top5"),
            "best": _pick(data, "best.top1", "best_top1"),
        }
        units = str(data.get("units", "")).lower()
        if units in ("percent", "%"):
            percent = True
        elif units == "fraction":
            percent = False
        else:  # one decision per file: percent if any accuracy exceeds 1
            numbers = [v for v in raw.values() if isinstance(v, (int, float))]
            percent = any(v > 1.0 for v in numbers)
        top1 = _as_percent(raw["top1"], percent)
        if top1 is None:
            notes.append(f"{where} (no final top-1, skipped)")
            continue
        if not (path.parent / ".done").is_file():
            notes.append(f"{where} (no .done marker, counted)")
        match = re.fullmatch(r"seed(\d+)", path.parent.name)
        seed = data.get("seed", int(match.group(1)) if match else -1)
        out.append(
            StudentResult(
                arch=str(data.get("arch") or path.parent.parent.name),
                seed=int(seed),
                top1=top1,
                top5=_as_percent(raw["top5"], percent),
                best_top1=_as_percent(raw["best"], percent),
            )
        )
    return out, notes


def read_results_csv(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of the train stage's `results.csv` (accuracies already in percent there)."""
    path = Path(run_dir) / "results.csv"
    rows = []
    try:
        with open(path, newline="") as fh:
            for r in csv.DictReader(fh):
                mean = _as_percent(r.get("top1_mean"), percent=True)
                if mean is None or not r.get("arch"):
                    continue
                rows.append(
                    {
                        "method": r.get("method") or "",
                        "arch": r["arch"],
                        "ipc": int(float(r["ipc"])) if r.get("ipc") else None,
                        "mean": mean,
                        "std": _as_percent(r.get("top1_std"), percent=True),
                        "n": int(float(r.get("n") or r.get("n_seeds") or 0)) or None,
                    }
                )
    except (OSError, ValueError, KeyError):
        return []
    return rows


def _read_config(run_dir: Path) -> dict[str, Any]:
    for path in (Path(run_dir) / "config.yaml",):
        try:
            data = yaml.safe_load(path.read_text())
            if isinstance(data, dict):
                return data
        except (OSError, yaml.YAMLError):
            pass
    try:  # a copied run dir that kept only distilled.h5
        import h5py

        with h5py.File(Path(run_dir) / "distilled.h5", "r") as f:
            text = f.attrs.get("config", "")
        data = yaml.safe_load(text.decode() if isinstance(text, bytes) else str(text))
        return data if isinstance(data, dict) else {}
    except (OSError, yaml.YAMLError, ImportError):
        return {}


def _read_provenance(run_dir: Path) -> list[dict[str, Any]]:
    try:
        import h5py

        with h5py.File(Path(run_dir) / "distilled.h5", "r") as f:
            text = f.attrs.get("slice_provenance", "[]")
        data = json.loads(text.decode() if isinstance(text, bytes) else str(text))
        return data if isinstance(data, list) else []
    except (OSError, ValueError, ImportError):
        return []


def load_run(run_dir: Path) -> RunInfo:
    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    rec = cfg.get("recover", {}) if isinstance(cfg.get("recover"), dict) else {}
    data = cfg.get("data", {}) if isinstance(cfg.get("data"), dict) else {}
    teachers = {}
    for path in sorted(run_dir.glob("teachers/*.json")):
        info = _read_json(path)
        if isinstance(info, dict):
            teachers[path.stem] = info
    students, incomplete = read_students(run_dir)
    return RunInfo(
        path=run_dir,
        cfg=cfg,
        method=str(cfg.get("method") or "run"),
        ipc=int(rec.get("ipc", 0) or 0),
        init=str(rec.get("init", "real")),
        seed=int(cfg.get("seed", 0) or 0),
        data_key=f"{data.get('source', '?')} {data.get('resolution', '?')} px",
        teachers=teachers,
        students=students,
        aggregated=[] if students else read_results_csv(run_dir),
        diversity=_read_json(run_dir / "diversity.json"),
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


# ---------------------------------------------------------------------------------------------
# numbers


def mean_std(values: list[float]) -> tuple[float, float | None, int]:
    """(mean, sample std with ddof=1 or None for n < 2, n)."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), None, 0
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None), len(a)


def fmt_mean_std(
    mean: float, std: float | None, n: int, digits: int = 1, show_n: bool = True
) -> str:
    if n == 0 or math.isnan(mean):
        return "-"
    if std is None:
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


def _ordered(items) -> list:
    return list(dict.fromkeys(items))


def _arch_order(archs: list[str]) -> list[str]:
    known = [a for a in ARCH_NAMES if a in archs]
    return known + [a for a in archs if a not in known]


def _markdown(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = [":--" if a == "l" else "--:" for a in align]
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
    datasets = _ordered(r.data_key for r in runs)
    for data_key in datasets:
        group = [r for r in runs if r.data_key == data_key]
        row_keys = _ordered(r.row for r in group)
        sub = {
            k: v
            for k, v in cells.items()
            if k[0] in row_keys and any(r.row == k[0] and r.ipc == k[2] for r in group)
        }
        if not sub:
            continue
        archs = _arch_order(_ordered(k[1] for k in sub))
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
        blocks.append(title + _markdown(header, rows) + note)
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
    rows_keys = _ordered(r.row for r in runs)[:max_rows]
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
    return _markdown(header, lines) + (
        "\n\nPairs share recovery seed (`seed`) and student seed; std over pairs (ddof=1)."
    )


# ---------------------------------------------------------------------------------------------
# ablation (paper Table 2)


def recovery_signature(r: RunInfo) -> tuple:
    keys = (
        "scope",
        "logit_teacher",
        "logit_pool",
        "bn_always",
        "bn_pool",
        "k_max",
        "sampler",
        "include_prob",
        "resample_logit",
        "init",
        "init_only",
        "r_bn",
        "iterations",
    )
    return tuple(json.dumps(r.get(f"recover.{k}"), sort_keys=True) for k in keys)


def _roles(r: RunInfo) -> list[tuple[str, tuple[str, ...]]]:
    roles = []
    for prov in r.provenance:
        chunks = prov.get("chunks") or []
        found = False
        for chunk in chunks:
            for role in chunk.get("roles") or []:
                roles.append((str(role.get("logit_teacher")), tuple(role.get("bn_teachers", []))))
                found = True
        if not found and "logit_teacher" in prov:
            roles.append((str(prov["logit_teacher"]), tuple(prov.get("bn_teachers", []))))
    return roles


def selection_label(r: RunInfo) -> str:
    if not r.get("recover.logit_pool") and not r.get("recover.bn_pool"):
        return "-"  # nothing is drawn: a fixed teacher set
    return {"pre": "pre-distillation", "intra": "intra-distillation", "per_batch": "per batch"}.get(
        str(r.get("recover.scope")), str(r.get("recover.scope"))
    )


def alignment_label(roles: list[tuple[str, tuple[str, ...]]]) -> tuple[str, str]:
    """(alignment, BN-teacher count) from the recorded roles."""
    if not roles:
        return "?", "?"
    counts = [len(bn) for _, bn in roles]
    if all(bn == (logit,) for logit, bn in roles):
        align = "single"
    elif all(logit not in bn for logit, bn in roles):
        align = "decoupled" if max(counts) == 1 else "multi, decoupled"
    else:
        align = "multi" if max(counts) > 1 else "mixed"
    lo, hi, avg = min(counts), max(counts), float(np.mean(counts))
    count = str(lo) if lo == hi else f"{avg:.1f} ({lo}-{hi})"
    return align, count


def forms_ablation(runs: list[RunInfo]) -> list[list[RunInfo]]:
    """Groups (same data, same IPC) with >= 3 row labels of distinct recovery settings.

    Two labels are a comparison (Table 1 shows it); three or more variants of the recovery
    teachers on the same data and IPC are an ablation series.
    """
    groups: dict[tuple[str, int], list[RunInfo]] = {}
    for r in runs:
        groups.setdefault((r.data_key, r.ipc), []).append(r)
    out = []
    for group in groups.values():
        signatures: dict[str, set] = {}
        for r in group:
            signatures.setdefault(r.row, set()).add(recovery_signature(r))
        distinct = {next(iter(s)) for s in signatures.values() if len(s) == 1}
        if len(signatures) >= 3 and len(distinct) >= 3:
            out.append(group)
    return out


def ablation_table(runs: list[RunInfo]) -> str | None:
    """Paper Table 2 layout for each group of runs that forms an ablation, else None."""
    groups = forms_ablation(runs)
    if not groups:
        return None
    cells = accuracy_cells(runs)
    blocks = []
    for group in groups:
        rows_keys = _ordered(r.row for r in group)
        ipc = group[0].ipc
        archs = _arch_order(_ordered(a for (row, a, i) in cells if row in rows_keys and i == ipc))
        header = ["Variant", "Logit teacher", "Model selection", "Alignment", "BN teachers"]
        header += [f"Acc. [%] {pretty_arch(a)}" for a in archs]
        header += ["Diversity (cos)", "Peak mem [MB]"]
        rows = []
        for rk in rows_keys:
            members = [r for r in group if r.row == rk]
            first = members[0]
            roles = [x for r in members for x in _roles(r)]
            align, count = alignment_label(roles)
            logits = _ordered(lg for lg, _ in roles) or [
                str(first.get("recover.logit_teacher") or first.get("recover.logit_pool"))
            ]
            line = [rk, ", ".join(logits), selection_label(first), align, count]
            for a in archs:
                cell = cells.get((rk, a, ipc))
                line.append(fmt_mean_std(cell["mean"], cell["std"], cell["n"]) if cell else "-")
            div = [
                r.diversity["distilled"]["mean"]
                for r in members
                if r.diversity and r.diversity.get("distilled")
            ]
            line.append(fmt_mean_std(*mean_std(div), 4, show_n=False) if div else "-")
            mem = [
                p.get("peak_memory_mb")
                for r in members
                for p in r.provenance
                if isinstance(p.get("peak_memory_mb"), (int, float))
            ]
            line.append(f"{max(mem):.0f}" if mem else "-")
            rows.append(line)
        blocks.append(
            f"{group[0].data_key}, IPC {ipc}:\n\n"
            + _markdown(header, rows, ["l", "l", "l", "l", "r"] + ["r"] * (len(header) - 5))
            + "\n\nAlignment: `single` = the logit teacher is the only BN teacher; `decoupled` "
            "= BN teacher(s) differ from the logit teacher; `multi` = several BN teachers. "
            "BN teachers: count per slice as recorded in `slice_provenance` (avg and range "
            "when drawn). Peak memory: per recovery process (GPU allocated or CPU max RSS)."
        )
    return "\n\n".join(blocks)


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
    names = _ordered(n for rs in pools.values() for n in rs[0].teachers)
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
        roles = _ordered(x for r in members for x in teacher_roles(r, n).split(", ") if x != "-")
        arch = info.get("arch") or ref.get(f"teachers.{n}.arch", "?")
        line = [n, str(arch), ", ".join(roles) or "-"]
        for rs in pools.values():
            v = _as_percent(rs[0].teachers.get(n, {}).get("test_top1"))
            line.append(f"{v:.2f}" if v is not None else "-")
        rows.append(line)
    return _markdown(header, rows, ["l", "l", "l"] + ["r"] * (len(header) - 3))


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
                f"{dist['mean']:.4f} ± {dist['std']:.4f}",
                f"{ref['mean']:.4f} ± {ref['std']:.4f}" if ref else "-",
                f"{dist['mean'] - ref['mean']:+.4f}" if ref else "-",
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
    text = _markdown(header, rows, ["l", "l", "r", "r", "r", "r"])
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
    return _markdown(["Method", "Runs", "Distilled cos", "Real reference cos"], rows) + (
        "\n\nMean ± sample std (ddof=1) over runs of each run's class-mean cosine similarity."
    )
