"""Running a benchmark's sweep spec with the product's `prism-hpc sweep`, and OUT/sessions.json.

The benchmark itself starts no run: it hands OUT/sweep.yaml to `prism-hpc sweep --backend
local --jobs N`, which skips finished points by their markers, resumes started ones and runs
`--jobs` points side by side. Every process gets one intra-op thread (the configs fix
`cpu_threads: 1` too), so results do not depend on `--jobs`. OUT/sessions.json records each
invocation of the benchmark (wall time, load average, jobs, argv) for the report's header.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .runlist import RunSpec, sweep_folder, write_sweep

REPO = Path(__file__).resolve().parents[2]
INTERRUPTED = 130


def cli() -> list[str]:
    return [sys.executable, "-m", "prism_hpc.cli"]


def sweep_command(spec: Path, out: Path, jobs: int) -> list[str]:
    return [*cli(), "sweep", str(spec), "--out", str(sweep_folder(out)), "--backend", "local",
            "--jobs", str(jobs)]  # fmt: skip


def one_thread_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def dry_run(out: Path, name: str, specs: list[RunSpec], jobs: int) -> int:
    """`prism-hpc sweep --dry-run` on the spec written to a temporary folder: OUT stays as it
    is (nothing is created when it does not exist)."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = write_sweep(Path(tmp), name, specs)
        cmd = [*sweep_command(spec, out, jobs), "--dry-run"]
        return subprocess.run(cmd, cwd=REPO, env=one_thread_env(), check=False).returncode


def read_sessions(out: Path) -> list[dict]:
    try:
        return json.loads((out / "sessions.json").read_text())
    except (OSError, ValueError):
        return []


def _record(out: Path, entry: dict) -> None:
    path = out / "sessions.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([*read_sessions(out), entry], indent=1) + "\n")
    os.replace(tmp, path)


def run_sweep(out: Path, spec: Path, jobs: int, mode: str, argv: list[str]) -> int:
    """Run the spec to the end (or until interrupted: 130); its exit code otherwise. Ctrl-C
    reaches the sweep through the terminal; `kill PID` of the benchmark is passed on."""
    cmd = sweep_command(spec, out, jobs)
    print("[bench] $ " + " ".join(cmd), flush=True)
    start, load0 = time.time(), os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=REPO, env=one_thread_env())
    stopped = []

    def pass_on(signum, frame):
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, pass_on)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        stopped.append(signal.SIGINT)
        rc = proc.wait()  # the sweep got the same Ctrl-C and stops its children
    finally:
        signal.signal(signal.SIGTERM, old)
    rc = INTERRUPTED if stopped else rc
    entry = {"mode": mode, "wall_s": round(time.time() - start, 1), "loadavg_start": load0,
             "loadavg_end": os.getloadavg()[0], "jobs": jobs, "argv": argv, "rc": rc}  # fmt: skip
    _record(out, entry)
    return rc


def sweep_runs(
    out: Path, name: str, specs: list[RunSpec], jobs: int, mode: str, argv: list[str], tag: str
) -> tuple[int | None, int, list[str]]:
    """Refuse changed runs, run the sweep, name the runs that did not finish. Returns (exit
    code to stop with now, or None to go on to the report; the sweep's code; failed runs)."""
    from .runlist import changed_runs
    from .timing import run_states

    changed = changed_runs(out, specs)
    if changed:
        print(f"[{tag}] config changed since these runs started: {', '.join(changed)}; delete "
              "their run dirs or use another --out", file=sys.stderr)  # fmt: skip
        return 2, 2, []
    rc = run_sweep(out, write_sweep(out, name, specs), jobs, mode, argv)
    if rc == INTERRUPTED:
        print(f"[{tag}] interrupted: rerun the same command to continue", flush=True)
        return rc, rc, []
    states = run_states(out)
    return None, rc, [s.name for s in specs if states.get(s.name) != "done"] if rc else []
