"""The rehearsal's checks on a finished run: each returns a Check with the measured value.
Used by run.py (`run_checks`)."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

MAX_TABLE_ROWS = 100  # a legible report: no table scales with the class count
MAX_REPORT_BYTES = 512 * 1024
MAX_FIGURE_SIDE_PX = 6000  # a figure with one row per class (1000 rows) would be far taller


@dataclass
class Check:
    name: str
    passed: bool
    measured: str
    expected: str


def _wnids(data_root: Path) -> list[str]:
    """The class list as the generator wrote it (LOC_synset_mapping.txt, class order)."""
    lines = (data_root / "LOC_synset_mapping.txt").read_text().splitlines()
    return [line.split(" ", 1)[0] for line in lines if line.strip()]


def check_distilled(run_dir: Path, classes: int, ipc: int, resolution: int, wnids) -> Check:
    from prism_hpc.store.distilled import DistilledSet

    expected = (f"{classes} x {ipc} = {classes * ipc} images of 3x{resolution}x{resolution}, "
                f"{ipc} per class, class_names = the {classes} wnids in sorted order")  # fmt: skip
    try:
        with DistilledSet(run_dir / "distilled.h5") as d:
            import numpy as np

            counts = np.bincount(d.labels, minlength=classes)
            names = list(d.class_names)
            ok = (
                len(d) == classes * ipc
                and tuple(d.shape[1:]) == (3, resolution, resolution)
                and d.num_classes == classes
                and (counts == ipc).all()
                and names == sorted(names) == wnids
            )
            measured = (
                f"{len(d)} images {'x'.join(map(str, d.shape[1:]))}, num_classes "
                f"{d.num_classes}, per class {counts.min()}-{counts.max()}, class_names "
                f"{names[0]} .. {names[-1]} ({len(names)}; sorted: {names == sorted(names)}, "
                f"== wnids: {names == wnids})"
            )
    except Exception as err:  # noqa: BLE001 -- a broken file is a failed check, not a crash
        ok, measured = False, f"unreadable: {err}"
    return Check(
        f"distilled.h5: {classes} x IPC images, wnids as class_names", ok, measured, expected
    )


def check_soft_labels(run_dir: Path, classes: int, n_images: int) -> Check:
    import h5py

    files = sorted((run_dir / "relabel").glob("*.h5"))
    shapes, ok = [], bool(files)
    for path in files:
        with h5py.File(path, "r") as f:
            groups = [k for k in f if k.startswith("epoch_")]
            ok &= bool(groups)
            for g in groups:
                shape = tuple(f[g]["logits"].shape)
                shapes.append(f"{path.name}/{g}/logits {shape} {f[g]['logits'].dtype}")
                ok &= shape == (n_images, classes)
    measured = f"{len(files)} file(s): " + ("; ".join(shapes[:4]) or "none")
    if len(shapes) > 4:
        measured += f"; ... ({len(shapes)} epochs)"
    return Check(f"soft labels have {classes} columns", ok, measured,
                 f"every relabel/*.h5 epoch_*/logits of shape ({n_images}, {classes})")  # fmt: skip


def check_students(run_dir: Path, classes: int, val_per_class: int, train_classes: list[str]):
    """metrics.json records num_classes and the accuracies (fractions), not the size of the
    eval set; that comes from the run's val index (data_index/test.json.gz) + eval_limit."""
    n_val = classes * val_per_class
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    limit = cfg["students"].get("eval_limit")
    index = run_dir / "data_index" / "test.json.gz"
    val_classes, val_files = [], 0
    if index.is_file():
        with gzip.open(index, "rt") as fh:
            listing = json.load(fh)
        val_classes = listing["classes"]
        val_files = sum(len(f) for f in listing["files"])
    paths = sorted((run_dir / "students").glob("*/seed*/metrics.json"))
    ok = bool(paths) and val_classes == train_classes and val_files == n_val and limit is None
    parts = []
    for path in paths:
        m = json.loads(path.read_text())
        final = m.get("final") or {}
        top1 = final.get("top1")
        hits = None if top1 is None else top1 * n_val
        # every accuracy is correct / total: with total = n_val the product is an integer
        integral = hits is not None and abs(hits - round(hits)) < 1e-6
        counted = [e.get("eval_images") for e in m.get("evals") or []]  # recorded since 2026-12
        ok &= m.get("num_classes") == classes and bool(m.get("evals")) and integral
        ok &= all(c in (None, n_val) for c in counted)
        parts.append(
            f"{path.parent.parent.name}/{path.parent.name}: num_classes {m.get('num_classes')}, "
            f"{len(m.get('evals') or [])} eval(s) on {counted[-1] if counted else '?'} images, "
            f"final top-1 {top1} (= {hits:.0f}/{n_val})"
            if hits is not None
            else f"{path.parent.parent.name}: no final top-1"
        )
    measured = (
        f"val index: {len(val_classes)} classes (== train classes: {val_classes == train_classes})"
        f", {val_files} images; eval_limit {limit}; " + ("; ".join(parts) or "no metrics.json")
    )
    expected = (f"every students/*/seed*/metrics.json: num_classes {classes}, evaluated on "
                f"the val folder's {classes} classes x {val_per_class} = {n_val} images "
                "(no eval_limit)")  # fmt: skip
    return Check(f"students evaluated on the {classes}-class val folder", ok, measured, expected)


def _tables(text: str) -> list[int]:
    """Row counts (header and separator excluded) of the markdown tables in `text`."""
    sizes, run = [], 0
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            run += 1
        elif run:
            sizes.append(max(run - 2, 0))
            run = 0
    return sizes


def check_report(run_dir: Path, classes: int, wnids: list[str]) -> tuple[list[Check], list[str]]:
    """Two checks: the report is bounded (size, tables, figure sizes) whatever the class count,
    and its text says which classes the figures sample (names them, or 'k of N classes')."""
    from PIL import Image

    report = run_dir / "report.md"
    if not report.is_file():
        missing = Check("report stays legible", False, "no report.md", "report.md")
        return [missing, Check("report says which classes its figures show", False,
                               "no report.md", "report.md")], []  # fmt: skip
    text = report.read_text()
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    sides = {}
    for p in figures:
        with Image.open(p) as im:
            sides[p.name] = im.size
    tallest = max(sides.items(), key=lambda kv: max(kv[1]), default=("-", (0, 0)))
    tables = _tables(text)
    linked = re.findall(r"\]\((?:\./)?(figures/[^)]+\.png)\)", text)
    legible = (
        len(text.encode()) <= MAX_REPORT_BYTES
        and bool(figures)
        and max(tables, default=0) <= MAX_TABLE_ROWS
        and max(tallest[1]) <= MAX_FIGURE_SIDE_PX
    )
    measured = (
        f"report.md {len(text.encode()) / 1024:.1f} KiB, {len(text.splitlines())} lines, "
        f"{len(tables)} table(s), largest {max(tables, default=0)} rows; {len(figures)} figure(s) "
        f"({len(linked)} linked), largest {tallest[0]} {tallest[1][0]}x{tallest[1][1]} px"
    )
    expected = (f"<= {MAX_REPORT_BYTES // 1024} KiB, >= 1 figure, every table <= "
                f"{MAX_TABLE_ROWS} rows, every figure <= {MAX_FIGURE_SIDE_PX} px a side")  # fmt: skip
    known = set(wnids)
    named = sorted({w for w in re.findall(r"n\d{8}", text) if w in known})
    counts = re.findall(r"\b(\d+) (?:of|out of) (?:the |all )?(\d+) classes\b", text)
    says = [line.strip() for line in text.splitlines()
            if re.search(r"\b\d+ (?:of|out of) (?:the |all )?\d+ classes\b", line)
            or any(w in line for w in named)]  # fmt: skip
    sampled = (0 < len(named) < classes) or any(int(k) < int(n) for k, n in counts)
    return [
        Check(f"report stays legible (nothing draws {classes} rows)", legible, measured, expected),
        Check(
            "report says which classes its figures sample",
            sampled,
            f"{len(named)} of {classes} wnids named in report.md; "
            f"'k of N classes' phrases: {[' of '.join(c) for c in counts][:4] or 'none'}",
            "report.md names the sampled classes (some wnids, not all) or says 'k of N classes'",
        ),
    ], says[:6]


def check_export(export_dir: Path, classes: int, ipc: int, resolution: int) -> Check:
    from PIL import Image

    want = [f"new{c:03d}" for c in range(classes)]
    dirs = sorted(p.name for p in export_dir.iterdir() if p.is_dir()) if export_dir.is_dir() else []
    bad = []
    n_png = 0
    for c, name in enumerate(want):
        files = sorted(p.name for p in (export_dir / name).glob("*")) if name in dirs else []
        n_png += len(files)
        if files != [f"class{c:03d}_id{i:03d}.png" for i in range(ipc)]:
            bad.append(name)
    size = None
    if dirs:
        with Image.open(export_dir / want[0] / "class000_id000.png") as im:
            size = (im.size, im.mode)
    ok = dirs == want and not bad and size == ((resolution, resolution), "RGB")
    measured = (f"{len(dirs)} folders ({dirs[0] if dirs else '-'} .. {dirs[-1] if dirs else '-'}),"
                f" {n_png} PNG, {len(bad)} folder(s) with other files, first image {size}")  # fmt: skip
    expected = (f"{classes} folders new000..new{classes - 1:03d}, each class{{c:03d}}_id000.."
                f"id{ipc - 1:03d}.png, {resolution}x{resolution} RGB")  # fmt: skip
    return Check(f"export: {classes} class folders in the SRe2L layout", ok, measured, expected)


def run_checks(run_dir: Path, export_dir: Path, data_root: Path, classes: int, ipc: int,
               resolution: int) -> tuple[list[Check], list[str]]:  # fmt: skip
    wnids = _wnids(data_root)
    manifest = json.loads((data_root / "manifest.json").read_text())
    val_per_class = manifest["args"]["val_per_class"]
    train_classes = sorted(p.name for p in (data_root / "train").iterdir() if p.is_dir())
    report_checks, says = check_report(run_dir, classes, wnids)
    checks = [
        check_distilled(run_dir, classes, ipc, resolution, wnids),
        check_soft_labels(run_dir, classes, classes * ipc),
        check_students(run_dir, classes, val_per_class, train_classes),
        *report_checks,
        check_export(export_dir, classes, ipc, resolution),
    ]
    return checks, says
