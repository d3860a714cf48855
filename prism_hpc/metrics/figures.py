"""Figures for reports (matplotlib, Agg canvas; pyplot's global state is never touched).

- `image_grid`: distilled images, one row per class, one column per IPC slot.
- `diversity_curves`: per-class intra-class cosine similarity, one curve per run (paper Fig. 4).
- `comparison_grid`: the same classes and slots side by side for runs that share their initial
  images, real initial images first (paper Fig. 5).
- `embedding_plot`: 2-D embedding of per-class features (paper Fig. 1): UMAP if `umap` is
  importable, else scikit-learn t-SNE if importable, else PCA (torch SVD).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

DPI = 130
TITLE_SIZE = 13
LABEL_SIZE = 10


def _save(fig: Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight", facecolor="white")
    return out


def _to_hwc(img: np.ndarray) -> np.ndarray:
    """uint8 (C, H, W) -> (H, W) grey or (H, W, 3)."""
    img = np.asarray(img)
    return img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))


def mosaic(images: Sequence[np.ndarray], rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """Tile uint8 (C, H, W) images row-major into one (H', W'[, 3]) image with white gaps.

    Entries may be None (left white)."""
    first = next(im for im in images if im is not None)
    c, h, w = first.shape
    shape = (rows * (h + pad) - pad, cols * (w + pad) - pad) + ((3,) if c >= 3 else ())
    canvas = np.full(shape, 255, np.uint8)
    for k, im in enumerate(images):
        if im is None or k >= rows * cols:
            continue
        r, q = divmod(k, cols)
        y, x = r * (h + pad), q * (w + pad)
        canvas[y : y + h, x : x + w] = _to_hwc(im)
    return canvas


def _show(ax, canvas: np.ndarray) -> None:
    kwargs = {"cmap": "gray", "vmin": 0, "vmax": 255} if canvas.ndim == 2 else {}
    ax.imshow(canvas, interpolation="nearest", **kwargs)


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


@dataclass(frozen=True)
class LabelledImages:
    """Distilled rows to show: uint8 pixels (N, C, H, W) with each row's class and IPC slot."""

    images: np.ndarray
    labels: np.ndarray
    ipc_index: np.ndarray


def image_grid(
    rows: LabelledImages,
    class_names: list[str],
    out: Path,
    title: str,
    classes: Sequence[int] | None = None,
    max_ipc: int = 10,
) -> Path:
    """One row per class (name on the left), one column per IPC slot (index on top);
    `classes` defaults to the first 10 classes present."""
    images = rows.images
    labels, ipc_index = np.asarray(rows.labels), np.asarray(rows.ipc_index)
    if classes is None:
        classes = sorted(set(labels.tolist()))[:10]
    classes = [c for c in classes if (labels == c).any()]
    slots = sorted(set(ipc_index[np.isin(labels, classes)].tolist()))[:max_ipc]
    cells = []
    for c in classes:
        for s in slots:
            hit = np.flatnonzero((labels == c) & (ipc_index == s))
            cells.append(images[hit[0]] if len(hit) else None)
    _, h, w = images.shape[1:]
    pad = max(1, h // 16)
    canvas = mosaic(cells, len(classes), len(slots), pad)
    cell_in = max(0.55, min(1.1, 7.5 / max(len(slots), 1)))
    fig = Figure(figsize=(len(slots) * cell_in + 2.2, len(classes) * cell_in + 0.9))
    ax = fig.add_subplot()
    _show(ax, canvas)
    ax.set_yticks([r * (h + pad) + h / 2 for r in range(len(classes))])
    ax.set_yticklabels([_short(class_names[c]) for c in classes], fontsize=LABEL_SIZE)
    ax.set_xticks([q * (w + pad) + w / 2 for q in range(len(slots))])
    ax.set_xticklabels([str(s) for s in slots], fontsize=LABEL_SIZE - 1)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("IPC index", fontsize=LABEL_SIZE)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=TITLE_SIZE, pad=8)
    return _save(fig, out)


def _style(k: int, n_classes: int, kind: str):
    colors = [f"C{i}" for i in range(10)]
    if kind == "reference":
        return {
            "color": "0.45",
            "linestyle": "--",
            "marker": "s" if n_classes <= 40 else None,
            "markersize": 4,
            "linewidth": 1.4,
        }
    return {
        "color": colors[k % 10],
        "linestyle": "-",
        "marker": "o" if n_classes <= 40 else None,
        "markersize": 5,
        "linewidth": 1.8,
    }


def diversity_curves(
    series: list[tuple[str, dict[int, float]]],
    class_names: list[str],
    out: Path,
    title: str = "Intra-class cosine similarity (lower = more diverse)",
    references: list[tuple[str, dict[int, float]]] | None = None,
    extractor: str | None = None,
) -> Path:
    """Per-class curves; up to 40 classes on a named x axis, beyond that each curve sorted."""
    classes = sorted({c for _, pc in [*series, *(references or [])] for c in pc})
    n = len(classes)
    named = n <= 40
    fig = Figure(figsize=(max(7.0, min(14.0, 0.55 * n + 3)) if named else 9.0, 4.8))
    ax = fig.add_subplot()
    curves = [(label, pc, "run") for label, pc in series]
    curves += [(label, pc, "reference") for label, pc in references or []]
    run_k = 0
    for label, pc, kind in curves:
        values = np.array([pc.get(c, np.nan) for c in classes], dtype=float)
        finite = values[np.isfinite(values)]
        if not len(finite):
            continue
        legend = f"{label}: {finite.mean():.4f} ± {finite.std():.4f}"
        style = _style(run_k, n, kind)
        run_k += kind == "run"
        if named:
            ax.plot(range(n), values, label=legend, **style)
        else:
            ax.plot(
                np.arange(len(finite)) / max(len(finite) - 1, 1),
                np.sort(finite),
                label=legend,
                **style,
            )
    if named:
        ax.set_xticks(range(n))
        ax.set_xticklabels(
            [_short(class_names[c], 16) if c < len(class_names) else str(c) for c in classes],
            rotation=35,
            ha="right",
            fontsize=LABEL_SIZE,
        )
        ax.set_xlabel("class", fontsize=LABEL_SIZE + 1)
    else:
        ax.set_xlabel(
            f"fraction of classes ({n} classes, each curve sorted)", fontsize=LABEL_SIZE + 1
        )
    ax.set_ylabel("mean pairwise cosine similarity", fontsize=LABEL_SIZE + 1)
    ax.grid(True, alpha=0.3)
    ax.legend(
        fontsize=LABEL_SIZE - 1, loc="best", title="class mean ± std", title_fontsize=LABEL_SIZE - 1
    )
    full = title + (f"\nfeatures: {extractor}" if extractor else "")
    ax.set_title(full, fontsize=TITLE_SIZE)
    fig.tight_layout()
    return _save(fig, out)


def comparison_grid(
    blocks: list[tuple[str, dict[int, list[np.ndarray]]]],
    class_names: list[str],
    out: Path,
    title: str = "Same initial images, different recovery",
    classes: Sequence[int] | None = None,
) -> Path:
    """Rows = classes, one column block per run (k images of that class side by side)."""
    if classes is None:
        classes = sorted(set().union(*(b.keys() for _, b in blocks)))[:6]
    k = max(len(imgs) for _, b in blocks for imgs in b.values())
    sample = next(im for _, b in blocks for imgs in b.values() for im in imgs)
    h = sample.shape[1]
    pad = max(1, h // 16)
    block_in = max(2.0, min(4.5, 0.75 * k))
    fig = Figure(figsize=(len(blocks) * block_in + 1.6, len(classes) * block_in / k * 1.05 + 1.0))
    axes = fig.subplots(len(classes), len(blocks), squeeze=False)
    for r, c in enumerate(classes):
        for q, (name, imgs) in enumerate(blocks):
            ax = axes[r][q]
            row = list(imgs.get(c, []))[:k]
            row += [None] * (k - len(row))
            if any(im is not None for im in row):
                _show(ax, mosaic(row, 1, k, pad))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(name, fontsize=LABEL_SIZE + 1, fontweight="bold")
            if q == 0:
                ax.set_ylabel(
                    _short(class_names[c]), fontsize=LABEL_SIZE, rotation=0, ha="right", va="center"
                )
    fig.suptitle(title, fontsize=TITLE_SIZE)
    fig.tight_layout()
    return _save(fig, out)


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates of L2-normalised features and the method's name."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    if n >= 10:
        try:
            import umap  # type: ignore

            reducer = umap.UMAP(
                n_components=2, random_state=seed, n_neighbors=min(15, n - 1), metric="cosine"
            )
            return np.asarray(reducer.fit_transform(x)), "UMAP"
        except ImportError:
            pass
        try:
            from sklearn.manifold import TSNE  # type: ignore

            tsne = TSNE(
                n_components=2,
                random_state=seed,
                init="pca",
                perplexity=float(max(2.0, min(30.0, (n - 1) / 3))),
            )
            return np.asarray(tsne.fit_transform(x)), "t-SNE"
        except ImportError:
            pass
    return pca_2d(x), "PCA"


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Projection onto the first two principal components (torch SVD; signs made stable)."""
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.shape[0] == 0:
        return np.zeros((0, 2))
    t = t - t.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(t, full_matrices=False)
    comps = vh[:2]
    signs = torch.sign(comps[torch.arange(len(comps)), comps.abs().argmax(1)])
    coords = t @ (comps * signs.view(-1, 1)).T
    if coords.shape[1] < 2:
        coords = torch.cat(
            [coords, torch.zeros(len(coords), 2 - coords.shape[1], dtype=t.dtype)], 1
        )
    return coords.numpy()


def embedding_plot(
    panels: list[tuple[str, np.ndarray, np.ndarray]],
    class_names: list[str],
    out: Path,
    title: str = "Per-class features, 2-D embedding",
    joint: bool = True,
    seed: int = 0,
) -> Path:
    """One scatter per panel (name, features (N, D), labels (N,)), coloured by class.

    `joint`: one embedding fitted on all panels together (same axes, comparable spread); use
    it only when the panels share a feature extractor.
    """
    if joint:
        coords, method = embed_2d(np.concatenate([f for _, f, _ in panels]), seed)
        split = np.cumsum([len(f) for _, f, _ in panels])[:-1]
        per_panel = np.split(coords, split)
    else:
        per_panel, method = [], "PCA"
        for _, f, _ in panels:
            c, method = embed_2d(f, seed)
            per_panel.append(c)
    classes = sorted({int(c) for _, _, y in panels for c in np.asarray(y)})
    cmap = [f"C{i}" for i in range(10)] if len(classes) <= 10 else None
    ncols = min(3, math.ceil(math.sqrt(len(panels))))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.3 * ncols + 2.0, 4.0 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handles = {}
    for k, ((name, _, y), xy) in enumerate(zip(panels, per_panel)):
        ax = axes[k // ncols][k % ncols]
        y = np.asarray(y)
        for j, c in enumerate(classes):
            sel = y == c
            if not sel.any():
                continue
            color = cmap[j] if cmap else None
            sc = ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                s=16,
                alpha=0.8,
                color=color,
                edgecolors="none",
                label=class_names[c] if c < len(class_names) else str(c),
            )
            handles.setdefault(c, sc)
        ax.set_title(name, fontsize=LABEL_SIZE + 1)
        axis = "PC" if method == "PCA" else method
        ax.set_xlabel(f"{axis} 1", fontsize=LABEL_SIZE)
        ax.set_ylabel(f"{axis} 2", fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=LABEL_SIZE - 2)
        ax.grid(True, alpha=0.25)
        if joint:
            allxy = np.concatenate(per_panel)
            margin = 0.05 * (allxy.max(0) - allxy.min(0) + 1e-9)
            ax.set_xlim(allxy[:, 0].min() - margin[0], allxy[:, 0].max() + margin[0])
            ax.set_ylim(allxy[:, 1].min() - margin[1], allxy[:, 1].max() + margin[1])
    for k in range(len(panels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.legend(
        [handles[c] for c in classes if c in handles],
        [
            _short(class_names[c]) if c < len(class_names) else str(c)
            for c in classes
            if c in handles
        ],
        loc="outside right center",
        fontsize=LABEL_SIZE,
        title="class",
        markerscale=1.6,
    )
    fig.suptitle(
        f"{title} ({method}{', joint fit' if joint and len(panels) > 1 else ''})",
        fontsize=TITLE_SIZE,
    )
    return _save(fig, out)
