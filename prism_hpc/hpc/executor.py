"""The one seam between a run and where it runs: `Executor`, and the registry of executors.

An executor plans a pipeline into arrays (`plan`), runs or submits them (`launch`), and says
how many of a stage's tasks run at once and with how many threads (`slots`, `threads`: the
cost estimate asks it, so no other module knows a backend's parallelism). Each backend is one
subclass, registered by name with `@register_executor`; the registry is also where the config's
`backend` names are checked (the config layer sits below this one and cannot know them) and
where `backend: auto` is resolved.

Small on purpose, after submitit's `core.Executor` and datatrove's `executor/base.py`: the
pipeline is handed in (`Run.registry`), never imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from prism_hpc.config.schema import Config, StageResources
from prism_hpc.errors import UserError
from prism_hpc.hpc.plan import StagePlan, make_plan
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import Capacity, StageRegistry

AUTO = "auto"


@dataclass(frozen=True)
class Run:
    """What an executor launches: a run directory, its config, the pipeline and, optionally,
    the stages to run (None: all of them)."""

    rd: RunDir
    cfg: Config
    registry: StageRegistry
    only: tuple[str, ...] | None = None
    canary: bool = True  # SLURM: a canary job per resource shape before the arrays


class Executor(Capacity):
    """Base class of every backend. Subclasses set `name` and implement `launch`, `slots` and
    `threads`; `plan` is shared."""

    name: ClassVar[str] = ""
    # `backend: auto` picks the found executor with the lowest rank; None: only when named
    auto_rank: ClassVar[int | None] = None

    @classmethod
    def found(cls) -> bool:
        """Whether this machine offers the backend without being asked (for `auto`)."""
        return False

    @classmethod
    def check_usable(cls) -> None:
        """Refuse (UserError) when the backend was named but cannot work here."""

    def max_array_size(self) -> int | None:
        """The largest array the backend accepts (None: the plan's default)."""
        return None

    def plan(
        self, cfg: Config, registry: StageRegistry, only: tuple[str, ...] | None = None
    ) -> list[StagePlan]:
        """Items -> arrays of the selected stages, with estimates priced on this executor."""
        return make_plan(cfg, registry.select(only), self.max_array_size(), self)

    def launch(self, run: Run) -> None:
        """Run (in the foreground) or submit (and return) the run's stages."""
        raise NotImplementedError

    def slots(self, res: StageResources, n_tasks: int) -> int:
        raise NotImplementedError

    def threads(self, res: StageResources) -> int:
        raise NotImplementedError


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(cls: type[Executor]) -> type[Executor]:
    """Class decorator: make `cls` the backend called `cls.name`."""
    if not cls.name or cls.name == AUTO:
        raise ValueError(f"executor {cls.__name__}: needs a name other than {AUTO!r}")
    EXECUTORS[cls.name] = cls
    return cls


def _builtin() -> dict[str, type[Executor]]:
    """The registry with the shipped backends imported (they register themselves)."""
    import prism_hpc.hpc.backends  # noqa: F401 - registration on import

    return EXECUTORS


def backend_names() -> list[str]:
    """The names a config's `backend` (or `--backend`) may take, `auto` first."""
    return [AUTO, *_builtin()]


def check_backend_name(name: str, config_file: str | Path | None = None) -> None:
    """One line naming the known backends when `name` is none of them; with `config_file`,
    worded like the config layer's errors (`FILE: backend = 'x': ...`)."""
    names = backend_names()
    if name in names:
        return
    if config_file is not None:
        raise UserError(
            f"{config_file}: backend = {name!r}: Input should be one of {', '.join(names)}"
        )
    raise UserError(f"backend {name!r}: expected one of {', '.join(names)}")


def executor_class(name: str) -> type[Executor]:
    """The class of backend `name`; `auto`: the found executor of lowest `auto_rank` (SLURM
    when `sbatch` is on PATH and `sinfo` answers, else the local machine)."""
    check_backend_name(name)
    registry = _builtin()
    if name != AUTO:
        return registry[name]
    ranked = sorted((c for c in registry.values() if c.auto_rank is not None),
                    key=lambda c: c.auto_rank)  # fmt: skip
    for cls in ranked:
        if cls.found():
            return cls
    raise UserError(f"backend auto: none of {', '.join(c.name for c in ranked)} works here")


def executor_named(name: str) -> Executor:
    """The executor that `submit` launches with: checked to be usable on this machine."""
    cls = executor_class(name)
    cls.check_usable()
    return cls()
