"""Interleaved CPU comparison: the official pattern (recover_naive.py) against the optimised step.

Each round runs every variant once, each in a fresh process, in the same order; the table gives
the median over rounds of each run's median ms/iter (wall) and of its median process CPU time
per iteration. Interleaving matters on a shared machine: load drifts over minutes.

    .venv/bin/python benchmarks/recover_compare.py --rounds 5 --iters 5 --threads 2 \
        [--variants naive,opt,opt-nchw,opt-bf16,opt-seq] [--json out.json]

Variants: naive (official pattern); opt (the recover stage's step: fp32, channels_last, joint);
opt-nchw (opt without channels_last: ablation); opt-bf16 (amp bf16); opt-seq (memory
sequential); opt-compile (torch.compile; the first steps compile, so use --warmup >= 3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {bench!r})
import torch
torch.set_num_threads({threads})
variant, teachers = {variant!r}, {teachers!r}
if variant == "naive":
    from recover_naive import run_naive
    r = run_naive(teachers, {res}, {batch}, {iters}, {warmup}, "cpu", {threads})
else:
    from prism_hpc.recover import loop
    from prism_hpc.recover.bench import bench_recover
    if variant == "opt-nchw":  # ablation: everything but channels_last
        def plain(teachers, cfg):
            return dict(teachers)
        loop.prepare_teachers = plain
    r = bench_recover(teachers, {res}, {batch}, {iters}, amp="bf16" if variant == "opt-bf16" else None,
                      compile=variant == "opt-compile",
                      memory="sequential" if variant == "opt-seq" else "joint",
                      warmup={warmup}, threads={threads}, measure_memory=False, count=False)
print("RESULT " + json.dumps(r))
"""


def run_variant(variant: str, a) -> dict:
    code = CHILD.format(
        repo=str(REPO), bench=str(REPO / "benchmarks"), threads=a.threads, variant=variant,
        teachers=a.teachers.split(","), res=a.res, batch=a.batch, iters=a.iters, warmup=a.warmup,
    )  # fmt: skip
    out = subprocess.run([a.python, "-c", code], capture_output=True, text=True, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", default="resnet18,mobilenet_v2,shufflenet_v2_x0_5,efficientnet_b0")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="naive,opt")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", default=None, help="write every run's result here")
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rnd in range(a.rounds):
        for v in variants:
            r = run_variant(v, a)
            runs[v].append(r)
            print(f"round {rnd + 1}/{a.rounds} {v:12s} {r['ms_per_iter']:9.1f} ms/iter wall "
                  f"{r['cpu_ms_per_iter']:9.1f} ms/iter CPU", flush=True)  # fmt: skip
    summary = {}
    for v in variants:
        wall = [r["ms_per_iter"] for r in runs[v]]
        cpu = [r["cpu_ms_per_iter"] for r in runs[v]]
        summary[v] = {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu),
                      "wall_runs": wall, "cpu_runs": cpu}  # fmt: skip
    base = summary.get("naive")
    print(f"\n{a.teachers} | {a.res} px | batch {a.batch} | {a.threads} threads | "
          f"{a.rounds} rounds x {a.iters} iters (median of run medians)")
    print("| variant | ms/iter wall | CPU ms/iter | naive / variant (wall) | (CPU) |")
    print("|---|---|---|---|---|")
    for v, s in summary.items():
        ratio = f"{base['wall_ms'] / s['wall_ms']:.2f}x" if base else "-"
        cratio = f"{base['cpu_ms'] / s['cpu_ms']:.2f}x" if base else "-"
        print(f"| {v} | {s['wall_ms']:.1f} | {s['cpu_ms']:.1f} | {ratio} | {cratio} |")
    if base:  # per-round ratios: both measured back to back
        for v in variants:
            if v != "naive":
                per = [n["ms_per_iter"] / o["ms_per_iter"] for n, o in zip(runs["naive"], runs[v])]
                print(f"per-round wall ratio naive/{v}: " + ", ".join(f"{x:.2f}" for x in per)
                      + f" (median {statistics.median(per):.2f})")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
