"""The seam between the science and the cluster: every stage has the same small interface.

It sits low in the layers so that both sides import it and neither imports the other: the
stages implement it; the cluster layer (`hpc`, above the stages as in DESIGN.md §2) is handed
the pipeline as a `StageRegistry` (by the CLI, and on a node through the registry's import
path recorded in `plan.json`), so `hpc` never imports PRISM code and never knows what a slice
or a student is.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_hpc.config.schema import Config, StageResources
from prism_hpc.errors import UserError


@dataclass(frozen=True)
class Item:
    """One array index of a stage. `key` is stable and human-readable (file names, logs)."""

    stage: str
    index: int
    key: str
    payload: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "index": self.index, "key": self.key, "payload": self.payload}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        return cls(data["stage"], data["index"], data["key"], data.get("payload", {}))


def _print(message: str) -> None:
    print(message, flush=True)


def _cpu():
    import torch  # only tasks need torch; planning and status do not

    return torch.device("cpu")


@dataclass
class TaskEnv:
    """Where and how an item runs: set up by the backend, read by the stage."""

    run_dir: Path
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Any = field(default_factory=_cpu)  # torch.device
    log: Callable[[str], None] = _print
    progress: Callable[[dict[str, Any]], None] = lambda info: None
    # {upstream marker path: its id} snapshotted before the item ran; stages record it in
    # their marker, so a redone upstream item makes this one stale
    inputs: dict[str, str | None] = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Stage:
    """Base class: subclasses set `name`/`depends_on` and implement `items` and `run`.

    `run` must be idempotent and end by writing the item's marker (only rank 0 writes).

    A stage also declares its own scheduling policy (the attributes and the `outputs` /
    `progress` methods below), so that the cluster layer runs any pipeline without naming a
    stage: it asks the stage instead.
    """

    name: str = ""
    depends_on: tuple[str, ...] = ()
    distributed: bool = False  # True: all ranks of a task call `run` (torch.distributed)
    # a gate that must run when some upstream tasks failed, to say which (SLURM: afterany)
    runs_after_failed_dependencies: bool = False
    # its tasks save restart state often enough to be stopped and requeued before the limit
    checkpointable: bool = False
    # rendered once more as `eval_array.sbatch`, for plain-sbatch users (one per pipeline)
    serves_eval_array: bool = False
    # its outputs are what the pipeline is for: listed before every other stage's
    primary_output: bool = False

    def items(self, cfg: Config) -> list[Item]:
        raise NotImplementedError

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        raise NotImplementedError

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        # = store.layout.stage_marker, spelt here because workflow sits below store (the
        # layout test pins that the two agree)
        return Path(run_dir) / self.name / f"{item.key}.done"

    def markers(self, run_dir: Path, item: Item) -> list[Path]:
        """Every marker the item writes (most write one; an item of several slices one each)."""
        return [self.marker_path(run_dir, item)]

    def problems(self, run_dir: Path, item: Item, full: bool = False) -> list[str]:
        """Why the item is not (or no longer) done; [] when it is. This base version only asks
        for parseable markers; stages whose markers vouch for files override it to check them
        (cheaply, or hashing everything when `full`)."""
        found = []
        for path in self.markers(run_dir, item):
            if not path.exists():
                found.append(f"{path.name}: no marker")
                continue
            try:
                json.loads(path.read_text())
            except (OSError, ValueError):
                found.append(f"{path.name}: marker unreadable")
        return found

    def is_done(self, run_dir: Path, item: Item) -> bool:
        return not self.problems(run_dir, item)

    def restart_state(self, run_dir: Path, item: Item) -> list[Path]:
        """Files or folders a killed attempt leaves for the next one to continue from (a
        student's checkpoint, a slice's finished chunks). The task runner deletes them when the
        item's inputs were redone since they were written, or its finished files went bad."""
        return []

    def estimate(self, cfg: Config) -> dict[str, Any]:
        """Rough compute/storage numbers for `plan` (keys: gpu_hours, storage_gb, note). How
        many tasks run at once and with how many threads is the executor's to say: ask
        `capacity()`, never the backend's name."""
        return {}

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        """(label, path) of what a finished run offers a user from this stage; the local
        backends print those that exist after running."""
        return []

    def progress(self, run_dir: Path) -> dict[str, Any]:
        """Fields added to this stage's `status` row while it runs, read from small files its
        items write (no torch: `status` runs on login nodes); {} when there is nothing."""
        return {}

    def progress_lines(self, fields: dict[str, Any]) -> list[str]:
        """The lines `status` prints under its table for this stage's row."""
        return []


class Capacity:
    """What a cost estimate needs to know about where a stage's tasks run: how many run at
    once and how many CPU threads each gets. Executors (`prism_hpc.hpc`) are capacities;
    this base, the one used when no executor is planning, runs one task at a time on one
    thread (how a stage's cost reads on its own, e.g. in a test)."""

    name: str = ""

    def slots(self, res: StageResources, n_tasks: int) -> int:
        """Tasks of a stage with resources `res` (and `n_tasks` tasks) that run at once."""
        return 1

    def threads(self, res: StageResources) -> int:
        """Intra-op CPU threads one task of such a stage gets."""
        return 1


_CAPACITY: ContextVar[Capacity | None] = ContextVar("prism_hpc_capacity", default=None)


@contextmanager
def estimating(capacity: Capacity | None) -> Iterator[None]:
    """Estimates made inside price the tasks on `capacity` (what `capacity()` returns): a
    context rather than an argument, so that every `Stage.estimate(cfg)` keeps one signature."""
    token = _CAPACITY.set(capacity)
    try:
        yield
    finally:
        _CAPACITY.reset(token)


def capacity() -> Capacity:
    """The capacity estimates are being made for (see `estimating`)."""
    return _CAPACITY.get() or Capacity()


def array_item(plan_path: Path, stage: str, chunk: int, array_index: int) -> int:
    """Array task `array_index` of array `chunk` of `stage` -> item index, from `plan.json`
    (the one lookup: SLURM array indices never map to items by arithmetic). It lives here,
    low in the layers, because task entry points of every layer (the cluster layer's task
    runner, the students' evaluation array) need it."""
    try:
        entries = json.loads(Path(plan_path).read_text())
        entry = next(e for e in entries if e.get("stage") == stage)
        return int(entry["arrays"][chunk][array_index])
    except (OSError, ValueError, StopIteration, KeyError, IndexError, TypeError, AttributeError):
        raise UserError(f"{plan_path}: no {stage} array {chunk} task {array_index}") from None


_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class StageRegistry:
    """The pipeline as the cluster layer sees it: stages in order, and `ref`
    ("package.module:function") that rebuilds this registry in a task process."""

    stages: tuple[Stage, ...]
    ref: str
    # called once per process with the run directory before items are asked for (PRISM's
    # reads the run's data index, so no task or status call walks the data folder)
    open_run: Callable[[Path], None] | None = None
    # "package.module:function" of the canary check, called on a compute node with (run dir,
    # scratch folder) before the arrays (hpc/canary.py); None: the pipeline has none
    canary: str | None = None

    def opened(self, run_dir: Path) -> StageRegistry:
        if self.open_run is not None:
            self.open_run(Path(run_dir))
        return self

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def by_name(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise UserError(f"unknown stage '{name}' (stages: {self.names})")

    def outputs(self, run_dir: Path) -> list[tuple[str, Path]]:
        """Every stage's outputs: the primary ones first, then in pipeline order."""
        first = [s for s in self.stages if s.primary_output]
        rest = [s for s in self.stages if not s.primary_output]
        return [out for s in first + rest for out in s.outputs(Path(run_dir))]

    def select(self, names: Sequence[str] | None) -> list[Stage]:
        """The named stages in pipeline order (all when `names` is empty)."""
        if not names:
            return list(self.stages)
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise UserError(f"--stages: unknown stage(s) {unknown} (stages: {self.names})")
        return [s for s in self.stages if s.name in names]


def load_registry(ref: str) -> StageRegistry:
    """Import `module:function` and call it (how a task process gets its pipeline)."""
    if not isinstance(ref, str) or not _REF.match(ref):
        raise UserError(f"stage registry {ref!r}: expected 'package.module:function'")
    module, _, attr = ref.partition(":")
    registry = getattr(importlib.import_module(module), attr)()
    if not isinstance(registry, StageRegistry):
        raise UserError(f"stage registry {ref!r} did not return a StageRegistry")
    return registry
