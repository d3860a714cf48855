"""Local backend: the same stages, items and markers, run in the foreground on this machine.

Items run in this process one at a time (the default), or as child processes when a stage asks
for concurrency > 1 or several ranks per task (`resources.<stage>.tasks_per_node`, gloo on CPU).
A crash or kill loses at most the items in flight: finished items have their markers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from prism_hpc.errors import TaskFailed, UserError
from prism_hpc.hpc.distributed import free_port
from prism_hpc.hpc.plan import StagePlan
from prism_hpc.hpc.rundir import RunDir
from prism_hpc.hpc.task import run_item


class Progress:
    """One line per event: stage, items done/total, the latest losses."""

    def __init__(self, stage: str, total: int, done: int):
        self.stage, self.total, self.done = stage, total, done
        self._last = 0.0

    def item_done(self, key: str, seconds: float) -> None:
        self.done += 1
        print(f"[{self.stage}] {self.done}/{self.total} done ({key}, {seconds:.1f} s)", flush=True)

    def update(self, info: dict) -> None:
        now = time.time()
        if now - self._last < 2.0:  # keep logs readable
            return
        self._last = now
        text = " ".join(f"{k} {v}" for k, v in info.items())
        print(f"[{self.stage}] {self.done}/{self.total} | {text}", flush=True)


def _log_path(rd: RunDir, stage: str, key: str, rank: int | None = None) -> Path:
    suffix = f".rank{rank}" if rank is not None else ""
    path = rd.logs / stage / f"{key}{suffix}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _spawn(rd: RunDir, plan: StagePlan, index: int, ranks: int) -> list[subprocess.Popen]:
    key = plan.items[index].key
    port = free_port()
    procs = []
    for rank in range(ranks):
        env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", PYTHONUNBUFFERED="1")
        if ranks > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        cmd = [
            sys.executable,
            "-m",
            "prism_hpc.hpc.task",
            str(rd.root),
            plan.stage.name,
            str(index),
        ]
        log_path = _log_path(rd, plan.stage.name, key, rank if ranks > 1 else None)
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _failed(plan: StagePlan, index: int, rd: RunDir, detail: str) -> TaskFailed:
    key = plan.items[index].key
    log = _log_path(rd, plan.stage.name, key, 0 if _ranks(plan) > 1 else None)
    return TaskFailed(f"stage {plan.stage.name} item {index} ({key}) failed: {detail}; log: {log}")


def _ranks(plan: StagePlan) -> int:
    return plan.resources.get("tasks_per_node") or 1 if plan.stage.distributed else 1


def run_stage(rd: RunDir, plan: StagePlan, debug: bool = False) -> None:
    todo = [i.index for i in plan.items if not plan.stage.is_done(rd.root, i)]
    progress = Progress(plan.stage.name, len(plan.items), len(plan.items) - len(todo))
    if not plan.items:
        return
    if not todo:
        print(f"[{plan.stage.name}] {len(plan.items)}/{len(plan.items)} already done", flush=True)
        return
    ranks = _ranks(plan)
    concurrency = plan.resources.get("concurrency") or 1
    if debug:  # submitit's DebugExecutor equivalent: in-process, exceptions propagate
        for index in todo:
            run_item(str(rd.root), plan.stage.name, index, progress=progress.update)
        return
    if ranks == 1 and concurrency == 1:
        for index in todo:
            start = time.time()
            try:
                run_item(str(rd.root), plan.stage.name, index, progress=progress.update)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as err:  # noqa: BLE001
                path = _log_path(rd, plan.stage.name, plan.items[index].key)
                path.write_text(traceback.format_exc())
                raise _failed(plan, index, rd, f"{type(err).__name__}: {err}") from None
            progress.item_done(plan.items[index].key, time.time() - start)
        return
    running: dict[int, tuple[list[subprocess.Popen], float]] = {}
    queue = list(todo)
    try:
        while queue or running:
            while queue and len(running) < concurrency:
                index = queue.pop(0)
                running[index] = (_spawn(rd, plan, index, ranks), time.time())
            time.sleep(0.2)
            for index, (procs, start) in list(running.items()):
                codes = [p.poll() for p in procs]
                if any(c not in (None, 0) for c in codes):
                    for p in procs:
                        p.kill()
                    raise _failed(plan, index, rd, f"exit codes {codes}")
                if all(c == 0 for c in codes):
                    del running[index]
                    progress.item_done(plan.items[index].key, time.time() - start)
    finally:
        for procs, _ in running.values():
            for p in procs:
                if p.poll() is None:
                    p.terminate()


def run_local(rd: RunDir, plans: list[StagePlan], debug: bool = False) -> None:
    rd.append_state({"event": "local-run", "stages": [p.stage.name for p in plans]})
    for plan in plans:
        run_stage(rd, plan, debug)
    rd.append_state({"event": "local-finished"})
