"""`prism-hpc doctor`: the hardware (and a config's run) checked before anything is submitted.

Wired in `prism_hpc/cli.py` with `app.command()(doctor)`; the checks live in
`prism_hpc.hardware.doctor`. This module only parses, prices the plan's storage for the
free-space check, and prints: a rich table for people, one JSON object with `--json`.
Exit 1 names every failed check; bad input (config file, --device) exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from prism_hpc.errors import TaskFailed

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def _storage_gb(cfg: Any) -> float | None:
    """What the plan writes (`plan`'s storage total), or None when it cannot be priced here;
    the free-space check then reports the free space alone."""
    try:
        from prism_hpc.stages import registry

        # storage does not depend on where the tasks run: the stages' own estimates, summed
        # as `plan` sums them, without the cluster layer
        return round(sum(float(s.estimate(cfg).get("storage_gb") or 0.0)
                         for s in registry().stages), 3)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - an estimate must never stop the checks
        typer.echo(f"warning: storage estimate skipped: {str(err).strip()[:200]}", err=True)
        return None


def _print_table(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prism-hpc doctor ({report.device})", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", c.detail)
    console = Console(soft_wrap=False)
    console.print(table)
    if report.precision is not None:
        console.print(f"precision: auto -> {report.precision.precision}")


def doctor(
    config: Annotated[
        Path | None,
        typer.Argument(help="Experiment YAML: also check its data, teachers, run_root, scheduler."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config value: KEY.PATH=VALUE (repeatable)."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Skip the timing probe, the distributed check, the storage estimate."
        ),
    ] = False,
    try_compile: Annotated[
        bool,
        typer.Option("--try-compile", help="Really compile a function (tens of seconds on CPU)."),
    ] = False,
) -> None:
    """Check this machine (and a config's run): hardware, precision, data, weights, disk.

    torch/CUDA, CPU flags, native bf16/fp16, a timing probe, the precision `auto` picks,
    distributed, channels_last, compile; with CONFIG its data, teachers, run_root, HDF5 and
    scheduler. Run it where the jobs run (`srun prism-hpc doctor CONFIG --device cuda`).
    Exit 1 names each failed check (docs/hardware.md)."""
    from prism_hpc.hardware.capability import parse_device
    from prism_hpc.hardware.doctor import run_doctor

    parse_device(device)  # bad --device: one line, exit 2, before anything runs
    cfg = None
    if config is not None:
        from prism_hpc.config.load import load_config

        cfg, _ = load_config(config, set_ or [])
    elif set_:
        from prism_hpc.errors import UserError

        raise UserError("doctor: --set needs a CONFIG file")
    storage = _storage_gb(cfg) if cfg is not None and not quick else None
    report = run_doctor(device, cfg, quick=quick, try_compile=try_compile, storage_gb=storage)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        _print_table(report)
    failed = report.failed()
    if failed:
        named = "; ".join(f"{c.name} ({c.detail})" for c in failed)
        raise TaskFailed(f"doctor: {len(failed)} check(s) failed: {named}")
