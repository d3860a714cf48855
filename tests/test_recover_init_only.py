"""`recover.init_only`: the initial images stored unchanged (the benchmark's baseline row)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from prism_hpc.config.load import config_from_dict
from prism_hpc.data.sources import open_source, source_stats
from prism_hpc.stages.recover import RecoverStage, slice_path
from prism_hpc.store.shards import read_shard
from prism_hpc.workflow import TaskEnv
from tests.conftest import TINY


def test_init_only_stores_the_initial_real_images(tmp_path, fmnist_available):
    data = copy.deepcopy(TINY)
    for spec in data["teachers"].values():
        spec["weights"] = "random"
    data["squeeze"]["enabled"] = False
    data["recover"].update(ipc=2, init="real", init_only=True)
    cfg = config_from_dict(data)
    torch.manual_seed(0)
    stage = RecoverStage()
    for item in stage.items(cfg):
        stage.run(cfg, item, TaskEnv(run_dir=tmp_path, log=lambda m: None))
    source = open_source(cfg.data, "train")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in source_stats(cfg.data))
    for s in range(2):
        shard = read_shard(slice_path(tmp_path, s))
        prov = shard["provenance"]
        assert prov["iterations"] == 0
        (chunk,) = prov["chunks"]
        assert [h["step"] for h in chunk["history"]] == [0]  # losses of the initial images
        assert chunk["final_ce"] == chunk["history"][0]["ce"] > 0
        x0 = (source.load(np.asarray(chunk["init_indices"])) - mean) / std
        expected = ((x0 * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(shard["images"], expected)
