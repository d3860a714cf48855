"""A benchmark's run list as a `prism-hpc sweep` spec: merged configs and OUT/sweep.yaml.

Both Fashion-MNIST benchmarks build one merged config per run (their protocol); this module
writes them to OUT/configs/<run>.yaml and lists them in OUT/sweep.yaml, the teacher pool as the
spec's `first:` point (`stages: [squeeze]`), so `prism-hpc sweep` squeezes it before any run
that loads `runs/pool/teachers/<name>.pt` starts. Runs live in the sweep folder OUT/runs/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from prism_hpc.store import layout

STAGES = ("squeeze", "recover", "collect", "relabel", "train", "report")
POOL_KEYS = ("seed", "data", "teachers", "squeeze")  # all that the teacher weights depend on


@dataclass
class RunSpec:
    name: str
    group: str  # pool | main | table2 (this benchmark) | method | hard | rdm | real (baselines)
    variant: str  # variant file stem or method key (pool: "pool")
    ipc: int
    init: str
    seed: int
    config: dict

    @property
    def label(self) -> str:
        return self.name


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text())
    return data if isinstance(data, dict) else {}


def sweep_folder(out: Path) -> Path:
    return out / "runs"


def run_dir(out: Path, spec: RunSpec) -> Path:
    return sweep_folder(out) / spec.name


def pool_dir(out: Path) -> Path:
    return sweep_folder(out) / "pool"


def _pool_point(pool: RunSpec) -> dict:
    from prism_hpc.cost import squeezed_teachers

    # every teacher at once: the local backend caps it to the machine (one thread each)
    at_once = len(squeezed_teachers(pool.config))
    return {"name": pool.name, "config": f"configs/{pool.name}.yaml", "stages": ["squeeze"],
            "set": [f"resources.squeeze.concurrency={at_once}"]}  # fmt: skip


def write_sweep(out: Path, name: str, specs: list[RunSpec]) -> Path:
    """OUT/configs/<run>.yaml for every run (rewritten only when it changed) and the sweep spec
    OUT/sweep.yaml: the pool (specs[0]) first, then the runs in order."""
    (out / "configs").mkdir(parents=True, exist_ok=True)
    for s in specs:
        path = out / "configs" / f"{s.name}.yaml"
        text = yaml.safe_dump(s.config, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    spec = {
        "name": name,
        "first": [_pool_point(specs[0])],
        "points": [{"name": s.name, "config": f"configs/{s.name}.yaml"} for s in specs[1:]],
    }
    path = out / "sweep.yaml"
    header = "# Written by the benchmark's run.py for this mode; run by `prism-hpc sweep`.\n"
    text = header + yaml.safe_dump(spec, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def _identity(spec: RunSpec, cfg: dict | None) -> Any:
    """What must not change between a run's start and its resume: the whole merged config;
    for the pool only what the squeezed teachers depend on (recover/students edits of the
    protocol do not invalidate the teachers)."""
    if cfg is None or spec.group != "pool":
        return cfg
    return {k: cfg.get(k) for k in POOL_KEYS}


def changed_runs(out: Path, specs: list[RunSpec]) -> list[str]:
    """Runs already started from another merged config: refused, whether finished or not (the
    sweep would skip a finished one by its markers and keep numbers of the old config)."""
    changed = []
    for s in specs:
        stored = layout.input_config_file(run_dir(out, s))
        if stored.is_file() and _identity(s, load_yaml(stored)) != _identity(s, s.config):
            changed.append(s.name)
    return changed
