"""One listing of an ImageFolder per run: tasks read the run's index instead of walking the
shared filesystem, notice a changed folder, and map validation classes by name."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prism_hpc.config.schema import DataConfig
from prism_hpc.data import listing
from prism_hpc.data.sources import open_source, write_data_index
from prism_hpc.errors import UserError
from tests.conftest import submit_imagefolder


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path, format="JPEG")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imagenet"
    for c, wnid in enumerate(["n01", "n02", "n03"]):
        for k in range(2 + c):
            _image(root / "train" / wnid / f"{wnid}_{k}.JPEG", 40 * c + k)
        _image(root / "val" / wnid / f"val_{c}.jpeg", 40 * c)
    _image(root / "train" / "n02" / "upper.JPG", 7)  # ImageNet's .JPEG, other sets' .JPG
    (root / "train" / ".ipynb_checkpoints").mkdir()  # hidden folders are not classes
    (root / "train" / "n01" / "._n01_0.JPEG").write_bytes(b"\0" * 8)  # macOS AppleDouble
    listing._CACHE.clear()
    return root


def _cfg(root: Path) -> DataConfig:
    return DataConfig(source="imagefolder", root=root, resolution=8, channels=3)


def test_listing_skips_hidden_entries_and_reads_any_case(folder):
    src = open_source(_cfg(folder), "train")
    assert src.listing.classes == ["n01", "n02", "n03"]
    assert src.listing.counts == [2, 4, 4]  # n02: 3 .JPEG + upper.JPG
    assert src.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_tasks_read_the_run_index_and_never_walk_the_folder(folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    written = write_data_index(_cfg(folder), run)
    assert [p.name for p in written] == ["train.json.gz", "test.json.gz"]
    listing._CACHE.clear()

    def no_walk(path):
        raise AssertionError(f"walked {path}")

    monkeypatch.setattr(listing, "list_folder", no_walk)
    monkeypatch.setattr("prism_hpc.data.sources.list_folder", no_walk)
    src = open_source(_cfg(folder), "train", run)
    assert src.listing.counts == [2, 4, 4]
    assert open_source(_cfg(folder), "test", run).labels.tolist() == [0, 1, 2]


def test_a_changed_class_folder_is_refused_in_one_line(folder, tmp_path):
    run = tmp_path / "run"
    write_data_index(_cfg(folder), run)
    time.sleep(0.01)
    os.remove(folder / "train" / "n03" / "n03_0.JPEG")
    with pytest.raises(UserError, match=r"n03 changed since .*train.json.gz was made"):
        open_source(_cfg(folder), "train", run)


def test_validation_classes_are_the_training_classes_by_name(folder):
    (folder / "val" / "n02" / "val_1.jpeg").rename(folder / "val" / "val_1.jpeg")
    (folder / "val" / "n02").rmdir()
    with pytest.raises(UserError, match=r"missing \['n02'\]"):
        open_source(_cfg(folder), "test")


def test_submit_refuses_a_val_folder_missing_a_class_naming_it(folder, tmp_path):
    (folder / "val" / "n03" / "val_2.jpeg").unlink()
    (folder / "val" / "n03").rmdir()
    (folder / "val" / ".ipynb_checkpoints").mkdir()  # hidden: neither a class nor an error
    result = submit_imagefolder(tmp_path, folder, "shifted", ipc=1)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing ['n03']" in lines[0], result.stderr
    assert "data: 2 hidden or non-image entr(ies) skipped" in result.stdout  # train: 2 hidden
    assert not (tmp_path / "runs").exists()
