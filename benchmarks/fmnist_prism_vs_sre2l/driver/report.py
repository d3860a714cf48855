"""BENCHMARKS.md: the header, the setup and the order of the sections; publishing it."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.fmnist_shared.runlist import RunSpec, pool_dir, run_dir
from benchmarks.fmnist_shared.sections import (
    diversity_section,
    header_parts,
    paired_section,
    per_run_section,
)
from benchmarks.fmnist_shared.timing import run_states, submit_walls
from prism_hpc.store import layout

from .sections_results import expectations, table2_section
from .sections_runs import estimate_section, figures_section, timing_section
from .specs import TABLE2_ROWS, Mode

MODULE = "benchmarks.fmnist_prism_vs_sre2l.run"  # the command BENCHMARKS.md names


def write_benchmarks(
    out: Path, mode: Mode, specs: list[RunSpec], argv: list[str], jobs: int, failed: list[str]
) -> Path:
    """OUT/BENCHMARKS.md from the runs finished so far (states and times: their markers)."""
    from prism_hpc.metrics import tables
    from prism_hpc.metrics.runs import load_runs

    states, walls = run_states(out), submit_walls(out)
    finished = [s for s in specs[1:] if states.get(s.name) == "done"]
    by_name = {s.name: s for s in specs}
    parts = header_parts(out, "PRISM vs SRe2L on Fashion-MNIST", mode, specs, states, failed,
                         (MODULE, argv, jobs))  # fmt: skip
    parts.append(
        "How to read these numbers (hand-written, from the committed full run): "
        "[FINDINGS.md](FINDINGS.md), next to the committed copy of this file in "
        "`benchmarks/fmnist_prism_vs_sre2l/`.\n"
    )
    parts.append(setup_section(specs, mode))

    # teachers
    pool = pool_dir(out)
    pool_runs = load_runs([pool]) if layout.config_file(pool).is_file() else []
    if pool_runs:
        parts.append(
            "## Teacher pool (squeezed once, shared by every run)\n\n"
            + tables.teacher_table(pool_runs)
            + "\n"
        )

    main_specs = [s for s in finished if s.group == "main"]
    order = {
        ("real_images", "real"): 0,
        ("sre2l", "real"): 1,
        ("prism", "real"): 2,
        ("sre2l", "noise"): 3,
        ("prism", "noise"): 4,
    }
    main_specs.sort(key=lambda s: (order.get((s.variant, s.init), 9), s.ipc, s.seed))
    runs = load_runs([run_dir(out, s) for s in main_specs]) if main_specs else []
    spec_of = {str(r.path): by_name[r.path.name] for r in runs}
    rows = {}
    for r in runs:
        s = spec_of[str(r.path)]
        rows[(s.variant, s.init)] = r.row
    parts.append("## Student accuracy (paper Table 1 layout)\n")
    parts.append((tables.accuracy_table(runs) if runs else "_No finished runs._") + "\n")
    parts.append(paired_section(runs, rows, spec_of))
    parts.append(diversity_section(runs, rows, spec_of))

    t2_specs = [s for s in finished if s.group == "table2"]
    t2_specs.sort(key=lambda s: ([r for r, _ in TABLE2_ROWS].index(s.variant), s.seed))
    t2 = load_runs([run_dir(out, s) for s in t2_specs]) if t2_specs else []
    parts.append(table2_section(t2, {str(r.path): by_name[r.path.name] for r in t2}))
    parts.append(expectations(runs, rows, t2, {str(r.path): by_name[r.path.name] for r in t2}))
    parts.append(timing_section(out, specs, walls))
    parts.append(estimate_section(out, specs, walls, jobs))
    parts.append(figures_section(out, specs, states))
    parts.append(per_run_section(out, specs, states, runs + t2))
    path = out / "BENCHMARKS.md"
    path.write_text("\n".join(parts))
    return path


def publish(out: Path, dest: Path) -> None:
    """Copy the report and the figures it links to next to the benchmark's code, so that the
    committed BENCHMARKS.md opens with working image links. Figures are replaced, not merged,
    so no stale image from an older run survives next to new numbers."""
    shutil.copyfile(out / "BENCHMARKS.md", dest / "BENCHMARKS.md")
    if (out / "figures").is_dir():
        shutil.rmtree(dest / "figures", ignore_errors=True)
        shutil.copytree(out / "figures", dest / "figures")


def setup_section(specs: list[RunSpec], mode: Mode) -> str:
    base = specs[1].config if len(specs) > 1 else specs[0].config
    rec, st = base["recover"], base["students"]
    ipcs = ", ".join(str(i) for i in mode.ipcs)
    epochs = {s.ipc: s.config["students"]["epochs"] for s in specs[1:] if s.group == "main"}
    limit = f" (first {st['eval_limit']} only)" if st.get("eval_limit") else ""
    by_kind = {}
    for s in specs[1:]:
        kind = f"{s.init} init" if s.group == "main" else "Table 2"
        by_kind.setdefault(kind, s.config["recover"]["lr"])
    lrs = ", ".join(f"{v} ({k})" for k, v in by_kind.items())
    lines = [
        "## Setup\n",
        (
            "- Data: Fashion-MNIST, all 60k training images (pool, relabel references) and the "
            f"10k test images{limit}, {base['data']['resolution']} px, 1 channel."
        ),
        (
            f"- Recovery: {rec['iterations']} iterations per image, Adam lr {lrs} (cosine), "
            f"r_bn {rec['r_bn']}, first-BN x{rec['first_bn_multiplier']}, crop scale "
            f"{rec['augment']['crop_scale']}, jitter {rec['augment']['jitter']}; real or noise "
            "init."
        ),
        (
            f"- Main comparison at IPC {ipcs}: recovery seeds {list(mode.rec_seeds)} x student "
            f"seeds {list(mode.student_seeds)}; rows: real initial images (no optimisation, "
            "`recover.init_only`), SRe2L (ResNet-18 logit + only BN teacher), PRISM (ResNet-18 "
            "logit; BN = ResNet-18 + each of MobileNetV2/ShuffleNetV2/EfficientNet-B0 with "
            "p 0.5 per slice)."
        ),
        (
            f"- Relabel: offline ensemble {base['relabel']['teachers']} (norm-rescaled mean), "
            f"CutMix; students: {st['archs']} width {st.get('width', 1.0)}, {st['loss']}, "
            f"{st['schedule']}, AdamW lr {st['lr']}, batch {st['batch_size']}, epochs per IPC "
            f"{epochs} (the same number of steps at every IPC); one evaluation at the end."
        ),
        (
            f"- Table 2 rows at IPC {mode.table2_ipc}: recovery seeds {list(mode.table2_seeds)} "
            f"x student seeds {list(mode.table2_student_seeds)}; recovery only (hard-label CE "
            "students), real init (variants/table2_*.yaml)."
        ),
        (
            "- Diversity: mean pairwise cosine similarity of penultimate features within a "
            "class (extractor `features_resnet18`, a pool ResNet-18 that is no recovery or "
            "relabel teacher), mean over classes; reference = the real images of the same slots."
        ),
    ]
    return "\n".join(lines) + "\n"
