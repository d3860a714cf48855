"""Batch semantics that do not depend on the GPU count (gloo, CPU): 2 ranks with sync BN
equal 1 rank with the same micro-batches (the BatchNorm batch), in gradients, BatchNorm
running statistics and weights."""

from __future__ import annotations

import numpy as np
import torch

from prism_hpc.config.load import config_from_dict, deep_merge
from prism_hpc.train.checkpoint import load_checkpoint
from prism_hpc.train.data import rank_pieces
from prism_hpc.train.loop import TrainHooks
from prism_hpc.train.trainer import train_student
from prism_hpc.workflow import TaskEnv
from tests.helpers import BASE, make_run

# hard labels and SGD: nothing but the batch split and BatchNorm can differ (Adam would hide a
# wrong gradient scale); batches of 8, 8, 4 images in 2 micro-batches each
EXTRA = {
    "relabel": {"mode": "none"},
    "students": {"loss": "ce", "epochs": 1, "eval_limit": 20, "optimizer": "sgd", "lr": 0.05,
                 "grad_accum": 2, "workers": 0},
}  # fmt: skip


def test_rank_pieces_cut_micro_batches_then_ranks():
    # 1 rank: the micro-batches of one GPU
    assert [p.tolist() for p in rank_pieces(8, 2, 1, 0)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # 2 ranks: each micro-batch is shared, rank r takes its contiguous half of every one
    assert [p.tolist() for p in rank_pieces(8, 2, 2, 0)] == [[0, 1], [4, 5]]
    assert [p.tolist() for p in rank_pieces(8, 2, 2, 1)] == [[2, 3], [6, 7]]
    # a short batch keeps >= 1 image per rank and micro-batch; smaller than the world: skipped
    assert [p.tolist() for p in rank_pieces(3, 4, 2, 1)] == [[2]]
    assert rank_pieces(1, 2, 2, 0) is None
    # every position exactly once over ranks
    got = np.sort(np.concatenate([np.concatenate(rank_pieces(21, 3, 4, r)) for r in range(4)]))
    assert got.tolist() == list(range(21))


def _grads_hook(store: dict):
    def hook(epoch, b, model):
        if b < 2:  # the first steps' gradients (DDP has averaged them over ranks)
            store[b] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    return hook


def _worker(rank, world, port, cfg_dict, run_dir, out, grads_path):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        grads: dict = {}
        env = TaskEnv(run_dir, rank=rank, world_size=world, log=lambda m: None)
        train_student(config_from_dict(cfg_dict), env, "resnet18", 0, out,
                      TrainHooks(step_hook=_grads_hook(grads)))  # fmt: skip
        if rank == 0:
            torch.save(grads, grads_path)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_rank_with_the_same_bn_batch(tmp_path, sync_bn=True):
    """sync_bn: 2 ranks, grad_accum 2 == 1 rank, grad_accum 2 (BN batch = batch / 2 both).
    (Without sync BN each rank normalises its half of a micro-batch, so 2 ranks with
    grad_accum 1 equal 1 rank with grad_accum 2: `sync_bn=False` here; test_train.py's
    DDP test checks that case with online labels.)"""
    import torch.multiprocessing as mp

    from prism_hpc.hpc.distributed import free_port

    extra = deep_merge(EXTRA, {"students": {"sync_bn": sync_bn}})
    if not sync_bn:
        extra = deep_merge(extra, {"students": {"grad_accum": 1}})
    _cfg, run_dir = make_run(tmp_path, **extra)
    cfg_dict = deep_merge(BASE, extra)
    mp.start_processes(
        _worker, args=(2, free_port(), cfg_dict, run_dir, tmp_path / "ddp", tmp_path / "g2.pt"),
        nprocs=2, start_method="spawn",
    )  # fmt: skip
    one: dict = {}
    single = config_from_dict(deep_merge(cfg_dict, {"students": {"grad_accum": 2}}))
    train_student(single, TaskEnv(run_dir, log=lambda m: None), "resnet18", 0, tmp_path / "one",
                  TrainHooks(step_hook=_grads_hook(one)))  # fmt: skip
    two = torch.load(tmp_path / "g2.pt", weights_only=True)
    assert sorted(two) == sorted(one) == [0, 1]
    for b in (0, 1):
        for name, g in one[b].items():
            assert torch.allclose(two[b][name], g, rtol=1e-4, atol=1e-6), (b, name)
    a = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")["model"]
    c = load_checkpoint(tmp_path / "one" / "ckpt.pt")["model"]
    assert a.keys() == c.keys()  # sync BN keeps plain BatchNorm state-dict keys
    running = [k for k in a if "running" in k]
    assert running
    if sync_bn:  # BN running statistics over the whole micro-batch, as on one GPU
        for k in running:
            assert torch.allclose(a[k], c[k], rtol=1e-4, atol=1e-6), k
    for k, v in a.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(v, c[k], rtol=1e-4, atol=1e-6), k
