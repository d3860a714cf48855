"""What a plan looks like (`plan`, `plan --json`, `plan --out`): arrays and cost estimates."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from prism_hpc.config.schema import Config
from prism_hpc.hpc.executor import executor_class
from prism_hpc.hpc.plan import StagePlan, make_plan, write_plan
from prism_hpc.store import layout
from prism_hpc.workflow import StageRegistry


def plans_for(
    cfg: Config, registry: StageRegistry, max_array_size: int | None = None,
    only: list[str] | None = None, estimates: bool = True,
) -> list[StagePlan]:  # fmt: skip
    """The plan of the config's own backend (`cfg.backend`), whose parallelism the estimates
    assume; `estimates=False` (status, verify) asks no executor and prices nothing."""
    executor = executor_class(cfg.backend)() if estimates else None
    return make_plan(cfg, registry.select(only), max_array_size, executor)


# estimate keys shown as columns (the rest of an estimate goes into the note column)
COST_KEYS = ("device", "throughput", "gpu_hours", "cpu_hours", "wall_hours", "task_hours_max",
             "time_limit_min", "parallel_tasks", "storage_gb", "peak_mem_gb", "warnings",
             "cost_note", "peak_mem_gb_joint", "peak_mem_gb_sequential", "wall_s",
             "backend")  # fmt: skip
TOTAL_KEYS = ("gpu_hours", "cpu_hours", "wall_hours", "storage_gb")


def plan_totals(plans: list[StagePlan]) -> dict:
    """Sums over the stages (they run one after another, so wall hours add up too)."""
    ests = [p.estimate for p in plans]
    out = {k: round(sum(float(e.get(k) or 0.0) for e in ests), 3) for k in TOTAL_KEYS}
    peaks = [e["peak_mem_gb"] for e in ests if e.get("peak_mem_gb") is not None]
    out["peak_mem_gb"] = max(peaks) if peaks else None
    return out


def plan_summary(cfg: Config, plans: list[StagePlan]) -> dict:
    """What `plan --json` prints: the plan.json entries (without items) and the totals."""
    stages = []
    for p in plans:
        entry = p.to_json()
        entry["items"] = len(entry["items"])
        stages.append(entry)
    warnings = [w for p in plans for w in p.estimate.get("warnings") or []]
    return {"name": cfg.name, "stages": stages, "totals": plan_totals(plans),
            "warnings": warnings}  # fmt: skip


def _num(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def describe_plan(
    cfg: Config, registry: StageRegistry, out: Path | None, as_json: bool = False
) -> list[StagePlan]:
    plans = plans_for(cfg, registry)
    if as_json:
        import json

        print(json.dumps(plan_summary(cfg, plans), indent=1))
    else:
        _print_plan(cfg, plans)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_plan(layout.plan_file(out), plans, registry.ref)
        try:
            from prism_hpc.hpc.scripts import write_scripts
        except ImportError:
            write_scripts = None
        say = (lambda m: print(m, file=sys.stderr)) if as_json else print
        if write_scripts is not None:
            for path in write_scripts(cfg, plans, layout.slurm_scripts_dir(out), run_dir=out):
                say(f"wrote {path}")
        say(f"wrote {layout.plan_file(out)}")
    return plans


def _print_plan(cfg: Config, plans: list[StagePlan]) -> None:
    table = Table(title=f"plan: {cfg.name}")
    cols = ("stage", "items", "arrays", "after", "resources", "device", "GPU-h", "wall h",
            "task limit (min)", "storage GB", "peak GB/GPU", "estimate")  # fmt: skip
    for col in cols:
        table.add_column(col)
    notes = []
    for p in plans:
        r, e = p.resources, p.estimate
        res = f"{r['gpus_per_node']} GPU x {r['tasks_per_node']} task, {r['time_min']} min"
        rest = ", ".join(f"{k}={v}" for k, v in e.items() if k not in COST_KEYS)
        if e.get("cost_note"):
            notes.append(f"{p.stage.name}: {e['cost_note']}")
        dev = f"{e['device']} ({e['throughput'].split()[0]})" if "device" in e else "-"
        hours = e.get("gpu_hours") if e.get("device", "cpu") != "cpu" else None
        if hours is None and e.get("cpu_hours"):
            hours_s = f"{e['cpu_hours']:.2f} CPU-h"
        else:
            hours_s = _num(hours)
        limit = f"{e['time_limit_min']} (set {r['time_min']})" if "time_limit_min" in e else "-"
        sizes = "+".join(str(len(c)) for c in p.chunks) or "0"
        table.add_row(p.stage.name, str(len(p.items)), sizes, ",".join(p.stage.depends_on),
                      res, dev, hours_s, _num(e.get("wall_hours")), limit,
                      _num(e.get("storage_gb"), 3), _num(e.get("peak_mem_gb")), rest)  # fmt: skip
    t = plan_totals(plans)
    table.add_row("total", "", "", "", "", "", _num(t["gpu_hours"]), _num(t["wall_hours"]), "",
                  _num(t["storage_gb"], 3), _num(t["peak_mem_gb"]), "")  # fmt: skip
    Console(width=200).print(table)
    backends = {p.estimate["backend"] for p in plans if "backend" in p.estimate}
    print(
        f"total: {t['gpu_hours']:.2f} GPU-hours, {t['cpu_hours']:.2f} CPU-hours, "
        f"{t['wall_hours']:.2f} h wall (stages in sequence), {t['storage_gb']:.2f} GB written"
        + (f"; parallelism of the {', '.join(sorted(backends))} backend" if backends else "")
    )
    for n in notes:
        print(f"note: {n}")
    for p in plans:
        for w in p.estimate.get("warnings") or []:
            print(f"warning: {w}", file=sys.stderr)
