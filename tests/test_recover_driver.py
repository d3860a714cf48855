"""The recover driver with a method it does not know: adding a method is one schedule class.

A toy schedule (every image a grey level coding its slice and class; a unit of work is one
class chunk across all the item's slices, as a joint batch) is listed in `methods.SCHEDULES`
and run through the recover stage: the driver deals its works, keeps their restart files,
resumes a killed task from them and assembles one shard per slice, with nothing else changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from prism_hpc.config.load import config_from_dict
from prism_hpc.recover import methods
from prism_hpc.recover.context import SliceContext
from prism_hpc.recover.driver import Key, Record, Schedule, Work, recover_item
from prism_hpc.recover.schedules import chunks_of
from prism_hpc.stages.recover import RecoverStage, slice_path
from prism_hpc.store.shards import read_shard
from prism_hpc.workflow import TaskEnv
from tests.conftest import TINY


@dataclass(frozen=True)
class ToyWork(Work):
    keys: tuple[Key, ...]
    classes: tuple[int, ...]


class Toy(Schedule):
    """Images made without teachers: pixel value 10 * slice + class."""

    solved: ClassVar[list[tuple[Key, ...]]] = []  # the works solved, in order

    @classmethod
    def applies(cls, rec) -> bool:
        return True

    def phases(self, ctx: SliceContext, slices: list[int], done: frozenset[int]) -> list:
        chunks = chunks_of(list(range(ctx.num_classes)), ctx.rec.classes_per_batch)
        return [[ToyWork(tuple((s, c) for s in slices), tuple(cl)) for c, cl in enumerate(chunks)]]

    def solve(self, ctx: SliceContext, work: ToyWork) -> list[Record]:
        Toy.solved.append(work.keys)
        shape = (ctx.cfg.data.channels, ctx.cfg.data.resolution, ctx.cfg.data.resolution)
        return [
            {
                "chunk": c,
                "classes": list(work.classes),
                "images": np.stack([np.full(shape, 10 * s + k, np.uint8) for k in work.classes]),
                "roles": [{"logit_teacher": "toy", "bn_teachers": []}],
                "logit_top1": 1.0,
                "rank": ctx.rank,
            }
            for s, c in work.keys
        ]

    def iterations(self, ctx: SliceContext, slice_index: int) -> int:
        return 0

    def scope(self, ctx: SliceContext) -> str:
        return "none"  # no teacher roles

    def extra(self, ctx: SliceContext, slices: list[int]) -> dict:
        return {"toy": list(slices)}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setattr(methods, "SCHEDULES", [Toy, *methods.SCHEDULES])
    Toy.solved = []
    return Toy


def _cfg() -> dict:
    data = copy.deepcopy(TINY)
    for spec in data["teachers"].values():
        spec["weights"] = "random"
    data["squeeze"]["enabled"] = False
    data["recover"].update(ipc=2, slices_per_task=2, classes_per_batch=4)
    return data


def test_a_registered_schedule_runs_through_the_stage_and_resumes(tmp_path, toy, fmnist_available):
    cfg = config_from_dict(_cfg())
    assert isinstance(methods.schedule_for(cfg.recover), Toy)
    stage = RecoverStage()
    (item,) = stage.items(cfg)
    stage.run(cfg, item, TaskEnv(run_dir=tmp_path / "ref", log=lambda m: None))
    assert toy.solved == [((0, c), (1, c)) for c in range(3)]  # 10 classes, chunks of 4
    for s in range(2):
        shard = read_shard(slice_path(tmp_path / "ref", s))
        assert shard["labels"].tolist() == list(range(10))
        assert [int(img.max()) for img in shard["images"]] == [10 * s + k for k in range(10)]
        prov = shard["provenance"]
        assert prov["toy"] == [0, 1] and prov["iterations"] == 0 and prov["slice"] == s
        assert prov["logit_teacher"] == "toy" and [c["chunk"] for c in prov["chunks"]] == [0, 1, 2]

    # killed in its second work: the first work's records are kept, and only the rest is redone
    real = Toy.solve

    def dies_in_second_work(self, ctx, work):
        if len(Toy.solved) == 1:
            raise KeyboardInterrupt
        return real(self, ctx, work)

    toy.solved = []
    run = tmp_path / "killed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Toy, "solve", dies_in_second_work)
        with pytest.raises(KeyboardInterrupt):
            stage.run(cfg, item, TaskEnv(run_dir=run, log=lambda m: None))
    kept = sorted(p.relative_to(run / "recover" / "partial").as_posix()
                  for p in (run / "recover" / "partial").rglob("*.npz"))  # fmt: skip
    assert kept == ["slice_00000/chunk_0000.npz", "slice_00001/chunk_0000.npz"]
    toy.solved, lines = [], []
    stage.run(cfg, item, TaskEnv(run_dir=run, log=lines.append))
    assert toy.solved == [((0, c), (1, c)) for c in (1, 2)]
    assert [ln for ln in lines if "kept" in ln] == [
        "slice 0 chunk 0: finished before a restart, kept",
        "slice 1 chunk 0: finished before a restart, kept",
    ]
    for s in range(2):
        ref, got = (read_shard(slice_path(r, s)) for r in (tmp_path / "ref", run))
        assert np.array_equal(ref["images"], got["images"])
    assert not (run / "recover" / "partial" / "slice_00000").exists()


def test_finished_slices_get_no_work_no_file_and_no_result(tmp_path, toy):
    """The driver alone (no data, no teachers): a slice in `done` is not yielded, its records
    are not saved, and a work whose slices are all done is not solved."""

    class Cfg:
        seed = 0

        class recover:
            classes_per_batch = 2

        class data:
            resolution, channels = 2, 1

    ctx = SliceContext(Cfg, {}, {}, None, [np.arange(3)] * 3, ([0.5], [0.5]),
                       progress_dir=tmp_path)  # fmt: skip
    out = dict(recover_item(ctx, Toy(), [4, 5, 6], done={5}))
    assert sorted(out) == [4, 6]
    assert toy.solved == [((4, 0), (5, 0), (6, 0)), ((4, 1), (5, 1), (6, 1))]
    assert sorted(p.parent.name for p in tmp_path.rglob("*.npz")) == ["slice_00004"] * 2 + [
        "slice_00006"
    ] * 2
    assert out[6]["images"][:, 0, 0, 0].tolist() == [60, 61, 62]
    toy.solved = []
    assert list(recover_item(ctx, Toy(), [4, 5, 6], done={4, 5, 6})) == []
    assert toy.solved == []
