"""Fashion-MNIST IDX source, class/IPC index, normalisation stats."""

from __future__ import annotations

import numpy as np
import pytest

from prism_hpc.config.schema import DataConfig
from prism_hpc.data import class_index, initial_indices, open_source, source_stats
from prism_hpc.errors import UserError


def test_fashion_mnist_reader(fmnist_available):
    train = open_source(DataConfig(resolution=28))
    test = open_source(DataConfig(resolution=28), "test")
    assert len(train) == 60000 and len(test) == 10000
    assert np.bincount(train.labels).tolist() == [6000] * 10
    x = train.load(np.array([0, 1]))
    assert x.shape == (2, 1, 28, 28) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert train.labels[0] == 9  # the first training image is an ankle boot


def test_resize_and_channels(fmnist_available):
    x = open_source(DataConfig(resolution=32, channels=3)).load(np.array([0]))
    assert x.shape == (1, 3, 32, 32) and (x[:, 0] == x[:, 2]).all()


def test_class_index_keeps_file_order():
    labels = np.array([1, 0, 1, 2, 0, 1])
    per_class = class_index(labels, 3)
    assert [p.tolist() for p in per_class] == [[1, 4], [0, 2, 5], [3]]
    assert initial_indices(per_class, 1, [0, 1]).tolist() == [4, 2]
    with pytest.raises(UserError, match="IPC index 1 needs 2 images of class 2, the data has 1"):
        initial_indices(per_class, 1, [2])


def test_missing_root_is_user_error(tmp_path):
    with pytest.raises(UserError, match=r"data.root = .*train-images-idx3-ubyte.gz not found"):
        open_source(DataConfig(root=tmp_path))


def test_stats_defaults():
    assert source_stats(DataConfig()) == ([0.2860], [0.3530])
    mean, std = source_stats(DataConfig(source="imagefolder", channels=3))
    assert mean == [0.485, 0.456, 0.406] and std == [0.229, 0.224, 0.225]
