"""`prism-hpc sync RUN`: upload the offline W&B runs kept inside a run directory.

Compute nodes often have no internet, so tasks log with `tracking.wandb: offline` and this
runs later from a login node or a laptop holding a copy of the run. It delegates to
`wandb sync`, which marks each uploaded run (`<run>.wandb.synced`), so a second call uploads
only what is new. The API key comes from wandb's own login or $WANDB_API_KEY.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from prism_hpc.errors import UserError
from prism_hpc.tracking.base import INSTALL_HINT

# W&B names an offline run's folder offline-run-<time>-<id> and its log run-<id>.wandb
_OFFLINE_GLOB = "offline-run-*"


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run folders in the run directory that were not uploaded yet."""
    from prism_hpc.store.layout import wandb_offline_dir

    found = []
    for folder in sorted(wandb_offline_dir(run_dir).glob(_OFFLINE_GLOB)):
        logs = list(folder.glob("*.wandb"))
        if logs and not all(log.with_name(log.name + ".synced").exists() for log in logs):
            found.append(folder)
    return found


def sync_run(run_dir: Path) -> list[str]:
    """Upload the run's offline W&B runs; returns the folders uploaded ([] when there was
    nothing to sync). Raises UserError when wandb is missing or the upload fails."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    pending = offline_runs(run_dir)
    if not pending:
        return []
    if importlib.util.find_spec("wandb") is None:
        raise UserError(f"sync needs the wandb package: {INSTALL_HINT} (or pip install wandb)")
    # the interpreter's own wandb (the one that wrote the runs), not whatever is on PATH
    command = [sys.executable, "-m", "wandb", "sync", *map(str, pending)]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise UserError(
            f"wandb sync exited with {done.returncode} (its messages are above); "
            "check the network and `wandb login`, then run `prism-hpc sync` again"
        )
    return [str(p) for p in pending]
