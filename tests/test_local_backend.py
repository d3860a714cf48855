"""The local backend: layouts capped to the machine, disjoint GPUs for concurrent items, and the
cluster layer running a pipeline it is handed (a toy registry defined here, not PRISM's)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prism_hpc.config.load import config_from_dict
from prism_hpc.hpc.backends.local import local_layout, run_local
from prism_hpc.hpc.plan import make_plan, write_plan
from prism_hpc.store.atomic import write_marker
from prism_hpc.store.rundir import new_run_dir
from prism_hpc.workflow import Item, Stage, StageRegistry, TaskEnv
from tests.conftest import TINY

TOY_REF = "tests.test_local_backend:toy_registry"


class EnvProbe(Stage):
    """Records what each rank of an item saw: devices, threads, world size."""

    name = "probe"
    distributed = True

    def items(self, cfg) -> list[Item]:
        return [Item(self.name, i, f"item{i}") for i in range(4)]

    def run(self, cfg, item: Item, env: TaskEnv) -> None:
        seen = {
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "omp": os.environ.get("OMP_NUM_THREADS"),
            "world": env.world_size,
            "rank": env.rank,
        }
        out = Path(env.run_dir) / "probe" / f"{item.key}.rank{env.rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(seen))
        env.log(f"{item.key} rank {env.rank}: probing")  # the terminal shows rank 0's line
        if env.is_main:
            write_marker(self.marker_path(env.run_dir, item), seen)


def toy_registry() -> StageRegistry:
    return StageRegistry((EnvProbe(),), TOY_REF)


def test_layout_without_gpus_never_oversubscribes_the_cores():
    layout = local_layout(ranks=4, concurrency=1, gpus=[], cores=2)
    assert (layout.ranks, layout.concurrency, layout.threads) == (2, 1, 1)
    assert "4 rank(s) x 1 item(s)" in layout.note and "2 core(s)" in layout.note
    layout = local_layout(ranks=1, concurrency=2, gpus=[], cores=8)
    assert (layout.ranks, layout.concurrency, layout.threads, layout.note) == (1, 2, 4, None)
    assert local_layout(ranks=2, concurrency=3, gpus=[], cores=4).concurrency == 2


def test_layout_gives_each_concurrent_item_its_own_gpus():
    layout = local_layout(ranks=2, concurrency=3, gpus=["0", "1", "2", "3", "4"], cores=16)
    assert layout.gpu_groups == (("0", "1"), ("2", "3"))  # a third item would share
    assert layout.concurrency == 2 and layout.threads == 4
    assert local_layout(ranks=8, concurrency=1, gpus=["5", "7"], cores=4).ranks == 2


def _probe_run(tmp_path: Path, tasks: int, concurrency: int):
    data = dict(TINY, name="probe", run_root=str(tmp_path))
    data["resources"] = {"default": {"tasks_per_node": tasks, "concurrency": concurrency}}
    cfg = config_from_dict(data)
    rd = new_run_dir(cfg, tmp_path / "run", data)
    registry = toy_registry()
    plans = make_plan(cfg, list(registry.stages))
    write_plan(rd.plan, plans, registry.ref)
    run_local(rd, plans, registry)
    return [json.loads(p.read_text()) for p in sorted((rd.root / "probe").glob("*.json"))]


def test_concurrent_items_see_disjoint_faked_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_LOCAL_GPUS", "4")
    seen = _probe_run(tmp_path, tasks=2, concurrency=2)
    assert len(seen) == 8 and {s["world"] for s in seen} == {2}
    groups = {s["cuda"] for s in seen}
    assert groups == {"0,1", "2,3"}  # two slots, never the same device twice at once


def test_ranks_are_capped_to_the_cores_and_say_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PRISM_LOCAL_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr("prism_hpc.hpc.backends.local.machine_cores", lambda: 2)
    seen = _probe_run(tmp_path, tasks=4, concurrency=1)
    assert {s["world"] for s in seen} == {2} and {s["omp"] for s in seen} == {"1"}
    out = capsys.readouterr().out
    assert "running 2 rank(s) x 1 item(s), 1 thread(s) each" in out
    # child processes' rank-0 log lines reach the terminal (before each item's "done")
    for i in range(4):
        shown = out.index(f"[probe] {i}/4 | item{i}: item{i} rank 0: probing")
        assert shown < out.index(f"[probe] {i + 1}/4 done (item{i},")
    assert "rank 1: probing" not in out


def test_log_tail_shows_complete_lines_and_paces_them(tmp_path, monkeypatch):
    from prism_hpc.hpc.backends.local import LogTail

    clock = [100.0]
    monkeypatch.setattr("prism_hpc.hpc.backends.local.time.time", lambda: clock[0])
    log = tmp_path / "x.log"
    tail = LogTail(log, every=10.0)
    assert tail.latest() is None  # no file yet
    log.write_bytes(b"epoch 1 loss 2.0\nepoch 2 lo")
    assert tail.latest() == "epoch 1 loss 2.0"  # the first line at once; no half line
    with open(log, "ab") as fh:
        fh.write(b"ss 1.5\n\nepoch 3 loss 1.2\n")
    clock[0] += 5
    assert tail.latest() is None  # too soon: kept for later
    clock[0] += 6
    assert tail.latest() == "epoch 3 loss 1.2"  # the newest of the kept lines
    with open(log, "ab") as fh:
        fh.write(b"epoch 4 loss 1.1\n")
    clock[0] += 3
    assert tail.latest() is None
    clock[0] += 8
    assert tail.latest() == "epoch 4 loss 1.1"
    clock[0] += 20
    assert tail.latest() is None  # nothing new
