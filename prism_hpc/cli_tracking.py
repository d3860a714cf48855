"""`prism-hpc sync RUN`: the tracking commands of the CLI.

Registered in `prism_hpc/cli.py` with `register(app)`; the upload itself lives in
`prism_hpc.tracking.sync`, so this module stays parse, call, print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sync(run: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Upload the run's offline W&B runs (tracking.wandb: offline) with `wandb sync`."""
    from prism_hpc.tracking.sync import sync_run

    uploaded = sync_run(run)
    if not uploaded:
        typer.echo(f"{run}: nothing to sync (no offline W&B run that is not uploaded yet)")
        return
    for folder in uploaded:
        typer.echo(f"synced {folder}")


def register(app: typer.Typer) -> None:
    """Attach the commands to the main app (kept here so cli.py needs one line)."""
    app.command("sync")(sync)
