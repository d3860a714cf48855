"""`report.md` + `figures/` for one run (the pipeline's last stage) or several (`prism-hpc report`).

Reads only files in the run directories; diversity is taken from each run's `diversity.json`
and, when that is missing and `compute_diversity` is set, computed from the run's config,
teachers and data (and cached in the run dir). Any part that cannot be produced is named in
the report's "Notes" section instead of failing the whole report.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prism_hpc.errors import UserError
from prism_hpc.metrics import figures, tables
from prism_hpc.metrics.diversity import (
    embed_classes,
    load_distilled,
    per_class_values,
    read_features,
    reference_indices,
    run_diversity,
)
from prism_hpc.store.atomic import atomic_write_text

MAX_GRID_IPC = 10
COMPARE_CLASSES = 6
COMPARE_SLOTS = 5
EMBED_PANELS = 6
EMBED_PER_CLASS = 150


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_").lower() or "run"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("prism-hpc")
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "?"


def _init_key(r: tables.RunInfo) -> tuple:
    """Runs with equal keys started slot (c, i) from the same pixels."""
    data = tuple(
        str(r.get(f"data.{k}"))
        for k in ("source", "root", "train_dir", "resolution", "channels", "train_limit_per_class")
    )
    if r.init == "noise":
        return ("noise", r.seed, r.get("recover.classes_per_batch"), *data)
    return ("real", *data)


def _real_images(r: tables.RunInfo, rows: np.ndarray, distilled) -> np.ndarray:
    """uint8 real initial images for the given distilled rows (needs the data set)."""
    from prism_hpc.data.sources import open_source
    from prism_hpc.hpc.rundir import RunDir

    cfg = RunDir(r.path).load_config()
    source = open_source(cfg.data, "train")
    idx = reference_indices(distilled, source.labels)[rows]
    return (source.load(idx) * 255).round().clamp(0, 255).byte().numpy()


class _Report:
    def __init__(self, runs, out_dir: Path, log):
        self.runs = runs
        self.out_dir = out_dir
        self.fig_dir = out_dir / "figures"
        self.log = log
        self.notes: list[str] = []
        self.slugs: dict[str, str] = {}
        used: set[str] = set()
        for r in runs:
            s = _slug(r.label)
            while s in used:
                s += "_"
            used.add(s)
            self.slugs[r.label] = s

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out_dir).as_posix()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.log(f"report: {text}")

    # figures ----------------------------------------------------------------------------
    def grids(self) -> list[tuple[str, Path]]:
        out = []
        for r in self.runs:
            try:
                d = load_distilled(r.path)
            except UserError as err:
                self.note(f"{r.label}: no image grid ({err})")
                continue
            classes = embed_classes(d.num_classes)
            rows = d.rows_of_classes(classes, MAX_GRID_IPC)
            path = figures.image_grid(
                d.read(rows),
                d.labels[rows],
                d.ipc_index[rows],
                d.class_names,
                self.fig_dir / f"grid_{self.slugs[r.label]}.png",
                title=f"{r.label}: distilled images ({len(d)} in all, IPC {r.ipc})",
            )
            out.append((r.label, path))
        return out

    def curves(self) -> list[Path]:
        out = []
        with_div = [r for r in self.runs if r.diversity and r.diversity.get("distilled")]
        for k, data_key in enumerate(dict.fromkeys(r.data_key for r in with_div)):
            group = [r for r in with_div if r.data_key == data_key]
            series = [(r.label, per_class_values(r.diversity["distilled"])) for r in group]
            refs: list[tuple[str, dict[int, float]]] = []
            seen: list[dict[int, float]] = []
            for r in group:
                ref = r.diversity.get("reference")
                if not ref:
                    continue
                values = per_class_values(ref)
                if any(
                    values.keys() == s.keys() and all(abs(values[c] - s[c]) < 1e-9 for c in s)
                    for s in seen
                ):
                    continue
                seen.append(values)
                refs.append((f"real reference ({r.label})", values))
            if len(refs) == 1:
                refs = [("real reference", refs[0][1])]
            names = group[0].diversity.get("class_names") or []
            extractors = sorted(
                {
                    f"{r.diversity.get('extractor')} ({r.diversity.get('extractor_arch')})"
                    for r in group
                }
            )
            suffix = f"_{k}" if k else ""
            out.append(
                figures.diversity_curves(
                    series,
                    names,
                    self.fig_dir / f"diversity_per_class{suffix}.png",
                    title=f"Intra-class cosine similarity, {data_key} (lower = more diverse)",
                    references=refs,
                    extractor=", ".join(extractors),
                )
            )
        return out

    def comparisons(self) -> list[tuple[str, Path]]:
        groups: dict[tuple, list[tables.RunInfo]] = {}
        for r in self.runs:
            if (r.path / "distilled.h5").is_file():
                groups.setdefault(_init_key(r), []).append(r)
        out = []
        for k, (key, group) in enumerate(groups.items()):
            if len(group) < 2 and key[0] != "real":
                continue
            try:
                sets = [load_distilled(r.path) for r in group]
            except UserError as err:
                self.note(f"comparison figure skipped ({err})")
                continue
            classes = embed_classes(sets[0].num_classes, COMPARE_CLASSES)
            common = set.intersection(
                *[{(int(c), int(i)) for c, i in zip(d.labels, d.ipc_index)} for d in sets]
            )
            slots = sorted({i for _, i in common})[:COMPARE_SLOTS]
            wanted = [(c, i) for c in classes for i in slots if (c, i) in common]
            if not wanted:
                continue
            blocks = []
            first = sets[0]
            # A run with `recover.init_only` stores the initial images themselves: its own
            # column already shows them, so a second "real" column would be a duplicate.
            has_init_only_run = any(r.get("recover.init_only") for r in group)
            if key[0] == "real" and not has_init_only_run:
                try:
                    real = _real_images(group[0], _rows_for(first, wanted), first)
                    blocks.append(("Real (initial images)", _by_class(real, wanted)))
                except (UserError, OSError) as err:
                    self.note(f"comparison figure without real images ({err})")
            for r, d in zip(group, sets):
                blocks.append((r.label, _by_class(d.read(_rows_for(d, wanted)), wanted)))
            if len(blocks) < 2:
                continue
            init = "real initial images" if key[0] == "real" else f"noise (seed {key[1]})"
            path = figures.comparison_grid(
                blocks,
                first.class_names,
                self.fig_dir / f"compare_{k}.png",
                title=f"Same initialisation ({init}), IPC slots {slots[0]}-{slots[-1]}",
                classes=[c for c in classes if any(cc == c for cc, _ in wanted)],
            )
            out.append((", ".join(label for label, _ in blocks), path))
        return out

    def embeddings(self) -> list[Path]:
        out = []
        with_feat = [(r, read_features(r.path)) for r in self.runs]
        with_feat = [(r, f) for r, f in with_feat if f is not None and r.diversity]
        for k, data_key in enumerate(dict.fromkeys(r.data_key for r, _ in with_feat)):
            group = [(r, f) for r, f in with_feat if r.data_key == data_key][:EMBED_PANELS]
            panels = []
            ref = next(((r, f) for r, f in group if "reference" in f), None)
            if ref is not None:
                r0, f0 = ref
                panels.append(
                    (
                        "Real reference" + (f" ({r0.label})" if len(group) > 1 else ""),
                        *_subsample(f0["reference"], f0["labels"]),
                    )
                )
            for r, f in group:
                panels.append((r.label, *_subsample(f["distilled"], f["labels"])))
            ids = {r.diversity.get("extractor_identity") for r, _ in group}
            names = group[0][0].diversity.get("class_names") or []
            suffix = f"_{k}" if k else ""
            out.append(
                figures.embedding_plot(
                    panels,
                    names,
                    self.fig_dir / f"embedding{suffix}.png",
                    title=f"Penultimate features per class, {data_key}",
                    joint=len(ids) == 1,
                )
            )
        return out


def _rows_for(d, wanted: list[tuple[int, int]]) -> np.ndarray:
    pos = {(int(c), int(i)): k for k, (c, i) in enumerate(zip(d.labels, d.ipc_index))}
    return np.asarray([pos[w] for w in wanted], dtype=np.int64)


def _by_class(images: np.ndarray, wanted: list[tuple[int, int]]) -> dict[int, list[np.ndarray]]:
    out: dict[int, list[np.ndarray]] = {}
    for img, (c, _) in zip(images, wanted):
        out.setdefault(c, []).append(img)
    return out


def _subsample(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.concatenate(
        [np.flatnonzero(labels == c)[:EMBED_PER_CLASS] for c in np.unique(labels)]
    )
    keep.sort()
    return np.asarray(features[keep], np.float32), np.asarray(labels[keep])


def _runs_table(runs: list[tables.RunInfo]) -> str:
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
                tables.selection_label(r),
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
    return tables._markdown(header, rows, ["l"] * 3 + ["r", "l", "l", "r", "l", "l"])


def _per_seed_table(runs: list[tables.RunInfo]) -> str | None:
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
    return tables._markdown(
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
        if not (p / "config.yaml").is_file() and not (p / "distilled.h5").is_file():
            raise UserError(f"report: {p} is not a run directory (no config.yaml or distilled.h5)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = tables.load_runs(run_dirs)
    rep = _Report(runs, out_dir, log)
    for r in runs:
        if r.diversity is None and compute_diversity and (r.path / "distilled.h5").is_file():
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
    per_seed = _per_seed_table(runs)
    if per_seed:
        parts.append(
            "<details><summary>Per-seed results</summary>\n\n" + per_seed + "\n\n</details>\n"
        )
    ablation = tables.ablation_table(runs)
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
    for path in _safe(rep, "diversity curves", rep.curves):
        parts.append(f"![per-class diversity]({rep.rel(path)})\n")

    parts.append("## Figures\n")
    grids = _safe(rep, "image grids", rep.grids)
    if grids:
        parts.append("### Distilled images\n")
        for label, path in grids:
            parts.append(f"{label}:\n\n![{label}]({rep.rel(path)})\n")
    comps = _safe(rep, "comparison figures", rep.comparisons)
    if comps:
        parts.append("### Same initial images side by side (paper Fig. 5)\n")
        for label, path in comps:
            parts.append(f"{label}:\n\n![comparison]({rep.rel(path)})\n")
    embeds = _safe(rep, "embedding figures", rep.embeddings)
    if embeds:
        parts.append("### Feature embedding per class (paper Fig. 1)\n")
        for path in embeds:
            parts.append(f"![embedding]({rep.rel(path)})\n")
    if rep.notes:
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in rep.notes) + "\n")
    out = out_dir / "report.md"
    atomic_write_text(out, "\n".join(parts))
    atomic_write_text(out_dir / "report.json", json.dumps(_summary(runs), indent=1) + "\n")
    return out


def _safe(rep: _Report, what: str, fn):
    try:
        return fn()
    except (UserError, OSError, ValueError, KeyError, RuntimeError) as err:
        rep.note(f"{what} skipped ({type(err).__name__}: {err})")
        return []


def _summary(runs: list[tables.RunInfo]) -> dict[str, Any]:
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
        "runs": {r.label: str(r.path) for r in runs},
    }
