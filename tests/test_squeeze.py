"""Teacher training (models/squeeze.py): the subset it trains on and its fixed thread count."""

from __future__ import annotations

import numpy as np
import torch

from prism_hpc.models.squeeze import _training_subset, train_teacher


def test_train_limit_per_class_keeps_the_first_images_of_each_class():
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2])
    assert _training_subset(labels, 2).tolist() == [0, 1, 2, 3, 4, 6]
    assert _training_subset(labels, 1).tolist() == [0, 1, 3]
    assert _training_subset(labels, None) is None


def test_teachers_are_bit_identical_whatever_the_callers_thread_count(tmp_path, tiny_cfg,
                                                                      fmnist_available):
    from prism_hpc.config.load import config_from_dict

    tiny_cfg["squeeze"].update(max_steps=6, batch_size=32)
    tiny_cfg["data"]["train_limit_per_class"] = 40
    cfg = config_from_dict(tiny_cfg)
    weights = []
    for threads, run in ((2, tmp_path / "a"), (1, tmp_path / "b")):
        torch.set_num_threads(threads)  # what the machine or the local backend would give
        info = train_teacher(cfg, "resnet18", run, torch.device("cpu"), log=lambda m: None)
        assert torch.get_num_threads() == cfg.squeeze.cpu_threads == 1
        weights.append(torch.load(run / "teachers" / "resnet18.pt", weights_only=True))
        assert info["steps"] == 6
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
