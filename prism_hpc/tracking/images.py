"""Images in the one layout both trackers accept: an HxW or HxWxC array.

Stages hand over whatever they have (a figure written as PNG, a CxHxW tensor of distilled
images, a grey HxW array), so the sinks normalise it here instead of each stage doing so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

_CHANNELS = (1, 3, 4)


def to_hwc(image: Any) -> np.ndarray:
    """An image file or array as HxW or HxWxC (C in 1, 3, 4); tensors are moved to the CPU.
    Floats are kept as they are (both trackers read them as values in [0, 1])."""
    if isinstance(image, str | Path):
        from PIL import Image

        with Image.open(image) as img:
            return np.asarray(img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB"))
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[-1] in _CHANNELS:
        return array
    if array.ndim == 3 and array.shape[0] in _CHANNELS:
        return np.moveaxis(array, 0, -1)
    raise ValueError(f"an image must be HxW, HxWxC or CxHxW with C in 1, 3, 4; got {array.shape}")


def layout(array: np.ndarray) -> str:
    """TensorBoard's name for the array's layout."""
    return "HW" if array.ndim == 2 else "HWC"
