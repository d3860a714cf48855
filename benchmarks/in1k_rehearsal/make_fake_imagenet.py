#!/usr/bin/env python
"""A fake ImageNet-1K in the real on-disk layout, small enough to write anywhere in seconds.

    .venv/bin/python benchmarks/in1k_rehearsal/make_fake_imagenet.py OUT [--classes 1000]
        [--train-per-class 4] [--val-per-class 2] [--small-classes 3 --small-count 2]
        [--large-classes 3 --large-count N] [--min-size 40 --max-size 120] [--seed 0]

Writes (the "reorganised" ImageNet layout that torchvision's ImageFolder and
prism_hpc.data.ImageFolderSource read):

    OUT/train/<wnid>/<wnid>_<k>.JPEG              k: distinct random numbers, like the real files
    OUT/val/<wnid>/ILSVRC2012_val_<nnnnnnnn>.JPEG  n: a shuffled 1..V numbering, like the real val
    OUT/LOC_synset_mapping.txt   PRIMARY class list, the Kaggle format: "n01440764 tench, Tinca
                                 tinca" (wnid, one space, names), one line per class, class order
    OUT/class_names.txt          the same classes as "wnid<TAB>human name" (one name per class)
    OUT/manifest.json            counts per split and class, seed and arguments, the small/large
                                 classes, the grey/CMYK/PNG files (counts and paths), total bytes

Classes: `--classes` synset-like ids, 'n' + 8 digits, unique and strictly increasing with the
class index (so sorted folder names == class order, as ImageFolder sorts them). Class 0 is the
real first ImageNet class n01440764 ("tench"); the others are n01440764 plus a fixed
pseudo-random gap each (independent of --seed), with synthetic names "class 0001", ...

Counts are uneven, like ImageNet's 732-1300 training images per class: most classes get
`--train-per-class`, `--small-classes` classes (chosen by the seed) only `--small-count`, and
`--large-classes` others `--large-count` (default train-per-class + max(1, train-per-class//4)),
so IPC slices of "identical-size" distillation see shrinking class counts (with fewer than 9
classes the small and large defaults are classes // 3 each). Every class gets
`--val-per-class` validation images.

Images: width and height drawn independently in [--min-size, --max-size] (varying size and
aspect ratio); content is synthetic but class-dependent (a class colour and a stripe pattern of
class-dependent frequency and orientation, per-image phase, brightness and noise), so a
classifier can learn something. ImageNet's file quirks are reproduced: about 1% of all files are
grey-scale JPEGs (mode L), about 0.5% of the training files are CMYK JPEGs (the real train set
has 22), and one training file per 5000 (at least one) is a PNG saved under a .JPEG name (the
real n02105855_2933.JPEG). The manifest lists which.

Deterministic: every image comes from its own numpy Generator seeded with (seed, split, class,
index), JPEGs are saved with fixed quality 90 and no metadata, the manifest has no timestamps
and only relative paths, so the same arguments give byte-identical files (with the same
Pillow/libjpeg).

Safe: OUT must not exist or be an empty folder (otherwise exit 2 with a one-line message). The
data is written into a hidden temporary sibling folder that is renamed to OUT at the end, so an
interrupted run leaves no half-written OUT (the temporary folder is removed on errors, Ctrl-C
and SIGTERM; only a SIGKILL can leave a hidden OUT's-parent/.OUT.partial-* folder behind).

Measured (Pillow 13.0, numpy 2.4, pinned to one core of a busy shared 2-core machine): the
defaults (1000 classes, 3997 train + 2000 val images, sides 40-120 px) take 7.5-11 s wall
(5.7 s CPU, 45 MB peak memory) and write 22.7 MB (21.6 MiB) of files, about 40 MB of disk
with 4 KiB blocks and 2002 folders.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

FIRST_WNID = 1440764  # n01440764, "tench", ImageNet class 0
FIRST_NAMES = "tench, Tinca tinca"
MAX_GAP = 20000
MAX_CLASSES = 4000  # keeps every id below n99999999 (the gaps are at most MAX_GAP)
JPEG_QUALITY = 90
SPLIT_IDS = {"train": 0, "val": 1}
GREY_FRACTION = 0.01  # of all files
CMYK_FRACTION = 0.005  # of the training files
PNG_PER = 5000  # one PNG-in-disguise per this many training files, at least one


class FakeImageNetError(ValueError):
    """Invalid arguments or an output folder that is in the way."""


def wnids(num_classes: int) -> list[str]:
    """Synset-like ids for classes 0..num_classes-1: n01440764 first, strictly increasing."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise FakeImageNetError(f"classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    ids, value = [], FIRST_WNID
    for i in range(num_classes):
        if i:
            value += 1 + (i * 2654435761 >> 7) % MAX_GAP  # a fixed pseudo-random gap
        ids.append(f"n{value:08d}")
    return ids


def human_names(num_classes: int) -> list[str]:
    """One human name per class ("tench", then "class 0001", ...)."""
    return ["tench"] + [f"class {c:04d}" for c in range(1, num_classes)]


def class_counts(
    num_classes: int,
    train_per_class: int,
    small_classes: int,
    small_count: int,
    large_classes: int,
    large_count: int,
    seed: int,
) -> tuple[list[int], list[int], list[int]]:
    """Training images per class, and the (sorted) small and large class indices."""
    perm = np.random.default_rng([seed, 7]).permutation(num_classes)
    small = sorted(int(c) for c in perm[:small_classes])
    large = sorted(int(c) for c in perm[small_classes : small_classes + large_classes])
    counts = [train_per_class] * num_classes
    for c in small:
        counts[c] = small_count
    for c in large:
        counts[c] = large_count
    return counts, small, large


def _class_style(c: int) -> tuple[np.ndarray, float, float]:
    """Class colour (RGB 0-255), stripe frequency (cycles per image) and orientation (rad)."""
    hue = (c * 0.6180339887) % 1.0
    sat = 0.45 + 0.45 * ((c * 0.381966) % 1.0)
    val = 0.55 + 0.4 * ((c * 0.7548776) % 1.0)
    colour = np.array(colorsys.hsv_to_rgb(hue, sat, val)) * 255.0
    freq = 1.0 + (c * 7) % 11
    angle = (c * 0.5698402910) % np.pi
    return colour, freq, angle


def synth_image(c: int, rng: np.random.Generator, min_size: int, max_size: int) -> Image.Image:
    """One RGB image of class c: class colour x stripes of the class frequency/orientation."""
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    colour, freq, angle = _class_style(c)
    x = np.arange(w, dtype=np.float32)[None, :] / max(w, h)
    y = np.arange(h, dtype=np.float32)[:, None] / max(w, h)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    stripes = np.sin(2.0 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)
    shade = (0.6 + 0.4 * stripes) * rng.uniform(0.8, 1.2)
    pixels = shade[:, :, None] * colour[None, None, :].astype(np.float32)
    pixels += rng.normal(0.0, 12.0, size=(h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _encode(img: Image.Image, kind: str) -> bytes:
    buf = io.BytesIO()
    if kind == "png":
        img.save(buf, format="PNG")
    else:
        mode = {"rgb": "RGB", "grey": "L", "cmyk": "CMYK"}[kind]
        img.convert(mode).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _check_out(out: Path) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            raise FakeImageNetError(f"{out} exists and is not empty; choose another OUT")
    elif out.exists() or out.is_symlink():
        raise FakeImageNetError(f"{out} exists and is not a folder; choose another OUT")


def make_fake_imagenet(
    out: str | Path,
    *,
    classes: int = 1000,
    train_per_class: int = 4,
    val_per_class: int = 2,
    small_classes: int | None = None,
    small_count: int = 2,
    large_classes: int | None = None,
    large_count: int | None = None,
    min_size: int = 40,
    max_size: int = 120,
    seed: int = 0,
) -> dict:
    """Write the fake ImageNet to `out` (see the module docstring); returns the manifest."""
    out = Path(out)
    if small_classes is None:
        small_classes = min(3, classes // 3)
    if large_classes is None:
        large_classes = min(3, classes // 3)
    if large_count is None:
        large_count = train_per_class + max(1, train_per_class // 4)
    for name, value, low in [
        ("train_per_class", train_per_class, 1),
        ("val_per_class", val_per_class, 0),
        ("small_classes", small_classes, 0),
        ("small_count", small_count, 1),
        ("large_classes", large_classes, 0),
        ("large_count", large_count, 1),
        ("min_size", min_size, 1),
    ]:
        if value < low:
            raise FakeImageNetError(f"{name} must be >= {low}, got {value}")
    if max_size < min_size:
        raise FakeImageNetError(f"max_size ({max_size}) must be >= min_size ({min_size})")
    if small_classes + large_classes > classes:
        raise FakeImageNetError(
            f"small_classes + large_classes ({small_classes + large_classes}) "
            f"exceeds classes ({classes})"
        )
    ids = wnids(classes)
    names = human_names(classes)
    _check_out(out)

    counts, small, large = class_counts(
        classes, train_per_class, small_classes, small_count, large_classes, large_count, seed
    )
    # The file plan: (split, class, index within class, relative path).
    plan: list[tuple[str, int, int, str]] = []
    for c, wnid in enumerate(ids):
        krng = np.random.default_rng([seed, 11, c])
        ks = 1 + np.sort(krng.choice(max(20000, 20 * counts[c]), counts[c], replace=False))
        plan += [("train", c, j, f"train/{wnid}/{wnid}_{int(k)}.JPEG") for j, k in enumerate(ks)]
    numbers = np.random.default_rng([seed, 13]).permutation(classes * val_per_class) + 1
    for c, wnid in enumerate(ids):
        for j in range(val_per_class):
            n = int(numbers[c * val_per_class + j])
            plan.append(("val", c, j, f"val/{wnid}/ILSVRC2012_val_{n:08d}.JPEG"))

    # The quirks: PNG and CMYK among the training files, grey among the rest (both splits).
    n_train = sum(counts)
    qrng = np.random.default_rng([seed, 17])
    train_order = [int(i) for i in qrng.permutation(n_train)]
    n_png = min(max(1, n_train // PNG_PER), n_train)
    n_cmyk = min(max(1, round(n_train * CMYK_FRACTION)), n_train - n_png)
    kinds = ["rgb"] * len(plan)
    for i in train_order[:n_png]:
        kinds[i] = "png"
    for i in train_order[n_png : n_png + n_cmyk]:
        kinds[i] = "cmyk"
    rest = [i for i in qrng.permutation(len(plan)) if kinds[int(i)] == "rgb"]
    n_grey = min(max(1, round(len(plan) * GREY_FRACTION)), len(rest))
    for i in rest[:n_grey]:
        kinds[int(i)] = "grey"

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        for wnid in ids:
            (tmp / "train" / wnid).mkdir(parents=True)
            (tmp / "val" / wnid).mkdir(parents=True)
        image_bytes = 0
        for (split, c, j, rel), kind in zip(plan, kinds):
            rng = np.random.default_rng([seed, SPLIT_IDS[split], c, j])
            data = _encode(synth_image(c, rng, min_size, max_size), kind)
            (tmp / rel).write_bytes(data)
            image_bytes += len(data)

        synsets = [f"{ids[0]} {FIRST_NAMES}"] + [f"{w} {n}" for w, n in zip(ids[1:], names[1:])]
        texts = {
            "LOC_synset_mapping.txt": "".join(line + "\n" for line in synsets),
            "class_names.txt": "".join(f"{w}\t{n}\n" for w, n in zip(ids, names)),
        }
        for fname, text in texts.items():
            (tmp / fname).write_text(text, encoding="utf-8")
        quirk_files = {
            k: [rel for (_, _, _, rel), kind in zip(plan, kinds) if kind == k]
            for k in ("grey", "cmyk", "png")
        }
        manifest = {
            "format": "fake-imagenet/1",
            "seed": seed,
            "args": {
                "classes": classes,
                "train_per_class": train_per_class,
                "val_per_class": val_per_class,
                "small_classes": small_classes,
                "small_count": small_count,
                "large_classes": large_classes,
                "large_count": large_count,
                "min_size": min_size,
                "max_size": max_size,
                "jpeg_quality": JPEG_QUALITY,
            },
            "class_list": "LOC_synset_mapping.txt",
            "num_classes": classes,
            "totals": {"train": n_train, "val": classes * val_per_class, "images": len(plan)},
            "counts": {
                "train": dict(zip(ids, counts)),
                "val": {w: val_per_class for w in ids},
            },
            "small_classes": [ids[c] for c in small],
            "large_classes": [ids[c] for c in large],
            "quirks": {k: len(v) for k, v in quirk_files.items()},
            "quirk_files": quirk_files,
            "image_bytes": image_bytes,
            # every file except manifest.json itself
            "total_bytes": image_bytes + sum(len(t.encode("utf-8")) for t in texts.values()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _check_out(out)  # still free (someone may have written there meanwhile)
        if out.is_dir():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Write a small fake ImageNet (ImageNet folder layout, file quirks, uneven "
        "class counts) to OUT."
    )
    p.add_argument(
        "out", metavar="OUT", type=Path, help="output folder (must not exist or be empty)"
    )
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--train-per-class", type=int, default=4)
    p.add_argument("--val-per-class", type=int, default=2)
    p.add_argument(
        "--small-classes",
        type=int,
        help="classes with --small-count (default 3; classes//3 if fewer)",
    )
    p.add_argument("--small-count", type=int, default=2)
    p.add_argument(
        "--large-classes",
        type=int,
        help="classes with --large-count (default 3; classes//3 if fewer)",
    )
    p.add_argument(
        "--large-count", type=int, default=None, help="default: train-per-class + max(1, it//4)"
    )
    p.add_argument("--min-size", type=int, default=40, help="smallest image side in px")
    p.add_argument("--max-size", type=int, default=120, help="largest image side in px")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        manifest = make_fake_imagenet(
            args.out,
            classes=args.classes,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            small_classes=args.small_classes,
            small_count=args.small_count,
            large_classes=args.large_classes,
            large_count=args.large_count,
            min_size=args.min_size,
            max_size=args.max_size,
            seed=args.seed,
        )
    except FakeImageNetError as exc:
        print(f"make_fake_imagenet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("make_fake_imagenet: interrupted; nothing written", file=sys.stderr)
        return 130
    t, q = manifest["totals"], manifest["quirks"]
    print(
        f"{args.out}: {manifest['num_classes']} classes, {t['train']} train + {t['val']} val "
        f"images ({q['grey']} grey, {q['cmyk']} CMYK, {q['png']} PNG-as-JPEG), "
        f"{manifest['total_bytes'] / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)  # clean up the temporary folder on SIGTERM too
    sys.exit(main())
