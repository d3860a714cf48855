"""Run status from `.done` markers (the truth), enriched by the scheduler when there is one."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from prism_hpc.hpc.canary import canary_lines
from prism_hpc.hpc.pending import pending_items
from prism_hpc.hpc.plan import registry_ref_of
from prism_hpc.store.atomic import read_marker
from prism_hpc.store.itemclock import ITEM_SECONDS
from prism_hpc.store.rundir import RunDir, open_run_dir
from prism_hpc.workflow import StageRegistry, load_registry

WATCH_INTERVAL_S = 30  # never poll the scheduler faster than this


def stage_status(rd: RunDir, registry: StageRegistry | None = None) -> list[dict]:
    from prism_hpc.hpc.launch import plans_for

    cfg = rd.load_config()
    if registry is None:
        registry = load_registry(registry_ref_of(rd.plan))
    rows = []
    plans = plans_for(cfg, registry.opened(rd.root), estimates=False)  # never lists the data
    todo = pending_items(rd.root, plans)  # a stage downstream of work to redo is pending
    for plan in plans:
        rows.append(
            {
                "stage": plan.stage.name,
                "total": len(plan.items),
                "done": len(plan.items) - len(todo[plan.stage.name]),
                "pending": todo[plan.stage.name],
                **plan.stage.progress(rd.root),  # what the stage reports (students' epochs)
            }
        )
    try:
        from prism_hpc.hpc.backends.slurm import scheduler_states

        scheduler_states(rd, rows)
    except ImportError:
        pass
    return rows


def item_seconds(
    run_dir: Path, registry: StageRegistry | None = None
) -> list[tuple[str, str, float]]:
    """(stage, item key, seconds) of every item whose markers recorded its time, in plan
    order: the latest `item_seconds` of its markers (`store.itemclock`), never a log line."""
    from prism_hpc.hpc.launch import plans_for

    rd = open_run_dir(Path(run_dir))
    if registry is None:
        registry = load_registry(registry_ref_of(rd.plan))
    found = []
    for plan in plans_for(rd.load_config(), registry.opened(rd.root), estimates=False):
        for item in plan.items:
            markers = [read_marker(m) for m in plan.stage.markers(rd.root, item)]
            times = [m[ITEM_SECONDS] for m in markers if m and ITEM_SECONDS in m]
            if times:
                found.append((plan.stage.name, item.key, float(max(times))))
    return found


def print_status(
    run: Path, registry: StageRegistry, as_json: bool = False, watch: bool = False
) -> list[dict]:
    rd = open_run_dir(run)
    while True:
        rows = stage_status(rd, registry)
        if as_json:
            print(json.dumps(rows, indent=1))
        else:
            table = Table(title=str(rd.root))
            for col in ("stage", "done", "running", "pending", "failed"):
                table.add_column(col)
            for r in rows:
                table.add_row(
                    r["stage"], f"{r['done']}/{r['total']}", str(len(r.get("running", []))),
                    str(len(r.get("queued", r["pending"]))), str(len(r.get("failed", []))),
                )  # fmt: skip
            Console(width=120).print(table)
            for r in rows:
                for line in registry.by_name(r["stage"]).progress_lines(r):
                    print(line)
            for line in canary_lines(rd):
                print(line)
        finished = all(r["done"] == r["total"] for r in rows)
        if not watch or finished:
            return rows
        time.sleep(WATCH_INTERVAL_S)
