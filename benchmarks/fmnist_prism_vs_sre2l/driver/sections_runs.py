"""BENCHMARKS.md sections on the runs themselves: stage times (from the items' markers), unit
costs and estimates, figures (every run: `benchmarks.fmnist_shared.sections`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from benchmarks.fmnist_shared.markdown import fmt_ms, fmt_s, md_table
from benchmarks.fmnist_shared.runlist import STAGES, RunSpec, run_dir
from benchmarks.fmnist_shared.session import cli, read_sessions
from benchmarks.fmnist_shared.timing import stage_seconds

from .costs import estimate_wall, measure_costs
from .specs import MODES, REPO, build_specs


def timing_section(out: Path, specs: list[RunSpec], walls: dict[str, float]) -> str:
    """Per group of runs: the summed item seconds of every stage and the submits' seconds."""
    groups: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for s in specs:
        g = (
            "pool (squeeze)"
            if s.group == "pool"
            else (f"main, IPC {s.ipc}" if s.group == "main" else f"Table 2, IPC {s.ipc}")
        )
        st = stage_seconds(run_dir(out, s))
        if not st and not walls.get(s.name):
            continue
        acc = groups.setdefault(g, {})
        counts[g] = counts.get(g, 0) + 1
        for k, v in st.items():
            acc[k] = acc.get(k, 0.0) + v
        acc["submit wall"] = acc.get("submit wall", 0.0) + walls.get(s.name, 0.0)
    if not groups:
        return ""
    cols = [*STAGES, "submit wall"]
    lines = []
    for g, acc in groups.items():
        lines.append([g, str(counts[g])] + [fmt_s(acc.get(c)) if acc.get(c) else "-" for c in cols])
    total = {c: sum(a.get(c, 0.0) for a in groups.values()) for c in cols}
    lines.append(
        ["**all**", str(sum(counts.values()))]
        + [fmt_s(total[c]) if total[c] else "-" for c in cols]
    )
    sessions = read_sessions(out)
    return (
        "## Wall time of every stage\n\n"
        + md_table(["Runs", "n", *cols], lines)
        + "\n\nSums over runs of the item seconds recorded in each item's `.done` marker "
        "(`item_seconds`: from the stage starting on the item to its marker), one thread per "
        "process, `--jobs` processes side by side (so a stage sum is CPU-ish time, not elapsed "
        "time). `submit wall`: elapsed time of the `prism-hpc submit` calls (process start-up, "
        "plan, all stages), as `prism-hpc sweep` records them in `runs/sweep.json`. Driver "
        "elapsed time: " + ", ".join(fmt_s(x.get("wall_s")) for x in sessions) + ".\n"
    )


def estimate_section(out: Path, specs, walls: dict[str, float], jobs: int) -> str:
    costs = measure_costs(out, specs, walls)
    (out / "costs.json").write_text(json.dumps(costs, indent=1) + "\n")
    iters = costs.get("recover_iter_s") or {}
    if not iters:
        return ""
    cal = costs.get("calibration") or {}
    lines = [
        "## Measured unit costs and the estimated duration of each mode\n",
        "One thread per process; measured in this run's items (`costs.json`):\n",
    ]
    lines.append("| cost | value |\n|:--|--:|")
    for v, x in iters.items():
        lines.append(f"| recovery iteration (10 images), {v} | {fmt_ms(x)} |")
    for key, label in (
        ("recover_slice_overhead_s", "recover item overhead per slice (teachers, data)"),
        ("squeeze_step_s", "squeeze step (batch 128)"),
        ("squeeze_overhead_s", "squeeze item overhead (10k test eval, start-up)"),
        ("relabel_epoch_overhead_s", "relabel per epoch (plans, HDF5) beyond the ensemble"),
        ("train_epoch_overhead_s", "student per epoch (checkpoint, batches) beyond the steps"),
        ("item_overhead_s", "relabel/train item overhead (loading)"),
        ("report_s", "report stage per run (figures; without feature extraction)"),
        ("submit_overhead_s", "per `prism-hpc submit` (start-up, plan)"),
    ):
        if costs.get(key) is not None:
            lines.append(
                f"| {label} | {fmt_s(costs[key]) if costs[key] >= 1 else fmt_ms(costs[key])} |"
            )
    for key, label in (
        ("student_step_s", "student step (calibrated)"),
        ("eval_image_s", "student forward per test image (calibrated)"),
        ("relabel_visit_s", "relabel ensemble forward per image (calibrated)"),
    ):
        if key in cal:
            lines.append(f"| {label} | {fmt_ms(cal[key])} |")
    rows = []
    for name, m in MODES.items():
        other = build_specs(m, out)
        est = estimate_wall(other, costs, jobs)
        rows.append(
            f"| {name} | {est['runs']} | {est['students']} | {fmt_s(est['cpu_s'])} | "
            f"{fmt_s(est['wall_s'])} | "
            + ", ".join(f"{k} {fmt_s(v)}" for k, v in est["by_stage_cpu_s"].items())
            + " |"
        )
    lines.append(
        f"\nEstimated with these costs (`--jobs {jobs}`, greedy scheduling in the driver's "
        "order; contention with other processes is in the measured costs):\n"
    )
    lines.append(
        "| mode | runs | students | CPU time | wall time | CPU time by stage |\n"
        "|:--|--:|--:|--:|--:|:--|"
    )
    lines.extend(rows)
    return "\n".join(lines) + "\n"


def figures_section(out: Path, specs, states: dict[str, str]) -> str:
    """`prism-hpc report` over the seed-0 runs of each (IPC, init): the same initial images
    side by side (paper Fig. 5), per-class diversity curves, embeddings. Written once."""
    lines = []
    groups: dict[tuple[int, str], list[RunSpec]] = {}
    for s in specs:
        if s.group == "main" and s.seed == min(x.seed for x in specs if x.group == "main"):
            groups.setdefault((s.ipc, s.init), []).append(s)
    for (ipc, init), members in sorted(groups.items()):
        if init == "noise":  # the real images belong next to both
            members = [
                x for x in groups.get((ipc, "real"), []) if x.variant == "real_images"
            ] + members
        if not all(states.get(m.name) == "done" for m in members):
            continue
        dest = out / "figures" / f"ipc{ipc}-{init}"
        if not (dest / "report.md").is_file():
            cmd = [*cli(), "report", *(str(run_dir(out, m)) for m in members), "--out", str(dest)]
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
            done = subprocess.run(
                cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                lines.append(
                    f"- IPC {ipc}, {init} init: report failed ({done.stderr.strip()[-200:]})"
                )
                continue
        rel = os.path.relpath(dest / "report.md", out)
        names = ", ".join(m.name for m in members)
        lines.append(f"- IPC {ipc}, {init} init ({names}): [{rel}]({rel})")
    if not lines:
        return ""
    return (
        "## Figures\n\nImage grids of the same initial slots side by side, per-class diversity, "
        "2-D feature embeddings (`prism-hpc report` over the first recovery seed):\n\n"
        + "\n".join(lines)
        + "\n"
    )
