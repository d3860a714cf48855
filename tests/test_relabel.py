"""Relabel: plans, exact replay, ensemble rescaling, HDF5 storage (fp16 / top-k)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from prism_hpc.config.load import config_from_dict, deep_merge
from prism_hpc.errors import UserError
from prism_hpc.relabel.augment import (
    PlanAugment,
    build_batch,
    crop_flip,
    make_epoch_plan,
    plan_from_config,
)
from prism_hpc.relabel.ensemble import Ensemble, combine_logits, load_ensemble
from prism_hpc.relabel.offline import write_relabel_chunk
from prism_hpc.stages.relabel import RelabelStage
from prism_hpc.store.distilled import DistilledSet
from prism_hpc.store.softlabels import SoftLabelReader, chunk_path, from_topk, to_topk
from tests.helpers import BASE, make_run, run_relabel, write_distilled

torch.set_num_threads(1)

# --------------------------------------------------------------------------- plans
def test_plan_is_deterministic_and_valid():
    a = make_epoch_plan(3, 7, 21, 16, 16, 8, PlanAugment((0.25, 1.0), True, "cutmix", 1.0))
    b = make_epoch_plan(3, 7, 21, 16, 16, 8, PlanAugment((0.25, 1.0), True, "cutmix", 1.0))
    c = make_epoch_plan(3, 8, 21, 16, 16, 8, PlanAugment((0.25, 1.0), True, "cutmix", 1.0))
    for field in ("order", "crops", "flips", "perm", "lam", "boxes"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(21))
    assert a.num_batches == 3 and a.batch_slice(2) == slice(16, 21)  # short last batch kept
    top, left, h, w = a.crops.T
    assert (
        (top >= 0).all() and (left >= 0).all() and (top + h <= 16).all() and (left + w <= 16).all()
    )
    area = (h * w).float() / 256
    assert (area >= 0.2).all() and (area <= 1.0).all()
    for bi in range(a.num_batches):
        sl = a.batch_slice(bi)
        assert sorted(a.perm[sl].tolist()) == list(range(sl.stop - sl.start))
        y0, y1, x0, x1 = a.boxes[bi].tolist()
        assert abs(float(a.lam[bi]) - (1 - (y1 - y0) * (x1 - x0) / 256)) < 1e-6
    mix = make_epoch_plan(0, 0, 40, 16, 16, 10, PlanAugment(mix="mixup", mix_alpha=0.4))
    assert ((mix.lam >= 0) & (mix.lam <= 1)).all() and mix.boxes.abs().sum() == 0
    none = make_epoch_plan(0, 0, 40, 16, 16, 10, PlanAugment(mix="none", flip=False))
    assert (none.lam == 1).all() and not none.flips.any()


def test_crop_flip_identity_and_flip():
    x = torch.rand(3, 1, 12, 12)
    full = torch.tensor([[0, 0, 12, 12]] * 3, dtype=torch.int32)
    same = crop_flip(x, full, torch.zeros(3, dtype=torch.bool), 12)
    assert torch.allclose(same, x, atol=1e-6)
    flipped = crop_flip(x, full, torch.ones(3, dtype=torch.bool), 12)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-6)
    # a 2x down-scaling crop samples between pixel pairs: the 2x2 average (bilinear, no AA)
    half = crop_flip(x, torch.tensor([[0, 0, 12, 12]] * 3, dtype=torch.int32),
                     torch.zeros(3, dtype=torch.bool), 6)  # fmt: skip
    assert torch.allclose(half, torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    # an exact sub-window at the same scale is a plain slice
    window = crop_flip(x, torch.tensor([[2, 3, 6, 6]] * 3, dtype=torch.int32),
                       torch.zeros(3, dtype=torch.bool), 6)  # fmt: skip
    assert torch.allclose(window, x[:, :, 2:8, 3:9], atol=1e-5)


def test_cutmix_box_comes_from_partner():
    plan = make_epoch_plan(1, 0, 8, 16, 16, 8, PlanAugment(mix="cutmix"))
    imgs = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    x, perm, lam = build_batch(imgs, plan, 0, mean, std)
    plain = make_epoch_plan(1, 0, 8, 16, 16, 8, PlanAugment(mix="cutmix"))
    plain.mix = "none"
    ref, _, _ = build_batch(imgs, plain, 0, mean, std)
    y0, y1, x0, x1 = plan.boxes[0].tolist()
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert torch.equal(x[:, :, inside], ref[perm][:, :, inside])
    assert torch.equal(x[:, :, ~inside], ref[:, :, ~inside])
    assert lam == pytest.approx(1 - inside.float().mean().item())


# --------------------------------------------------------------------------- ensemble
def test_norm_mean_matches_hand_computation():
    l1 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ||l1||_F = 5
    l2 = torch.tensor([[0.0, 6.0], [8.0, 0.0]])  # ||l2||_F = 10
    # target norm 7.5: l1 * 1.5, l2 * 0.75, then the mean
    expected = torch.tensor(
        [[(4.5 + 0.0) / 2, (0.0 + 4.5) / 2], [(0.0 + 6.0) / 2, (6.0 + 0.0) / 2]]
    )
    assert torch.allclose(combine_logits([l1, l2], "norm_mean"), expected)
    assert torch.allclose(combine_logits([l1, l2], "mean"), (l1 + l2) / 2)
    # the rescaled teachers have equal norms; one teacher is returned unchanged
    assert torch.allclose(combine_logits([l1], "norm_mean"), l1)
    # the split-batch form (norms summed over ranks) equals the whole-batch form
    halves = [combine_logits([l1[i : i + 1], l2[i : i + 1]], "norm_mean",
                             sq_norm_reduce=lambda sq: torch.tensor([25.0, 100.0]))
              for i in range(2)]  # fmt: skip
    assert torch.allclose(torch.cat(halves), expected)


def test_ensemble_chunking_does_not_change_labels(tmp_path):
    cfg, run_dir = make_run(tmp_path)
    ens = load_ensemble(cfg, run_dir)
    x = torch.randn(10, 1, 16, 16)
    whole = ens(x)
    chunked = Ensemble(ens.teachers, "norm_mean", chunk=3)(x)
    assert torch.allclose(whole, chunked, atol=1e-5)


# --------------------------------------------------------------------------- storage + replay
def test_stage_items_and_modes():
    cfg = config_from_dict(deep_merge(BASE, {"students": {"epochs": 5}}))
    items = RelabelStage().items(cfg)
    assert [i.key for i in items] == ["epochs_0000-0001", "epochs_0002-0003", "epochs_0004-0004"]
    assert items[2].payload == {"epochs": [4, 5]}
    est = RelabelStage().estimate(cfg)
    assert est["files"] == 3
    assert est["storage_bytes"] == 5 * 20 * (2 * 10 + 25)  # fp16 labels + plan parameters
    for mode in ("online", "none"):
        other = config_from_dict(deep_merge(BASE, {"relabel": {"mode": mode}}))
        assert RelabelStage().items(other) == []


def test_replay_reproduces_batches_and_soft_labels(tmp_path):
    cfg, run_dir = make_run(tmp_path)
    run_relabel(cfg, run_dir)
    distilled = DistilledSet(run_dir / "distilled.h5")
    reader = SoftLabelReader(cfg, run_dir, distilled)
    ens = load_ensemble(cfg, run_dir)
    for epoch in range(cfg.students.epochs):
        stored = reader.epoch(epoch)
        fresh = plan_from_config(cfg, epoch, len(distilled), 16, 16)
        for field in ("order", "crops", "flips", "perm", "lam", "boxes"):
            assert torch.equal(getattr(stored.plan, field), getattr(fresh, field)), field
        assert stored.plan.mix == "cutmix" and stored.plan.num_batches == 3  # 20 = 8 + 8 + 4
        for b in range(stored.plan.num_batches):
            rows = stored.plan.order[stored.plan.batch_slice(b)]
            pixels = distilled.images(rows)
            x_stored, perm_s, lam_s = build_batch(
                pixels, stored.plan, b, distilled.mean, distilled.std
            )
            x_fresh, perm_f, lam_f = build_batch(pixels, fresh, b, distilled.mean, distilled.std)
            assert torch.equal(x_stored, x_fresh) and torch.equal(perm_s, perm_f)
            assert lam_s == lam_f
            soft = stored.soft_labels(b)
            expect = ens(x_stored)
            assert soft.shape == expect.shape == (len(rows), 10)
            assert torch.allclose(soft, expect, rtol=2e-3, atol=2e-3 * expect.abs().max().item())
            assert soft.std() > 0
    reader.close()
    with h5py.File(chunk_path(run_dir, 0, 2), "r") as f:
        assert f["epoch_0000/logits"].dtype == np.float16
        assert f["epoch_0000/logits"].compression == "gzip"
        assert f["epoch_0000/logits"].shuffle
        assert json.loads(f.attrs["teachers"]) == ["resnet18", "mobilenet_v2"]


def test_topk_storage_round_trip(tmp_path):
    cfg, run_dir = make_run(tmp_path, relabel={"storage": "topk", "topk": 3},
                            students={"epochs": 1})  # fmt: skip
    run_relabel(cfg, run_dir)
    distilled = DistilledSet(run_dir / "distilled.h5")
    stored = SoftLabelReader(cfg, run_dir, distilled).epoch(0)
    ens = load_ensemble(cfg, run_dir)
    rows = stored.plan.order[stored.plan.batch_slice(0)]
    x, _, _ = build_batch(distilled.images(rows), stored.plan, 0, distilled.mean, distilled.std)
    full = ens(x)
    dense = stored.soft_labels(0)
    v, i, rest = to_topk(full, 3)
    tol = 2e-3 * full.abs().max().item()
    assert torch.equal(dense.topk(3, dim=1).indices.sort(1).values, i.sort(1).values)
    assert torch.allclose(dense.gather(1, i), v, atol=tol)
    mask = torch.ones_like(full, dtype=torch.bool).scatter_(1, i, False)
    assert torch.allclose(dense[mask].view(len(x), -1), rest.view(-1, 1).expand(-1, 7), atol=tol)
    assert torch.allclose(from_topk(v, i, rest, 10).gather(1, i), v)


def test_fingerprint_mismatch_is_refused(tmp_path):
    cfg, run_dir = make_run(tmp_path, students={"epochs": 1})
    run_relabel(cfg, run_dir)
    other = config_from_dict(deep_merge(BASE, {"students": {"epochs": 1},
                                               "relabel": {"mix": "mixup"}}))  # fmt: skip
    distilled = DistilledSet(run_dir / "distilled.h5")
    with pytest.raises(UserError, match="another config"):
        SoftLabelReader(other, run_dir, distilled).epoch(0)


class _FakeEnsemble:
    """1000-class logits shaped like a trained teacher's: a few large, a long noisy tail."""

    def __init__(self, num_classes: int = 1000):
        self.num_classes = num_classes

    def __call__(self, x):
        g = torch.Generator().manual_seed(int(x.abs().sum() * 1000) % (2**31))
        logits = torch.randn(len(x), self.num_classes, generator=g) * 1.5
        peaks = torch.randint(0, self.num_classes, (len(x), 3), generator=g)
        return logits.scatter_add_(1, peaks, torch.full((len(x), 3), 8.0))


def test_topk_is_at_least_5x_smaller_for_1000_classes(tmp_path):
    sizes = {}
    for storage in ("fp16", "topk"):
        cfg = config_from_dict(deep_merge(BASE, {
            "data": {"resolution": 8, "num_classes": 1000},
            "relabel": {"storage": storage, "topk": 10},
            "students": {"epochs": 2, "batch_size": 50},
        }))  # fmt: skip
        folder = tmp_path / storage
        folder.mkdir()
        write_distilled(folder / "distilled.h5", num_classes=1000, ipc=1, res=8)
        distilled = DistilledSet(folder / "distilled.h5")
        path = folder / "labels.h5"
        write_relabel_chunk(cfg, path, range(2), distilled, _FakeEnsemble(), log=lambda m: None)
        sizes[storage] = path.stat().st_size
    ratio = sizes["fp16"] / sizes["topk"]
    print(f"1000 classes, 2 epochs x 1000 images: fp16 {sizes['fp16']} B, top-10 {sizes['topk']} "
          f"B, ratio {ratio:.1f}x")  # fmt: skip
    assert ratio >= 5


def test_distilled_set_lazy_reads_match_memory(tmp_path):
    write_distilled(tmp_path / "d.h5")
    mem = DistilledSet(tmp_path / "d.h5")
    lazy = DistilledSet(tmp_path / "d.h5", max_memory_bytes=0)
    rows = torch.tensor([5, 1, 5, 19, 0])  # unsorted, repeated: h5py needs sorted unique reads
    assert torch.equal(mem.images(rows), lazy.images(rows))
    assert (mem.num_classes, mem.ipc, mem.height) == (10, 2, 16)
    lazy.close()
    with h5py.File(tmp_path / "d.h5", "a") as f:
        f["labels"][3] = -1
    with pytest.raises(UserError, match="fill value"):
        DistilledSet(tmp_path / "d.h5")


def test_crop_fallback_is_the_whole_square_image():
    plan = make_epoch_plan(0, 0, 500, 16, 16, 50, PlanAugment((1.0, 1.0)))  # most tries do not fit
    assert (plan.crops == torch.tensor([0, 0, 16, 16], dtype=torch.int32)).all()
