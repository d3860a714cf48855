"""Image sources. Every source yields float images in [0, 1], (N, C, R, R), un-normalised.

Normalisation is applied by the consumer (`Normalize`), so that distilled images can be stored
as uint8 pixels and re-normalised with the mean/std written next to them. torch is imported
where pixels are made, so that planning and `status` (class counts, file lists) stay light.
"""

from __future__ import annotations

import gzip
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from prism_hpc.config.schema import DataConfig
from prism_hpc.data.listing import (
    index_path,
    list_folder,
    list_folder_cached,
    read_listing,
    write_listing,
)
from prism_hpc.errors import UserError

if TYPE_CHECKING:
    import torch

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_STATS = ([0.2860], [0.3530])
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class ImageSource:
    """Labels up front, pixels on demand (ImageNet does not fit in memory)."""

    num_classes: int
    class_names: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, indices: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def _fit(images: torch.Tensor, channels: int, resolution: int) -> torch.Tensor:
    """uint8 (N, c, h, w) -> float [0,1] (N, channels, resolution, resolution)."""
    import torch.nn.functional as F

    x = images.float().div_(255)
    if x.shape[1] != channels:
        x = x.mean(1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x.clamp_(0, 1).contiguous()


class FashionMNIST(ImageSource):
    """The four IDX files of Debian's `dataset-fashion-mnist` (gzip, read with numpy)."""

    FILES: ClassVar[dict[str, str]] = {"train": "train", "test": "t10k"}

    def __init__(self, cfg: DataConfig, split: str):
        prefix = self.FILES[split]
        root = Path(cfg.root)
        self._image_path = root / f"{prefix}-images-idx3-ubyte.gz"
        label_path = root / f"{prefix}-labels-idx1-ubyte.gz"
        for path in (self._image_path, label_path):
            if not path.is_file():
                raise UserError(
                    f"data.root = '{root}': {path.name} not found (install Debian's "
                    "dataset-fashion-mnist or point data.root at the IDX .gz files)"
                )
        self.labels = _read_idx(label_path, 8).astype(np.int64)
        self.num_classes = 10
        self.class_names = list(FASHION_MNIST_CLASSES)
        self._cfg = cfg

    @cached_property
    def _pixels(self) -> torch.Tensor:
        import torch

        raw = _read_idx(self._image_path, 16).reshape(-1, 1, 28, 28)
        return torch.from_numpy(raw.copy())

    def load(self, indices: np.ndarray) -> torch.Tensor:
        import torch

        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return _fit(self._pixels[idx], self._cfg.channels, self._cfg.resolution)


class ImageFolderSource(ImageSource):
    """ImageNet train/val layout: `root/<split_dir>/<class>/<image>`; classes sorted by name.

    The file list comes from the run's data index when there is one (tasks never walk the
    shared filesystem), else from one walk of the folder. Pixels: Resize(res * 256/224) +
    CenterCrop(res), the official recovery init and val view.
    """

    def __init__(self, cfg: DataConfig, split: str, run_dir: Path | None = None):
        folder = Path(cfg.root) / (cfg.train_dir if split == "train" else cfg.val_dir)
        index = index_path(run_dir, split) if run_dir is not None else None
        if index is not None and index.is_file():
            listing = read_listing(index)
            listing.check_unchanged(index)
        else:
            if not folder.is_dir():
                raise UserError(f"data.root = '{cfg.root}': folder {folder} not found")
            listing = list_folder(folder)
        if split != "train":  # labels are the training classes' ids, matched by folder name
            train = ImageFolderSource(cfg, "train", run_dir).listing
            if listing.classes != train.classes:
                missing = sorted(set(train.classes) - set(listing.classes))[:3]
                extra = sorted(set(listing.classes) - set(train.classes))[:3]
                raise UserError(
                    f"data.root = '{cfg.root}': {folder} must have the training class folders "
                    f"(missing {missing}, not in train {extra})"
                )
        self.listing = listing
        self.files, labels = listing.paths_and_labels()
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(listing.classes)
        self.class_names = cfg.class_names or list(listing.classes)
        self._cfg = cfg

    def load(self, indices: np.ndarray) -> torch.Tensor:
        import torch
        from PIL import Image
        from torchvision.transforms import functional as TF

        res = self._cfg.resolution
        out = []
        for i in np.asarray(indices):
            with Image.open(self.files[int(i)]) as img:
                img = img.convert("RGB" if self._cfg.channels == 3 else "L")
                img = TF.center_crop(TF.resize(img, int(res * 256 / 224)), res)
                out.append(TF.pil_to_tensor(img))
        return _fit(torch.stack(out), self._cfg.channels, res)


def open_source(cfg: DataConfig, split: str = "train", run_dir: Path | None = None) -> ImageSource:
    """`split` is `train` (recovery, squeeze) or `test` (evaluation). Inside a run, pass its
    directory so ImageFolder data comes from the run's index instead of a folder walk."""
    if cfg.source == "fashion_mnist":
        return FashionMNIST(cfg, split)
    return ImageFolderSource(cfg, split, run_dir)


def write_data_index(cfg: DataConfig, run_dir: Path) -> list[Path]:
    """List the ImageFolder splits once, into the run directory (at submit time)."""
    if cfg.source == "fashion_mnist":
        return []
    written = []
    for split, sub in (("train", cfg.train_dir), ("test", cfg.val_dir)):
        folder = Path(cfg.root) / sub
        if split == "test" and not folder.is_dir():
            continue  # evaluation data may be added later; the train stage then lists it
        path = index_path(run_dir, split)
        if not path.is_file():
            write_listing(path, list_folder(folder))
            written.append(path)
    return written


def source_stats(cfg: DataConfig) -> tuple[list[float], list[float]]:
    """Mean/std used to normalise: the config's, else the source's convention."""
    if cfg.mean is not None and cfg.std is not None:
        return list(cfg.mean), list(cfg.std)
    mean, std = FASHION_MNIST_STATS if cfg.source == "fashion_mnist" else IMAGENET_STATS
    if len(mean) != cfg.channels:
        mean = [float(np.mean(mean))] * cfg.channels
        std = [float(np.mean(std))] * cfg.channels
    return mean, std


def class_counts(cfg: DataConfig) -> list[int]:
    """Training images per class (from the run's index inside a task, else one listing)."""
    if cfg.source == "fashion_mnist":
        return np.bincount(FashionMNIST(cfg, "train").labels, minlength=10).tolist()
    folder = Path(cfg.root) / cfg.train_dir
    if not folder.is_dir() and not list_folder_cached(folder):
        raise UserError(
            f"recover.ipc = all: the class sizes come from the data, and {folder} is not here "
            "(plan cannot know the slices yet: plan where the data is, or give an integer ipc)"
        )
    return list_folder(folder).counts


def num_classes_of(cfg: DataConfig, run_dir: Path | None = None) -> int:
    """Class count without touching pixels (plan works without the data present)."""
    if cfg.num_classes is not None:
        return cfg.num_classes
    if cfg.source == "fashion_mnist":
        return 10
    return open_source(cfg, "train", run_dir).num_classes
