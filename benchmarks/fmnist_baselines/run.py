#!/usr/bin/env python
"""Every SRe2L-family method on Fashion-MNIST under one protocol, through `prism-hpc sweep`.

    .venv/bin/python -m benchmarks.fmnist_baselines.run [--quick | --ipc10 | --smoke]
        [--methods a,b] [--out DIR] [--jobs N] [--dry-run] [--no-report] [--report-only]

1. The run list (suite/specs.py) becomes a sweep spec, OUT/sweep.yaml, with each run's merged
   config in OUT/configs/: the `first:` point `pool` (`stages: [squeeze]`) trains the shared
   teacher pool once; then per IPC, per method (PRISM = configs/fmnist_demo.yaml, each
   configs/baselines/fmnist_*.yaml) and init, per recovery seed a normal run (recover ->
   collect -> relabel -> train -> report) whose config is the protocol with the method's
   `recover` section; plus the DD-Ranking partners: a hard-label run per method (syn-hard),
   the real images of the same slots (rdm-any) and the full real training set with hard labels
   (real-hard).
2. `prism-hpc sweep OUT/sweep.yaml --out OUT/runs --backend local --jobs N` runs them.
3. OUT/BENCHMARKS.md: top-1 mean +- std per method, paired differences against PRISM,
   diversity, LRS/HLR/IOR, wall time per method (from the items' markers), every run.

Resumable like benchmarks/fmnist_prism_vs_sre2l: rerun the same command after an interruption;
the sweep skips finished runs by their markers and resumes started ones. A wider `--methods` (or
a new method config) into the same --out grows the sweep: only the new runs run, as long as the
pool's teachers do not change; a narrower one is refused by the sweep (use --report-only).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.fmnist_shared.markdown import fmt_s
from benchmarks.fmnist_shared.session import dry_run, sweep_runs

from .suite.report import write_benchmarks
from .suite.specs import MODES, REPO, build_specs, discover_methods, validate


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    m = p.add_mutually_exclusive_group()
    m.add_argument("--quick", action="store_true", help="IPC 10, 2 recovery seeds (~35 min)")
    m.add_argument(
        "--ipc10",
        action="store_true",
        help="the full protocol at IPC 10 only, syn-hard for seed 0 (~2.5 h)",
    )
    m.add_argument("--smoke", action="store_true", help="tiny sizes: proves the driver")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated method keys (prism, sre2l, cda, delt, ...); default all",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/fmnist_baselines[-quick|-ipc10|-smoke])",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs side by side, one CPU thread each (default 2; `prism-hpc sweep --jobs`)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="`prism-hpc sweep --dry-run`: list the runs"
    )
    p.add_argument("--no-report", action="store_true", help="skip writing BENCHMARKS.md")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write BENCHMARKS.md from the runs finished so far; run nothing",
    )
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    chosen = [name for name in ("quick", "ipc10", "smoke") if getattr(args, name)]
    mode = MODES[chosen[0] if chosen else "full"]
    suffix = "" if mode.name == "full" else f"-{mode.name}"
    out = (args.out or REPO / "runs" / f"fmnist_baselines{suffix}").resolve()
    jobs = max(1, args.jobs)
    methods = discover_methods()
    only = None if not args.methods else {x.strip() for x in args.methods.split(",") if x.strip()}
    specs = build_specs(mode, out, methods, only)
    if only is not None:
        methods = [m for m in methods if m.key in only]
    validate(specs)
    name = f"fmnist_baselines{suffix}"
    print(f"[bench] {mode.name} mode: {mode.note}", flush=True)
    print(f"[bench] methods: {', '.join(f'{m.key} ({m.label}, {m.path.relative_to(REPO)})' for m in methods)}",
          flush=True)  # fmt: skip
    print(f"[bench] out: {out}; {len(specs) - 1} runs + the teacher pool; --jobs {jobs}",
          flush=True)  # fmt: skip
    if args.dry_run:
        return dry_run(out, name, specs, jobs)
    if args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        ran = [a for a in argv if a != "--report-only"]  # the command that made the runs
        path = write_benchmarks(out, mode, specs, methods, (ran, jobs), [])
        print(f"[bench] wrote {path}", flush=True)
        return 0
    start = time.time()
    stop, rc, failed = sweep_runs(out, name, specs, jobs, mode.name, argv, "bench")
    if stop is not None:
        return stop
    if not args.no_report:
        path = write_benchmarks(out, mode, specs, methods, (argv, jobs), failed)
        print(f"[bench] wrote {path}", flush=True)
    print(f"[bench] {mode.name} mode finished in {fmt_s(time.time() - start)}"
          + (f"; not finished: {', '.join(failed)}; rerun the same command to retry (logs: "
             f"{out / 'runs'}/<run>.log)" if failed or rc else ""), flush=True)  # fmt: skip
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
