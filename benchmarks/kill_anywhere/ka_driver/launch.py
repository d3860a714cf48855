"""Running `prism-hpc submit`: each run in its own session (one SIGKILL reaches every process
of it), its output lines timestamped as they arrive so a trial can anchor its kill on them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
REPO = HERE.parent.parent
PROGRESS_LINE = re.compile(r"^\[\w+\] \d+/\d+ \|")  # throttled by wall time: not an anchor
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def line_key(line: str, run_dir: Path) -> str:
    """A line with the run's path and every number blanked (timings, rates and ETAs differ
    between runs); the occurrence count of the key tells repeated lines apart. Lines are
    matched as text only: no number is ever read from them."""
    return NUMBER.sub("#", line.replace(str(run_dir), "RUN"))


@dataclass
class Launch:
    """How to start prism-hpc: the command, and the environment every run gets."""

    cmd: list[str]
    env: dict[str, str]


def make_launch(threads: int, src: Path | None) -> Launch:
    """The venv's prism-hpc; `src` (an exported commit) goes first on PYTHONPATH so the table
    comes from one fixed commit while others edit the checkout. Threads are pinned because
    CPU results are bit-identical only at a fixed intra-op thread count (FACTS B)."""
    exe = Path(sys.executable).parent / "prism-hpc"
    if not exe.is_file():
        exe = REPO / ".venv" / "bin" / "prism-hpc"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONUNBUFFERED"] = "1"
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return Launch([str(exe)], env)


class Watched:
    """A prism-hpc process in its own session whose output lines are timestamped as they
    arrive (`events`: (line key, occurrence) -> seconds since start). `started_wall` is the
    same start on the wall clock, the clock marker files' mtimes are on."""

    def __init__(self, launch: Launch, args: list[str], log: Path, run_dir: Path):
        self.started_wall = time.time()
        self.start = time.monotonic()
        self.run_dir = run_dir
        self.proc = subprocess.Popen(
            launch.cmd + args, env=launch.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self.events: dict[tuple[str, int], float] = {}
        self.changed = threading.Condition()
        self._log = open(log, "w")  # noqa: SIM115 (closed by the reader thread)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic() - self.start
            line = line.rstrip("\n")
            self._log.write(f"{now:8.3f} {line}\n")
            with self.changed:
                self.lines.append((now, line))
                if not PROGRESS_LINE.match(line):
                    key = line_key(line, self.run_dir)
                    seen = sum(1 for k, _ in self.events if k == key)
                    self.events[(key, seen)] = now
                self.changed.notify_all()
        self._log.close()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, events: list[tuple[str, int]]) -> float | None:
        """Seconds since start when output line events[0] (key, occurrence) appeared, or the
        first later one if this run printed something else there (0 for no events: the start);
        None if the process ended first."""
        if not events:
            return 0.0
        with self.changed:
            while True:
                for event in events:
                    if event in self.events:
                        return self.events[event]
                if not self._reader.is_alive():
                    return None
                self.changed.wait(0.05)

    def kill_group(self) -> bool:
        """SIGKILL the whole process group; False when the run had already exited."""
        if self.proc.poll() is not None:
            return False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def finish(self) -> int:
        rc = self.proc.wait()
        self._reader.join()
        return rc

    def tail(self) -> str:
        return self.lines[-1][1] if self.lines else ""


def submit(launch: Launch, run_dir: Path, config: Path | None, log: Path) -> Watched:
    """`submit CONFIG --run-dir RUN` (config given) or `submit --resume RUN`."""
    if config is not None:
        args = ["submit", str(config), "--run-dir", str(run_dir), "--backend", "local"]
    else:
        args = ["submit", "--resume", str(run_dir), "--backend", "local"]
    return Watched(launch, args, log, run_dir)
