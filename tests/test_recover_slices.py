"""IPC slices end to end on Fashion-MNIST teachers: quality, provenance, world-size invariance."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch

from prism_hpc.config.load import config_from_dict
from prism_hpc.data.sources import open_source, source_stats
from prism_hpc.models.teachers import load_teacher
from prism_hpc.recover import augment
from prism_hpc.recover.loss import Part, recovery_loss
from prism_hpc.recover.objective import bn_hooks
from prism_hpc.recover.sampler import Roles
from prism_hpc.recover.schedules import chunks_of
from prism_hpc.seeding import generator
from prism_hpc.stages.recover import RecoverStage, slice_path
from prism_hpc.store.shards import read_shard
from prism_hpc.workflow import TaskEnv
from tests.conftest import TINY, write_yaml
from tests.helpers import run_cli

# Two teacher families at 16 px, squeezed by the pipeline's own stage: ~75% test top-1 each,
# with converged BN running statistics (the 30-step tiny teachers' are not).
TEACHERS = {
    "resnet18": {"arch": "resnet18", "width": 0.125},
    "shufflenet": {"arch": "shufflenet_v2_x0_5", "width": 0.5},
}


@pytest.fixture(scope="module")
def fmnist_teachers(tmp_path_factory, fmnist_available) -> dict:
    from prism_hpc.stages.squeeze import SqueezeStage

    cfg_dict = copy.deepcopy(TINY)
    cfg_dict["teachers"] = copy.deepcopy(TEACHERS)
    cfg_dict["squeeze"].update(max_steps=150, batch_size=64, lr=0.1)
    cfg = config_from_dict(cfg_dict)
    root = tmp_path_factory.mktemp("recover-teachers")
    stage = SqueezeStage()
    start = time.time()
    for item in stage.items(cfg):
        stage.run(cfg, item, TaskEnv(run_dir=root, log=print))
    print(f"squeezed {list(TEACHERS)} in {time.time() - start:.1f} s")
    return {name: str(root / "teachers" / f"{name}.pt") for name in TEACHERS}


def _cfg(teachers: dict, **recover) -> dict:
    data = copy.deepcopy(TINY)
    data["teachers"] = {n: dict(spec, weights=teachers[n]) for n, spec in TEACHERS.items()}
    data["squeeze"]["enabled"] = False
    data["recover"].update(recover)
    return data


def test_class_chunks():
    def class_chunks(num_classes: int, per_batch: int) -> list[list[int]]:
        return chunks_of(list(range(num_classes)), per_batch)

    assert class_chunks(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert class_chunks(1000, 100)[-1] == list(range(900, 1000))
    assert class_chunks(3, 100) == [[0, 1, 2]]


def test_fmnist_logit_top1_and_bn_term_falls(tmp_path, fmnist_teachers):
    """Paper settings scaled down (real init, lr 0.05, r_bn 0.01, both teachers as BN teachers)."""
    cfg = config_from_dict(_cfg(
        fmnist_teachers, ipc=2, iterations=150, iteration_step=0, lr=0.05, init="real",
        include_prob=1.0, log_every=50, augment={"crop_scale": [0.5, 1.0], "jitter": 2},
    ))  # fmt: skip
    stage = RecoverStage()
    for item in stage.items(cfg):
        stage.run(cfg, item, TaskEnv(run_dir=tmp_path, log=lambda m: None))
    teachers = {n: load_teacher(cfg, n, tmp_path) for n in TEACHERS}
    source = open_source(cfg.data, "train")
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in source_stats(cfg.data))
    top1, bn_before, bn_after = [], [], []
    for s in range(2):
        shard = read_shard(slice_path(tmp_path, s))
        prov = shard["provenance"]
        assert prov["bn_teachers"] == ["resnet18", "shufflenet"] and prov["iterations"] == 150
        (chunk,) = prov["chunks"]
        first, last = chunk["history"][0], chunk["history"][-1]
        assert first["step"] == 1 and last["step"] == 150
        top1.append(chunk["logit_top1"])
        # The objective's BN term (both BN teachers), averaged over the same 16 augmentation
        # draws, for the initial and the recovered images: what the loop minimises.
        x0 = (source.load(np.asarray(chunk["init_indices"])) - mean) / std
        x1 = (torch.from_numpy(shard["images"]).float() / 255 - mean) / std
        g = generator(99, "bn-check", s)
        draws = [augment.draw(cfg.recover.augment, 16, 10, g) for _ in range(16)]
        roles = Roles("resnet18", ("resnet18", "shufflenet"))
        y = torch.arange(10)
        with bn_hooks(teachers, cfg.recover.first_bn_multiplier) as hooks, torch.no_grad():
            for x, out in ((x0, bn_before), (x1, bn_after)):
                terms = [recovery_loss(Part(x, y, roles, d), teachers, hooks, cfg.recover, False)[2]
                         for d in draws]  # fmt: skip
                out.append(torch.stack(terms).mean().item())
        print(
            f"slice {s}: logit top-1 {chunk['logit_top1']:.2f}; BN term (mean of 16 views) "
            f"{bn_before[-1]:.1f} -> {bn_after[-1]:.1f}; logged (augmented view) BN "
            f"{first['bn']:.1f} -> {last['bn']:.1f}, CE {first['ce']:.3f} -> {last['ce']:.3f}"
        )
    assert np.mean(top1) >= 0.9, top1
    assert all(a < 0.8 * b for a, b in zip(bn_after, bn_before, strict=True)), (bn_before, bn_after)


def test_world_size_1_and_2_give_bit_identical_images(tmp_path, fmnist_teachers):
    """Local backend, 1 rank vs 2 gloo ranks (subprocesses); 3 class chunks per slice, teachers
    redrawn every step (intra scope), per-sample crops: every random choice is keyed by (seed,
    slice, chunk), so which rank runs a chunk does not matter."""
    cfg = _cfg(
        fmnist_teachers, ipc=2, iterations=16, iteration_step=4, iteration_period=2,
        classes_per_batch=4, scope="intra", include_prob=0.5, log_every=8,
        augment={"crop_scale": [0.5, 1.0], "jitter": 2, "per_sample": True},
    )  # fmt: skip
    # world size 1: the local backend runs a 1-rank item in-process, so call the stage directly
    stage = RecoverStage()
    one = config_from_dict(cfg)
    for item in stage.items(one):
        stage.run(one, item, TaskEnv(run_dir=tmp_path / "ws1", log=lambda m: None))
    # world size 2: `prism-hpc submit` with the local backend spawns two gloo ranks
    cfg["resources"] = {"recover": {"tasks_per_node": 2}}
    path = write_yaml(tmp_path / "ws2.yaml", cfg)
    result = run_cli("submit", path, "--run-dir", tmp_path / "ws2", "--stages", "recover",
                     "--backend", "local")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    shards = {r: [read_shard(slice_path(tmp_path / f"ws{r}", s)) for s in range(2)] for r in (1, 2)}
    for one, two in zip(shards[1], shards[2], strict=True):
        assert np.array_equal(one["images"], two["images"])
        assert np.array_equal(one["labels"], two["labels"])
        p1, p2 = one["provenance"], two["provenance"]
        assert (p1["world_size"], p2["world_size"]) == (1, 2)
        assert [c["rank"] for c in p2["chunks"]] == [0, 1, 0]  # chunks really were split
        for c1, c2 in zip(p1["chunks"], p2["chunks"], strict=True):
            assert c1["roles"] == c2["roles"] and c1["history"] == c2["history"]
            assert c1["roles_changes"] > 1  # intra: roles did change during the loop
    assert [p["provenance"]["iterations"] for p in shards[2]] == [16, 12]
    assert shards[1][0]["images"].shape == (10, 1, 16, 16)
    assert not np.array_equal(shards[1][0]["images"], shards[1][1]["images"])


def test_noise_init_is_keyed_by_slice_and_chunk(fmnist_teachers):
    from prism_hpc.recover.context import SliceContext
    from prism_hpc.recover.schedules import init_images

    cfg = config_from_dict(_cfg(fmnist_teachers, init="noise"))
    ctx = SliceContext(cfg, {}, {}, None, [], ([0.5], [0.5]))
    a = init_images(ctx, 3, 1, [0, 1])[0]
    b = init_images(ctx, 3, 1, [0, 1])[0]
    c = init_images(ctx, 3, 2, [0, 1])[0]
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (2, 1, 16, 16)


def test_a_killed_slice_resumes_at_its_last_finished_chunk(tmp_path, fmnist_teachers, monkeypatch):
    """A task killed after chunk 0 of 3 (preemption, time limit) keeps that chunk; the restart
    computes only chunks 1-2 and writes images bit-identical to an uninterrupted run."""
    from prism_hpc.recover import schedules as slices  # where a chunk's loop is called

    cfg = config_from_dict(_cfg(
        fmnist_teachers, ipc=1, iterations=8, iteration_step=0, classes_per_batch=4, log_every=8,
    ))  # fmt: skip
    stage = RecoverStage()
    item = stage.items(cfg)[0]
    stage.run(cfg, item, TaskEnv(run_dir=tmp_path / "ref", log=lambda m: None))
    real, calls = slices.recover_units, []

    def killed_after_first_chunk(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # what SIGTERM/SIGKILL amount to for this task
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(slices, "recover_units", killed_after_first_chunk)
    run = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        stage.run(cfg, item, TaskEnv(run_dir=run, log=lambda m: None))
    assert not slice_path(run, 0).exists()
    assert [p.name for p in sorted((run / "recover" / "partial").rglob("*.npz"))] == [
        "chunk_0000.npz"
    ]
    counted = []
    monkeypatch.setattr(slices, "recover_units", lambda *a, **k: counted.append(1) or real(*a, **k))
    stage.run(cfg, item, TaskEnv(run_dir=run, log=lambda m: None))
    assert len(counted) == 2  # chunks 1 and 2 only
    ref, resumed = read_shard(slice_path(tmp_path / "ref", 0)), read_shard(slice_path(run, 0))
    assert np.array_equal(ref["images"], resumed["images"])
    assert [c["history"] for c in ref["provenance"]["chunks"]] == [
        c["history"] for c in resumed["provenance"]["chunks"]
    ]
    assert not (run / "recover" / "partial" / "slice_00000").exists()  # cleaned after the shard


@pytest.mark.parametrize("scope", ["pre", "per_batch", "intra"])
def test_packed_task_equals_unpacked(tmp_path, fmnist_teachers, scope):
    """`recover.pack: 4` over a task of 3 slices x 3 class chunks (varying T_i, so chunks leave
    the pack at different steps) gives the shards of the unpacked task: the same labels, roles,
    init images and iterations, images within one uint8 level (fp32 rounding, see
    tests/test_recover_pack.py), the same logged losses to 1e-4."""
    base = _cfg(
        fmnist_teachers, ipc=3, slices_per_task=3, iterations=10, iteration_step=2,
        iteration_period=3, classes_per_batch=4, scope=scope, include_prob=0.5, log_every=5,
    )  # fmt: skip
    stage = RecoverStage()
    shards = {}
    for pack in (1, 4):
        data = copy.deepcopy(base)
        data["recover"]["pack"] = pack
        cfg = config_from_dict(data)
        (item,) = stage.items(cfg)
        stage.run(cfg, item, TaskEnv(run_dir=tmp_path / f"p{pack}", log=lambda m: None))
        shards[pack] = [read_shard(slice_path(tmp_path / f"p{pack}", s)) for s in range(3)]
    assert [s["provenance"]["iterations"] for s in shards[4]] == [10, 8, 6]
    assert shards[4][0]["provenance"]["pack"] == 4
    for one, packed in zip(shards[1], shards[4], strict=True):
        assert np.array_equal(one["labels"], packed["labels"])
        diff = np.abs(one["images"].astype(int) - packed["images"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
        p1, p4 = one["provenance"], packed["provenance"]
        assert (p1["logit_teacher"], p1["bn_teachers"]) == (p4["logit_teacher"], p4["bn_teachers"])
        assert len(p1["chunks"]) == len(p4["chunks"]) == 3
        for c1, c4 in zip(p1["chunks"], p4["chunks"], strict=True):
            for key in ("chunk", "classes", "init_indices", "roles", "roles_changes"):
                assert c1[key] == c4[key], key
            assert [e["step"] for e in c1["history"]] == [e["step"] for e in c4["history"]]
            for e1, e4 in zip(c1["history"], c4["history"], strict=True):
                assert e4["ce"] == pytest.approx(e1["ce"], rel=1e-4, abs=1e-6)
                assert e4["bn"] == pytest.approx(e1["bn"], rel=1e-4)
    assert [c["packed_with"] for c in shards[4][0]["provenance"]["chunks"]] == [4, 4, 4]


def test_packed_images_do_not_depend_on_world_size_or_restarts(
    tmp_path, fmnist_teachers, monkeypatch
):
    """The packs are fixed by the task's slices (units in order, k at a time), not by the world
    size or by what a restart still has to do: 1 rank, 2 gloo ranks and a run killed after its
    first pack give bit-identical shards."""
    from prism_hpc.recover import schedules as slices  # where a pack's loop is called

    cfg = _cfg(
        fmnist_teachers, ipc=2, slices_per_task=2, iterations=8, iteration_step=2,
        iteration_period=2, classes_per_batch=4, pack=2, log_every=4,
    )  # fmt: skip
    stage = RecoverStage()
    one = config_from_dict(cfg)
    (item,) = stage.items(one)
    stage.run(one, item, TaskEnv(run_dir=tmp_path / "ws1", log=lambda m: None))
    cfg["resources"] = {"recover": {"tasks_per_node": 2}}
    path = write_yaml(tmp_path / "ws2.yaml", cfg)
    result = run_cli("submit", path, "--run-dir", tmp_path / "ws2", "--stages", "recover",
                     "--backend", "local")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    real, calls = slices.recover_units, []

    def killed_after_first_pack(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(slices, "recover_units", killed_after_first_pack)
    with pytest.raises(KeyboardInterrupt):
        stage.run(one, item, TaskEnv(run_dir=tmp_path / "killed", log=lambda m: None))
    counted = []
    monkeypatch.setattr(
        slices, "recover_units", lambda *a, **k: counted.append(1) or real(*a, **k)
    )
    stage.run(one, item, TaskEnv(run_dir=tmp_path / "killed", log=lambda m: None))
    assert len(counted) == 2  # 6 units, packs of 2: the first was kept
    for s in range(2):
        ref = read_shard(slice_path(tmp_path / "ws1", s))
        for other in ("ws2", "killed"):
            got = read_shard(slice_path(tmp_path / other, s))
            assert np.array_equal(ref["images"], got["images"]), (other, s)
            assert [c["history"] for c in ref["provenance"]["chunks"]] == [
                c["history"] for c in got["provenance"]["chunks"]
            ]
    ws2 = read_shard(slice_path(tmp_path / "ws2", 0))["provenance"]
    assert ws2["world_size"] == 2 and [c["rank"] for c in ws2["chunks"]] == [0, 0, 1]
