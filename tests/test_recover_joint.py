"""Joint-over-classes batches (`recover.batching: joint`): batch layout and EarlyLate starts by
hand, the joint loss against the objective on the hand-built concatenation, one slice per
group = the cross-class batch, world size 1 vs 2, restarts, and one IPC position per shard."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prism_hpc.config.load import config_from_dict
from prism_hpc.data.index import class_index
from prism_hpc.data.sources import open_source, source_stats
from prism_hpc.models.teachers import load_teacher
from prism_hpc.recover import augment, loop
from prism_hpc.recover.joint import joint_rows, joint_schedule
from prism_hpc.recover.loop import Unit, pixel_bounds, recover_units
from prism_hpc.recover.loss import Part, recovery_loss
from prism_hpc.recover.objective import bn_hooks
from prism_hpc.recover.sampler import Roles
from prism_hpc.recover.schedules import slice_roles
from prism_hpc.seeding import generator
from prism_hpc.stages.recover import RecoverStage, slice_path
from prism_hpc.store.shards import read_shard
from prism_hpc.workflow import TaskEnv
from tests.conftest import TINY, write_yaml
from tests.helpers import run_cli


def _cfg(**recover) -> dict:
    """The tiny config with random teachers (fast; equivalences need no trained teacher)."""
    data = copy.deepcopy(TINY)
    for spec in data["teachers"].values():
        spec["weights"] = "random"
    data["squeeze"]["enabled"] = False
    data["recover"].update({"batching": "joint", "classes_per_batch": 4, **recover})
    return data


def _run(cfg: dict, run_dir) -> list[dict]:
    cfg = config_from_dict(cfg)
    stage = RecoverStage()
    for item in stage.items(cfg):
        stage.run(cfg, item, TaskEnv(run_dir=run_dir, log=lambda m: None))
    return [read_shard(slice_path(run_dir, s)) for s in range(cfg.recover.ipc)]


def test_rows_and_earlylate_starts_by_hand():
    cfg = config_from_dict(_cfg(iterations=12, iteration_step=2, iteration_period=4))
    rows = joint_rows([0, 1], [4, 5, 6], {})
    assert rows == [(0, 4), (0, 5), (0, 6), (1, 4), (1, 5), (1, 6)]  # class-major
    # T_i = 12 - 2 (i mod 4): 12, 10, 8 for positions 4, 5, 6: they join at 0, 2, 4
    assert joint_schedule(cfg, rows) == (12, [0, 2, 4, 0, 2, 4])
    # `ipc: all`: slice 6 holds only class 1
    assert joint_rows([0, 1], [4, 5, 6], {4: [0, 1], 5: [0, 1], 6: [1]}) == [
        (0, 4), (0, 5), (1, 4), (1, 5), (1, 6),
    ]  # fmt: skip
    assert joint_schedule(config_from_dict(_cfg(init_only=True)), rows)[0] == 0


def test_late_rows_join_at_their_start_and_do_not_move_before(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.LazyLinear(3)).eval()  # fmt: skip
    model(torch.zeros(1, 1, 8, 8))
    teachers = {"m": model}
    rec = config_from_dict(_cfg()).recover.model_copy(update={"log_every": 1})
    sizes = []
    real = loop.recovery_loss

    def counting(part, *args, **kwargs):
        sizes.append(part.x.shape[0])
        return real(part, *args, **kwargs)

    monkeypatch.setattr(loop, "recovery_loss", counting)
    x0 = torch.rand(3, 1, 8, 8)
    bounds = pixel_bounds([0.0], [0.1], torch.device("cpu"))  # pixels in [0, 10]: no clamp
    with bn_hooks(teachers, 10.0) as hooks:
        roles = Roles("m", ("m",))
        run = lambda steps: recover_units([Unit(
            x0, torch.tensor([0, 1, 2]), steps, generator(0, "a"), generator(0, "b"), roles,
            starts=[0, 3, 1],
        )], teachers, hooks, rec, bounds)[0][0]  # fmt: skip
        x = run(5)
        assert sizes == [1, 2, 2, 3, 3]  # rows 0; 0, 2; 0, 2; then all three
        sizes.clear()
        early = run(3)
    assert not torch.equal(x[1], x0[1]) and torch.equal(early[1], x0[1])  # row 1 waits for 3
    assert not torch.equal(early[2], x0[2])


def test_joint_loss_is_the_objective_on_the_concatenation(tmp_path, fmnist_available):
    """Step 1's logged CE/BN of a joint batch (2 slices x 4 classes, 8 rows) equal the PRISM
    objective on the hand-built class-major concatenation of both slices' initial images with
    the batch's own draw: one set of BN statistics over all 8 rows (not two per-slice sets)."""
    raw = _cfg(ipc=2, slices_per_task=2, iteration_step=0, log_every=100)
    shards = _run(raw, tmp_path)
    cfg = config_from_dict(raw)
    rec = cfg.recover
    source = open_source(cfg.data, "train")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in source_stats(cfg.data))
    per_class = class_index(source.labels, 10)
    classes = [0, 1, 2, 3]  # chunk 0
    idx = [per_class[c][s] for c in classes for s in (0, 1)]
    x = (source.load(np.asarray(idx)) - mean) / std
    y = torch.tensor([c for c in classes for _ in (0, 1)])
    teachers = {n: load_teacher(cfg, n, tmp_path) for n in cfg.teachers}
    d = augment.draw(rec.augment, 16, 8, generator(0, "recover-augment", 0, 0), 0, rec.iterations)
    roles = slice_roles(cfg, 0, 0)
    with bn_hooks(teachers, rec.first_bn_multiplier) as hooks, torch.no_grad():
        _, ce, bn = recovery_loss(Part(x, y, roles, d), teachers, hooks, rec, backward=False)
        # the same crop (one per batch) on each slice's half: per-slice statistics differ
        split = [recovery_loss(Part(x[s::2], y[s::2], roles, d), teachers, hooks, rec, False)[2]
                 for s in (0, 1)]  # fmt: skip
    for s, shard in enumerate(shards):
        first = shard["provenance"]["chunks"][0]["history"][0]
        assert first["step"] == 1
        assert first["ce"] == pytest.approx(float(ce), rel=1e-6)
        assert first["bn"] == pytest.approx(float(bn), rel=1e-6)
        assert shard["provenance"]["chunks"][0]["init_indices"] == [int(i) for i in idx[s::2]]
    assert abs(float(sum(split)) / 2 - float(bn)) > 1e-3  # shared statistics, not per slice


def test_one_slice_per_group_is_the_cross_class_batch(tmp_path, fmnist_available):
    joint = _run(_cfg(ipc=2, iterations=8, iteration_step=2), tmp_path / "joint")
    cross = _run(_cfg(ipc=2, iterations=8, iteration_step=2, batching="cross_class"),
                 tmp_path / "cross")  # fmt: skip
    for a, b in zip(joint, cross, strict=True):
        assert np.array_equal(a["images"], b["images"])
        assert [c["history"] for c in a["provenance"]["chunks"]] == [
            c["history"] for c in b["provenance"]["chunks"]
        ]


def test_each_shard_holds_its_ipc_position(tmp_path, fmnist_available):
    raw = _cfg(ipc=3, slices_per_task=3, init_only=True)
    shards = _run(raw, tmp_path)
    cfg = config_from_dict(raw)
    source = open_source(cfg.data, "train")
    per_class = class_index(source.labels, 10)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in source_stats(cfg.data))
    for s, shard in enumerate(shards):
        assert (shard["ipc_index"] == s).all() and shard["labels"].tolist() == list(range(10))
        idx = [per_class[c][s] for c in range(10)]
        x = (source.load(np.asarray(idx)) - mean) / std  # the loop's normalised images
        expected = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(shard["images"], expected)
        prov = shard["provenance"]
        assert prov["batching"] == "joint" and prov["group"] == [0, 1, 2]
        assert [c["joint"]["rows"] for c in prov["chunks"]] == [12, 12, 6]  # 4 + 4 + 2 classes


def test_world_size_1_and_2_give_bit_identical_images(tmp_path, fmnist_available):
    """3 class chunks per group over 2 gloo ranks; EarlyLate starts, intra-scope roles."""
    raw = _cfg(ipc=2, slices_per_task=2, iterations=8, iteration_step=3, iteration_period=2,
               scope="intra", log_every=4)  # fmt: skip
    one = _run(raw, tmp_path / "ws1")
    raw["resources"] = {"recover": {"tasks_per_node": 2}}
    path = write_yaml(tmp_path / "ws2.yaml", raw)
    result = run_cli("submit", path, "--run-dir", tmp_path / "ws2", "--stages", "recover",
                     "--backend", "local")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    two = [read_shard(slice_path(tmp_path / "ws2", s)) for s in range(2)]
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a["images"], b["images"])
        pa, pb = a["provenance"], b["provenance"]
        assert (pa["world_size"], pb["world_size"]) == (1, 2)
        assert [c["rank"] for c in pb["chunks"]] == [0, 1, 0]
        assert [c["history"] for c in pa["chunks"]] == [c["history"] for c in pb["chunks"]]
    assert [c["joint"]["start"] for c in two[1]["provenance"]["chunks"]] == [3, 3, 3]


def test_a_restart_mid_group_reproduces_the_images(tmp_path, fmnist_available, monkeypatch):
    """Killed after the first of 3 joint chunks, then after the first shard of the group: each
    restart recomputes only what has no progress file and writes the reference images."""
    from prism_hpc.recover import joint
    from prism_hpc.stages import recover as recover_stage

    raw = _cfg(ipc=2, slices_per_task=2, iterations=6, iteration_step=2, iteration_period=2)
    ref = _run(raw, tmp_path / "ref")
    cfg = config_from_dict(raw)
    stage = RecoverStage()
    (item,) = stage.items(cfg)
    real, calls = joint.recover_units, []

    def killed_after_first(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    run = tmp_path / "killed"
    monkeypatch.setattr(joint, "recover_units", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        stage.run(cfg, item, TaskEnv(run_dir=run, log=lambda m: None))
    partial = sorted(p.relative_to(run / "recover" / "partial").as_posix()
                     for p in (run / "recover" / "partial").rglob("*.npz"))  # fmt: skip
    assert partial == ["slice_00000/chunk_0000.npz", "slice_00001/chunk_0000.npz"]

    counted = []
    monkeypatch.setattr(joint, "recover_units", lambda *a, **k: counted.append(1) or real(*a, **k))
    shards, write = [], recover_stage.write_shard

    def dies_after_first_shard(*args, **kwargs):
        if shards:
            raise KeyboardInterrupt
        shards.append(1)
        return write(*args, **kwargs)

    monkeypatch.setattr(recover_stage, "write_shard", dies_after_first_shard)
    with pytest.raises(KeyboardInterrupt):
        stage.run(cfg, item, TaskEnv(run_dir=run, log=lambda m: None))
    assert len(counted) == 2 and slice_path(run, 0).exists() and not slice_path(run, 1).exists()
    monkeypatch.setattr(recover_stage, "write_shard", write)
    counted.clear()
    stage.run(cfg, item, TaskEnv(run_dir=run, log=lambda m: None))
    assert counted == []  # slice 1's chunks all come from their progress files
    for s in range(2):
        assert np.array_equal(read_shard(slice_path(run, s))["images"], ref[s]["images"])
    assert not (run / "recover" / "partial" / "slice_00001").exists()

