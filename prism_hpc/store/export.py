"""Export a distilled set as PNG files in the SRe2L layout (what SRe2L's validation scripts,
DD-Ranking and torchvision's ImageFolder read unchanged):

    out_dir/new{class:03d}/class{class:03d}_id{ipc_index:03d}.png

PNG is lossless, so the exported pixels are exactly the uint8 pixels of `distilled.h5` (the
official code's JPEG re-encoding is a defect; FACTS §A). Grey sets are written as mode "L",
3-channel sets as "RGB". The export goes to a temporary sibling folder that is renamed onto
`out_dir` at the end, so an interrupted export leaves no half-filled `out_dir`.

Class index = label. `torchvision.datasets.ImageFolder` (which DD-Ranking's evaluators call on
an `image_path`) numbers the class folders in sorted name order, so the folder names must sort
in label order and every class must have a folder: zero-padded to 3 digits (`new000` ...
`new999`, the SRe2L layout), wider only when 1000+ classes or IPC indices need it, and a set
that lacks a class is refused (its folders would shift every later label by one).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from prism_hpc.errors import UserError
from prism_hpc.store.distilled import DistilledSet, open_distilled

BLOCK = 256  # images read per HDF5 access


def sre2l_name(label: int, ipc_index: int, class_digits: int = 3, ipc_digits: int = 3) -> str:
    """`newCCC/classCCC_idIII.png`; the widths stay 3 (SRe2L) unless the counts need more."""
    c, i = f"{label:0{class_digits}d}", f"{ipc_index:0{ipc_digits}d}"
    return f"new{c}/class{c}_id{i}.png"


def digits(count: int) -> int:
    """Zero-padding width under which the names of 0 .. count-1 sort numerically (>= 3)."""
    return max(3, len(str(max(count - 1, 0))))


def export_imagefolder(run_dir: Path, out_dir: Path) -> int:
    """Write every image of `run_dir/distilled.h5` under `out_dir`; returns the image count.

    Raises UserError if the distilled set is missing, incomplete (VDS fill values) or has a
    (class, IPC index) pair twice, or if `out_dir` exists and is not empty.
    """
    with open_distilled(run_dir) as d:
        return _export(d, Path(out_dir))


def _export(d: DistilledSet, out_dir: Path) -> int:
    from PIL import Image

    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not empty; export needs a new or empty folder")
    first = d.read(slice(0, 1))
    if len(d.shape) != 4 or first.dtype != np.uint8 or d.shape[1] not in (1, 3):
        raise UserError(
            f"{d.path}: images must be uint8 (N, 1|3, H, W), got {first.dtype} {d.shape}"
        )
    if len(d.pairs()) != len(d):
        raise UserError(f"{d.path}: some (class, IPC index) pair occurs twice")
    labels, ipc = d.labels, d.ipc_index
    present = set(labels.tolist())
    missing = sorted(set(range(d.num_classes)) - present)
    if missing or max(present, default=-1) >= d.num_classes:
        raise UserError(
            f"{d.path}: labels must cover classes 0..{d.num_classes - 1} (missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}); an ImageFolder of it would "
            "number the classes differently from the labels"
        )
    cw, iw = digits(d.num_classes), digits(int(ipc.max()) + 1 if len(ipc) else 0)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        for c in sorted(present):
            (tmp / f"new{c:0{cw}d}").mkdir(parents=True)
        for start, pixels in d.iter_batches(BLOCK):
            for row, img in enumerate(pixels, start):
                # 2-D uint8 -> mode "L", (H, W, 3) uint8 -> "RGB"
                arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
                pil = Image.fromarray(np.ascontiguousarray(arr))
                pil.save(tmp / sre2l_name(int(labels[row]), int(ipc[row]), cw, iw), format="PNG")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename needs it gone on some systems
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return len(labels)
