"""`prism-hpc sweep SPEC`: many runs from one spec, through the same executors as `submit`.

`status` and `report` accept a sweep folder too (cli.py asks `prism_hpc.sweep.run.is_sweep`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sweep(
    spec: Annotated[
        Path, typer.Argument(help="Sweep spec YAML (base, axes | points, first, set, throttle).")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Sweep folder (default runs/sweeps/NAME).")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="auto | local | slurm | debug (default: each config's).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the points; create nothing.")
    ] = False,
    jobs: Annotated[
        int,
        typer.Option(
            min=1, help="Points at once, each a child submit logging to FOLDER/POINT.log."
        ),
    ] = 1,
) -> None:
    """Run every point of a grid (rerun to resume: finished points are skipped by marker)."""
    from prism_hpc.stages import registry
    from prism_hpc.sweep.run import SweepTarget, default_folder, describe, run_sweep
    from prism_hpc.sweep.spec import load_spec

    loaded = load_spec(spec)
    folder = out or default_folder(loaded)
    if dry_run:
        for line in describe(loaded, folder):
            typer.echo(line)
        return
    states = run_sweep(SweepTarget(loaded, folder, backend, jobs), registry(), typer.echo)
    typer.echo(f"sweep folder: {folder} ({len(states)} point(s))")
    typer.echo(f"next: prism-hpc status {folder} | prism-hpc report {folder}")


def print_sweep_status(folder: Path, as_json: bool) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    from prism_hpc.stages import registry
    from prism_hpc.sweep.run import sweep_status

    rows = sweep_status(folder, registry())
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title=str(folder))
    for col in ("point", "items done", "state"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["point"], f"{r['done']}/{r['total'] if r['total'] is not None else '?'}",
                      r["state"])  # fmt: skip
    Console(width=120).print(table)


def register(app: typer.Typer) -> None:
    """Attach the command to the main app (kept here so cli.py needs one line)."""
    app.command("sweep")(sweep)
