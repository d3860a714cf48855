"""`prism-hpc verify RUN`: hash every file every marker vouches for and check that each item
was computed from the upstream markers that exist now. Slow on purpose (it reads all the data);
`submit --resume` does the cheap version (size + mtime, hashing only what changed)."""

from __future__ import annotations

from pathlib import Path

from prism_hpc.hpc.launch import plans_for
from prism_hpc.hpc.plan import registry_ref_of
from prism_hpc.store.rundir import RunDir, open_run_dir
from prism_hpc.workflow import StageRegistry, load_registry


def verify_run(run: Path, registry: StageRegistry | None = None) -> dict[str, list[str]]:
    """{"bad": [...], "unfinished": [...]}: `bad` are finished items whose files or inputs no
    longer match their markers; `unfinished` have no marker yet (not an integrity problem)."""
    rd: RunDir = open_run_dir(run)
    cfg = rd.load_config()
    if registry is None:
        registry = load_registry(registry_ref_of(rd.plan))
    bad, unfinished = [], []
    for plan in plans_for(cfg, registry.opened(rd.root), estimates=False):
        for item in plan.items:
            markers = plan.stage.markers(rd.root, item)
            present = [m for m in markers if m.exists()]
            if not present:
                unfinished.append(f"{plan.stage.name} {item.key}")
                continue
            problems = plan.stage.problems(rd.root, item, full=True)
            if len(present) < len(markers):  # a multi-slice item finished in part: fine
                problems = [p for p in problems if not p.endswith(": no marker")]
                unfinished.append(f"{plan.stage.name} {item.key} (in part)")
            bad += [f"{plan.stage.name} {item.key}: {p}" for p in problems]
    return {"bad": bad, "unfinished": unfinished}
