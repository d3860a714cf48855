"""`prism-hpc` command line. Thin: parse, call, print. Exit codes: 0 ok, 1 task failed, 2 bad input."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer

from prism_hpc.errors import TaskFailed, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="PRISM dataset distillation on SLURM clusters and single machines.",
)

# Typer's Annotated form: the default value stays a plain Python default.
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: KEY.PATH=VALUE (repeatable)."),
]
RunArg = Annotated[Path, typer.Argument(help="Run directory.")]


def _err(message: str) -> None:
    typer.echo(f"prism-hpc: error: {message}", err=True)


def _registry():
    from prism_hpc.stages import registry

    return registry()


def _prepare(config: Path, overrides: list[str] | None, require_data: bool):
    from prism_hpc.submission import prepare

    return prepare(config, overrides or [], require_data)


@app.command()
def submit(
    config: Annotated[
        Path | None, typer.Argument(help="Experiment YAML (omit with --resume).")
    ] = None,
    set_: SetOpt = None,
    backend: Annotated[
        str | None,
        typer.Option(help="auto | local | slurm | debug (default: the config's `backend`)."),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default runs/NAME/STAMP).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue this run: skip items with valid markers; the config must match."
        ),
    ] = None,
    stages: Annotated[
        str | None, typer.Option(help="Comma-separated subset of stages to run (default: all).")
    ] = None,
    no_canary: Annotated[
        bool,
        typer.Option("--no-canary", help="SLURM: submit the arrays without a canary job first."),
    ] = False,
) -> None:
    """Run (local) or submit (SLURM) every stage of an experiment. On SLURM a short canary job
    per resource shape runs first (doctor + every stage at a minimal budget) and the arrays
    wait on it; the local backend runs no canary (its first item fails in the foreground)."""
    from prism_hpc.submission import SubmitRequest, submit_run

    only = tuple(s for s in stages.split(",") if s) if stages else None
    req = SubmitRequest(config, tuple(set_ or ()), backend, run_dir, resume, only, not no_canary)
    submit_run(req, _registry(), typer.echo, lambda line: typer.echo(line, err=True))


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="Experiment YAML.")],
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="Write plan.json and sbatch scripts here.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the plan and its cost estimate as JSON.")
    ] = False,
) -> None:
    """Dry run: stages, arrays, GPU-hours, wall time, time limits, storage, memory; sbatch scripts."""
    from prism_hpc.hpc.launch import describe_plan

    cfg, _, warnings = _prepare(config, set_, require_data=False)
    for w in warnings:
        typer.echo(f"warning: {w}", err=True)
    describe_plan(cfg, _registry(), out, as_json=as_json)


@app.command()
def status(
    run: RunArg,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        bool, typer.Option(help="Refresh every 30 s until all stages finish.")
    ] = False,
) -> None:
    """Per stage: items done / running / pending / failed (markers first, then one sacct call).
    For a sweep folder: per point, items done over all its stages."""
    from prism_hpc.hpc.status import print_status
    from prism_hpc.sweep.run import is_sweep

    if is_sweep(run):
        from prism_hpc.cli_sweep import print_sweep_status

        print_sweep_status(run, as_json)
        return
    print_status(run, _registry(), as_json=as_json, watch=watch)


@app.command()
def collect(
    run: RunArg,
    consolidate: Annotated[
        bool, typer.Option(help="Copy pixels instead of a Virtual Dataset.")
    ] = False,
) -> None:
    """Validate all slices into distilled.h5 and gather student results into results.md/.csv."""
    from prism_hpc.stages.collect import collect_run, distilled_problems, reseal_distilled
    from prism_hpc.store.rundir import open_run_dir

    rd = open_run_dir(run)
    cfg = rd.load_config()
    if not rd.distilled.exists() or consolidate:
        info = collect_run(cfg, rd.root, consolidate=consolidate)
        reseal_distilled(rd.root)  # same pixels, new file: the marker keeps its id
        typer.echo(f"{rd.distilled}: {info['rows']} images, {info['layout']} layout")
    else:
        bad = distilled_problems(cfg, rd.root)  # a VDS is only as good as its sources
        if bad:
            raise TaskFailed(
                f"{rd.distilled}: {len(bad)} bad source(s): {'; '.join(bad[:3])}"
                + (" ..." if len(bad) > 3 else "")
                + f"; `prism-hpc submit --resume {rd.root}` redoes them"
            )
        typer.echo(f"{rd.distilled}: present, every source matches its marker")
    from prism_hpc.metrics.results import write_results

    paths = write_results([rd.root], rd.root)
    for p in paths:
        typer.echo(f"wrote {p}")


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the first run).")
    ] = None,
) -> None:
    """Markdown report with accuracy/ablation tables, diversity and figures. A sweep folder
    stands for its points' runs (the report goes into the sweep folder)."""
    from prism_hpc.metrics.report import write_report
    from prism_hpc.store.rundir import open_run_dir
    from prism_hpc.sweep.run import is_sweep, point_runs

    expanded = [p for r in runs for p in (point_runs(r) if is_sweep(r) else [r])]
    if not expanded:
        raise UserError(f"{runs[0]}: the sweep has no run yet (prism-hpc sweep SPEC)")
    for r in expanded:
        open_run_dir(r)
    path = write_report(expanded, out or runs[0])
    typer.echo(f"wrote {path}")


@app.command()
def export(
    run: RunArg,
    out: Annotated[Path, typer.Argument(help="Output folder (must not exist or be empty).")],
    format: Annotated[str, typer.Option(help="imagefolder (SRe2L layout, PNG).")] = "imagefolder",
) -> None:
    """Write the distilled images for other evaluation code (SRe2L layout)."""
    from prism_hpc.store.export import export_imagefolder
    from prism_hpc.store.rundir import open_run_dir

    if format != "imagefolder":
        raise UserError(f"--format {format!r}: expected imagefolder")
    rd = open_run_dir(run)
    from prism_hpc.stages.collect import distilled_problems

    bad = distilled_problems(rd.load_config(), rd.root) if rd.distilled.exists() else []
    if bad:  # never export images read through a damaged shard
        raise UserError(f"{rd.distilled}: {len(bad)} bad source(s), first: {bad[0]}; "
                        f"`prism-hpc submit --resume {rd.root}` redoes them")  # fmt: skip
    n = export_imagefolder(rd.root, out)
    typer.echo(f"wrote {n} PNG files under {out}")


@app.command()
def resubmit(
    run: RunArg,
    failed: Annotated[
        bool,
        typer.Option("--failed/--all", help="Only items without a valid marker (the default)."),
    ] = True,
    no_canary: Annotated[
        bool, typer.Option("--no-canary", help="Submit the arrays without a canary job first.")
    ] = False,
) -> None:
    """Submit new arrays for incomplete items; dependents re-wired, stale dependents cancelled.
    A new canary job runs first (on SLURM), unless --no-canary."""
    from prism_hpc.hpc.backends.slurm import resubmit_failed
    from prism_hpc.store.rundir import open_run_dir

    if not failed:
        raise UserError("resubmit --all: not supported; finished items are never redone")
    rd = open_run_dir(run)
    submitted = resubmit_failed(rd, _registry().opened(rd.root), canary=not no_canary)
    if not submitted:
        typer.echo("nothing to resubmit: every item has a valid marker")


@app.command()
def verify(run: RunArg) -> None:
    """Hash every finished item's files against its marker; exit 1 naming each bad one."""
    from prism_hpc.hpc.verify import verify_run

    found = verify_run(run, _registry())
    for line in found["bad"]:
        typer.echo(f"bad: {line}")
    if found["unfinished"]:
        typer.echo(f"{len(found['unfinished'])} item(s) not finished yet (not checked)")
    if found["bad"]:
        raise TaskFailed(
            f"{run}: {len(found['bad'])} bad item(s); `prism-hpc submit --resume {run}` "
            "redoes them and everything computed from them"
        )
    typer.echo(f"{run}: every finished item matches its marker")


@app.command()
def cancel(run: RunArg) -> None:
    """Cancel every SLURM job of the run (finished items keep their markers)."""
    from prism_hpc.hpc.backends.slurm import cancel_run
    from prism_hpc.store.rundir import open_run_dir

    ids = cancel_run(open_run_dir(run))
    typer.echo(f"cancelled {len(ids)} array job(s): {' '.join(ids)}")


@app.command()
def logs(
    run: RunArg,
    stage: Annotated[str, typer.Argument(help="Stage name, e.g. recover.")],
    index: Annotated[int, typer.Argument(help="Item index within the stage (see plan.json).")],
) -> None:
    """Print the path of a task's log file."""
    from prism_hpc.store.layout import stage_logs
    from prism_hpc.store.rundir import open_run_dir

    rd = open_run_dir(run)
    local = sorted(stage_logs(rd.root, stage).glob("*.log"))  # none when the folder is missing
    try:
        from prism_hpc.hpc.backends.slurm import log_path

        typer.echo(str(log_path(rd, stage, index)))
    except UserError:
        items = _registry().by_name(stage).items(rd.load_config())
        if not 0 <= index < len(items):
            raise UserError(f"logs: stage {stage} has {len(items)} item(s), no index {index}")
        key = items[index].key
        match = [p for p in local if p.name.startswith(key)]
        if not match:
            raise UserError(f"{rd.root}: no log for {stage} item {index} ({key})")
        typer.echo("\n".join(str(p) for p in match))


def _add_bench() -> None:
    from prism_hpc.cli_bench import bench_app

    app.add_typer(bench_app, name="bench", help="Benchmarks: `prism-hpc bench recover --help`.")


_add_bench()


def _add_doctor() -> None:
    from prism_hpc.cli_doctor import doctor

    app.command()(doctor)


_add_doctor()


def _add_tracking() -> None:
    from prism_hpc.cli_tracking import register

    register(app)


_add_tracking()


def _add_sweep() -> None:
    from prism_hpc.cli_sweep import register

    register(app)


_add_sweep()


def _no_writable_by_others() -> None:
    """Files and folders made in a run are never group- or world-writable, whatever the
    user's umask (children inherit it: local ranks, SLURM tasks started from here)."""
    import os

    os.umask(os.umask(0) | 0o022)


def _os_error_line(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"


def main() -> None:
    _no_writable_by_others()
    try:
        app(standalone_mode=False)
    except click.exceptions.Abort:
        _err("interrupted")
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(2)
    except UserError as err:
        _err(str(err))
        sys.exit(2)
    except TaskFailed as err:
        _err(str(err))
        sys.exit(1)
    except OSError as err:  # read-only or full file systems, permissions: the user's to fix
        _err(_os_error_line(err))
        sys.exit(2)
    except KeyboardInterrupt:
        _err("interrupted; finished items are kept, continue with `prism-hpc submit --resume RUN`")
        sys.exit(130)


if __name__ == "__main__":
    main()
