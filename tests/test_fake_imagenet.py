"""The fake ImageNet generator (benchmarks/in1k_rehearsal/make_fake_imagenet.py) at 20 classes:
layout, uneven counts, file quirks, ImageFolder, determinism, refusal, no half-written output."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "in1k_rehearsal" / "make_fake_imagenet.py"
SMALL = ["--classes", "20", "--max-size", "64"]


@pytest.fixture(scope="module")
def fake():
    spec = importlib.util.spec_from_file_location("make_fake_imagenet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tree(fake, tmp_path_factory):
    out = tmp_path_factory.mktemp("fake") / "in1k"
    assert fake.main([str(out), *SMALL]) == 0
    return out, json.loads((out / "manifest.json").read_text())


def _run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
        cwd=REPO, check=False,
    )  # fmt: skip


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_and_sorted_wnids(tree):
    out, manifest = tree
    train = sorted(p.name for p in (out / "train").iterdir())
    val = sorted(p.name for p in (out / "val").iterdir())
    mapping = [
        line.split(" ", 1) for line in (out / "LOC_synset_mapping.txt").read_text().splitlines()
    ]
    names = [line.split("\t") for line in (out / "class_names.txt").read_text().splitlines()]
    wnids = [w for w, _ in mapping]
    assert len(wnids) == 20 == manifest["num_classes"] and wnids[0] == "n01440764"
    assert wnids == sorted(set(wnids)) == train == val == list(manifest["counts"]["train"])
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert mapping[0] == ["n01440764", "tench, Tinca tinca"] and names[0] == ["n01440764", "tench"]
    assert [w for w, _ in names] == wnids and names[1][1] == "class 0001"
    for wnid in wnids:
        assert all(
            re.fullmatch(rf"{wnid}_\d+\.JPEG", p.name) for p in (out / "train" / wnid).iterdir()
        )
        assert all(
            re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", p.name)
            for p in (out / "val" / wnid).iterdir()
        )
    numbers = sorted(int(p.stem[-8:]) for p in (out / "val").rglob("*.JPEG"))
    assert numbers == list(range(1, 41))  # one shuffled 1..V numbering across the classes
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_counts_match_manifest_and_are_uneven(tree):
    out, manifest = tree
    for split in ("train", "val"):
        on_disk = {d.name: len(list(d.iterdir())) for d in sorted((out / split).iterdir())}
        assert on_disk == manifest["counts"][split]
        assert sum(on_disk.values()) == manifest["totals"][split]
    train = manifest["counts"]["train"]
    assert sorted(set(train.values())) == [2, 4, 5]  # small, most, large (defaults)
    assert sorted(w for w, n in train.items() if n == 2) == manifest["small_classes"]
    assert sorted(w for w, n in train.items() if n == 5) == manifest["large_classes"]
    assert len(manifest["small_classes"]) == 3 and len(manifest["large_classes"]) == 3
    assert set(manifest["counts"]["val"].values()) == {2}
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert manifest["total_bytes"] == sum(p.stat().st_size for p in files)


def test_quirk_files_open_with_their_mode_and_format(tree):
    out, manifest = tree
    quirks = manifest["quirk_files"]
    assert {k: len(v) for k, v in quirks.items()} == manifest["quirks"]
    assert all(manifest["quirks"][k] >= 1 for k in ("grey", "cmyk", "png"))
    assert all(rel.startswith("train/") for rel in quirks["cmyk"] + quirks["png"])
    expected = {"grey": ("L", "JPEG"), "cmyk": ("CMYK", "JPEG"), "png": ("RGB", "PNG")}
    for kind, (mode, fmt) in expected.items():
        for rel in quirks[kind]:
            assert rel.endswith(".JPEG")
            with Image.open(out / rel) as img:
                assert (img.mode, img.format) == (mode, fmt), rel
                img.convert("RGB").load()
    special = {rel for v in quirks.values() for rel in v}
    sizes = set()
    for p in sorted((out / "train").rglob("*.JPEG"))[:30]:
        with Image.open(p) as img:
            if p.relative_to(out).as_posix() not in special:
                assert (img.mode, img.format) == ("RGB", "JPEG")
            sizes.add(img.size)
    assert len({w / h for w, h in sizes}) > 10  # varying size and aspect ratio
    assert all(40 <= s <= 64 for size in sizes for s in size)


def test_torchvision_imagefolder_reads_train(tree):
    from torchvision.datasets import ImageFolder

    out, manifest = tree
    dataset = ImageFolder(str(out / "train"))
    wnids = list(manifest["counts"]["train"])
    assert dataset.classes == sorted(wnids) == wnids
    assert len(dataset) == manifest["totals"]["train"]
    targets = [dataset.classes[t] for t in dataset.targets]
    assert {w: targets.count(w) for w in wnids} == manifest["counts"]["train"]
    png = manifest["quirk_files"]["png"][0]
    index = [Path(p).relative_to(out).as_posix() for p, _ in dataset.samples].index(png)
    image, label = dataset[index]  # PIL opens the PNG-in-disguise, ImageFolder converts to RGB
    assert image.mode == "RGB" and dataset.classes[label] == png.split("/")[1]


def test_same_args_give_byte_identical_files(fake, tree, tmp_path):
    out, _ = tree
    again = tmp_path / "again"
    assert fake.main([str(again), *SMALL]) == 0
    assert _digests(again) == _digests(out)
    other = tmp_path / "other_seed"
    assert fake.main([str(other), *SMALL, "--seed", "1"]) == 0
    assert _digests(other) != _digests(out)


def test_refuses_non_empty_out_with_exit_2(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run(str(out), "--classes", "3")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not empty" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(str(empty), "--classes", "3")
    assert result.returncode == 0, result.stderr  # an empty folder is fine
    assert len(list((empty / "train").iterdir())) == 3


def test_interrupted_run_leaves_nothing(fake, tmp_path, monkeypatch):
    calls = []

    def failing(img, kind):
        calls.append(kind)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return b"x"

    monkeypatch.setattr(fake, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        fake.make_fake_imagenet(tmp_path / "out", classes=4)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_exit_2(tmp_path):
    result = _run(str(tmp_path / "x"), "--classes", "4", "--min-size", "50", "--max-size", "10")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()
