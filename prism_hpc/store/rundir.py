"""The run directory (DESIGN §3): creation that never clobbers, provenance, append-only state."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from prism_hpc.config.load import dump_config
from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError
from prism_hpc.store import layout
from prism_hpc.store.atomic import atomic_write_text, host_tag, remove_stale_tmp
from prism_hpc.store.layout import (  # noqa: F401 - the students' names, for callers
    CKPT_NAME,
    DONE_NAME,
    EVAL_NAME,
    METRICS_NAME,
    PROGRESS_NAME,
    safe_arch,
    student_dir,
)

RUN_DIR_MODE = 0o750  # shared clusters: not world-readable/writable
PACKAGES = ("prism-hpc", "torch", "torchvision", "timm", "submitit", "h5py", "numpy", "pydantic")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return layout.config_file(self.root)

    @property
    def input_config(self) -> Path:
        return layout.input_config_file(self.root)

    @property
    def provenance(self) -> Path:
        return layout.provenance_file(self.root)

    @property
    def state(self) -> Path:
        return layout.state_file(self.root)

    @property
    def plan(self) -> Path:
        return layout.plan_file(self.root)

    @property
    def logs(self) -> Path:
        return layout.logs_dir(self.root)

    @property
    def slurm(self) -> Path:
        return layout.slurm_scripts_dir(self.root)

    @property
    def teachers(self) -> Path:
        return layout.teachers_dir(self.root)

    @property
    def recover(self) -> Path:
        return layout.recover_dir(self.root)

    @property
    def distilled(self) -> Path:
        return layout.distilled_file(self.root)

    @property
    def relabel(self) -> Path:
        return layout.relabel_dir(self.root)

    @property
    def students(self) -> Path:
        return layout.students_dir(self.root)

    @property
    def figures(self) -> Path:
        return layout.figures_dir(self.root)

    def load_config(self) -> Config:
        from prism_hpc.config.load import load_config

        if not self.config.is_file():
            raise UserError(f"{self.root}: not a run directory (no config.yaml)")
        return load_config(self.config)[0]

    # state.json: an append-only list of events (submissions, attempts, job ids)
    def read_state(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.state.read_text())
        except (OSError, ValueError):
            return []

    def append_state(self, event: dict[str, Any]) -> None:
        events = self.read_state()
        events.append({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **event})
        atomic_write_text(self.state, json.dumps(events, indent=1) + "\n")


def git_info() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
        return {"git_sha": sha or None, "git_dirty": bool(dirty) if sha else None}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    return {
        **git_info(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "command": argv if argv is not None else sys.argv,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _default_run_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run_root) / cfg.name / stamp
    suffix = 1
    while run_dir.exists():  # two submits in the same second
        run_dir = Path(cfg.run_root) / cfg.name / f"{stamp}-{suffix}"
        suffix += 1
    return run_dir


def _is_build(entry: Path) -> bool:
    """A run-directory build in progress or left by a killed submit (`.NAME.tmp-HOST-PID`)."""
    return entry.is_dir() and entry.name.startswith(".") and ".tmp-" in entry.name


def _remove_dead_builds(parent: Path) -> None:
    """Half-built run directories of killed submits next to runs (or inside an existing
    empty target)."""
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            if _is_build(entry):
                remove_stale_tmp(entry, only=entry)


def _existing_target(run_dir: Path) -> bool:
    """True when `run_dir` is an existing empty folder (a mount point, a group-owned setgid
    folder made for the run): it is kept, with its mode, group and ACLs, and the run is built
    inside it. Refuses anything else that exists."""
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory")
    if any(not _is_build(e) for e in run_dir.iterdir()):
        raise UserError(f"{run_dir}: run directory exists; use --resume {run_dir} to continue it")
    _remove_dead_builds(run_dir)
    return True


def _stage_dir(run_dir: Path, inside: bool) -> Path:
    """Where the run is built: next to the target, or inside an existing empty target."""
    name = f".{run_dir.name}.tmp-{host_tag()}-{os.getpid()}"
    return run_dir / name if inside else run_dir.with_name(name)


def _publish(tmp: Path, run_dir: Path, inside: bool) -> None:
    """Move a finished build into place: one rename onto nothing, or, inside an existing
    folder, its entries one by one with `config.yaml` (what makes a run a run) last."""
    if not inside:
        os.chmod(tmp, RUN_DIR_MODE)
        os.rename(tmp, run_dir)  # onto nothing: atomic
        return
    if any(e != tmp and not _is_build(e) for e in run_dir.iterdir()):
        raise UserError(f"{run_dir}: filled by someone else while the run was being built")
    config = layout.config_file(tmp)
    moved: list[Path] = []
    try:
        for entry in sorted(tmp.iterdir(), key=lambda e: e == config):
            os.rename(entry, run_dir / entry.name)
            moved.append(run_dir / entry.name)
    except BaseException:
        for path in moved:  # the target goes back to empty
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise
    tmp.rmdir()


def new_run_dir(
    cfg: Config,
    run_dir: Path | None,
    raw_input: dict,
    build: Callable[[RunDir], None] | None = None,
) -> RunDir:
    """Create a fresh run dir, complete or not at all: it is built under a temporary name
    (config, provenance, then `build`, e.g. the data index) and moved into place, so a kill
    or a refusal at any point leaves no half-made run behind. An existing empty target keeps
    its mode, group and ACLs (the build then happens inside it). Never touches an existing
    run (use --resume for that)."""
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(cfg)
    inside = _existing_target(run_dir)
    for parent in run_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{parent}: is not a directory (cannot hold run {run_dir})")
            break
    made = [d for d in reversed(run_dir.parents) if not d.exists()]  # removed on a refusal
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{run_dir}: cannot create a run directory here ({err.strerror})") from None
    if not inside:
        _remove_dead_builds(run_dir.parent)
    tmp = _stage_dir(run_dir, inside)
    old_umask = os.umask(0o027)
    try:
        tmp.mkdir(mode=RUN_DIR_MODE)
    except OSError as err:  # read-only, no permission, /proc...: the user's path to fix
        raise UserError(f"{run_dir}: cannot create a run directory here ({err.strerror})") from None
    finally:
        os.umask(old_umask)
    try:
        staged = RunDir(tmp)
        import yaml

        atomic_write_text(staged.input_config, yaml.safe_dump(raw_input, sort_keys=False))
        atomic_write_text(staged.provenance, json.dumps(provenance(), indent=1) + "\n")
        atomic_write_text(staged.config, dump_config(cfg))
        if build is not None:
            build(staged)
        _publish(tmp, run_dir, inside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise
    return RunDir(run_dir)


class RunLock:
    """One live `submit` per run: a POSIX lock on `RUN/.lock` (works over NFSv4 and Lustre),
    held by the process that runs or submits the stages and released when it exits."""

    def __init__(self, rd: RunDir):
        self.path = layout.lock_file(rd.root)
        self._fh = None

    def acquire(self) -> RunLock:
        import fcntl

        fh = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the lock
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise UserError(
                f"{self.path.parent}: run is in use by {holder}; wait for it to finish "
                "(or stop it) before resuming"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")  # fmt: skip
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def open_run_dir(run_dir: Path, cfg: Config | None = None) -> RunDir:
    """An existing run; with `cfg`, refuse if it differs from what the run was started with."""
    rd = RunDir(Path(run_dir))
    stored = rd.load_config()
    if cfg is not None and dump_config(stored) != dump_config(cfg):
        diff = _first_difference(stored.model_dump(mode="json"), cfg.model_dump(mode="json"))
        raise UserError(f"{run_dir}: config differs from the run's config.yaml at {diff}")
    return rd


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path or '<root>'} ({a!r} != {b!r})"
