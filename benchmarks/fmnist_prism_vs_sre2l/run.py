#!/usr/bin/env python
"""PRISM vs SRe2L on the full Fashion-MNIST: every run of the benchmark, resumable, timed.

    .venv/bin/python benchmarks/fmnist_prism_vs_sre2l/run.py [--quick | --smoke] [--out DIR]
        [--jobs N] [--dry-run] [--only GLOB]

1. `pool`: a squeeze-only run (`prism-hpc submit ... --stages squeeze`) trains the teacher pool
   of base.yaml once; every other run points its teachers at `pool/teachers/<name>.pt`.
2. The runs, each a normal `prism-hpc submit` (recover -> collect -> relabel -> train -> report)
   in its own run dir under OUT/runs/: the real-image baseline, SRe2L and PRISM from real and
   noise init at each IPC x recovery seed (students: the seeds inside each run), and the rows of
   the paper's Table 2 at IPC 10. `--jobs` runs go side by side, one CPU thread each.
3. OUT/BENCHMARKS.md: accuracy (mean +- std), paired differences PRISM - SRe2L, diversity,
   Table 2, wall time of every stage, the command, measured unit costs and the estimated
   duration of every mode. A complete full run also copies it next to this file.

Resumable: a run whose report marker exists is skipped, a started run continues with
`prism-hpc submit --resume` (finished items are never redone), so rerunning the same command
after an interruption finishes the job. A run whose merged config changed since it started is
refused (use another --out). Stage times come from the local backend's "[stage] k/n done
(item, X s)" lines in OUT/logs/<run>.attempt<k>.log.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent.parent):  # the driver package; the repository (prism_hpc)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from driver import (
    MODES,
    REPO,
    build_specs,
    calibrate,
    fmt_s,
    publish,
    status,
    validate,
    write_benchmarks,
)
from driver.runner import print_dry_run, run_session


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
        help="runs side by side, one CPU thread each (default: 2)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs, their state and command; run nothing"
    )
    p.add_argument(
        "--only", default=None, help="only runs whose name matches this glob (the pool always)"
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
    if args.only:
        specs = specs[:1] + [s for s in specs[1:] if fnmatch.fnmatch(s.name, args.only)]
    validate(specs)
    print(f"[bench] {mode.name} mode: {mode.note}", flush=True)
    print(
        f"[bench] out: {out}; {len(specs) - 1} runs + the teacher pool; --jobs {jobs}", flush=True
    )
    if args.dry_run:
        print_dry_run(out, specs, jobs)
        return 0

    failed, timings, start = run_session(out, mode.name, specs, jobs, argv)
    if failed is None:
        return 130
    if mode.name == "smoke" and not (out / "calibration.json").is_file():
        cal = calibrate(specs[1].config if len(specs) > 1 else specs[0].config)
        (out / "calibration.json").write_text(json.dumps(cal, indent=1) + "\n")
    if not args.no_report:
        path = write_benchmarks(out, mode, specs, timings, argv, jobs, failed)
        print(f"[bench] wrote {path}", flush=True)
        all_done = all(status(out, s) == "done" for s in specs)
        if mode.name == "full" and all_done and not args.only:
            publish(out, HERE)
            print(f"[bench] copied BENCHMARKS.md and figures/ to {HERE}", flush=True)
    for name, log in failed:
        print(f"[bench] FAILED: {name} (see {log})", flush=True)
    print(
        f"[bench] {mode.name} mode finished in {fmt_s(time.time() - start)}"
        + (f"; {len(failed)} run(s) failed, rerun the same command to retry" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
