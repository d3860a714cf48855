"""Local backend: the same stages, items and markers, run in the foreground on this machine.

Items run in this process one at a time (the default), or as child processes when a stage asks
for concurrency > 1 or several ranks per task (`resources.<stage>.tasks_per_node`, gloo on CPU).
A crash or kill loses at most the items in flight: finished items have their markers.

Concurrent items never share a GPU: each gets its own `CUDA_VISIBLE_DEVICES` group (DESIGN §5).
Without GPUs, ranks x concurrent items x threads never exceed the cores (4 gloo ranks on 2
cores made a 1-minute teacher take 14 with another job running): ranks and concurrency are
capped to the machine, each child gets `OMP_NUM_THREADS` = its share, and one line says so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from prism_hpc.config.schema import StageResources
from prism_hpc.errors import TaskFailed, UserError
from prism_hpc.hpc.executor import Executor, Run, register_executor
from prism_hpc.hpc.plan import StagePlan, write_plan
from prism_hpc.store import layout
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import StageRegistry


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


class LogTail:
    """The newest complete line a child process wrote to its log, for the terminal: items run
    as child processes (several ranks, or concurrency > 1) print nothing to it themselves, and
    a user watching a 4-rank student for an hour must see more than silence. Each item shows
    its first line at once, then at most one line every `every` seconds."""

    def __init__(self, path: Path, every: float = 10.0):
        self.path, self.every = path, every
        self._offset, self._rest, self._shown = 0, b"", -float("inf")
        self._pending: bytes | None = None  # the newest complete line not shown yet

    def latest(self) -> str | None:
        """The newest complete line not shown yet, if it is time to show one."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            data = b""
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        lines = [line for line in lines if line.strip()]
        if lines:
            self._pending = lines[-1]
        now = time.time()
        if self._pending is None or now - self._shown < self.every:
            return None
        line, self._pending, self._shown = self._pending, None, now
        return line.decode(errors="replace").strip()[:200]


def _log_path(rd: RunDir, stage: str, key: str, rank: int | None = None) -> Path:
    path = layout.task_log(rd.root, stage, key, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class LocalLayout:
    """How a stage's items map onto this machine."""

    ranks: int  # processes per item (torch.distributed world size)
    concurrency: int  # items at once
    threads: int  # intra-op threads per process
    gpu_groups: tuple[tuple[str, ...], ...]  # per concurrent slot, the devices it sees
    note: str | None  # one line when the request was capped


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """Device ids this process may use: `PRISM_LOCAL_GPUS` (a count, for tests and to limit
    a shared workstation), else `CUDA_VISIBLE_DEVICES`, else what `nvidia-smi -L` lists."""
    if os.environ.get("PRISM_LOCAL_GPUS"):
        return [str(i) for i in range(int(os.environ["PRISM_LOCAL_GPUS"]))]
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


def local_layout(ranks: int, concurrency: int, gpus: list[str], cores: int) -> LocalLayout:
    """Cap a stage's ranks and concurrency to the machine; disjoint GPU groups per slot."""
    want = (ranks, concurrency)
    if gpus:
        ranks = min(ranks, len(gpus))
        concurrency = max(1, min(concurrency, len(gpus) // ranks))
        groups = tuple(tuple(gpus[k * ranks : (k + 1) * ranks]) for k in range(concurrency))
        where = f"{len(gpus)} GPU(s)"
    else:
        ranks = min(ranks, cores)
        concurrency = max(1, min(concurrency, cores // ranks))
        groups = ()
        where = f"{cores} core(s), no GPU"
    threads = max(1, cores // (ranks * concurrency))
    note = None
    if (ranks, concurrency) != want:
        note = (f"{want[0]} rank(s) x {want[1]} item(s) at once asked for, {where} here: "
                f"running {ranks} rank(s) x {concurrency} item(s), {threads} thread(s) each")  # fmt: skip
    return LocalLayout(ranks, concurrency, threads, groups, note)


def _spawn(
    rd: RunDir, plan: StagePlan, index: int, layout: LocalLayout, slot: int
) -> list[subprocess.Popen]:
    from prism_hpc.hpc.distributed import free_port  # torch: only when running

    key = plan.items[index].key
    port = free_port()
    procs = []
    ranks = layout.ranks
    for rank in range(ranks):
        env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE", PYTHONUNBUFFERED="1")
        env.update(OMP_NUM_THREADS=str(layout.threads), MKL_NUM_THREADS=str(layout.threads))
        if layout.gpu_groups:  # this item's devices only; LOCAL_RANK indexes into them
            env["CUDA_VISIBLE_DEVICES"] = ",".join(layout.gpu_groups[slot])
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


def _failed(plan: StagePlan, index: int, rd: RunDir, detail: str, ranks: int = 1) -> TaskFailed:
    key = plan.items[index].key
    log = _log_path(rd, plan.stage.name, key, 0 if ranks > 1 else None)
    return TaskFailed(f"stage {plan.stage.name} item {index} ({key}) failed: {detail}; log: {log}")


def _ranks(plan: StagePlan) -> int:
    return plan.resources.get("tasks_per_node") or 1 if plan.stage.distributed else 1


def run_stage(rd: RunDir, plan: StagePlan, registry: StageRegistry, debug: bool = False) -> None:
    from prism_hpc.hpc.task import run_item  # torch: only when running

    todo = [i.index for i in plan.items if not plan.stage.is_done(rd.root, i)]
    progress = Progress(plan.stage.name, len(plan.items), len(plan.items) - len(todo))
    if not plan.items:
        return
    if not todo:
        print(f"[{plan.stage.name}] {len(plan.items)}/{len(plan.items)} already done", flush=True)
        return
    layout = local_layout(
        _ranks(plan), plan.resources.get("concurrency") or 1, visible_gpus(), machine_cores()
    )
    if layout.note:
        print(f"[{plan.stage.name}] {layout.note}", flush=True)
    ranks, concurrency = layout.ranks, layout.concurrency
    if debug:  # submitit's DebugExecutor equivalent: in-process, exceptions propagate
        for index in todo:
            run_item(str(rd.root), plan.stage.name, index, progress.update, registry)
        return
    if ranks == 1 and concurrency == 1:
        for index in todo:
            start = time.time()
            try:
                run_item(str(rd.root), plan.stage.name, index, progress.update, registry)
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as err:  # noqa: BLE001
                path = _log_path(rd, plan.stage.name, plan.items[index].key)
                try:
                    path.write_text(traceback.format_exc())
                except OSError as log_err:  # a full disk fails the task and its log alike
                    raise TaskFailed(
                        f"stage {plan.stage.name} item {index} ({plan.items[index].key}) failed: "
                        f"{type(err).__name__}: {err}; its log could not be written either "
                        f"({log_err.strerror})"
                    ) from None
                raise _failed(plan, index, rd, f"{type(err).__name__}: {err}") from None
            progress.item_done(plan.items[index].key, time.time() - start)
        return
    running: dict[int, tuple[list[subprocess.Popen], float, int]] = {}
    tails: dict[int, LogTail] = {}
    queue = list(todo)
    try:
        while queue or running:
            while queue and len(running) < concurrency:
                index = queue.pop(0)
                slot = min(set(range(concurrency)) - {r[2] for r in running.values()})
                running[index] = (_spawn(rd, plan, index, layout, slot), time.time(), slot)
                key = plan.items[index].key
                tails[index] = LogTail(_log_path(rd, plan.stage.name, key, 0 if ranks > 1 else None))
            time.sleep(0.2)
            for index, (procs, start, _) in list(running.items()):
                codes = [p.poll() for p in procs]  # before the log: lines up to the exit count
                if (line := tails[index].latest()) is not None:
                    print(f"[{plan.stage.name}] {progress.done}/{progress.total} | "
                          f"{plan.items[index].key}: {line}", flush=True)  # fmt: skip
                if any(c not in (None, 0) for c in codes):
                    for p in procs:
                        p.kill()
                    raise _failed(plan, index, rd, f"exit codes {codes}", ranks)
                if all(c == 0 for c in codes):
                    del running[index]
                    progress.item_done(plan.items[index].key, time.time() - start)
    finally:
        for procs, _, _ in running.values():
            for p in procs:
                if p.poll() is None:
                    p.terminate()


def run_local(
    rd: RunDir, plans: list[StagePlan], registry: StageRegistry, debug: bool = False
) -> None:
    rd.append_state({"event": "local-run", "stages": [p.stage.name for p in plans]})
    for plan in plans:
        run_stage(rd, plan, registry, debug)
    rd.append_state({"event": "local-finished"})


def print_outputs(rd: RunDir, registry: StageRegistry) -> None:
    """What the stages say a finished run offers (`Stage.outputs`), those that exist."""
    print("outputs:")
    for label, path in registry.outputs(rd.root):
        if path.exists():
            print(f"  {label:14s} {path}")


def planned_layout(res: StageResources, concurrency: int) -> LocalLayout:
    """The layout `run_stage` will choose, as the cost estimate sees it before running: the
    stage's GPUs assumed present (the plan may be made on another machine), the cores of this
    one."""
    ranks = res.tasks_per_node or 1
    gpus = [str(k) for k in range(ranks * concurrency)] if res.gpus_per_node else []
    return local_layout(ranks, concurrency, gpus, machine_cores())


@register_executor
class LocalExecutor(Executor):
    """This machine, in the foreground: items one at a time in-process, or as child processes
    when a stage asks for concurrency or several ranks (capped to the machine)."""

    name = "local"
    auto_rank = 1  # wherever SLURM is not found
    in_process = False  # True: every item in this process, exceptions propagate

    @classmethod
    def found(cls) -> bool:
        return True

    def launch(self, run: Run) -> None:
        registry = run.registry.opened(run.rd.root)
        plans = self.plan(run.cfg, registry, run.only)
        write_plan(run.rd.plan, plans, registry.ref)
        run_local(run.rd, plans, registry, debug=self.in_process)
        print_outputs(run.rd, registry)

    def slots(self, res: StageResources, n_tasks: int) -> int:
        return planned_layout(res, res.concurrency or 1).concurrency

    def threads(self, res: StageResources) -> int:
        return planned_layout(res, res.concurrency or 1).threads
