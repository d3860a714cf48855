"""RDED synthesis (recover/rded.py): crops, scores, selection, stitching, slices, provenance."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from prism_hpc.config.load import config_from_dict
from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.data.index import class_index
from prism_hpc.data.patches import patch_edges
from prism_hpc.errors import UserError
from prism_hpc.recover import rded
from prism_hpc.recover.context import SliceContext
from prism_hpc.recover.driver import recover_item
from prism_hpc.recover.methods import schedule_for
from prism_hpc.seeding import generator
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = torch.tensor([0.5]).view(1, -1, 1, 1), torch.tensor([0.25]).view(1, -1, 1, 1)


class BrightObserver(nn.Module):
    """Two classes; class 1's logit grows with the mean input: CE(class 1) falls as the
    patch gets brighter, so the expected choice is known by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], 1) * 4


class ConstantSource:
    """Fake source: image at dataset position i is the constant i / 1000 (1 x size x size);
    even positions are class 0, odd ones class 1."""

    def __init__(self, n: int = 400, size: int = 8):
        self.labels = np.arange(n) % 2
        self.num_classes = 2
        self.size = size

    def load(self, idx: np.ndarray) -> torch.Tensor:
        v = torch.as_tensor(np.asarray(idx), dtype=torch.float32) / 1000
        return v.view(-1, 1, 1, 1).expand(-1, 1, self.size, self.size).clone()


def _rded_cfg(**rded_block) -> dict:
    data = copy.deepcopy(TINY)
    data["data"]["resolution"] = 8
    data["recover"] = {
        "synthesis": "rded", "ipc": 2, "classes_per_batch": 2, "logit_teacher": "resnet18",
        "rded": {"factor": 2, "candidates": 6, "crops": 3, **rded_block},
    }  # fmt: skip
    return data


def _recover(cfg, slice_index: int = 0, log=lambda m: None, progress_dir=None) -> dict:
    """One slice through the recover driver with the bright observer and constant images."""
    src = ConstantSource()
    ctx = SliceContext(cfg, {"resnet18": BrightObserver()}, {}, src, class_index(src.labels, 2),
                       ([0.5], [0.25]), log=log, progress_dir=progress_dir)  # fmt: skip
    ((_, result),) = recover_item(ctx, schedule_for(cfg.recover), [slice_index])
    return result


# ----------------------------------------------------------------------------- pieces


def test_selection_takes_each_images_best_crop_then_the_best_images():
    scores = torch.tensor([
        [3.0, 1.0, 2.0],  # image 0: crop 1 (1.0)
        [0.5, 4.0, 4.0],  # image 1: crop 0 (0.5)
        [2.0, 2.0, 0.7],  # image 2: crop 2 (0.7)
        [5.0, 5.0, 5.0],  # image 3: crop 0 (5.0), a tie: the first
    ])  # fmt: skip
    rows, cols = rded.select_patches(scores, 3)
    assert rows.tolist() == [1, 2, 0] and cols.tolist() == [0, 2, 1]
    rows, cols = rded.select_patches(scores, 4)
    assert rows.tolist()[-1] == 3 and cols.tolist()[-1] == 0
    # ties across images keep image order (stable)
    rows, _ = rded.select_patches(torch.tensor([[1.0], [0.0], [1.0], [0.0]]), 4)
    assert rows.tolist() == [1, 3, 0, 2]


def test_square_crop_boxes_follow_random_resized_crop_with_ratio_one():
    boxes = rded.square_crop_boxes(4, 5, 32, (0.08, 1.0), generator(3, "t"))
    u = torch.rand(4, 5, 3, generator=generator(3, "t"), dtype=torch.float64)
    for i in range(4):
        for j in range(5):
            side = round(math.sqrt(1024 * (0.08 + 0.92 * float(u[i, j, 0]))))
            top = math.floor(float(u[i, j, 1]) * (32 - side + 1))
            left = math.floor(float(u[i, j, 2]) * (32 - side + 1))
            assert boxes[i, j].tolist() == [top, left, side]
            assert 0.08 * 1024 - 2 * side <= side * side <= 1024 and top + side <= 32
    # the area range is honoured: scale (1, 1) is always the whole image
    whole = rded.square_crop_boxes(3, 2, 16, (1.0, 1.0), generator(0, "t"))
    assert whole.view(-1, 3).tolist() == [[0, 0, 16]] * 6


def test_cut_patches_resizes_the_box_with_antialias():
    img = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    boxes = torch.tensor([[[2, 4, 4], [0, 0, 8]]])
    out = rded.cut_patches(img, boxes, 4)
    assert torch.equal(out[0, 0], img[0, :, 2:6, 4:8])  # same size: the crop itself
    want = F.interpolate(img, size=(4, 4), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(out[0, 1], want[0])
    # antialias at scale 2: a triangle filter of half-width 2 around input coordinate 1.0,
    # weights 0.75, 0.75, 0.25 on pixels 0, 1, 2 (normalised), separable: 8 E[row] + E[col]
    e = (0 * 0.75 + 1 * 0.75 + 2 * 0.25) / 1.75
    assert out[0, 1, 0, 0, 0].item() == pytest.approx(8 * e + e, abs=1e-5)


def test_pad_centres_the_patch_in_a_zero_frame():
    x = torch.ones(1, 1, 3, 3)
    out = rded.pad_to(x, 8)
    assert out.shape == (1, 1, 8, 8) and out.sum() == 9
    assert out[0, 0, 2:5, 2:5].eq(1).all()  # dh = 5: 2 above, 3 below (RDED's pad)


def test_patch_edges_put_the_remainder_first():
    assert patch_edges(224, 2) == [0, 112, 224]
    assert patch_edges(32, 2) == [0, 16, 32]
    assert patch_edges(5, 2) == [0, 3, 5]
    assert patch_edges(7, 3) == [0, 3, 5, 7]
    assert patch_edges(9, 1) == [0, 9]


def test_stitch_layout_is_row_major_best_top_left_pixel_exact():
    p = torch.stack([torch.full((1, 2, 2), float(k + 1)) for k in range(4)])
    out = rded.stitch(p, 4, 2)[0]
    assert out.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    # 5 px, factor 2: cells 3 and 2 px; a 2x2 patch is resized nearest to its cell
    grad = torch.tensor([[[10.0, 11.0], [12.0, 13.0]]])
    p = torch.stack([grad, grad + 10, grad + 20, grad + 30])
    out = rded.stitch(p, 5, 2)[0]
    assert out[:3, :3].tolist() == [[10, 10, 11], [10, 10, 11], [12, 12, 13]]
    assert out[:3, 3:].tolist() == [[20, 21], [20, 21], [22, 23]]
    assert out[3:, :3].tolist() == [[30, 30, 31], [32, 32, 33]]
    assert out[3:, 3:].tolist() == [[40, 41], [42, 43]]
    # factor 1: the patch is the image
    assert torch.equal(rded.stitch(grad[None], 2, 1), grad)


def test_candidate_blocks_are_disjoint_per_slice_and_fixed_by_seed_and_class():
    positions = np.arange(100, 160)  # a class with 60 images
    blocks = [rded.candidate_block(positions, 7, 3, s, 12) for s in range(5)]
    assert all(len(b) == 12 for b in blocks)
    every = np.concatenate(blocks)
    assert len(set(every.tolist())) == 60 and set(every.tolist()) == set(positions.tolist())
    assert np.array_equal(blocks[2], rded.candidate_block(positions, 7, 3, 2, 12))  # again
    assert not np.array_equal(blocks[0], rded.candidate_block(positions, 8, 3, 0, 12))  # seed
    assert not np.array_equal(blocks[0], rded.candidate_block(positions, 7, 4, 0, 12))  # class
    with pytest.raises(UserError, match="IPC slice 5 of class 3 needs images 60..71"):
        rded.candidate_block(positions, 7, 3, 5, 12)


# ----------------------------------------------------------------------------- one image


def test_the_brightest_candidates_are_chosen_and_stitched_best_first():
    """Constant images: every crop of image i is i / 1000, the observer prefers bright, so the
    image holds the 4 brightest of the slice's 6 candidates, brightest top-left."""
    cfg = config_from_dict(_rded_cfg())
    src = ConstantSource()
    per_class = class_index(src.labels, 2)
    observer = rded.Observer(BrightObserver(), 8, MEAN, STD, torch.device("cpu"))
    image, rec = rded.rded_class_image(cfg.recover.rded, observer, src, per_class[1], cfg.seed,
                                       1, 1)  # fmt: skip
    block = rded.candidate_block(per_class[1], cfg.seed, 1, 1, 6)
    want = sorted(block.tolist(), reverse=True)[:4]
    assert rec["sources"] == want
    assert rec["scores"] == sorted(rec["scores"])  # best (lowest CE) first
    cells = [image[0, :4, :4], image[0, :4, 4:], image[0, 4:, :4], image[0, 4:, 4:]]
    for cell, pos in zip(cells, want, strict=True):
        assert torch.allclose(cell, torch.full((4, 4), pos / 1000), atol=1e-6)
    # the score is the CE of class 1 on the padded normalised patch, by hand
    v = (want[0] / 1000 - 0.5) / 0.25 * 16 / 64  # mean of the 8x8 input: 4x4 patch, zero frame
    logits = torch.tensor([-v, v]) * 4
    assert rec["scores"][0] == pytest.approx(float(-torch.log_softmax(logits, 0)[1]), abs=1e-5)


def test_the_best_crop_of_an_image_is_the_one_the_observer_likes():
    """One bright quadrant: the chosen crop of that image is the one covering most of it."""

    class Source(ConstantSource):
        def load(self, idx):
            x = torch.zeros(len(idx), 1, 8, 8)
            x[:, :, :4, :4] = 1.0
            return x

    cfg = config_from_dict(_rded_cfg(crops=6, candidates=4))
    src = Source()
    per_class = class_index(src.labels, 2)
    observer = rded.Observer(BrightObserver(), 8, MEAN, STD, torch.device("cpu"))
    _, rec = rded.rded_class_image(cfg.recover.rded, observer, src, per_class[1], cfg.seed, 0, 1)
    boxes = rded.square_crop_boxes(4, 6, 8, (0.08, 1.0), generator(cfg.seed, "rded-crops", 0, 1))
    for src_pos, box in zip(rec["sources"], rec["boxes"], strict=True):
        row = list(rded.candidate_block(per_class[1], cfg.seed, 1, 0, 4)).index(src_pos)

        def bright(b):  # share of the crop inside the bright quadrant (the patch's mean)
            t, left, s = b
            inside = max(0, min(t + s, 4) - t) * max(0, min(left + s, 4) - left)
            return inside / (s * s)

        best = max(bright(b.tolist()) for b in boxes[row])
        assert bright(box) == pytest.approx(best, abs=0.2)  # antialias blurs edges a little
        assert bright(box) > 0


# ----------------------------------------------------------------------------- slices


def _slice(cfg, chunk_classes: int, slice_index: int = 0):
    cfg.recover.classes_per_batch = chunk_classes
    return _recover(cfg, slice_index)


def test_slices_are_deterministic_chunk_independent_and_use_disjoint_images():
    cfg = config_from_dict(_rded_cfg())
    a, b = _slice(cfg, 2), _slice(config_from_dict(_rded_cfg()), 2)
    assert np.array_equal(a["images"], b["images"])  # same seed: same images
    c = _slice(config_from_dict(_rded_cfg()), 1)  # one class per chunk (as on 2 ranks)
    assert np.array_equal(a["images"], c["images"])
    assert a["labels"].tolist() == [0, 1] and a["images"].dtype == np.uint8
    prov = a["provenance"]
    assert prov["iterations"] == 0 and prov["logit_teacher"] == "resnet18"
    assert prov["bn_teachers"] == [] and prov["chunks"][0]["synthesis"] == "rded"
    picks0 = [p for ch in prov["chunks"] for p in ch["rded"]["picks"]]
    s1 = _slice(config_from_dict(_rded_cfg()), 2, slice_index=1)["provenance"]
    picks1 = [p for ch in s1["chunks"] for p in ch["rded"]["picks"]]
    used0 = {i for p in picks0 for i in p["sources"]}
    used1 = {i for p in picks1 for i in p["sources"]}
    assert len(used0) == 8 and used0.isdisjoint(used1)
    other = _slice(config_from_dict({**_rded_cfg(), "seed": 1}), 2)
    assert not np.array_equal(a["images"], other["images"])


def test_config_defaults_keep_prism_and_refuse_what_rded_cannot_do():
    assert OptimizeRecover().synthesis == "optimize"
    with pytest.raises(UserError, match="needs an integer ipc"):
        config_from_dict(_rded_cfg() | {"recover": {**_rded_cfg()["recover"], "ipc": "all"}})
    # an optimisation key cannot be written: RDED's recover section does not have it
    for key, value in (("pack", 2), ("init_only", True), ("iterations", 10), ("bn_pool", [])):
        with pytest.raises(UserError, match=rf"unknown key 'recover.{key}' \(recover.synthesis "):
            config_from_dict(_rded_cfg() | {"recover": {**_rded_cfg()["recover"], key: value}})
    bad = _rded_cfg(candidates=3)
    with pytest.raises(UserError, match="candidates = 3 < factor"):
        config_from_dict(bad)


# ----------------------------------------------------------------------------- the stage


def test_stage_writes_shards_whose_pixels_are_the_recorded_crops(tmp_path, fmnist_available):
    """Recover stage on Fashion-MNIST with a random observer: each stored image is exactly the
    recorded crops of the recorded source images, stitched (provenance is complete)."""
    from prism_hpc.data.sources import open_source
    from prism_hpc.stages.recover import RecoverStage, slice_path
    from prism_hpc.store.shards import read_shard
    from prism_hpc.workflow import TaskEnv

    data = _rded_cfg()
    data["data"]["resolution"] = 16
    data["teachers"] = {"resnet18": {"arch": "resnet18", "width": 0.25, "weights": "random"}}
    data["squeeze"]["enabled"] = False
    data["relabel"]["teachers"] = ["resnet18"]
    data["recover"]["classes_per_batch"] = 10
    cfg = config_from_dict(data)
    stage = RecoverStage()
    for item in stage.items(cfg):
        stage.run(cfg, item, TaskEnv(run_dir=tmp_path, log=lambda m: None))
    source = open_source(cfg.data, "train")
    for s in range(2):
        shard = read_shard(slice_path(tmp_path, s))
        assert shard["images"].shape == (10, 1, 16, 16) and shard["ipc_index"].tolist() == [s] * 10
        picks = [p for ch in shard["provenance"]["chunks"] for p in ch["rded"]["picks"]]
        for row, pick in enumerate(picks):
            assert pick["class"] == shard["labels"][row] == row
            assert all(source.labels[i] == row for i in pick["sources"])
            imgs = source.load(np.asarray(pick["sources"]))
            patches = torch.stack([
                rded.cut_patches(imgs[k : k + 1], torch.tensor([[box]]), 8)[0, 0]
                for k, box in enumerate(pick["boxes"])
            ])  # fmt: skip
            want = (rded.stitch(patches, 16, 2).clamp(0, 1) * 255).round().to(torch.uint8)
            assert np.array_equal(shard["images"][row], want.numpy())


def test_baseline_configs_carry_rded():
    for name in ("fmnist_rded.yaml", "in1k_rded_ipc50.yaml"):
        raw = yaml.safe_load((ROOT / "configs" / "baselines" / name).read_text())
        cfg = config_from_dict(raw)
        assert cfg.method == "RDED" and cfg.recover.synthesis == "rded"
        assert cfg.recover.teacher_names() == ["resnet18"]  # the observer alone
        assert cfg.recover.rded.crops == 5 and tuple(cfg.recover.rded.crop_scale) == (0.08, 1.0)
        factor = cfg.recover.rded.factor
        assert cfg.relabel.shuffle_patches == factor
        assert tuple(cfg.relabel.crop_scale) == (1 / factor, 1.0)
    in1k = config_from_dict(
        yaml.safe_load((ROOT / "configs" / "baselines" / "in1k_rded_ipc50.yaml").read_text())
    )
    assert in1k.recover.rded.factor == 2 and in1k.recover.rded.candidates * 50 <= 732


# ----------------------------------------------------------------------------- patch relabel


def test_shuffle_patches_moves_whole_strips_pixel_exact():
    from prism_hpc.relabel.patches import shuffle_patches

    img = torch.arange(16.0).view(1, 1, 4, 4)
    same = shuffle_patches(img, torch.tensor([[[0, 1], [0, 1]]], dtype=torch.int8))
    assert torch.equal(same, img)
    cols = shuffle_patches(img, torch.tensor([[[1, 0], [0, 1]]], dtype=torch.int8))[0, 0]
    assert cols.tolist() == [[2, 3, 0, 1], [6, 7, 4, 5], [10, 11, 8, 9], [14, 15, 12, 13]]
    both = shuffle_patches(img, torch.tensor([[[1, 0], [1, 0]]], dtype=torch.int8))[0, 0]
    assert both.tolist() == [[10, 11, 8, 9], [14, 15, 12, 13], [2, 3, 0, 1], [6, 7, 4, 5]]
    # 5 px, factor 2: strips [0, 3) and [3, 5) (the stitching grid), swapped whole
    img5 = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 5, 5)
    out = shuffle_patches(img5, torch.tensor([[[1, 0], [0, 1]]], dtype=torch.int8))
    assert out[0, 0, 0].tolist() == [3, 4, 0, 1, 2]
    # a stitched image keeps its four patches, in a new arrangement
    p = torch.stack([torch.full((1, 2, 2), float(k)) for k in range(4)])
    shuffled = shuffle_patches(rded.stitch(p, 4, 2)[None], torch.tensor([[[1, 0], [1, 0]]]))
    assert shuffled[0, 0, ::2, ::2].tolist() == [[3, 2], [1, 0]]


def test_plan_shuffles_come_from_their_own_stream():
    from prism_hpc.relabel.augment import PlanAugment, make_epoch_plan

    off = make_epoch_plan(3, 1, 20, 16, 16, 8, PlanAugment((0.5, 1.0)))
    on = make_epoch_plan(3, 1, 20, 16, 16, 8, PlanAugment((0.5, 1.0), shuffle_patches=2))
    assert off.shuffles is None and on.shuffles.shape == (20, 2, 2)
    for field in ("order", "crops", "flips", "perm", "lam", "boxes"):
        assert torch.equal(getattr(off, field), getattr(on, field)), field
    assert sorted(on.shuffles.view(-1, 2).tolist()) != [[0, 1]] * 40  # some visits do shuffle
    assert all(sorted(r) == [0, 1] for r in on.shuffles.view(-1, 2).tolist())
    again = make_epoch_plan(3, 1, 20, 16, 16, 8, PlanAugment((0.5, 1.0), shuffle_patches=2))
    assert torch.equal(on.shuffles, again.shuffles)
    three = make_epoch_plan(3, 1, 50, 16, 16, 8, PlanAugment(shuffle_patches=3)).shuffles
    assert all(sorted(r) == [0, 1, 2] for r in three.view(-1, 3).tolist())


def test_shuffle_patches_must_match_the_rded_factor():
    data = _rded_cfg()
    data["relabel"]["shuffle_patches"] = 3
    with pytest.raises(UserError, match="shuffle_patches = 3 must be 1 or recover.rded.factor"):
        config_from_dict(data)
    data["relabel"]["shuffle_patches"] = 2
    assert config_from_dict(data).relabel.shuffle_patches == 2


@pytest.mark.parametrize("world", [1, 2])
def test_patch_labels_are_stored_and_the_student_sees_the_labelled_view(tmp_path, world):
    """Offline relabel with RDED's shuffle: the plan's strip orders are stored, the teacher
    labelled the shuffled view (not the plain one), and every rank's student batch is that
    same shuffled view bit for bit, with the stored labels of its positions."""
    from prism_hpc.relabel.augment import build_batch
    from prism_hpc.relabel.ensemble import load_ensemble
    from prism_hpc.store.distilled import DistilledSet
    from prism_hpc.store.softlabels import SoftLabelReader, fingerprint
    from prism_hpc.train.data import StepBatches, rank_pieces, step_loader
    from tests.helpers import make_run, run_relabel

    cfg, run_dir = make_run(tmp_path, relabel={"shuffle_patches": 2, "crop_scale": [0.5, 1.0]},
                            students={"epochs": 1})  # fmt: skip
    plain, _ = make_run(tmp_path / "plain", students={"epochs": 1})
    run_relabel(cfg, run_dir)
    distilled = DistilledSet(run_dir / "distilled.h5")
    assert fingerprint(cfg, distilled) != fingerprint(plain, distilled)
    reader = SoftLabelReader(cfg, run_dir, distilled)
    stored = reader.epoch(0)
    plan = stored.plan
    assert plan.shuffles is not None and plan.shuffles.shape == (len(distilled), 2, 2)
    ens = load_ensemble(cfg, run_dir)
    rows = plan.order[plan.batch_slice(0)]
    x, _, _ = build_batch(distilled.images(rows), plan, 0, distilled.mean, distilled.std)
    unshuffled = type(plan)(**{**plan.__dict__, "shuffles": None})
    x0, _, _ = build_batch(distilled.images(rows), unshuffled, 0, distilled.mean, distilled.std)
    assert not torch.equal(x, x0)  # the shuffle is applied before the crop
    soft = stored.soft_labels(0)
    tol = 2e-3 * soft.abs().max().item()
    assert torch.allclose(soft, ens(x), atol=tol)
    assert (soft - ens(x0)).abs().max() > tol  # labels of the shuffled view, not the plain one
    for rank in range(world):
        data = StepBatches(cfg, run_dir, distilled, 0, rank, world)
        for b, item in enumerate(step_loader(data, workers=0, prefetch=1, pin=False)):
            rows = plan.order[plan.batch_slice(b)]
            xb, _, lam = build_batch(distilled.images(rows), plan, b, distilled.mean,
                                     distilled.std)  # fmt: skip
            pos = torch.cat([torch.from_numpy(p) for p in rank_pieces(len(rows), 1, world, rank)])
            assert torch.equal(item["x"], xb[pos]) and item["lam"] == lam
            assert torch.equal(item["soft"], stored.soft_labels(b)[pos])
    reader.close()


def test_a_restarted_slice_keeps_its_finished_chunks(tmp_path):
    """Progress files (the optimising path's restart state) carry RDED chunks too: a rerun
    loads them, logs it, and returns the same images and provenance."""
    cfg = config_from_dict(_rded_cfg())
    cfg.recover.classes_per_batch = 1
    first = _recover(cfg, 0, log=lambda m: None, progress_dir=tmp_path)
    assert sorted(p.name for p in (tmp_path / "slice_00000").iterdir()) == [
        "chunk_0000.npz", "chunk_0001.npz"
    ]  # fmt: skip
    lines: list[str] = []
    again = _recover(cfg, 0, log=lines.append, progress_dir=tmp_path)
    assert lines == [f"slice 0 chunk {c}: finished before a restart, kept" for c in (0, 1)]
    assert np.array_equal(first["images"], again["images"])
    strip = ("peak_memory_mb",)
    assert {k: v for k, v in first["provenance"].items() if k not in strip} == {
        k: v for k, v in again["provenance"].items() if k not in strip
    }
