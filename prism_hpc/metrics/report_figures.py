"""The figures of `report.md` (image grids, per-class diversity curves, same-init comparisons,
feature embeddings), made from the run directories; a figure that cannot be made becomes a note.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from prism_hpc.errors import UserError
from prism_hpc.metrics import figures
from prism_hpc.metrics.diversity import embed_classes, per_class_values
from prism_hpc.metrics.measure import reference_indices
from prism_hpc.metrics.runs import RunInfo, read_features
from prism_hpc.store import layout
from prism_hpc.store.distilled import DistilledSet, open_distilled

MAX_GRID_IPC = 10
COMPARE_CLASSES = 6
COMPARE_SLOTS = 5
EMBED_PANELS = 6
EMBED_PER_CLASS = 150


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_").lower() or "run"


def _init_key(r: RunInfo) -> tuple:
    """Runs with equal keys started slot (c, i) from the same pixels."""
    data = tuple(
        str(r.get(f"data.{k}"))
        for k in ("source", "root", "train_dir", "resolution", "channels", "train_limit_per_class")
    )
    if r.init == "noise":
        return ("noise", r.seed, r.get("recover.classes_per_batch"), *data)
    return ("real", *data)


def _real_images(r: RunInfo, rows: np.ndarray, distilled: DistilledSet) -> np.ndarray:
    """uint8 real initial images for the given distilled rows (needs the data set)."""
    from prism_hpc.data.sources import open_source
    from prism_hpc.store.rundir import RunDir

    cfg = RunDir(r.path).load_config()
    source = open_source(cfg.data, "train")
    idx = reference_indices(distilled, source.labels)[rows]
    return (source.load(idx) * 255).round().clamp(0, 255).byte().numpy()


class ReportFigures:
    """Makes the figures of `runs` under `out_dir/figures`; collects notes on what failed."""

    def __init__(self, runs: list[RunInfo], out_dir: Path, log):
        self.runs = runs
        self.out_dir = out_dir
        self.fig_dir = layout.figures_dir(out_dir)
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
    def grids(self) -> list[tuple[str, Path, str]]:
        """(run label, figure, caption); the caption names the sampled classes when a grid
        shows only some of them (ImageNet: 10 rows, never 1000)."""
        out = []
        for r in self.runs:
            try:
                d = open_distilled(r.path)
            except UserError as err:
                self.note(f"{r.label}: no image grid ({err})")
                continue
            with d:
                shown = embed_classes(d.num_classes)
                rows = d.rows_of_classes(shown, MAX_GRID_IPC)
                caption = sampled_caption(shown, d.num_classes, d.class_names)
                path = figures.image_grid(
                    figures.LabelledImages(d.read(rows), d.labels[rows], d.ipc_index[rows]),
                    d.class_names,
                    self.fig_dir / f"grid_{self.slugs[r.label]}.png",
                    title=f"{r.label}: distilled images ({len(d)} in all, IPC {r.ipc})",
                )
            out.append((r.label, path, caption))
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

    def comparisons(self) -> list[tuple[str, Path, str]]:
        groups: dict[tuple, list[RunInfo]] = {}
        for r in self.runs:
            if layout.distilled_file(r.path).is_file():
                groups.setdefault(_init_key(r), []).append(r)
        out = []
        for k, (key, group) in enumerate(groups.items()):
            if len(group) < 2 and key[0] != "real":
                continue
            with contextlib.ExitStack() as stack:
                try:
                    sets = [stack.enter_context(open_distilled(r.path)) for r in group]
                except UserError as err:
                    self.note(f"comparison figure skipped ({err})")
                    continue
                made = self._comparison(k, key, group, sets)
            if made is not None:
                out.append(made)
        return out

    def _comparison(self, k: int, key: tuple, group: list[RunInfo], sets: list[DistilledSet]):
        """(caption, path) of one same-initialisation figure, or None if nothing to compare."""
        classes = embed_classes(sets[0].num_classes, COMPARE_CLASSES)
        common = set.intersection(*[d.pairs() for d in sets])
        slots = sorted({i for _, i in common})[:COMPARE_SLOTS]
        wanted = [(c, i) for c in classes for i in slots if (c, i) in common]
        if not wanted:
            return None
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
            return None
        init = "real initial images" if key[0] == "real" else f"noise (seed {key[1]})"
        shown = [c for c in classes if any(cc == c for cc, _ in wanted)]
        path = figures.comparison_grid(
            blocks,
            first.class_names,
            self.fig_dir / f"compare_{k}.png",
            title=f"Same initialisation ({init}), IPC slots {slots[0]}-{slots[-1]}",
            classes=shown,
        )
        caption = sampled_caption(shown, first.num_classes, first.class_names)
        return ", ".join(label for label, _ in blocks), path, caption

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

    def safe(self, what: str, fn):
        """`fn()`, or [] with a note when it fails."""
        try:
            return fn()
        except (UserError, OSError, ValueError, KeyError, RuntimeError) as err:
            self.note(f"{what} skipped ({type(err).__name__}: {err})")
            return []


def sampled_caption(shown: list[int], num_classes: int, names: list[str]) -> str:
    """'' when every class is shown, else which of them (by name) a figure samples."""
    if len(shown) >= num_classes:
        return ""
    listed = ", ".join(names[c] if c < len(names) else f"class {c}" for c in shown)
    return (f"Showing {len(shown)} of {num_classes} classes (evenly spaced over the label "
            f"range): {listed}.")  # fmt: skip


def _rows_for(d: DistilledSet, wanted: list[tuple[int, int]]) -> np.ndarray:
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
