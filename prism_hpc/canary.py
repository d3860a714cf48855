"""The canary: one short job that proves a node can run the whole pipeline before an array
of fifty waits in the queue for it.

It runs where the arrays will run (the SLURM executor submits it with a stage's resources):
first `doctor` in its quick form on the job's device (torch/CUDA, the precision `auto`
resolves to, the data, every teacher's weights, the run root, HDF5, the scheduler), then every
stage of the run's own config at a minimal budget (one IPC slice, two iterations, one relabel
epoch, one student epoch on one architecture) in a scratch run under `RUN/canary/attempt<k>/`,
through the local executor. Nothing there counts as work of the run; the cluster layer
(`hpc/canary.py`) chooses the folder and writes the marker when this returns. Any failure
raises, so the job fails and SLURM cancels the arrays that wait on it (`afterok` +
`--kill-on-invalid-dep`).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml

from prism_hpc.errors import TaskFailed
from prism_hpc.store import layout


def _first(values: list[Any]) -> list[Any]:
    return values[:1]


def shrink(config: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config at the smallest budget that still runs every stage's code
    path (same data, teachers, devices, precision, ranks and resources)."""
    c = copy.deepcopy(config)
    c["name"] = f"{c['name'][:56]}-canary"
    c.get("squeeze", {})["max_steps"] = 2
    rec = c.setdefault("recover", {})
    rec.update(ipc=1, ipc_start=0, slices_per_task=1)
    if rec.get("synthesis", "optimize") == "rded":
        factor = rec.get("rded", {}).get("factor", 2)
        rec.setdefault("rded", {}).update(candidates=factor**2, crops=1)
    else:
        rec.update(iterations=2, iteration_step=0, log_every=1)
        rec.setdefault("matching", {})["stats_limit_per_class"] = 1
    c.setdefault("relabel", {})["epochs_per_task"] = 1
    st = c.setdefault("students", {})
    st.update(epochs=1, eval_every=1, archs=_first(st.get("archs") or ["resnet18"]),
              seeds=_first(st.get("seeds") or [0]))  # fmt: skip
    st["eval_limit"] = st.get("batch_size") or 50
    return c


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _doctor(cfg: Any) -> dict[str, Any]:
    from prism_hpc.hardware.doctor import run_doctor

    report = run_doctor(_device(), cfg, quick=True)
    failed = report.failed()
    if failed:
        shown = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        raise TaskFailed(f"canary: doctor failed on this node: {shown}")
    return report.to_dict()


def run_canary(run_dir: Path, folder: Path) -> dict[str, Any]:
    """Doctor, then the whole pipeline at a minimal budget in `folder`; returns what the
    marker records."""
    from prism_hpc.config.load import config_from_dict
    from prism_hpc.stages import registry
    from prism_hpc.store.atomic import atomic_write_text
    from prism_hpc.submission import SubmitRequest, submit_run

    start = time.time()
    run_dir = Path(run_dir)
    resolved = yaml.safe_load(layout.config_file(run_dir).read_text())
    doctor = _doctor(config_from_dict(resolved, str(layout.config_file(run_dir))))
    folder.mkdir(parents=True, exist_ok=True, mode=0o750)
    small = layout.config_file(folder)  # the shrunk config, beside the scratch run
    atomic_write_text(small, yaml.safe_dump(shrink(resolved), sort_keys=False))
    scratch = layout.canary_run(folder)
    resume = scratch if layout.config_file(scratch).is_file() else None
    req = SubmitRequest(small, backend="local", run_dir=None if resume else scratch,
                        resume=resume, canary=False)  # fmt: skip
    submit_run(req, registry(), lambda line: print(f"[canary] {line}", flush=True))
    return {"seconds": round(time.time() - start, 1), "device": doctor["device"],
            "precision_auto": (doctor.get("precision") or {}).get("auto")}  # fmt: skip
