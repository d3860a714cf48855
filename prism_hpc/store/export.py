"""Export a distilled set as PNG files in the SRe2L layout (what SRe2L's validation scripts,
DD-Ranking and torchvision's ImageFolder read unchanged):

    out_dir/new{class:03d}/class{class:03d}_id{ipc_index:03d}.png

PNG is lossless, so the exported pixels are exactly the uint8 pixels of `distilled.h5` (the
official code's JPEG re-encoding is a defect; FACTS §A). Grey sets are written as mode "L",
3-channel sets as "RGB". The export goes to a temporary sibling folder that is renamed onto
`out_dir` at the end, so an interrupted export leaves no half-filled `out_dir`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from prism_hpc.errors import UserError


def sre2l_name(label: int, ipc_index: int) -> str:
    return f"new{label:03d}/class{label:03d}_id{ipc_index:03d}.png"


def export_imagefolder(run_dir: Path, out_dir: Path) -> int:
    """Write every image of `run_dir/distilled.h5` under `out_dir`; returns the image count.

    Raises UserError if `out_dir` exists and is not empty, or the distilled set is missing,
    incomplete (VDS fill values) or has a (class, IPC index) pair twice.
    """
    from PIL import Image

    src = Path(run_dir) / "distilled.h5"
    out_dir = Path(out_dir)
    if not src.is_file():
        raise UserError(f"{run_dir}: no distilled.h5 to export (run the collect stage first)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and is not empty; export needs a new or empty folder")
    try:
        f = h5py.File(src, "r")
    except OSError as err:
        raise UserError(f"{src}: not a readable HDF5 file ({err})") from None
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    with f:
        images, labels, ipc = f["images"], f["labels"][()], f["ipc_index"][()]
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] not in (1, 3):
            raise UserError(
                f"{src}: images must be uint8 (N, 1|3, H, W), got {images.dtype} {images.shape}"
            )
        if (labels < 0).any() or (ipc < 0).any():
            raise UserError(f"{src}: reads fill values (a recover shard is missing); re-collect")
        pairs = set(zip(labels.tolist(), ipc.tolist()))
        if len(pairs) != len(labels):
            raise UserError(f"{src}: some (class, IPC index) pair occurs twice")
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            for c in sorted(set(labels.tolist())):
                (tmp / f"new{c:03d}").mkdir(parents=True)
            block = 256
            for start in range(0, len(labels), block):
                pixels = images[start : start + block]
                for k, img in enumerate(pixels):
                    row = start + k
                    # 2-D uint8 -> mode "L", (H, W, 3) uint8 -> "RGB"
                    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
                    pil = Image.fromarray(np.ascontiguousarray(arr))
                    pil.save(tmp / sre2l_name(int(labels[row]), int(ipc[row])), format="PNG")
            if out_dir.exists():
                out_dir.rmdir()  # empty (checked above); rename needs it gone on some systems
            os.replace(tmp, out_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return len(labels)
