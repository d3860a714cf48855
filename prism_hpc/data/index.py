"""The class/IPC index: which real image initialises IPC slot i of class c.

Class order is the label order of the source (Fashion-MNIST: its label ids 0-9; ImageFolder:
sorted folder names, as torchvision does). Within a class, images keep file order, so slot i
of class c is the i-th training image of c: the official PRISM/SRe2L initialisation.
"""

from __future__ import annotations

import numpy as np

from prism_hpc.errors import UserError


def class_index(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Per class, the positions of its images in file order."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    return np.split(order, np.cumsum(counts)[:-1])


def slice_classes(counts: list[int], slice_index: int) -> list[int]:
    """Identical-size distillation: slice i holds the classes that have more than i images."""
    return [c for c, n in enumerate(counts) if n > slice_index]


def initial_indices(per_class: list[np.ndarray], ipc_index: int, classes: list[int]) -> np.ndarray:
    """Dataset positions of the `ipc_index`-th image of each class in `classes`."""
    out = []
    for c in classes:
        if ipc_index >= len(per_class[c]):
            raise UserError(
                f"recover.ipc: IPC index {ipc_index} needs {ipc_index + 1} images of class {c}, "
                f"the data has {len(per_class[c])}"
            )
        out.append(per_class[c][ipc_index])
    return np.asarray(out, dtype=np.int64)
