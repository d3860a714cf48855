"""`report.md` + `figures/` for one run (the pipeline's last stage) or several (`prism-hpc report`).

Reads only files in the run directories; diversity is taken from each run's `diversity.json`
and, when that is missing and `compute_diversity` is set, computed from the run's config,
teachers and data (and cached in the run dir). Any part that cannot be produced is named in
the report's "Notes" section instead of failing the whole report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prism_hpc.errors import UserError
from prism_hpc.metrics import ddranking, tables
from prism_hpc.metrics.ablation import ablation_table, selection_label
from prism_hpc.metrics.measure import run_diversity
from prism_hpc.metrics.report_figures import ReportFigures
from prism_hpc.metrics.runs import RunInfo, load_runs
from prism_hpc.store import layout
from prism_hpc.store.atomic import atomic_write_text


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("prism-hpc")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "?"


def _runs_table(runs: list[RunInfo]) -> str:
    rows = []
    for r in runs:
        students = ", ".join(sorted({f"{tables.pretty_arch(s.arch)}" for s in r.students})) or "-"
        n = len(r.students)
        rows.append(
            [
                r.label,
                r.method,
                r.data_key,
                str(r.ipc),
                r.init,
                selection_label(r),
                str(r.seed),
                f"{students} ({n} result{'s' if n != 1 else ''})" if n else "-",
                f"`{r.path}`",
            ]
        )
    header = [
        "Run",
        "Method",
        "Data",
        "IPC",
        "Init",
        "Teacher selection",
        "Seed",
        "Students",
        "Directory",
    ]
    return tables.markdown_table(header, rows, ["l"] * 3 + ["r", "l", "l", "r", "l", "l"])


def _per_seed_table(runs: list[RunInfo]) -> str | None:
    rows = []
    for r in runs:
        for s in sorted(r.students, key=lambda s: (s.arch, s.seed)):
            rows.append(
                [
                    r.label,
                    tables.pretty_arch(s.arch),
                    str(s.seed),
                    f"{s.top1:.2f}",
                    f"{s.top5:.2f}" if s.top5 is not None else "-",
                    f"{s.best_top1:.2f}" if s.best_top1 is not None else "-",
                ]
            )
    if not rows:
        return None
    return tables.markdown_table(
        ["Run", "Student", "Seed", "Final top-1 [%]", "Final top-5 [%]", "Best top-1 [%]"], rows
    )


def write_report(
    run_dirs: list[Path],
    out_dir: Path,
    *,
    compute_diversity: bool = True,
    device: Any = "cpu",
    log: Callable[[str], None] = lambda message: None,
) -> Path:
    """Write `out_dir/report.md` and `out_dir/figures/*.png`; returns the report's path.

    `run_dirs`: one or more run directories (for one run, `out_dir` is usually the run dir
    itself). `compute_diversity`: compute a missing `diversity.json` (needs the run's teacher
    weights and data set; the result is cached in the run dir).
    """
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise UserError("report: give at least one run directory")
    for p in run_dirs:
        if not p.is_dir():
            raise UserError(f"report: {p} is not a directory")
        if not layout.config_file(p).is_file() and not layout.distilled_file(p).is_file():
            raise UserError(f"report: {p} is not a run directory (no config.yaml or distilled.h5)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(run_dirs)
    rep = ReportFigures(runs, out_dir, log)
    for r in runs:
        if r.diversity is None and compute_diversity and layout.distilled_file(r.path).is_file():
            try:
                r.diversity = run_diversity(r.path, device, log)
            except (UserError, OSError, KeyError, ValueError, RuntimeError) as err:
                rep.note(f"{r.label}: diversity not computed ({err})")
        elif r.diversity is None:
            rep.note(f"{r.label}: no diversity.json")
        if r.incomplete_students:
            rep.note(f"{r.label}: students: {', '.join(r.incomplete_students)}")

    parts: list[str] = []
    title = runs[0].label if len(runs) == 1 else f"{len(runs)} runs"
    parts.append(f"# prism-hpc report: {title}\n")
    parts.append(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by prism-hpc {_version()}.\n")
    parts.append("## Runs\n\n" + _runs_table(runs) + "\n")
    parts.append(
        "## Teachers\n\nTest-set top-1 of the teacher pool (squeeze output).\n\n"
        + tables.teacher_table(runs)
        + "\n"
    )
    parts.append(
        "## Student accuracy (paper Table 1 layout)\n\n" + tables.accuracy_table(runs) + "\n"
    )
    paired = tables.paired_table(runs)
    if paired:
        parts.append("### Paired differences\n\n" + paired + "\n")
    ranked = ddranking.lrs_table(runs)
    if ranked:
        parts.append(
            "## DD-Ranking scores\n\nDD-Ranking's Label-Robust Score (weight 0.5): HLR = "
            "real-hard - syn-hard, IOR = syn-any - rdm-any (top-1 points), "
            "LRS = (e^a - e^-1) / (e - e^-1) with a = (IOR - HLR) / 200 (docs/baselines.md).\n\n"
            + ranked
            + "\n"
        )
    per_seed = _per_seed_table(runs)
    if per_seed:
        parts.append(
            "<details><summary>Per-seed results</summary>\n\n" + per_seed + "\n\n</details>\n"
        )
    ablation = ablation_table(runs)
    if ablation:
        parts.append(
            "## Teacher alignment and selection (paper Table 2 layout)\n\n" + ablation + "\n"
        )

    parts.append("## Diversity\n")
    div = tables.diversity_table(runs)
    parts.append((div or "_No diversity measured._") + "\n")
    pooled = tables.pooled_diversity_table(runs)
    if pooled:
        parts.append("Pooled over recovery runs:\n\n" + pooled + "\n")
    for path in rep.safe("diversity curves", rep.curves):
        parts.append(f"![per-class diversity]({rep.rel(path)})\n")

    parts.append("## Figures\n")
    grids = rep.safe("image grids", rep.grids)
    parts += _labelled_figures("Distilled images", grids, rep.rel, alt=None)
    comps = rep.safe("comparison figures", rep.comparisons)
    parts += _labelled_figures(
        "Same initial images side by side (paper Fig. 5)", comps, rep.rel, alt="comparison"
    )
    embeds = rep.safe("embedding figures", rep.embeddings)
    if embeds:
        parts.append("### Feature embedding per class (paper Fig. 1)\n")
        for path in embeds:
            parts.append(f"![embedding]({rep.rel(path)})\n")
    if rep.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in rep.notes) + "\n")
    out = layout.report_md(out_dir)
    atomic_write_text(out, "\n".join(parts))
    atomic_write_text(layout.report_json(out_dir), json.dumps(_summary(runs), indent=1) + "\n")
    return out


def _labelled_figures(
    title: str, figures: list | None, rel: Callable[[Path], str], alt: str | None
) -> list[str]:
    """A `###` section of (label, path, caption) figures; nothing when there are none.
    `alt` None: each image's alt text is its label."""
    if not figures:
        return []
    out = [f"### {title}\n"]
    for label, path, caption in figures:
        out.append(f"{label}:\n\n![{alt or label}]({rel(path)})\n")
        if caption:
            out.append(caption + "\n")
    return out


def _summary(runs: list[RunInfo]) -> dict[str, Any]:
    """Machine-readable companion of report.md (cells of the accuracy table, diversity)."""
    cells = tables.accuracy_cells(runs)
    return {
        "accuracy": [
            {
                "method": k[0],
                "arch": k[1],
                "ipc": k[2],
                "top1_mean": v["mean"],
                "top1_std": v["std"],
                "n": v["n"],
            }
            for k, v in cells.items()
        ],
        "diversity": {
            r.label: {
                "distilled": r.diversity["distilled"]["mean"],
                "reference": (r.diversity.get("reference") or {}).get("mean"),
                "extractor": r.diversity.get("extractor"),
            }
            for r in runs
            if r.diversity and r.diversity.get("distilled")
        },
        "ddranking": ddranking.lrs_summary(runs),
        "runs": {r.label: str(r.path) for r in runs},
    }
