"""SRe2L ImageFolder export: lossless PNG round trip, layout, refusal of a non-empty folder."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from prism_hpc.errors import UserError
from prism_hpc.store.export import export_imagefolder
from tests.helpers import imagefolder_matches_h5


def _distilled(run_dir, channels, num_classes=3, ipc=2, size=6, seed=0):
    rng = np.random.default_rng(seed)
    n = num_classes * ipc
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    labels = np.tile(np.arange(num_classes), ipc).astype(np.int64)
    ipc_index = np.repeat(np.arange(ipc), num_classes).astype(np.int32)
    run_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(run_dir / "distilled.h5", "w") as f:
        f.create_dataset("images", data=images, chunks=(1, channels, size, size))
        f["labels"] = labels
        f["ipc_index"] = ipc_index
        f.attrs["num_classes"] = num_classes
    return images, labels, ipc_index


@pytest.mark.parametrize("channels,mode", [(1, "L"), (3, "RGB")])
def test_pixels_round_trip(tmp_path, channels, mode):
    images, labels, ipc_index = _distilled(tmp_path / "run", channels)
    out = tmp_path / "export"
    assert export_imagefolder(tmp_path / "run", out) == len(labels)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == sorted(
        f"new{c:03d}/class{c:03d}_id{i:03d}.png" for c, i in zip(labels, ipc_index)
    )
    for img, c, i in zip(images, labels, ipc_index):
        with Image.open(out / f"new{c:03d}" / f"class{c:03d}_id{i:03d}.png") as png:
            assert png.mode == mode
            back = np.asarray(png)
        expected = img[0] if channels == 1 else img.transpose(1, 2, 0)
        np.testing.assert_array_equal(back, expected)
    assert not list(tmp_path.glob(".export.tmp-*"))


def test_refuses_non_empty_folder_but_accepts_empty(tmp_path):
    _distilled(tmp_path / "run", 1)
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        export_imagefolder(tmp_path / "run", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_imagefolder(tmp_path / "run", empty) == 6


def test_refuses_missing_or_incomplete_set(tmp_path):
    with pytest.raises(UserError, match="no distilled.h5"):
        export_imagefolder(tmp_path / "nothing", tmp_path / "out")
    _distilled(tmp_path / "run", 1)
    with h5py.File(tmp_path / "run" / "distilled.h5", "a") as f:
        f["labels"][0] = -1  # what a VDS with a lost shard reads
    with pytest.raises(UserError, match="fill values"):
        export_imagefolder(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_exports_a_collected_virtual_dataset(tmp_path):
    """distilled.h5 as `collect` writes it: a VDS over per-slice shards (relative paths)."""
    from prism_hpc.store.collect import collect_shards
    from prism_hpc.store.shards import write_shard

    rng = np.random.default_rng(1)
    run = tmp_path / "run"
    shards, pixels = {}, {}
    for s in range(2):
        images = rng.integers(0, 256, (3, 3, 5, 5), dtype=np.uint8)
        path = run / "recover" / f"slice_{s:05d}.h5"
        write_shard(path, images, np.arange(3), np.full(3, s, np.int32), {"slice": s})
        shards[s] = path
        pixels.update({(c, s): images[c] for c in range(3)})
    collect_shards(shards, 3, run / "distilled.h5", {"num_classes": 3})
    out = tmp_path / "export"
    assert export_imagefolder(run, out) == 6
    for (c, s), img in pixels.items():
        with Image.open(out / f"new{c:03d}" / f"class{c:03d}_id{s:03d}.png") as png:
            np.testing.assert_array_equal(np.asarray(png), img.transpose(1, 2, 0))


@pytest.mark.parametrize("channels", [1, 3])
def test_imagefolder_of_120_classes_has_class_index_equal_to_label(tmp_path, channels):
    """> 100 classes: an unpadded (`new100` < `new11`) or mixed-width scheme would renumber
    classes under sorting; 3-digit padding keeps index == label."""
    _distilled(tmp_path / "run", channels, num_classes=120, ipc=2, size=4, seed=3)
    out = tmp_path / "export"
    assert export_imagefolder(tmp_path / "run", out) == 240
    ds = imagefolder_matches_h5(tmp_path / "run", out)
    assert ds.classes[:3] == ["new000", "new001", "new002"] and ds.classes[-1] == "new119"
    assert sorted(p.name for p in (out / "new100").iterdir()) == [
        "class100_id000.png", "class100_id001.png"]  # fmt: skip


def test_name_width_sorts_numerically_beyond_1000():
    from prism_hpc.store.export import digits, sre2l_name

    assert [digits(n) for n in (1, 10, 1000, 1001, 12000)] == [3, 3, 3, 4, 5]
    assert sre2l_name(7, 12) == "new007/class007_id012.png"  # the SRe2L layout up to 1000
    for count in (120, 1000, 1200):
        w = digits(count)
        names = [sre2l_name(c, 0, w) for c in range(count)]
        assert sorted(names) == names
        ids = [sre2l_name(0, i, 3, digits(count)) for i in range(count)]
        assert sorted(ids) == ids  # IPC > 1000 (`ipc: all`): file order = IPC order


def test_refuses_a_set_that_lacks_a_class(tmp_path):
    _distilled(tmp_path / "run", 1, num_classes=4, ipc=1)
    with h5py.File(tmp_path / "run" / "distilled.h5", "a") as f:
        f["labels"][1] = 3  # class 1 has no image left: ImageFolder would call class 2 "1"
        f["ipc_index"][1] = 1
    with pytest.raises(UserError, match=r"missing \[1\]"):
        export_imagefolder(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
