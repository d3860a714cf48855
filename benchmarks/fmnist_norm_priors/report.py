"""OUT/REPORT.md of the norm-prior experiment, from the runs' own records (markers, metrics,
diversity.json), never from log lines:

- top-1 mean +- std per cell (statistic pool x init) over every (recovery seed, student seed);
- paired differences BN+LN - BN-only and LN-only - BN-only, paired on (recovery seed, student
  seed) (the Fashion-MNIST benchmarks' shared section);
- diversity (intra-class cosine similarity) per cell;
- DD-Ranking's LRS per cell (`prism_hpc.metrics.ddranking`: HLR, IOR, LRS) from the method
  runs (syn-any), their hard-label partners (syn-hard), the random real subset (rdm-any) and
  the real-hard run;
- every run with its state and stage seconds.

    .venv/bin/python -m benchmarks.fmnist_norm_priors.report [--smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.fmnist_shared.markdown import md_table, mean_std_cell
from benchmarks.fmnist_shared.runlist import RunSpec, run_dir
from benchmarks.fmnist_shared.sections import (
    diversity_section,
    header_parts,
    paired_section,
    per_run_section,
)
from benchmarks.fmnist_shared.timing import run_states
from prism_hpc.store import layout

from .specs import INITS, MODES, POOLS, Mode, build_specs

LABELS = {"bn_only": "BN-only", "bn_ln": "BN+LN", "ln_only": "LN-only"}
MODULE = "benchmarks.fmnist_norm_priors.run"


def _rows() -> dict[tuple[str, str], str]:
    return {(v, i): f"{LABELS[v]} ({i} init)" for i in INITS for v in POOLS}


def _top1(runs, spec_of, group: str, variant: str | None = None, init: str | None = None):
    out = []
    for r in runs:
        s = spec_of[str(r.path)]
        if s.group == group and variant in (None, s.variant) and init in (None, s.init):
            out += [st.top1 for st in r.students]
    return out


def accuracy_section(runs, spec_of) -> str:
    lines = []
    for (v, i), label in _rows().items():
        accs = _top1(runs, spec_of, "method", v, i)
        per_seed = {}
        for r in runs:
            s = spec_of[str(r.path)]
            if (s.group, s.variant, s.init) == ("method", v, i) and r.students:
                per_seed[s.seed] = sum(x.top1 for x in r.students) / len(r.students)
        lines.append([label, str(len(accs)), mean_std_cell(accs) if accs else "-",
                      mean_std_cell(list(per_seed.values())) if len(per_seed) > 1 else "-"])  # fmt: skip
    header = ["Statistic pool (init)", "Students",
              "top-1, mean ± std over every (recovery, student) seed",
              "mean ± std over recovery seeds"]  # fmt: skip
    return "## Student top-1 [%] per cell\n\n" + md_table(header, lines) + "\n"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def lrs_section(runs, spec_of) -> str:
    from prism_hpc.metrics.ddranking import hlr, ior, lrs

    rdm = _mean(_top1(runs, spec_of, "rdm"))
    real = _mean(_top1(runs, spec_of, "real"))
    lines = []
    for (v, i), label in _rows().items():
        syn_any = _mean(_top1(runs, spec_of, "method", v, i))
        syn_hard = _mean(_top1(runs, spec_of, "hard", v, i))
        h = None if real is None or syn_hard is None else hlr(real, syn_hard)
        o = None if syn_any is None or rdm is None else ior(syn_any, rdm)
        score = None if h is None or o is None else lrs(h, o)
        cells = [syn_any, syn_hard, h, o, score]
        lines.append([label] + ["-" if c is None else f"{c:.2f}" for c in cells])
    header = ["Statistic pool (init)", "syn-any", "syn-hard", "HLR [pp]", "IOR [pp]", "LRS [%]"]
    fmt = "-" if rdm is None else f"{rdm:.2f}"
    real_s = "-" if real is None else f"{real:.2f}"
    return (
        "## DD-Ranking LRS per cell\n\n"
        + md_table(header, lines)
        + f"\n\nrdm-any (random real subset, same slots, same evaluation): {fmt}; real-hard "
        f"(see README: a real subset, not the whole training set): {real_s}. HLR = real-hard "
        "- syn-hard (lower is better), IOR = syn-any - rdm-any, LRS = (e^a - e^-1) / (e - "
        "e^-1) with a = (IOR - HLR) / 200 (`prism_hpc.metrics.ddranking`). syn-hard comes "
        "from the hard-label partner runs (recovery seed 0 only).\n"
    )


def teachers_section(out: Path, specs: list[RunSpec]) -> str:
    """The pool's teachers as squeeze recorded them (test top-1 on the 10k test images)."""
    import json

    rows = []
    for path in layout.teacher_infos(run_dir(out, specs[0])):
        info = json.loads(path.read_text())
        rows.append([path.stem, str(info.get("arch")), str(info.get("steps")),
                     f"{100 * info.get('test_top1', 0):.1f}", str(info.get("params"))])  # fmt: skip
    if not rows:
        return ""
    header = ["Teacher", "Architecture", "Squeeze steps", "Test top-1 [%]", "Parameters"]
    return (
        "## Teacher pool (squeezed once, shared by every run)\n\n" + md_table(header, rows) + "\n"
    )


def statistics_section(out: Path, specs: list[RunSpec]) -> str:
    """What the LN teachers' statistics pass cost per run (the shared per-run table has no
    statistics column): item seconds from the markers."""
    from benchmarks.fmnist_shared.markdown import fmt_s
    from benchmarks.fmnist_shared.timing import stage_seconds

    secs = {s.name: stage_seconds(run_dir(out, s)).get("statistics") for s in specs[1:]}
    secs = {k: v for k, v in secs.items() if v}
    if not secs:
        return ""
    mean = sum(secs.values()) / len(secs)
    return (
        f"LN statistics pass (statistics stage, both LN teachers): {fmt_s(mean)} per run on "
        f"average over {len(secs)} run(s) that have LN teachers.\n"
    )


def write_report(out: Path, mode: Mode, specs: list[RunSpec], argv: list[str], jobs: int,
                 failed: list[str]) -> Path:  # fmt: skip
    from prism_hpc.metrics.runs import load_runs

    states = run_states(out)
    present = [s for s in specs[1:] if layout.config_file(run_dir(out, s)).is_file()]
    runs = load_runs([run_dir(out, s) for s in present])
    spec_of = {str(run_dir(out, s)): s for s in present}
    method = [r for r in runs if spec_of[str(r.path)].group == "method"]
    comparisons = [((v, i), ("bn_only", i)) for i in INITS for v in ("bn_ln", "ln_only")]
    parts = header_parts(out, "Norm-statistic priors on Fashion-MNIST", mode, specs, states,
                         failed, (MODULE, argv, jobs))  # fmt: skip
    parts += [
        teachers_section(out, specs),
        accuracy_section(runs, spec_of),
        paired_section(method, _rows(), spec_of, comparisons),
        diversity_section(method, _rows(), spec_of),
        lrs_section(runs, spec_of),
        statistics_section(out, specs),
        per_run_section(out, specs, states, runs),
    ]
    path = out / "REPORT.md"
    path.write_text("\n".join(p for p in parts if p))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="REPORT.md from the runs finished so far")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    mode = MODES["smoke" if args.smoke else "full"]
    from .run import default_out

    out = (args.out or default_out(mode)).resolve()
    path = write_report(out, mode, build_specs(mode, out), [], args.jobs, [])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
