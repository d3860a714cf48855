#!/usr/bin/env python
"""PRISM vs SRe2L on the full Fashion-MNIST: every run of the benchmark through `prism-hpc sweep`.

    .venv/bin/python -m benchmarks.fmnist_prism_vs_sre2l.run [--quick | --smoke] [--out DIR]
        [--jobs N] [--dry-run] [--no-report]

1. The mode's run list (driver/specs.py: base.yaml + one overlay of variants/ + per-run
   settings) becomes a sweep spec, OUT/sweep.yaml, with each run's merged config in
   OUT/configs/: its `first:` point `pool` (`stages: [squeeze]`) trains the teacher pool of
   base.yaml once; every other run points its teachers at `runs/pool/teachers/<name>.pt`. The
   runs: the real-image baseline, SRe2L and PRISM from real and noise init at each IPC x
   recovery seed (students: the seeds inside each run), and the rows of the paper's Table 2.
2. `prism-hpc sweep OUT/sweep.yaml --out OUT/runs --backend local --jobs N` runs them, `--jobs`
   side by side, one CPU thread each (`--dry-run`: the sweep's dry run, nothing written).
3. OUT/BENCHMARKS.md: accuracy (mean +- std), paired differences PRISM - SRe2L, diversity,
   Table 2, wall time of every stage, the command, measured unit costs and the estimated
   duration of every mode. A complete full run also copies it next to this file.

Resumable: rerun the same command; the sweep skips runs whose items are all done (by their
markers) and resumes started ones (finished items are never redone). A run whose merged config
changed since it started is refused (use another --out). Stage times are the `item_seconds`
the task runner writes into every item's marker; submit times are the sweep's `sweep.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from benchmarks.fmnist_shared.markdown import fmt_s
from benchmarks.fmnist_shared.session import dry_run, sweep_runs

from .driver import HERE, MODES, REPO, build_specs, calibrate, publish, validate, write_benchmarks


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    m = p.add_mutually_exclusive_group()
    m.add_argument("--quick", action="store_true", help="IPC 10 only, fewer seeds (~30 min)")
    m.add_argument("--smoke", action="store_true", help="tiny sizes: a few minutes, for tests")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/fmnist_prism_vs_sre2l[-quick|-smoke])",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs side by side, one CPU thread each (default: 2; `prism-hpc sweep --jobs`)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="`prism-hpc sweep --dry-run`: list the runs"
    )
    p.add_argument("--no-report", action="store_true", help="skip writing BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    mode = MODES["quick" if args.quick else "smoke" if args.smoke else "full"]
    suffix = "" if mode.name == "full" else f"-{mode.name}"
    out = (args.out or REPO / "runs" / f"fmnist_prism_vs_sre2l{suffix}").resolve()
    jobs = max(1, args.jobs)
    specs = build_specs(mode, out)
    validate(specs)
    name = f"fmnist_prism_vs_sre2l{suffix}"
    print(f"[bench] {mode.name} mode: {mode.note}", flush=True)
    print(f"[bench] out: {out}; {len(specs) - 1} runs + the teacher pool; --jobs {jobs}",
          flush=True)  # fmt: skip
    if args.dry_run:
        return dry_run(out, name, specs, jobs)
    start = time.time()
    stop, rc, failed = sweep_runs(out, name, specs, jobs, mode.name, argv, "bench")
    if stop is not None:
        return stop
    if mode.name == "smoke" and not (out / "calibration.json").is_file():
        cal = calibrate(specs[1].config if len(specs) > 1 else specs[0].config)
        (out / "calibration.json").write_text(json.dumps(cal, indent=1) + "\n")
    if not args.no_report:
        path = write_benchmarks(out, mode, specs, argv, jobs, failed)
        print(f"[bench] wrote {path}", flush=True)
        if mode.name == "full" and not failed and rc == 0:
            publish(out, HERE)
            print(f"[bench] copied BENCHMARKS.md and figures/ to {HERE}", flush=True)
    print(f"[bench] {mode.name} mode finished in {fmt_s(time.time() - start)}"
          + (f"; not finished: {', '.join(failed)}; rerun the same command to retry (logs: "
             f"{out / 'runs'}/<run>.log)" if failed or rc else ""), flush=True)  # fmt: skip
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
