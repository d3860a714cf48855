"""Running the benchmark: one `prism-hpc submit` per run, `--jobs` side by side, stoppable."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .specs import REPO, RunSpec
from .state import run_dir, status
from .timings import Timings, attempt_logs


def cli() -> list[str]:
    return [sys.executable, "-m", "prism_hpc.cli"]


def command(out: Path, spec: RunSpec, state: str, jobs: int) -> list[str]:
    rd = run_dir(out, spec)
    if state == "partial":
        cmd = [*cli(), "submit", "--resume", str(rd), "--backend", "local"]
    else:
        cmd = [
            *cli(),
            "submit",
            str(out / "configs" / f"{spec.name}.yaml"),
            "--run-dir",
            str(rd),
            "--backend",
            "local",
        ]
        if spec.group == "pool":
            cmd += ["--set", f"resources.squeeze.concurrency={jobs}"]
    if spec.group == "pool":
        cmd += ["--stages", "squeeze"]
    return cmd


class Runner:
    def __init__(self, out: Path, jobs: int, timings: Timings):
        self.out, self.jobs, self.timings = out, jobs, timings
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False
        self.failed: list[tuple[str, Path]] = []

    def env(self) -> dict[str, str]:
        # One intra-op thread per process (recover/train also fix it in the config): --jobs
        # runs share the cores, and results do not depend on how many ran side by side.
        return dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )

    def run(self, spec: RunSpec, progress: str) -> bool:
        if self.stopping:
            return False
        state = status(self.out, spec)
        if state == "done":
            return True
        if state == "changed":
            print(
                f"[bench] {spec.name}: config changed since the run started; refusing "
                f"(delete {run_dir(self.out, spec)} or use another --out)",
                flush=True,
            )
            self.failed.append((spec.name, run_dir(self.out, spec)))
            return False
        if state == "broken":  # created but never got its config.yaml: nothing to keep
            shutil.rmtree(run_dir(self.out, spec))
            state = "new"
        if state == "new":  # a fresh start: logs/timings of an earlier, deleted run go stale
            self.retire(spec.name)
        cmd = command(self.out, spec, state, self.jobs)
        k = len(attempt_logs(self.out, spec.name)) + 1
        log = self.out / "logs" / f"{spec.name}.attempt{k}.log"
        print(
            f"[bench] {progress} {spec.name}: {'resume' if state == 'partial' else 'start'} "
            f"(log {log.relative_to(self.out)})",
            flush=True,
        )
        start = time.time()
        with open(log, "w") as fh:
            fh.write("$ " + shlex.join(cmd) + "\n")
            fh.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=REPO,
                start_new_session=True,
            )
            with self.lock:
                self.procs.add(proc)
            rc = proc.wait()
            with self.lock:
                self.procs.discard(proc)
        wall = time.time() - start
        self.timings.attempt(
            spec.name,
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
                "wall_s": round(wall, 2),
                "rc": rc,
                "log": log.name,
                "resume": state == "partial",
            },
        )
        ok = rc == 0 and status(self.out, spec) == "done"
        outcome = "done" if ok else "stopped" if self.stopping else f"FAILED (exit {rc})"
        print(
            f"[bench] {spec.name}: {outcome} in {wall:.0f} s",
            flush=True,
        )
        if not ok and not self.stopping:
            self.failed.append((spec.name, log))
        return ok

    def retire(self, name: str) -> None:
        stale = self.out / "logs" / "stale"
        logs = attempt_logs(self.out, name)
        if logs:
            stale.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for log in logs:
                log.rename(stale / f"{stamp}-{log.name}")
        self.timings.retire(name)

    def stop(self) -> None:
        """Stop our own children: SIGTERM to each one's process group (each submit runs in its
        own session, with the item processes it spawns), SIGKILL after 20 s. Safe at any moment:
        outputs are written atomically and only a marker makes an item done."""
        self.stopping = True
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 20
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def run_all(out: Path, specs: list[RunSpec], jobs: int, timings: Timings) -> list[tuple[str, Path]]:
    runner = Runner(out, jobs, timings)
    pool, runs = specs[0], specs[1:]
    ex = None
    try:
        if not runner.run(pool, "[pool]"):
            print("[bench] the teacher pool failed; nothing else can run", flush=True)
            return runner.failed or [("pool", out / "logs")]
        total = len(runs)
        ex = ThreadPoolExecutor(max_workers=jobs)
        futures = [ex.submit(runner.run, s, f"[{i + 1}/{total}]") for i, s in enumerate(runs)]
        for f in futures:
            while True:  # poll so that Ctrl-C / SIGTERM reach this thread
                try:
                    f.result(timeout=0.5)
                    break
                except TimeoutError:
                    continue
    except KeyboardInterrupt:
        print(
            "\n[bench] interrupted: stopping the runs in flight; rerun the same command to "
            "continue (finished items are kept)",
            flush=True,
        )
        runner.stop()  # no new runs start; ours get SIGTERM (SIGKILL after 20 s)
        raise
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
    return runner.failed


def sigterm_handler(signum, frame):
    """`kill PID` stops the runs like Ctrl-C (run_all's KeyboardInterrupt path)."""
    raise KeyboardInterrupt


def print_dry_run(out: Path, specs: list[RunSpec], jobs: int) -> None:
    """`--dry-run`: every run, its state and the exact command it would get; nothing written."""
    for s in specs:
        state = status(out, s) if out.exists() else "new"
        cmd = "-" if state in ("done", "changed") else shlex.join(command(out, s, state, jobs))
        print(f"{s.name:34s} {state:8s} {cmd}")


def run_session(
    out: Path, mode_name: str, specs: list[RunSpec], jobs: int, argv: list[str]
) -> tuple[list[tuple[str, Path]] | None, Timings, float]:
    """Write OUT/configs, run every spec (the pool first), record the driver session in
    timings.json. Returns (failed runs, or None if interrupted; the timings; the start time).
    Shared by both Fashion-MNIST benchmarks' run.py."""
    import yaml

    for sub in ("configs", "logs", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for s in specs:
        path = out / "configs" / f"{s.name}.yaml"
        text = yaml.safe_dump(s.config, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    timings = Timings(out / "timings.json")
    signal.signal(signal.SIGTERM, sigterm_handler)  # `kill PID` stops the runs like Ctrl-C
    start = time.time()
    load0 = os.getloadavg()[0]
    try:
        failed = run_all(out, specs, jobs, timings)
    except KeyboardInterrupt:
        timings.session({"mode": mode_name, "wall_s": round(time.time() - start, 1),
                         "interrupted": True, "loadavg_start": load0})  # fmt: skip
        return None, timings, start
    timings.session({"mode": mode_name, "wall_s": round(time.time() - start, 1),
                     "loadavg_start": load0, "loadavg_end": os.getloadavg()[0], "jobs": jobs,
                     "argv": argv})  # fmt: skip
    return failed, timings, start
