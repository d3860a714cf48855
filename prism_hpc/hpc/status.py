"""Run status from `.done` markers (the truth), enriched by the scheduler when there is one."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from prism_hpc.hpc.plan import registry_ref_of
from prism_hpc.store.rundir import RunDir, open_run_dir
from prism_hpc.workflow import StageRegistry, load_registry

WATCH_INTERVAL_S = 30  # never poll the scheduler faster than this


def stage_status(rd: RunDir, registry: StageRegistry | None = None) -> list[dict]:
    from prism_hpc.hpc.launch import plans_for

    cfg = rd.load_config()
    if registry is None:
        registry = load_registry(registry_ref_of(rd.plan))
    rows = []
    for plan in plans_for(cfg, registry.opened(rd.root), estimates=False):  # never lists the data
        done = [i.index for i in plan.items if plan.stage.is_done(rd.root, i)]
        rows.append(
            {
                "stage": plan.stage.name,
                "total": len(plan.items),
                "done": len(done),
                "pending": [i.index for i in plan.items if i.index not in done],
            }
        )
    try:
        from prism_hpc.hpc.backends.slurm import scheduler_states

        scheduler_states(rd, rows)
    except ImportError:
        pass
    return rows


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
        finished = all(r["done"] == r["total"] for r in rows)
        if not watch or finished:
            return rows
        time.sleep(WATCH_INTERVAL_S)
