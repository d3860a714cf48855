#!/usr/bin/env python
"""Norm-statistic priors on Fashion-MNIST: BN-only vs BN+LN vs LN-only statistic pools.

    .venv/bin/python -m benchmarks.fmnist_norm_priors.run [--smoke] [--out DIR] [--jobs N]
        [--dry-run] [--no-report]

1. The run list (specs.py) becomes a sweep spec, OUT/sweep.yaml, with each run's merged
   config in OUT/configs/: its `first:` point `pool` squeezes the seven teachers once (the
   sibling benchmark's five CNNs + vit_mini + convnext_mini); every other run loads
   `runs/pool/teachers/<name>.pt`.
2. `prism-hpc sweep OUT/sweep.yaml --out OUT/runs --backend local --jobs N` runs them, N side
   by side with one CPU thread each; rerun the same command to resume (finished items are
   skipped by their markers).
3. OUT/REPORT.md (report.py): top-1 per cell, paired differences vs BN-only, diversity, LRS.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.fmnist_shared.markdown import fmt_s
from benchmarks.fmnist_shared.session import REPO, dry_run, sweep_runs

from .report import write_report
from .specs import MODES, Mode, build_specs, validate


def default_out(mode: Mode) -> Path:
    suffix = "" if mode.name == "full" else f"-{mode.name}"
    return REPO / "runs" / f"fmnist_norm_priors{suffix}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: proves it end to end")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default runs/fmnist_norm_priors[-smoke])")  # fmt: skip
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs side by side, one CPU thread each (default 2)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list the runs; run nothing")
    p.add_argument("--no-report", action="store_true", help="skip writing REPORT.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    mode = MODES["smoke" if args.smoke else "full"]
    out = (args.out or default_out(mode)).resolve()
    jobs = max(1, args.jobs)
    specs = build_specs(mode, out)
    validate(specs)
    name = default_out(mode).name
    print(f"[norm-priors] {mode.name} mode: {mode.note}", flush=True)
    print(f"[norm-priors] out: {out}; {len(specs) - 1} runs + the teacher pool; --jobs {jobs}",
          flush=True)  # fmt: skip
    if args.dry_run:
        return dry_run(out, name, specs, jobs)
    start = time.time()
    stop, rc, failed = sweep_runs(out, name, specs, jobs, mode.name, argv, "norm-priors")
    if stop is not None:
        return stop
    if not args.no_report:
        path = write_report(out, mode, specs, argv, jobs, failed)
        print(f"[norm-priors] wrote {path}", flush=True)
    print(
        f"[norm-priors] {mode.name} mode finished in {fmt_s(time.time() - start)}"
        + (f"; not finished: {', '.join(failed)}" if failed or rc else ""),
        flush=True,
    )
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
