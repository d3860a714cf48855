"""BENCHMARKS.md parts both Fashion-MNIST benchmarks share: the header (what finished, the
command, the machine), the paired differences, diversity and the table of every run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .markdown import fmt_s, md_table, mean_std_cell
from .runlist import STAGES, RunSpec, run_dir
from .session import REPO, read_sessions, sweep_command
from .timing import stage_seconds


def git_state() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO, check=False, capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain")
        return f"git {sha}" + (" + uncommitted changes" if dirty else "") if sha else "no git"
    except (OSError, subprocess.SubprocessError):
        return "no git"


def header_parts(
    out: Path,
    title: str,
    mode,
    specs: list[RunSpec],
    states: dict[str, str],
    failed: list[str],
    command: tuple[str, list[str], int],
) -> list[str]:
    """Title, mode note, what finished, the exact commands and the machine/code line of a
    BENCHMARKS.md. `command`: (the benchmark's module, its argv, --jobs)."""
    module, argv, jobs = command
    finished = sum(states.get(s.name) == "done" for s in specs[1:])
    parts = [f"# {title} ({mode.name} mode)\n"]
    if mode.name != "full":
        parts.append(f"> **{mode.note}**\n")
    parts.append(
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{out}`: "
        f"{finished} of {len(specs) - 1} runs finished"
        + (f"; **failed: {', '.join(failed)}**" if failed else "")
        + ".\n"
    )
    py = sys.executable
    py = os.path.relpath(py, REPO) if str(py).startswith(str(REPO)) else py
    sweep = [os.path.relpath(x, out) if x.startswith(str(out)) else x
             for x in sweep_command(out / "sweep.yaml", out, jobs)[3:]]  # fmt: skip
    parts.append(
        "Command (from the repository root):\n\n```\n"
        + shlex.join([py, "-m", module, *argv])
        + "\n```\n\nwhich writes the run list as a sweep spec, `sweep.yaml` (each run's merged "
        "config in `configs/`), and runs it with `prism-hpc " + shlex.join(sweep) + "` in the "
        "output folder's terms.\n"
    )
    sessions = read_sessions(out)
    total_wall = sum(x.get("wall_s", 0.0) for x in sessions)
    loads = [x.get("loadavg_start") for x in sessions if x.get("loadavg_start")]
    parts.append(
        f"Machine: {os.cpu_count()} CPU cores, `--jobs {jobs}` runs side by side, one thread "
        f"each; driver wall time {fmt_s(total_wall)} over {len(sessions)} session(s)"
        + (f"; 1-min load average at session starts: {', '.join(f'{x:.1f}' for x in loads)}"
           if loads else "")
        + f". Code: {git_state()}.\n"
    )  # fmt: skip
    return parts


def paired_section(runs, rows, spec_of, comparisons=None) -> str:
    """PRISM - SRe2L (and each vs the real images), paired on (IPC, recovery seed, student seed);
    `comparisons`: other ((variant, init), (variant, init)) pairs (the multi-method benchmark)."""
    from prism_hpc.metrics import tables

    if not runs:
        return ""
    acc: dict[tuple, float] = {}
    for r in runs:
        s = spec_of[str(r.path)]
        for st in r.students:
            acc[(s.variant, s.init, s.ipc, s.seed, st.arch, st.seed)] = st.top1
    comparisons = comparisons or [
        (("prism", init), ("sre2l", init)) for init in ("real", "noise")
    ] + [
        (("prism", "real"), ("real_images", "real")),
        (("sre2l", "real"), ("real_images", "real")),
    ]
    lines = []
    for a, b in comparisons:
        if a not in rows or b not in rows:
            continue
        by_ipc: dict[tuple[int, str], list[tuple[int, float]]] = {}
        for (v, i, ipc, rs, arch, ss), top1 in acc.items():
            if (v, i) == a and (b[0], b[1], ipc, rs, arch, ss) in acc:
                by_ipc.setdefault((ipc, arch), []).append(
                    (rs, top1 - acc[(b[0], b[1], ipc, rs, arch, ss)])
                )
        for (ipc, arch), pairs in sorted(by_ipc.items()):
            d = [x for _, x in pairs]
            per_seed = {}
            for rs, x in pairs:
                per_seed.setdefault(rs, []).append(x)
            seed_means = [sum(v) / len(v) for _, v in sorted(per_seed.items())]
            lines.append(
                [
                    f"{rows[a]} − {rows[b]}",
                    str(ipc),
                    tables.pretty_arch(arch),
                    mean_std_cell(d),
                    f"{min(d):+.2f} … {max(d):+.2f}",
                    f"{sum(x > 0 for x in d)}/{len(d)}",
                    ", ".join(f"{m:+.2f}" for m in seed_means),
                    mean_std_cell(seed_means) if len(seed_means) > 1 else "-",
                ]
            )
    if not lines:
        return ""
    header = [
        "Difference",
        "IPC",
        "Student",
        "Δ top-1 [pp], mean ± std over pairs",
        "range",
        "wins",
        "per recovery seed",
        "mean ± std over recovery seeds",
    ]
    return (
        "### Paired differences\n\n" + md_table(header, lines) + "\n\nPairs share "
        "IPC, recovery seed (config `seed`, also the relabel crops) and student seed. The "
        "student seeds of one recovery run are not independent; the last column (one mean "
        "per recovery seed) is the more honest spread.\n"
    )


def diversity_section(runs, rows, spec_of) -> str:

    cells: dict[tuple, list[tuple[int, float, float | None]]] = {}
    for r in runs:
        d = r.diversity or {}
        if not d.get("distilled"):
            continue
        s = spec_of[str(r.path)]
        ref = (d.get("reference") or {}).get("mean")
        cells.setdefault((s.ipc, s.variant, s.init), []).append(
            (s.seed, d["distilled"]["mean"], ref)
        )
    if not cells:
        return "## Diversity\n\n_No diversity.json yet._\n"
    lines = []
    for (ipc, v, i), vals in sorted(
        cells.items(),
        key=lambda kv: (
            kv[0][0],
            list(rows).index((kv[0][1], kv[0][2])) if (kv[0][1], kv[0][2]) in rows else 9,
        ),
    ):
        dist = [x for _, x, _ in vals]
        refs = [x for _, _, x in vals if x is not None]
        delta = [x - y for _, x, y in vals if y is not None]
        lines.append(
            [
                rows.get((v, i), v),
                str(ipc),
                str(len(vals)),
                mean_std_cell(dist, 4),
                mean_std_cell(refs, 4) if refs else "-",
                mean_std_cell(delta, 4) if delta else "-",
            ]
        )
    text = "## Diversity (intra-class cosine similarity, lower = more diverse)\n\n" + md_table(
        [
            "Method",
            "IPC",
            "Runs",
            "Distilled cos",
            "Real reference cos",
            "Δ distilled − reference",
        ],
        lines,
    )
    paired = []
    for ipc in sorted({k[0] for k in cells}):
        for init in ("real", "noise"):
            a = {sd: x for sd, x, _ in cells.get((ipc, "prism", init), [])}
            b = {sd: x for sd, x, _ in cells.get((ipc, "sre2l", init), [])}
            d = [a[k] - b[k] for k in sorted(a) if k in b]
            if d:
                paired.append(
                    [
                        f"PRISM − SRe2L ({init} init)",
                        str(ipc),
                        mean_std_cell(d, 4),
                        f"{sum(x < 0 for x in d)}/{len(d)}",
                    ]
                )
    if paired:
        text += "\n\nPaired by recovery seed (negative = PRISM more diverse):\n\n" + md_table(
            ["Difference", "IPC", "Δ cos (mean ± std)", "PRISM lower"], paired
        )
    return text + (
        "\n\nPer run: mean over the 10 classes of the mean pairwise cosine similarity; cells: "
        "mean ± sample std over recovery runs. Paper (ImageNet-1K): SRe2L/G-VBSM/DELT 0.86-0.92, "
        "PRISM <= 0.83.\n"
    )


def per_run_section(out: Path, specs: list[RunSpec], states: dict[str, str], runs) -> str:
    """Every run: state, method, seeds, accuracies, diversity and its stage seconds."""
    info = {r.path.name: r for r in runs}
    lines = []
    for s in specs:
        st = stage_seconds(run_dir(out, s))
        r = info.get(s.name)
        accs = (", ".join(f"{x.top1:.2f}" for x in sorted(r.students, key=lambda x: x.seed))
                if r else "-")  # fmt: skip
        d = r.diversity if r else None
        div = f"{d['distilled']['mean']:.4f}" if d and d.get("distilled") else "-"
        lines.append(
            [s.name, states.get(s.name, "not started"), s.config.get("method", "-"), s.init,
             str(s.seed), accs, div]
            + [fmt_s(st.get(k)) if st.get(k) else "-" for k in STAGES]
        )  # fmt: skip
    header = ["Run", "State", "Method", "Init", "Seed", "Top-1 per student seed", "Diversity",
              *STAGES]  # fmt: skip
    return (
        "<details><summary>Every run</summary>\n\n" + md_table(header, lines)
        + "\n\nConfigs: `configs/<run>.yaml` (the protocol + per-run settings), listed in "
        "`sweep.yaml`; run dirs: `runs/<run>/` (each with its own report.md and figures); "
        "`runs/<run>.log`: the output of its `prism-hpc submit`; stage columns: the "
        "`item_seconds` of its items' markers.\n\n</details>\n"
    )  # fmt: skip
