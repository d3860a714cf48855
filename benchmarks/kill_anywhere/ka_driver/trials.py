"""The reference run, the seeded draws, and one trial: run to a kill point, SIGKILL, record
the markers, continue, compare."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from .compare import compare_runs
from .launch import Launch, submit
from .markers import check_finished, snapshot, stage_at, stage_of, stage_windows, stale_tmp


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
    """One uninterrupted run; its stage windows come from its markers' times."""
    run = work / "reference"
    watched = submit(launch, run, config, work / "reference.log")
    rc = watched.finish()
    if rc != 0:
        raise SystemExit(f"kill-anywhere: the reference run failed (exit {rc}): {watched.tail()}")
    markers = snapshot(run)
    windows = stage_windows(markers, watched.started_wall)
    counts: dict[str, int] = {}
    for rel in markers:
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


@dataclass(frozen=True)
class Setup:
    """What every trial of one session shares."""

    launch: Launch
    config: Path
    ref: Reference
    work: Path


def run_trial(setup: Setup, trial: int, stage: str, offset: float) -> Trial:
    result = Trial(trial, stage, round(offset, 3))
    work = setup.work
    run = work / f"trial_{trial:03d}"
    watched = submit(setup.launch, run, setup.config, work / f"trial_{trial:03d}.log")
    events, rest = setup.ref.anchor(stage, offset)
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
    result.stage = stage_at(at_kill, setup.ref.counts) if killed else "(finished)"
    if not killed and rc != 0:
        result.resume, result.resume_rc = "none", rc
        result.resume_error = f"uninterrupted run failed: {watched.tail()}"
        return result
    if killed:
        fresh = not run.exists()
        result.resume = "fresh submit" if fresh else "resume"
        log = work / f"trial_{trial:03d}.resume.log"
        again = submit(setup.launch, run, setup.config if fresh else None, log)
        result.resume_rc = again.finish()
        if result.resume_rc:
            result.resume_error = again.tail()
    else:
        result.resume = "none"
    checked = check_finished(at_kill, snapshot(run))
    result.lost, result.corrupt = checked["lost"], checked["corrupt"]
    result.redone = checked["redone"]
    result.differences = compare_runs(setup.ref.run, run)
    result.stale_tmp = stale_tmp(run)
    return result
