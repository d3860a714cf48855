"""BENCHMARKS.md of the multi-method benchmark. The sections both Fashion-MNIST benchmarks have
(header, paired differences, diversity, every run) are `benchmarks.fmnist_shared.sections`;
this module adds the DD-Ranking scores and the wall time per method, and orders the document.
Times come from the runs' markers and the sweep's `sweep.json`, never from a log line."""

from __future__ import annotations

from pathlib import Path

from benchmarks.fmnist_shared.markdown import fmt_s, md_table
from benchmarks.fmnist_shared.runlist import STAGES, RunSpec, pool_dir, run_dir
from benchmarks.fmnist_shared.sections import (
    diversity_section,
    header_parts,
    paired_section,
    per_run_section,
)
from benchmarks.fmnist_shared.timing import run_states, stage_seconds, submit_walls
from prism_hpc.store import layout

from .specs import Method, Mode

MODULE = "benchmarks.fmnist_baselines.run"  # the command BENCHMARKS.md names


def _order(methods: list[Method]) -> dict[tuple[str, str], int]:
    order: dict[tuple[str, str], int] = {}
    for m in methods:
        for init in m.inits:
            order[(m.key, init)] = len(order)
    return order


def wall_section(out: Path, specs: list[RunSpec], walls: dict[str, float], methods) -> str:
    """Per method and init: mean seconds per run of each stage, and per run in all."""
    labels = {m.key: m.label for m in methods}
    groups: dict[tuple[str, str, str, int], list[RunSpec]] = {}
    for s in specs:
        if s.group == "pool":
            continue
        groups.setdefault((s.group, s.variant, s.init, s.ipc), []).append(s)
    lines = []
    # the pipeline's stages plus any a method adds (DELT's rank, G-VBSM/EDC's statistics)
    seconds = {s.name: stage_seconds(run_dir(out, s)) for s in specs if s.group != "pool"}
    seen = {k for per in seconds.values() for k in per}
    stages = (
        [k for k in ("squeeze", "rank", "statistics") if k in seen]
        + [k for k in STAGES if k != "squeeze"]
        + sorted(seen - set(STAGES) - {"rank", "statistics"})
    )
    kinds = {"method": "", "hard": " (hard labels)", "rdm": "", "real": ""}
    for (group, variant, init, ipc), members in groups.items():
        timed = [s for s in members if seconds[s.name]]
        if not timed:
            continue
        per = [seconds[s.name] for s in timed]
        submits = [walls.get(s.name, 0.0) for s in timed]
        name = labels.get(variant, {"random_real": "Random real subset",
                                    "full_real": "Full real data"}.get(variant, variant))  # fmt: skip
        row = [f"{name}{kinds[group]}", init, "all" if ipc == 0 else str(ipc), str(len(timed))]
        row += [fmt_s(sum(p.get(k, 0.0) for p in per) / len(per)) if any(k in p for p in per)
                else "-" for k in stages]  # fmt: skip
        row.append(fmt_s(sum(submits) / len(submits)))
        lines.append(row)
    if not lines:
        return ""
    return (
        "## Wall time per method on this machine\n\n"
        + md_table(["Method", "Init", "IPC", "Runs", *stages, "submit wall per run"], lines)
        + "\n\nMean seconds per run of each stage (sum of the `item_seconds` in its items' "
        "markers), one intra-op thread per process, `--jobs` processes side by side on a shared "
        "machine: compare methods within this table, not with other machines. `recover` is "
        "where the methods differ; the rest is the shared protocol.\n"
    )


def pool_section(out: Path) -> str:
    from prism_hpc.metrics import tables
    from prism_hpc.metrics.runs import load_runs

    if not layout.config_file(pool_dir(out)).is_file():
        return ""
    pool = load_runs([pool_dir(out)])
    return (
        "## Teacher pool (squeezed once, shared by every run)\n\n"
        + tables.teacher_table(pool)
        + "\n"
    )


def setup_section(specs: list[RunSpec], mode: Mode, methods: list[Method]) -> str:
    base = next((s.config for s in specs if s.group == "method"), specs[0].config)
    st, rl = base["students"], base["relabel"]
    rec_iters = {
        m.label: next((s.config["recover"].get("iterations") for s in specs
                       if s.group == "method" and s.variant == m.key), None)
        for m in methods
    }  # fmt: skip
    limit = f" (first {st['eval_limit']} only)" if st.get("eval_limit") else ""
    lines = [
        "## Setup (one protocol)\n",
        (
            f"- Data: Fashion-MNIST, 60k training / 10k test images{limit}, "
            f"{base['data']['resolution']} px, 1 channel; teachers squeezed once (`pool`)."
        ),
        (
            "- A method differs only in its `recover` section (taken from its config: PRISM "
            "`configs/fmnist_demo.yaml`, the others `configs/baselines/fmnist_*.yaml`), its "
            f"iterations scaled by {mode.iter_scale}: "
            + ", ".join(f"{k} {v}" for k, v in rec_iters.items())
            + ". The other init (where the method allows both) uses the sibling benchmark's "
            "`variants/init_*.yaml` lr (real 0.05, noise 0.25)."
        ),
        (
            f"- IPC {', '.join(map(str, mode.ipcs))}; recovery seeds {list(mode.rec_seeds)} x "
            f"student seeds {list(mode.student_seeds)}; syn-hard runs for recovery seeds "
            f"{list(mode.hard_seeds)}."
        ),
        (
            f"- Relabel (all methods): {rl['mode']} ensemble {rl['teachers']}, {rl['mix']}; "
            f"students: {st['archs']} width {st.get('width', 1.0)}, {st['loss']}, "
            f"{st['schedule']}, AdamW lr {st['lr']}, batch {st['batch_size']}, "
            f"{mode.student_visits} image visits per student at every IPC, one evaluation at "
            "the end."
        ),
        (
            "- DD-Ranking partners: syn-hard = the same recover section and seed with hard "
            "labels (relabel none, CE); rdm-any = the real images of the same slots "
            "(`init_only`) under the protocol's evaluation; real-hard = all 60k images, hard "
            f"labels, {mode.real_hard_epochs} epoch(s)."
        ),
    ]
    return "\n".join(lines) + "\n"


def write_benchmarks(
    out: Path, mode: Mode, specs: list[RunSpec], methods: list[Method],
    command: tuple[list[str], int], failed: list[str],
) -> Path:  # fmt: skip
    """OUT/BENCHMARKS.md from the runs finished so far; `command`: (argv, --jobs)."""
    from prism_hpc.metrics import ddranking, tables
    from prism_hpc.metrics.runs import load_runs

    states, walls = run_states(out), submit_walls(out)
    finished = [s for s in specs[1:] if states.get(s.name) == "done"]
    by_name = {s.name: s for s in specs}
    order = _order(methods)
    parts = header_parts(out, "Every SRe2L-family method on Fashion-MNIST, one protocol", mode,
                         specs, states, failed, (MODULE, *command))  # fmt: skip
    parts.append("Findings (hand-written, for the committed run): [FINDINGS.md](FINDINGS.md).\n")
    parts.append(setup_section(specs, mode, methods))
    parts.append(pool_section(out))

    scored = [s for s in finished if s.group in ("method", "rdm", "real")]
    scored.sort(key=lambda s: (s.group != "method", order.get((s.variant, s.init), 99), s.ipc,
                               s.seed))  # fmt: skip
    runs = load_runs([run_dir(out, s) for s in scored]) if scored else []
    spec_of = {str(r.path): by_name[r.path.name] for r in runs}
    rows = {}
    for r in runs:
        s = spec_of[str(r.path)]
        rows.setdefault((s.variant, s.init), r.row)
    parts.append("## Student top-1 (mean ± std over recovery x student seeds)\n")
    parts.append((tables.accuracy_table(runs) if runs else "_No finished runs._") + "\n")
    # against PRISM from the same init; a method with an init of its own (EDC's RDED images)
    # against PRISM from real images, the nearest start
    comparisons = [((k, i), ("prism", i if ("prism", i) in order else "real"))
                   for (k, i) in order if k != "prism"]  # fmt: skip
    method_runs = [r for r in runs if spec_of[str(r.path)].group == "method"]
    paired = paired_section(method_runs, rows, spec_of, comparisons)
    parts.append(paired.replace("### Paired differences", "## Paired differences against PRISM"))
    parts.append(diversity_section([r for r in runs if spec_of[str(r.path)].group != "real"],
                                   rows, spec_of))  # fmt: skip

    hard = [s for s in finished if s.group == "hard"]
    all_runs = runs + (load_runs([run_dir(out, s) for s in hard]) if hard else [])
    ranked = ddranking.lrs_table(all_runs) if all_runs else None
    parts.append("## DD-Ranking scores (LRS, HLR, IOR)\n\n" + (ranked or "_Nothing to score._")
                 + "\n\nComputed by `prism_hpc.metrics.ddranking` (docs/baselines.md): "
                 "accuracies are the final top-1 means over matching runs and student seeds; "
                 "HLR = real-hard − syn-hard, IOR = syn-any − rdm-any (points), LRS with "
                 "weight 0.5 (%).\n")  # fmt: skip
    parts.append(wall_section(out, specs, walls, methods))
    parts.append(per_run_section(out, specs, states, all_runs))
    path = out / "BENCHMARKS.md"
    path.write_text("\n".join(p for p in parts if p))
    return path
