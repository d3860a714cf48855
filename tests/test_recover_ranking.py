"""DELT's ranked initialisation (recover.init_order): the orders against hand-computed values,
the rank stage's file against a direct computation, and recover reading slot i from it."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from prism_hpc.config.load import config_from_dict
from prism_hpc.data.index import class_index
from prism_hpc.data.sources import open_source, source_stats
from prism_hpc.errors import UserError
from prism_hpc.models.teachers import load_teacher
from prism_hpc.recover.ranking import (
    class_order,
    load_order,
    medium_positions,
    ranked_index,
    read_order_info,
)
from prism_hpc.stages.rank import RankStage, order_path
from prism_hpc.stages.recover import RecoverStage, slice_path
from prism_hpc.store.shards import read_shard
from prism_hpc.workflow import TaskEnv

GENERATOR = Path(__file__).parent.parent / "benchmarks" / "in1k_rehearsal" / "make_fake_imagenet.py"


def test_medium_order_of_seven_scores_by_hand():
    # ascending: 0.1 (image 1), 0.2 (6), 0.3 (4), 0.5 (2), 0.6 (5), 0.7 (3), 0.9 (0); DELT
    # starts at index ceil(7/2) = 4 (0.6), then 5 (0.7), 3 (0.5), 6 (0.9), 2 (0.3); DELT would
    # stop there (index 7 is out of range), we go on with 1 (0.2) and 0 (0.1)
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3, 0.6, 0.2])
    assert medium_positions(7).tolist() == [4, 5, 3, 6, 2, 1, 0]
    assert class_order(scores, "delt_medium").tolist() == [5, 3, 2, 0, 4, 6, 1]
    assert class_order(scores, "delt_top").tolist() == [0, 3, 5, 2, 4, 6, 1]
    assert class_order(scores, "delt_min").tolist() == [1, 6, 4, 2, 5, 3, 0]


@pytest.mark.parametrize("n", [2, 3, 6, 7, 50, 1300])
def test_medium_positions_follow_delts_index_rule(n):
    """DELT's `store_medium`: img_indx = mid + int(pos_neg * (indx + 1) / 2), pos_neg = -1, +1,
    ... for as long as it stays inside the class; ours continues with what is left."""
    mid, pos_neg, delt = math.ceil(n / 2), -1, []
    for indx in range(n):
        img = mid + int(pos_neg * (indx + 1) / 2)
        pos_neg = -pos_neg
        if not 0 <= img < n:
            break
        delt.append(img)
    ours = medium_positions(n).tolist()
    assert ours[: len(delt)] == delt and len(delt) >= n // 2
    assert sorted(ours) == list(range(n))  # every image of the class once


def test_edge_cases_ties_and_one_image():
    assert medium_positions(1).tolist() == [0]  # DELT's ceil(1/2) = 1 is out of range
    assert medium_positions(2).tolist() == [1, 0]
    # ties keep file order (stable), for ascending and descending orders alike
    tied = np.array([0.5, 0.5, 0.5, 0.5])
    assert class_order(tied, "delt_top").tolist() == [0, 1, 2, 3]
    assert class_order(tied, "delt_medium").tolist() == [2, 3, 1, 0]
    per_class = [np.array([0, 2, 4]), np.array([1, 3])]
    scores = np.array([0.2, 0.9, 0.1, 0.8, 0.3])
    ranked = ranked_index(per_class, scores, "delt_medium")
    # class 0 ascending: image 2 (0.1), 0 (0.2), 4 (0.3); n = 3 starts at index 2, then 1, 0
    assert [r.tolist() for r in ranked] == [[4, 0, 2], [1, 3]]


def test_config_checks():
    base = {"name": "x", "teachers": {"r": {"arch": "resnet18"}},
            "recover": {"logit_teacher": "r", "bn_always": ["r"], "bn_pool": []},
            "relabel": {"teachers": ["r"]}}  # fmt: skip
    cfg = config_from_dict(base)
    assert cfg.recover.init_order == "file" and RankStage().items(cfg) == []
    assert "rank" in RecoverStage.depends_on
    base["recover"]["init_order"] = "delt_medium"
    (item,) = RankStage().items(config_from_dict(base))
    assert item.payload == {"ranker": "r", "criterion": "delt_medium"}
    for bad, message in [
        ({"init": "noise"}, "orders real images"),
        ({"ranker": "nope"}, re.escape("recover.ranker names teacher(s) ['nope']")),
    ]:
        with pytest.raises(UserError, match=message):
            config_from_dict({**base, "recover": {**base["recover"], **bad}})


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_fake_imagenet", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("rankdata") / "imagenet"
    module.make_fake_imagenet(out, classes=3, train_per_class=7, val_per_class=1,
                              small_classes=0, large_classes=0, min_size=12, max_size=16)  # fmt: skip
    return out


def _cfg(root: Path, **recover) -> dict:
    return {
        "name": "rank", "backend": "local",
        "data": {"source": "imagefolder", "root": str(root), "resolution": 8, "channels": 3},
        "teachers": {"r": {"arch": "resnet18", "width": 0.125, "weights": "random"}},
        "squeeze": {"enabled": False},
        "recover": {"ipc": 3, "init_only": True, "init_order": "delt_medium",
                    "logit_teacher": "r", "bn_always": ["r"], "bn_pool": [], **recover},
        "relabel": {"mode": "none"},
        "students": {"archs": ["resnet18"], "loss": "ce", "epochs": 1},
    }  # fmt: skip


def test_rank_stage_file_and_recover_reads_it(tmp_path, tiny_folder):
    cfg = config_from_dict(_cfg(tiny_folder))
    run = tmp_path / "run"
    stage = RankStage()
    (item,) = stage.items(cfg)
    stage.run(cfg, item, TaskEnv(run_dir=run, log=lambda m: None))
    assert stage.is_done(run, item)
    marker = json.loads(stage.marker_path(run, item).read_text())
    assert "rank/order.npz" in json.dumps(marker)
    assert read_order_info(order_path(run))["criterion"] == "delt_medium"

    # direct computation: the random teacher's true-class softmax on every image
    source = open_source(cfg.data, "train")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in source_stats(cfg.data))
    model = load_teacher(cfg, "r", run)
    with torch.no_grad():
        x = (source.load(np.arange(len(source.labels))) - mean) / std
        p = torch.softmax(model(x).double(), 1)[torch.arange(len(x)), source.labels].numpy()
    per_class = class_index(source.labels, 3)
    stored = load_order(order_path(run), per_class)
    with np.load(order_path(run)) as data:
        assert np.array_equal(data["scores"], p)
    for c, files in enumerate(per_class):
        by_hand = files[np.argsort(p[files], kind="stable")][[4, 5, 3, 6, 2, 1, 0]]
        assert stored[c].tolist() == by_hand.tolist()

    # recover (init_only: the initial images stored as they are) reads slot i from the order
    rec = RecoverStage()
    for it in rec.items(cfg):
        rec.run(cfg, it, TaskEnv(run_dir=run, log=lambda m: None))
    for s in range(3):
        shard = read_shard(slice_path(run, s))
        (chunk,) = shard["provenance"]["chunks"]
        assert chunk["init_indices"] == [int(stored[c][s]) for c in range(3)]
        x = (source.load(np.asarray(chunk["init_indices"])) - mean) / std
        expected = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        assert np.array_equal(shard["images"], expected.numpy())
    slot0 = read_shard(slice_path(run, 0))["provenance"]["chunks"][0]["init_indices"]
    for c, i in enumerate(slot0):  # slot 0 = DELT's median image: index ceil(7/2) ascending
        assert p[i] == np.sort(p[per_class[c]])[4]


def test_order_of_other_data_is_refused(tmp_path):
    from prism_hpc.recover.ranking import save_order

    path = tmp_path / "order.npz"
    save_order(path, [np.array([1, 0]), np.array([2, 3])], np.zeros(4), {"criterion": "x"})
    assert [o.tolist() for o in load_order(path, [np.array([0, 1]), np.array([2, 3])])] == [
        [1, 0], [2, 3],
    ]
    with pytest.raises(UserError, match="class 1 of the order does not match"):
        load_order(path, [np.array([0, 1]), np.array([2, 4])])
    with pytest.raises(UserError, match="run the rank stage"):
        load_order(tmp_path / "missing.npz", [])
