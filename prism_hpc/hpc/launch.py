"""From a run directory and a backend to running work; and the dry-run description."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from prism_hpc.config.schema import Config
from prism_hpc.hpc.plan import StagePlan, make_plan, write_plan
from prism_hpc.store.rundir import RunDir
from prism_hpc.workflow import StageRegistry


def plans_for(
    cfg: Config, registry: StageRegistry, max_array_size: int | None = None,
    only: list[str] | None = None, estimates: bool = True,
) -> list[StagePlan]:  # fmt: skip
    return make_plan(cfg, registry.select(only), max_array_size, estimates)


def launch(
    rd: RunDir, cfg: Config, backend: str, registry: StageRegistry, only: list[str] | None = None
) -> None:
    registry.opened(rd.root)
    if backend == "slurm":
        from prism_hpc.hpc.backends.slurm import submit_slurm

        submit_slurm(rd, cfg, registry, only)
        return
    plans = plans_for(cfg, registry, only=only)
    write_plan(rd.plan, plans, registry.ref)
    from prism_hpc.hpc.backends.local import run_local

    run_local(rd, plans, registry, debug=backend == "debug")
    print_outputs(rd)


def print_outputs(rd: RunDir) -> None:
    lines = [
        ("distilled set", rd.distilled),
        ("teachers", rd.teachers),
        ("students", rd.students),
        ("results", rd.root / "results.md"),
        ("report", rd.root / "report.md"),
        ("figures", rd.figures),
    ]
    print("outputs:")
    for label, path in lines:
        if path.exists():
            print(f"  {label:14s} {path}")


def describe_plan(cfg: Config, registry: StageRegistry, out: Path | None) -> list[StagePlan]:
    plans = plans_for(cfg, registry)
    table = Table(title=f"plan: {cfg.name}")
    for col in ("stage", "items", "arrays", "after", "resources", "estimate"):
        table.add_column(col)
    for p in plans:
        r = p.resources
        res = f"{r['gpus_per_node']} GPU x {r['tasks_per_node']} task, {r['time_min']} min"
        est = ", ".join(f"{k}={v}" for k, v in p.estimate.items())
        sizes = "+".join(str(len(c)) for c in p.chunks) or "0"
        table.add_row(p.stage.name, str(len(p.items)), sizes, ",".join(p.stage.depends_on),
                      res, est)  # fmt: skip
    Console(width=160).print(table)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_plan(out / "plan.json", plans, registry.ref)
        try:
            from prism_hpc.hpc.scripts import write_scripts
        except ImportError:
            write_scripts = None
        if write_scripts is not None:
            for path in write_scripts(cfg, plans, out / "slurm", run_dir=out):
                print(f"wrote {path}")
        print(f"wrote {out / 'plan.json'}")
    return plans
