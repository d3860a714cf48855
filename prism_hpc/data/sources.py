"""Image sources. Every source yields float images in [0, 1], (N, C, R, R), un-normalised.

Normalisation is applied by the consumer (`Normalize`), so that distilled images can be stored
as uint8 pixels and re-normalised with the mean/std written next to them.
"""

from __future__ import annotations

import gzip
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from prism_hpc.config.schema import DataConfig
from prism_hpc.errors import UserError

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_STATS = ([0.2860], [0.3530])
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG"}


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
        raw = _read_idx(self._image_path, 16).reshape(-1, 1, 28, 28)
        return torch.from_numpy(raw.copy())

    def load(self, indices: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return _fit(self._pixels[idx], self._cfg.channels, self._cfg.resolution)


class ImageFolderSource(ImageSource):
    """ImageNet train/val layout: `root/<split_dir>/<class>/<image>`; classes sorted by name.

    Pixels: Resize(res * 256/224) + CenterCrop(res), the official recovery init and val view.
    """

    def __init__(self, cfg: DataConfig, split: str):
        folder = Path(cfg.root) / (cfg.train_dir if split == "train" else cfg.val_dir)
        if not folder.is_dir():
            raise UserError(f"data.root = '{cfg.root}': folder {folder} not found")
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"data.root = '{cfg.root}': no class folders under {folder}")
        self.files: list[Path] = []
        labels = []
        for label, name in enumerate(classes):
            for path in sorted((folder / name).iterdir()):
                if path.suffix in IMAGE_EXTENSIONS:
                    self.files.append(path)
                    labels.append(label)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(classes)
        self.class_names = cfg.class_names or classes
        self._cfg = cfg

    def load(self, indices: np.ndarray) -> torch.Tensor:
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


def open_source(cfg: DataConfig, split: str = "train") -> ImageSource:
    """`split` is `train` (recovery, squeeze) or `test` (evaluation)."""
    if cfg.source == "fashion_mnist":
        return FashionMNIST(cfg, split)
    return ImageFolderSource(cfg, split)


def source_stats(cfg: DataConfig) -> tuple[list[float], list[float]]:
    """Mean/std used to normalise: the config's, else the source's convention."""
    if cfg.mean is not None and cfg.std is not None:
        return list(cfg.mean), list(cfg.std)
    mean, std = FASHION_MNIST_STATS if cfg.source == "fashion_mnist" else IMAGENET_STATS
    if len(mean) != cfg.channels:
        mean = [float(np.mean(mean))] * cfg.channels
        std = [float(np.mean(std))] * cfg.channels
    return mean, std


def num_classes_of(cfg: DataConfig) -> int:
    """Class count without touching pixels (plan works without the data present)."""
    if cfg.num_classes is not None:
        return cfg.num_classes
    if cfg.source == "fashion_mnist":
        return 10
    return open_source(cfg, "train").num_classes
