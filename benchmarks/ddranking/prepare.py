"""Make the inputs of a tiny DD-Ranking run from Fashion-MNIST, with our own code (our venv).

    python benchmarks/ddranking/prepare.py OUT [--ipc 1] [--real-per-class 10] [--val-per-class 20]

writes

- `OUT/real/train/<class>/*.png`, `OUT/real/val/<class>/*.png`: the first N training (test)
  images of each class, the ImageFolder layout that ddranking reads real data from;
- `OUT/run/distilled.h5`: a tiny "distilled" set written as the pipeline writes one (a shard
  via `write_shard`, then `collect_shards`): per class the IPC training images nearest to the
  class mean (herding's first pick; not our method, a cheap set that is better than random);
- `OUT/syn/`: that set exported by `export_imagefolder`, what ddranking's evaluator reads.

Pixels go through our Fashion-MNIST source at `--resolution` (bilinear 28 -> 32 like the demo
config) and are stored as uint8, so real and distilled images are made the same way. Prints one
JSON line: the paths and counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from prism_hpc.config.data import DataConfig
from prism_hpc.data.sources import FASHION_MNIST_CLASSES, FASHION_MNIST_STATS, FashionMNIST
from prism_hpc.store.collect import collect_shards
from prism_hpc.store.export import export_imagefolder
from prism_hpc.store.shards import write_shard

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _uint8(src: FashionMNIST, rows: np.ndarray) -> np.ndarray:
    """(n, 1, R, R) uint8 pixels as the pipeline stores them (float [0, 1] -> round x 255)."""
    import torch

    return src.load(rows).mul(255).round().clamp(0, 255).to(torch.uint8).numpy()


def _first_per_class(labels: np.ndarray, n: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c)[:n] for c in range(int(labels.max()) + 1)]


def _write_folder(folder: Path, src: FashionMNIST, per_class: list[np.ndarray]) -> int:
    """`folder/<class:05d>/<i:05d>.png`, grey PNG (ImageFolder's loader makes it RGB)."""
    from PIL import Image

    count = 0
    for c, rows in enumerate(per_class):
        (folder / f"{c:05d}").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(_uint8(src, rows)):
            Image.fromarray(img[0]).save(folder / f"{c:05d}" / f"{i:05d}.png")
            count += 1
    return count


def nearest_to_class_mean(src: FashionMNIST, ipc: int) -> tuple[np.ndarray, np.ndarray]:
    """Row ids (class-major) of the `ipc` training images nearest their class's mean image."""
    rows, labels = [], []
    for c in range(src.num_classes):
        idx = np.flatnonzero(src.labels == c)
        x = src.load(idx).flatten(1).numpy()
        d = ((x - x.mean(0)) ** 2).sum(1)
        rows.append(idx[np.argsort(d, kind="stable")[:ipc]])
        labels.append(np.full(ipc, c))
    return np.concatenate(rows), np.concatenate(labels)


def prepare(out: Path, root: Path, ipc: int, real_per_class: int, val_per_class: int,
            resolution: int) -> dict[str, object]:  # fmt: skip
    """Write the real folders, the distilled set and its export under `out` (see module doc)."""
    cfg = DataConfig(root=root, resolution=resolution, channels=1)
    train, test = FashionMNIST(cfg, "train"), FashionMNIST(cfg, "test")
    n_train = _write_folder(
        out / "real" / "train", train, _first_per_class(train.labels, real_per_class)
    )
    n_val = _write_folder(out / "real" / "val", test, _first_per_class(test.labels, val_per_class))
    rows, labels = nearest_to_class_mean(train, ipc)
    ipc_index = np.tile(np.arange(ipc, dtype=np.int32), train.num_classes)
    run = out / "run"
    shard = run / "recover" / "slice_00000.h5"
    write_shard(shard, _uint8(train, rows), labels, ipc_index, {"slice": 0, "rows": rows.tolist()})
    attrs = {
        "num_classes": train.num_classes, "class_names": FASHION_MNIST_CLASSES,
        "mean": FASHION_MNIST_STATS[0], "std": FASHION_MNIST_STATS[1],
        "method": "nearest to class mean (DD-Ranking check)",
    }  # fmt: skip
    collect_shards({0: shard}, len(rows), run / "distilled.h5", attrs, consolidate=True)
    n_syn = export_imagefolder(run, out / "syn")
    return {"real": str(out / "real"), "syn": str(out / "syn"), "run": str(run), "ipc": ipc,
            "train_images": n_train, "val_images": n_val, "syn_images": n_syn,
            "train_rows": rows.tolist(), "resolution": resolution}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--fmnist-root", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--real-per-class", type=int, default=10)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--resolution", type=int, default=32)
    a = p.parse_args(argv)
    info = prepare(a.out, a.fmnist_root, a.ipc, a.real_per_class, a.val_per_class, a.resolution)
    print(json.dumps(info, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
