"""Kill-anywhere: SIGKILL a local run at seeded points spread over every stage, resume it, and
compare the result bit-for-bit with an uninterrupted reference run.

    .venv/bin/python benchmarks/kill_anywhere/run.py --trials 30 --seed 0 --out RESULTS.md

One uninterrupted reference run measures each stage's window (from the previous stage's last
marker to its own last marker, by the markers' mtimes). Trial t aims at stage
STAGES[t % len(STAGES)] (the stages that left markers in the reference, in the order of
`prism_hpc.stages.registry()`) and a uniform offset inside that window, drawn from (seed, t).
That point is re-expressed as "d seconds after output line X" (X the last line the reference
had printed by then, with timings and paths blanked; process start before the first), and the
trial waits for X in its own run before counting d, so a stage that takes 30 ms in the
reference is still hit on a loaded machine where absolute times drift by seconds. The stage
actually killed in is then read from the markers, not assumed.

Per trial the submit runs in its own session; the whole process group gets SIGKILL. Every
`*.done` marker present at the kill is recorded with the size and sha256 of the files it
vouches for; then `submit --resume` (or, when the kill came before the run directory existed,
a fresh submit to the same path) finishes the run, and the driver checks: finished items not
lost, not corrupted, not redone; distilled images/labels/ipc_index, every soft-label dataset,
every student's metrics (timing fields ignored) and every teacher tensor identical to the
reference; and how many `.tmp-` files were left behind. The pieces are in `ka_driver/`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the ka_driver package next to this script

from ka_driver.launch import make_launch
from ka_driver.report import export_commit, git_sha, summary, table
from ka_driver.stages import pipeline_stages
from ka_driver.trials import Setup, draw, run_reference, run_trial

CONFIG = HERE / "tiny.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("--stages", default="",
                   help="stages to aim at, round-robin (default: every stage that ran in the "
                        "reference)")  # fmt: skip
    p.add_argument("--out", type=Path, help="markdown file for the table (default: stdout only)")
    p.add_argument("--json", type=Path, help="also write every trial's record as JSON")
    p.add_argument("--work", type=Path, help="folder for the runs (default: a new temp folder)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every run")
    p.add_argument("--commit", help="run this commit's code (git archive) instead of the checkout")
    p.add_argument("--keep", action="store_true", help="keep clean trials' run directories")
    p.add_argument("--max-minutes", type=float,
                   help="start no new trial after this long; the table has the trials done")  # fmt: skip
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    known = pipeline_stages()
    unknown = [s for s in args.stages if s not in known]
    if unknown or args.trials < 1:
        p.error(f"--stages: unknown {unknown} (known: {', '.join(known)})" if unknown
                else "--trials must be >= 1")  # fmt: skip
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the reference and the trials; print (and write) the table. Exit 0 only when every
    trial lost nothing, corrupted nothing, redid nothing and ended bit-identical."""
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-anywhere-"))
    work.mkdir(parents=True, exist_ok=True)
    src, sha = None, git_sha()
    if args.commit:
        sha = export_commit(args.commit, work / "src")
        src = work / "src"
    launch = make_launch(args.threads, src)
    began = time.time()
    config = args.config.resolve()
    ref = run_reference(launch, config, work)
    stages = args.stages or list(ref.windows)
    missing = [s for s in stages if s not in ref.windows]
    if missing:
        raise SystemExit(f"kill-anywhere: stage(s) {missing} did not run in the reference")
    setup = Setup(launch, config, ref, work)
    trials = []
    for t in range(args.trials):
        if t and args.max_minutes and time.time() - began > 60 * args.max_minutes:
            print(f"--max-minutes {args.max_minutes}: stopping after {t} trial(s)", flush=True)
            break
        stage, offset = draw(args.seed, t, stages, ref)
        result = run_trial(setup, t, stage, offset)
        trials.append(result)
        print(f"trial {t}: aimed {stage} +{offset:.2f} s, killed in {result.stage}, "
              f"{result.finished} finished, {'ok' if result.ok else 'FAIL'}", flush=True)  # fmt: skip
        run = work / f"trial_{t:03d}"
        if result.ok and not args.keep and run.exists():
            shutil.rmtree(run)  # a student checkpoint is tens of MB per trial
    command = "benchmarks/kill_anywhere/run.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = "\n".join([
        (
            f"Code: `{sha}`; command: `.venv/bin/python {command}`; "
            f"{args.threads} thread(s) per run; config `{args.config.name}`; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(began))}, "
            f"{(time.time() - began) / 60:.1f} min; work folder `{work}`."
        ),
        "",
        summary(trials, ref),
        "",
        table(trials),
        "",
    ])  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({
            "sha": sha, "windows": ref.windows, "counts": ref.counts,
            "trials": [asdict(t) | {"ok": t.ok} for t in trials],
        }, indent=1))  # fmt: skip
    return 0 if all(t.ok for t in trials) else 1


if __name__ == "__main__":
    sys.exit(main())
