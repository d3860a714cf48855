#!/usr/bin/env python
"""Every SRe2L-family method on Fashion-MNIST under one protocol: resumable, timed, scored.

    .venv/bin/python benchmarks/fmnist_baselines/run.py [--quick | --ipc10 | --smoke] [--methods a,b]
        [--out DIR] [--jobs N] [--dry-run] [--only GLOB] [--no-report]

1. `pool`: `prism-hpc submit ... --stages squeeze` trains the shared teacher pool once.
2. Per IPC, per method (PRISM = configs/fmnist_demo.yaml, each configs/baselines/fmnist_*.yaml)
   and init, per recovery seed: a normal `prism-hpc submit` (recover -> collect -> relabel ->
   train -> report) whose config is the protocol with the method's `recover` section; plus the
   DD-Ranking partners: a hard-label run per method (syn-hard), the real images of the same
   slots (rdm-any) and the full real training set with hard labels (real-hard).
3. OUT/BENCHMARKS.md: top-1 mean +- std per method, paired differences against PRISM,
   diversity, LRS/HLR/IOR, wall time per method, every run.

Resumable like benchmarks/fmnist_prism_vs_sre2l/run.py (whose runner this reuses): rerun the
same command after an interruption; finished runs are skipped, started ones resumed.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent, HERE.parent.parent):  # suite; benchmarks/; the repository
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from fmnist_prism_vs_sre2l.driver import Timings, fmt_s
from fmnist_prism_vs_sre2l.driver.runner import print_dry_run, run_session
from suite.report import write_benchmarks
from suite.specs import MODES, REPO, build_specs, discover_methods, validate


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
        help="runs side by side, one CPU thread each (default 2)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list runs, states, commands; run nothing"
    )
    p.add_argument("--only", default=None, help="only runs whose name matches this glob (+ pool)")
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
    if args.only:
        specs = specs[:1] + [s for s in specs[1:] if fnmatch.fnmatch(s.name, args.only)]
    validate(specs)
    print(f"[bench] {mode.name} mode: {mode.note}", flush=True)
    print(f"[bench] methods: {', '.join(f'{m.key} ({m.label}, {m.path.relative_to(REPO)})' for m in methods)}",
          flush=True)  # fmt: skip
    print(f"[bench] out: {out}; {len(specs) - 1} runs + the teacher pool; --jobs {jobs}",
          flush=True)  # fmt: skip
    if args.dry_run:
        print_dry_run(out, specs, jobs)
        return 0

    if args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        ran = [a for a in argv if a != "--report-only"]  # the command that made the runs
        path = write_benchmarks(out, mode, specs, methods, Timings(out / "timings.json"), ran,
                                jobs, [])  # fmt: skip
        print(f"[bench] wrote {path}", flush=True)
        return 0

    failed, timings, start = run_session(out, mode.name, specs, jobs, argv)
    if failed is None:
        return 130
    if not args.no_report:
        path = write_benchmarks(out, mode, specs, methods, timings, argv, jobs, failed)
        print(f"[bench] wrote {path}", flush=True)
    for name, log in failed:
        print(f"[bench] FAILED: {name} (see {log})", flush=True)
    print(f"[bench] {mode.name} mode finished in {fmt_s(time.time() - start)}"
          + (f"; {len(failed)} run(s) failed, rerun the same command to retry" if failed else ""),
          flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
