"""Kill-anywhere: SIGKILL a local run at seeded points spread over every stage, resume it, and
compare the result bit-for-bit with an uninterrupted reference run.

    .venv/bin/python benchmarks/kill_anywhere/run.py --trials 30 --seed 0 --out RESULTS.md

One uninterrupted reference run measures each stage's window (from the end of the previous
stage's last item to the end of its own, read from the `[stage] k/n done` progress lines).
Trial t aims at stage STAGES[t % len(STAGES)] and a uniform offset inside that window, drawn
from (seed, t). That point is re-expressed as "d seconds after output line X" (X the last
line the reference had printed by then, with timings and paths blanked; process start before
the first), and the trial waits for X in its own run before counting d, so a stage that takes
30 ms in the reference is still hit on a loaded machine where absolute times drift by seconds.
The stage actually killed in is then read from the markers, not assumed.

Per trial the submit runs in its own session; the whole process group gets SIGKILL. Every
`*.done` marker present at the kill is recorded with the size and sha256 of the files it
vouches for; then `submit --resume` (or, when the kill came before the run directory existed,
a fresh submit to the same path) finishes the run, and the driver checks: finished items not
lost, not corrupted, not redone; distilled images/labels/ipc_index, every soft-label dataset,
every student's metrics (timing fields ignored) and every teacher tensor identical to the
reference; and how many `.tmp-` files were left behind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONFIG = HERE / "tiny.yaml"
STAGES = ("squeeze", "recover", "collect", "relabel", "train", "report")
DONE_LINE = re.compile(r"^\[(\w+)\] (\d+)/(\d+) (?:already )?done")
PROGRESS_LINE = re.compile(r"^\[\w+\] \d+/\d+ \|")  # throttled by wall time: not an anchor
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def line_key(line: str, run_dir: Path) -> str:
    """A line with the run's path and every number blanked (timings, rates and ETAs differ
    between runs); the occurrence count of the key tells repeated lines apart."""
    return NUMBER.sub("#", line.replace(str(run_dir), "RUN"))


TIMING_KEYS = ("seconds", "time", "wall", "elapsed")  # metrics fields that differ run to run
REPORT_OUTPUTS = ("report.md", "report.json", "diversity.json", "diversity_features.npz")


# ---------------------------------------------------------------- running prism-hpc


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
    arrive; `stage_end[s]` is when stage s reported its last item done."""

    def __init__(self, launch: Launch, args: list[str], log: Path, run_dir: Path):
        self.start = time.monotonic()
        self.run_dir = run_dir
        self.proc = subprocess.Popen(
            launch.cmd + args, env=launch.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=REPO,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self.stage_end: dict[str, float] = {}
        self.item_end: dict[tuple[str, int], float] = {}  # ("recover", 2): 2nd item done
        self.events: dict[tuple[str, int], float] = {}  # (line key, occurrence) -> time
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
                match = DONE_LINE.match(line)
                if match:
                    stage, k, n = match.group(1), int(match.group(2)), int(match.group(3))
                    self.item_end.setdefault((stage, k), now)
                    if k == n:
                        self.stage_end.setdefault(stage, now)
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


# ---------------------------------------------------------------- markers and their files


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_of(rel: Path) -> str:
    """The stage a marker belongs to, from where it lives (DESIGN §3)."""
    if rel == Path("distilled.done"):
        return "collect"
    top = rel.parts[0]
    return {"teachers": "squeeze", "students": "train"}.get(top, top)


def outputs_of(run: Path, marker: Path, payload: Any) -> list[Path]:
    """The files a marker vouches for: its `outputs` record when it has one (paths relative
    to the run), else by layout (`NAME.done` next to `NAME.*`; a student's `.done` for its
    folder; the report's files)."""
    if isinstance(payload, dict) and payload.get("outputs"):
        names = payload["outputs"]
        names = [n.get("path", "") if isinstance(n, dict) else str(n) for n in names]
        found = []
        for name in filter(None, names):
            for base in (run, marker.parent):
                if (base / name).is_file():
                    found.append(base / name)
                    break
        return found
    rel = marker.relative_to(run)
    if stage_of(rel) == "report":
        found = [run / n for n in REPORT_OUTPUTS if (run / n).is_file()]
        if (run / "figures").is_dir():
            found += sorted(p for p in (run / "figures").iterdir() if p.is_file())
        return found
    if marker.name == ".done":
        return sorted(p for p in marker.parent.iterdir() if p.is_file() and p != marker)
    stem = marker.name[: -len(".done")]
    return sorted(p for p in marker.parent.glob(f"{stem}.*") if p.is_file() and p != marker)


def _name(run: Path, path: Path) -> str:
    """Relative to the run; as given for a file outside it (a user's teacher weights)."""
    try:
        return str(path.relative_to(run))
    except ValueError:
        return str(path)


def snapshot(run: Path) -> dict[str, dict[str, Any]]:
    """Every marker in the run: its identity (inode, mtime, sha256) and its files' sizes and
    sha256, keyed by the marker's path relative to the run."""
    result: dict[str, dict[str, Any]] = {}
    if not run.is_dir():
        return result
    for marker in sorted(run.rglob("*.done")):
        if not marker.is_file() or "logs" in marker.relative_to(run).parts:
            continue
        st = marker.stat()
        try:
            payload = json.loads(marker.read_text())
        except (OSError, ValueError):
            payload = None
        files = {
            _name(run, p): {"bytes": p.stat().st_size, "sha256": sha256(p)}
            for p in outputs_of(run, marker, payload)
        }
        result[str(marker.relative_to(run))] = {
            "inode": st.st_ino, "mtime_ns": st.st_mtime_ns, "sha256": sha256(marker),
            "id": payload.get("id") if isinstance(payload, dict) else None, "files": files,
        }  # fmt: skip
    return result


def stale_tmp(run: Path) -> list[str]:
    """`.tmp-` leftovers inside the run and temporary siblings of the run directory."""
    left = [str(p.relative_to(run)) for p in run.rglob("*.tmp-*")] if run.is_dir() else []
    if run.parent.is_dir():
        left += [p.name for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.tmp")]
    return sorted(left)


def stage_at(markers: dict[str, Any], counts: dict[str, int]) -> str:
    """The first stage (in pipeline order) with fewer markers than the reference has."""
    have: dict[str, int] = {}
    for rel in markers:
        stage = stage_of(Path(rel))
        have[stage] = have.get(stage, 0) + 1
    for stage in STAGES:
        if have.get(stage, 0) < counts.get(stage, 0):
            return stage
    return "(finished)"


def check_finished(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    """Markers present at the kill, after resume: lost (marker or a file gone), redone (a new
    marker `id`; without ids, a rewritten marker file), corrupt (not redone, yet its files or,
    without ids, the marker itself changed). Re-sealing a marker under the same id (fresh
    mtimes, same content) is neither."""
    lost, corrupt, redone = [], [], []
    for rel, was in before.items():
        now = after.get(rel)
        if now is None:
            lost.append(rel)
            continue
        if was["id"] is not None:
            rewritten = now["id"] != was["id"]
        else:
            rewritten = (now["inode"], now["mtime_ns"]) != (was["inode"], was["mtime_ns"])
        if rewritten:
            redone.append(rel)
        lost += [f"{rel}: {f}" for f in was["files"] if f not in now["files"]]
        if rewritten:
            continue
        changed = [f for f, rec in was["files"].items() if now["files"].get(f) not in (None, rec)]
        if was["id"] is None and now["sha256"] != was["sha256"]:
            changed.insert(0, rel)
        corrupt += [f"{rel}: {f}" for f in changed]
    return {"lost": lost, "corrupt": corrupt, "redone": redone}


# ---------------------------------------------------------------- comparison with the reference


def _h5_datasets(path: Path) -> dict[str, Any]:
    import h5py
    import numpy as np

    out: dict[str, Any] = {}
    with h5py.File(path, "r") as fh:

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()])

        fh.visititems(visit)
    return out


def _same_array(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _strip_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items()
                if not any(t in k.lower() for t in TIMING_KEYS)}  # fmt: skip
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def compare_runs(ref: Path, run: Path) -> list[str]:
    """Names of everything that differs from the reference (empty: bit-identical)."""
    import torch

    diffs: list[str] = []
    ref_markers = {str(p.relative_to(ref)) for p in ref.rglob("*.done") if "logs" not in p.parts}
    run_markers = {str(p.relative_to(run)) for p in run.rglob("*.done")} if run.is_dir() else set()
    diffs += [f"missing marker {m}" for m in sorted(ref_markers - run_markers)]
    diffs += [f"extra marker {m}" for m in sorted(run_markers - ref_markers)]

    def pairs(pattern: str) -> list[tuple[Path, Path]]:
        found = []
        for r in sorted(ref.glob(pattern)):
            other = run / r.relative_to(ref)
            if not other.is_file():
                diffs.append(f"missing {r.relative_to(ref)}")
            else:
                found.append((r, other))
        return found

    for r, o in pairs("distilled.h5"):
        a, b = _h5_datasets(r), _h5_datasets(o)
        for name in ("images", "labels", "ipc_index"):
            if name not in a or name not in b or not _same_array(a[name], b[name]):
                diffs.append(f"distilled.h5:{name}")
    for r, o in pairs("relabel/*.h5"):
        a, b = _h5_datasets(r), _h5_datasets(o)
        rel = r.relative_to(ref)
        diffs += [f"{rel}:{n}" for n in sorted(set(a) | set(b))
                  if n not in a or n not in b or not _same_array(a[n], b[n])]  # fmt: skip
    for r, o in pairs("students/*/*/metrics.json"):
        a = _strip_timing(json.loads(r.read_text()))
        b = _strip_timing(json.loads(o.read_text()))
        if a != b:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            diffs.append(f"{r.relative_to(ref)}:{','.join(keys)}")
    for r, o in pairs("teachers/*.pt"):
        a = torch.load(r, weights_only=True, map_location="cpu")
        b = torch.load(o, weights_only=True, map_location="cpu")
        rel = r.relative_to(ref)
        for name in sorted(set(a) | set(b)):
            x, y = a.get(name), b.get(name)
            if x is None or y is None or not _same_array(x.numpy(), y.numpy()):
                diffs.append(f"{rel}:{name}")
    return diffs


# ---------------------------------------------------------------- reference and trials


@dataclass
class Reference:
    run: Path
    seconds: float
    windows: dict[str, tuple[float, float]]  # stage -> (start, end), s since process start
    counts: dict[str, int]  # stage -> markers at the end
    events: list[tuple[tuple[str, int], float]]  # every anchor line, in order, with time

    def anchor(self, stage: str, offset: float) -> tuple[list[tuple[str, int]], float]:
        """The point `offset` s into `stage`'s window, as (the last output line before it and
        the lines after it, seconds after that line): a trial waits for that line (or, if it
        never comes, the next one that does) in its own run, then for the rest."""
        at = self.windows[stage][0] + offset
        first, start = 0, 0.0
        for i, (_, when) in enumerate(self.events):
            if when > at:
                break
            first, start = i, when
        if start == 0.0:  # before the first line: count from process start
            return [], at
        return [event for event, _ in self.events[first:]], at - start


def run_reference(launch: Launch, config: Path, work: Path) -> Reference:
    run = work / "reference"
    watched = submit(launch, run, config, work / "reference.log")
    rc = watched.finish()
    if rc != 0:
        raise SystemExit(f"kill-anywhere: the reference run failed (exit {rc}): {watched.tail()}")
    windows, start = {}, 0.0
    for stage in STAGES:
        if stage in watched.stage_end:
            windows[stage] = (start, watched.stage_end[stage])
            start = watched.stage_end[stage]
    counts: dict[str, int] = {}
    for rel in snapshot(run):
        counts[stage_of(Path(rel))] = counts.get(stage_of(Path(rel)), 0) + 1
    seconds = watched.lines[-1][0] if watched.lines else 0.0
    events = sorted(watched.events.items(), key=lambda e: e[1])
    return Reference(run, seconds, windows, counts, events)


@dataclass
class Trial:
    trial: int
    aimed: str
    offset: float  # seconds into the aimed stage's window
    kill_at: float | None = None  # seconds since the trial's start; None: it ended first
    stage: str = ""  # stage killed in, read from the markers
    run_dir_existed: bool = False
    config_at_kill: bool = False  # the run directory had its config.yaml
    finished: int = 0  # markers present at the kill
    tmp_at_kill: int = 0
    resume: str = ""  # "resume", "fresh submit" or "none"
    resume_rc: int = 0
    resume_error: str = ""
    lost: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    stale_tmp: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything this benchmark guarantees (stale temp files are reported apart)."""
        return not (self.resume_rc or self.lost or self.corrupt or self.redone
                    or self.differences)  # fmt: skip


def draw(seed: int, trial: int, stages: list[str], ref: Reference) -> tuple[str, float]:
    """Round-robin stage, uniform offset in its reference window, from (seed, trial)."""
    stage = stages[trial % len(stages)]
    start, end = ref.windows[stage]
    rng = random.Random(f"kill-anywhere:{seed}:{trial}")
    return stage, rng.uniform(0.0, end - start)


def run_trial(launch: Launch, config: Path, ref: Reference, work: Path, trial: int,
              stage: str, offset: float) -> Trial:  # fmt: skip
    result = Trial(trial, stage, round(offset, 3))
    run = work / f"trial_{trial:03d}"
    watched = submit(launch, run, config, work / f"trial_{trial:03d}.log")
    events, rest = ref.anchor(stage, offset)
    anchor = watched.wait_for(events)
    if anchor is not None:
        delay = watched.start + anchor + rest - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if watched.kill_group():
            result.kill_at = round(time.monotonic() - watched.start, 3)
    rc = watched.finish()
    killed = result.kill_at is not None
    at_kill = snapshot(run)
    result.run_dir_existed = run.is_dir()
    result.config_at_kill = (run / "config.yaml").is_file()
    result.finished = len(at_kill)
    result.tmp_at_kill = len(stale_tmp(run))
    result.stage = stage_at(at_kill, ref.counts) if killed else "(finished)"
    if not killed and rc != 0:
        result.resume, result.resume_rc = "none", rc
        result.resume_error = f"uninterrupted run failed: {watched.tail()}"
        return result
    if killed:
        fresh = not run.exists()
        result.resume = "fresh submit" if fresh else "resume"
        log = work / f"trial_{trial:03d}.resume.log"
        again = submit(launch, run, config if fresh else None, log)
        result.resume_rc = again.finish()
        if result.resume_rc:
            result.resume_error = again.tail()
    else:
        result.resume = "none"
    after = snapshot(run)
    checked = check_finished(at_kill, after)
    result.lost, result.corrupt = checked["lost"], checked["corrupt"]
    result.redone = checked["redone"]
    result.differences = compare_runs(ref.run, run)
    result.stale_tmp = stale_tmp(run)
    return result


# ---------------------------------------------------------------- the table


def _cell(items: list[str], limit: int = 3) -> str:
    if not items:
        return "0"
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return f"**{len(items)}**: {shown}"


def table(trials: list[Trial]) -> str:
    head = ("| trial | aimed at | killed in | kill at (s) | run dir at kill | finished at kill "
            "| redone | lost/corrupt | differences after resume | stale tmp left | continued by |")  # fmt: skip
    rows = [head, "|" + "---|" * 11]
    for t in trials:
        kill = f"{t.kill_at:.2f} (+{t.offset:.2f})" if t.kill_at is not None else "not killed"
        how = t.resume + (f" **exit {t.resume_rc}**: {t.resume_error}" if t.resume_rc else "")
        made = "no" if not t.run_dir_existed else "yes" if t.config_at_kill else "no config.yaml"
        rows.append(
            f"| {t.trial} | {t.aimed} | {t.stage} | {kill} | {made} "
            f"| {t.finished} | {_cell(t.redone)} | {_cell(t.lost + t.corrupt)} "
            f"| {_cell(t.differences)} | {_cell(t.stale_tmp)} | {how} |"
        )
    return "\n".join(rows)


def summary(trials: list[Trial], ref: Reference) -> str:
    by_stage: dict[str, int] = {}
    for t in trials:
        by_stage[t.stage] = by_stage.get(t.stage, 0) + 1
    spread = ", ".join(f"{s} {by_stage[s]}" for s in (*STAGES, "(finished)") if s in by_stage)
    windows = ", ".join(f"{s} {b:.1f}-{e:.1f}" for s, (b, e) in ref.windows.items())
    lines = [
        f"- trials: {len(trials)}; killed in: {spread}",
        f"- reference run: {ref.seconds:.1f} s; stage windows (s): {windows}",
        f"- kills before the run directory existed: {sum(not t.run_dir_existed for t in trials)}",
        f"- finished items at the kill: {sum(t.finished for t in trials)} in all",
        f"- lost or corrupt finished items: {sum(len(t.lost) + len(t.corrupt) for t in trials)}",
        f"- finished items redone: {sum(len(t.redone) for t in trials)}",
        f"- trials with differences after resume: {sum(bool(t.differences) for t in trials)}",
        f"- failed continuations (nonzero exit): {sum(bool(t.resume_rc) for t in trials)}",
        (
            f"- trials leaving stale `.tmp-` files: {sum(bool(t.stale_tmp) for t in trials)} "
            f"({sum(len(t.stale_tmp) for t in trials)} files; reported, not counted as failures)"
        ),
        (
            f"- result: {'PASS' if all(t.ok for t in trials) else 'FAIL'} "
            f"({sum(t.ok for t in trials)}/{len(trials)} trials clean)"
        ),
    ]
    return "\n".join(lines)


def git_sha() -> str:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    sha = git("rev-parse", "HEAD") or "unknown"
    return sha + (
        " (checkout with uncommitted changes)"
        if git("status", "--porcelain", "--untracked-files=no", "prism_hpc")
        else ""
    )


def export_commit(commit: str, dest: Path) -> str:
    """Unpack `commit`'s tree into dest (read-only for the repo: git archive); return its SHA."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()  # fmt: skip
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", sha], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return sha


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--stages", default=",".join(STAGES),
                   help="stages to aim at, round-robin (default: all six)")  # fmt: skip
    p.add_argument("--out", type=Path, help="markdown file for the table (default: stdout only)")
    p.add_argument("--json", type=Path, help="also write every trial's record as JSON")
    p.add_argument("--work", type=Path, help="folder for the runs (default: a new temp folder)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every run")
    p.add_argument("--commit", help="run this commit's code (git archive) instead of the checkout")
    p.add_argument("--keep", action="store_true", help="keep clean trials' run directories")
    p.add_argument("--max-minutes", type=float,
                   help="start no new trial after this long; the table has the trials done")  # fmt: skip
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown or args.trials < 1:
        p.error(f"--stages: unknown {unknown} (known: {', '.join(STAGES)})" if unknown
                else "--trials must be >= 1")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the reference and the trials; print (and write) the table. Exit 0 only when every
    trial lost nothing, corrupted nothing, redid nothing and ended bit-identical."""
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-anywhere-"))
    work.mkdir(parents=True, exist_ok=True)
    src, sha = None, git_sha()
    if args.commit:
        sha = export_commit(args.commit, work / "src")
        src = work / "src"
    launch = make_launch(args.threads, src)
    began = time.time()
    ref = run_reference(launch, args.config.resolve(), work)
    missing = [s for s in args.stages if s not in ref.windows]
    if missing:
        raise SystemExit(f"kill-anywhere: stage(s) {missing} did not run in the reference")
    trials = []
    for t in range(args.trials):
        if t and args.max_minutes and time.time() - began > 60 * args.max_minutes:
            print(f"--max-minutes {args.max_minutes}: stopping after {t} trial(s)", flush=True)
            break
        stage, offset = draw(args.seed, t, args.stages, ref)
        result = run_trial(launch, args.config.resolve(), ref, work, t, stage, offset)
        trials.append(result)
        print(f"trial {t}: aimed {stage} +{offset:.2f} s, killed in {result.stage}, "
              f"{result.finished} finished, {'ok' if result.ok else 'FAIL'}", flush=True)  # fmt: skip
        run = work / f"trial_{t:03d}"
        if result.ok and not args.keep and run.exists():
            shutil.rmtree(run)  # a student checkpoint is tens of MB per trial
    command = "benchmarks/kill_anywhere/run.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = "\n".join([
        (
            f"Code: `{sha}`; command: `.venv/bin/python {command}`; "
            f"{args.threads} thread(s) per run; config `{args.config.name}`; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))}, "
            f"{(time.time() - began) / 60:.1f} min; work folder `{work}`."
        ),
        "",
        summary(trials, ref),
        "",
        table(trials),
        "",
    ])  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({
            "sha": sha, "windows": ref.windows, "counts": ref.counts,
            "trials": [asdict(t) | {"ok": t.ok} for t in trials],
        }, indent=1))  # fmt: skip
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
