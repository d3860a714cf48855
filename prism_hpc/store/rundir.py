"""The run directory (DESIGN §3): creation that never clobbers, provenance, append-only state."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from prism_hpc.config.load import dump_config
from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError
from prism_hpc.store.atomic import atomic_write_text

# students/<arch>/seed<k>/: ckpt.pt (the restart point), metrics.json, then the .done marker
CKPT_NAME = "ckpt.pt"
METRICS_NAME = "metrics.json"
DONE_NAME = ".done"
PROGRESS_NAME = "progress.json"  # a student's epoch/loss/ETA, read by `status` (no torch)
EVAL_NAME = "eval.json"  # a checkpoint evaluated without training (the evaluation array)

RUN_DIR_MODE = 0o750  # shared clusters: not world-readable/writable
PACKAGES = ("prism-hpc", "torch", "torchvision", "timm", "submitit", "h5py", "numpy", "pydantic")


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def input_config(self) -> Path:
        return self.root / "config.input.yaml"

    @property
    def provenance(self) -> Path:
        return self.root / "provenance.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def teachers(self) -> Path:
        return self.root / "teachers"

    @property
    def recover(self) -> Path:
        return self.root / "recover"

    @property
    def distilled(self) -> Path:
        return self.root / "distilled.h5"

    @property
    def relabel(self) -> Path:
        return self.root / "relabel"

    @property
    def students(self) -> Path:
        return self.root / "students"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

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


def safe_arch(arch: str) -> str:
    return arch.replace(":", "_").replace("/", "_")


def student_dir(run_dir: Path, arch: str, seed: int) -> Path:
    return Path(run_dir) / "students" / safe_arch(arch) / f"seed{seed}"


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


def new_run_dir(cfg: Config, run_dir: Path | None, raw_input: dict) -> RunDir:
    """Create a fresh run dir; refuse to touch an existing one (use --resume for that)."""
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.run_root) / cfg.name / stamp
        suffix = 1
        while run_dir.exists():  # two submits in the same second
            run_dir = Path(cfg.run_root) / cfg.name / f"{stamp}-{suffix}"
            suffix += 1
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir}: run directory exists; use --resume {run_dir} to continue it")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o027)
    try:
        run_dir.mkdir(mode=RUN_DIR_MODE, exist_ok=True)
    finally:
        os.umask(old_umask)
    rd = RunDir(run_dir)
    import yaml

    atomic_write_text(rd.input_config, yaml.safe_dump(raw_input, sort_keys=False))
    atomic_write_text(rd.provenance, json.dumps(provenance(), indent=1) + "\n")
    atomic_write_text(rd.config, dump_config(cfg))  # written last: marks a complete run dir
    return rd


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
