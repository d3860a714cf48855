"""`sweep --jobs N`: the points as child `prism-hpc submit` processes, N side by side.

With the local backend a submit runs its stages in the foreground, so a sweep of many small
runs would use one run's worth of the machine at a time. Here each point is its own process
(its output in `FOLDER/<point>.log`, appended per attempt); `first:` points run alone and
before the rest, and if one fails nothing else starts. Each child gets `OMP_NUM_THREADS` /
`MKL_NUM_THREADS` = cores // N unless the environment sets them, so N runs share the cores
instead of each taking all of them. A failed point does not stop the others: the sweep goes on
and then exits 1 naming every failed point and its log. Ctrl-C or SIGTERM stops the children
(SIGTERM to each one's process group, SIGKILL after a grace period); rerunning resumes.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prism_hpc.errors import TaskFailed
from prism_hpc.hpc.backends.local import machine_cores
from prism_hpc.submission import Echo, SubmitRequest
from prism_hpc.sweep.book import SweepBook
from prism_hpc.sweep.spec import Point

STOP_GRACE_S = 20.0
POLL_S = 0.5


def submit_argv(req: SubmitRequest) -> list[str]:
    """The `prism-hpc submit` command line that makes the same request."""
    argv = [sys.executable, "-m", "prism_hpc.cli", "submit"]
    if req.resume is not None:
        argv += ["--resume", str(req.resume)]
    if req.config is not None:
        argv.append(str(req.config))
    if req.run_dir is not None:
        argv += ["--run-dir", str(req.run_dir)]
    for override in req.overrides:
        argv += ["--set", override]
    if req.backend:
        argv += ["--backend", req.backend]
    if req.stages:
        argv += ["--stages", ",".join(req.stages)]
    return argv


def child_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    share = str(max(1, machine_cores() // jobs))
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(key, share)
    return env


@dataclass
class Child:
    point: Point
    proc: subprocess.Popen
    started: float
    log: Path
    resume: bool


class Children:
    """The running children of one sweep invocation, and what became of the finished ones."""

    def __init__(self, folder: Path, book: SweepBook, echo: Echo, jobs: int):
        self.folder, self.book, self.echo, self.jobs = folder, book, echo, jobs
        self.running: list[Child] = []
        self.failed: list[Child] = []

    def start(self, req: SubmitRequest, point: Point, label: str) -> Child:
        log = self.folder / f"{point.name}.log"
        argv = submit_argv(req)
        with open(log, "a") as fh:  # the child keeps its own copy of the descriptor
            fh.write(f"$ {shlex.join(argv)}\n")
            fh.flush()
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                    env=child_env(self.jobs), start_new_session=True)  # fmt: skip
        child = Child(point, proc, time.time(), log, req.resume is not None)
        self.running.append(child)
        self.echo(f"[sweep] {label} {point.name}: {'resume' if child.resume else 'start'} "
                  f"(log {log})")  # fmt: skip
        return child

    def reap(self) -> list[Child]:
        """The children that exited since the last call, recorded."""
        ended = [c for c in self.running if c.proc.poll() is not None]
        for child in ended:
            self.running.remove(child)
            ok = child.proc.returncode == 0
            self.book.attempt(child.point.name, child.started, ok, child.log.name)
            self.book.state(child.point.name, ("resumed" if child.resume else "launched")
                            if ok else "failed")  # fmt: skip
            took = time.time() - child.started
            self.echo(f"[sweep] {child.point.name}: "
                      + ("done" if ok else f"FAILED (exit {child.proc.returncode})")
                      + f" in {took:.0f} s")  # fmt: skip
            if not ok:
                self.failed.append(child)
        return ended

    def stop(self) -> None:
        """SIGTERM to every child's process group (its item processes too), SIGKILL after
        the grace period. Safe at any moment: only a marker makes an item done."""
        for child in self.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.time() + STOP_GRACE_S
        for child in self.running:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        self.reap()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """`kill SWEEP_PID` stops the children like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _wait_all(children: Children) -> None:
    while children.running:
        time.sleep(POLL_S)
        children.reap()


def run_children(
    target, todo: list[Point], book: SweepBook, echo: Echo,
    request: Callable[[Point], SubmitRequest],
) -> None:  # fmt: skip
    """Run the `todo` points of `target` (a `SweepTarget`) as children, `target.jobs` at once."""
    every = target.spec.every
    children = Children(target.folder, book, echo, target.jobs)

    def label(p: Point) -> str:
        return f"{every.index(p) + 1}/{len(every)}"

    queue = [p for p in todo if p not in target.spec.first]
    try:
        with _sigterm_interrupts():
            for point in (p for p in todo if p in target.spec.first):
                children.start(request(point), point, label(point))
                _wait_all(children)
                if children.failed:
                    raise TaskFailed(f"sweep: first point {point.name} failed; nothing else "
                                     f"started; log: {children.failed[0].log}")  # fmt: skip
            while queue or children.running:
                while queue and len(children.running) < target.jobs:
                    point = queue.pop(0)
                    children.start(request(point), point, label(point))
                time.sleep(POLL_S)
                children.reap()
    except KeyboardInterrupt:
        echo("[sweep] interrupted: stopping the points in flight; rerun the sweep to continue")
        children.stop()
        raise
    if children.failed:
        named = "; ".join(f"{c.point.name} (log {c.log})" for c in children.failed)
        raise TaskFailed(f"sweep: {len(children.failed)} point(s) failed: {named}; rerun the "
                         "sweep to retry them")  # fmt: skip
