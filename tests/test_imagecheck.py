"""The cheap pass over the images a run reads (data/imagecheck.py, stages/preflight.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prism_hpc.data.imagecheck import image_problem, unreadable_images
from tests.conftest import submit_imagefolder


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("name,fmt", [("a.JPEG", "JPEG"), ("b.jpg", "JPEG"), ("c.PNG", "PNG"),
                                      ("d.bmp", "BMP")])  # fmt: skip
def test_complete_images_of_any_case_pass(tmp_path, name, fmt):
    path = tmp_path / name
    path.write_bytes(_encoded(fmt))
    assert image_problem(path) is None


def test_each_kind_of_broken_file_is_named(tmp_path):
    jpeg, png = _encoded("JPEG"), _encoded("PNG")
    cases = {
        "empty.jpg": (b"", "empty file"),
        "cut.JPEG": (jpeg[: len(jpeg) // 2], "truncated jpeg (no end-of-image marker)"),
        "cut.png": (png[:-20], "truncated png (no end-of-image marker)"),
        "page.jpg": (b"<html>404 not found</html>", "not an image (unknown header)"),
        "._apple.jpeg": (b"\x00\x05\x16\x07" + b"\x00" * 60, "not an image (unknown header)"),
    }
    (tmp_path / "png-named.JPEG").write_bytes(png)  # ImageNet has one: PIL reads it, so do we
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    padded = tmp_path / "padded.jpg"  # some writers pad after the end marker: still fine
    padded.write_bytes(jpeg + b"\x00" * 10)
    found = dict(unreadable_images(sorted(tmp_path.iterdir())))
    assert {p.name: why for p, why in found.items()} == {n: w for n, (_, w) in cases.items()}
    assert image_problem(Path(tmp_path / "missing.jpg")).startswith("unreadable (")


def test_submit_names_a_broken_image_before_anything_runs(tmp_path):
    root = tmp_path / "data"
    for split, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for k in range(n):
                (folder / f"{c}{k}.jpg").write_bytes(_encoded("JPEG"))
    broken = root / "train" / "dog" / "dog0.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    result = submit_imagefolder(tmp_path, root, "broken", ipc=2)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.endswith(
        f"1 of the 6 images the run reads are broken: {broken}: truncated jpeg (no "
        "end-of-image marker); replace or remove them"
    )
    assert not (tmp_path / "runs").exists()  # refused inside the build: nothing is left
