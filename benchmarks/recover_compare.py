"""Interleaved CPU comparison: the official pattern (recover_naive.py) against the optimised step.

Each round runs every variant once, each in a fresh process, in the same order; the table gives
the median over rounds of each run's median ms/iter (wall) and of its median process CPU time
per iteration. Interleaving matters on a shared machine: load drifts over minutes.

    .venv/bin/python benchmarks/recover_compare.py --rounds 5 --iters 5 --threads 2 \
        [--variants naive,opt,opt-nchw,opt-bf16,opt-seq] [--json out.json]

--paired: one process holds the naive loop and each optimised variant (separate model copies)
and alternates single iterations (rotating which goes first), --pairs times; it reports each
variant's median and the median of the per-pair ratios naive / variant. Load that changes
within seconds hits both sides of a pair alike, so this is the most robust number on a shared
machine. (An optimised iteration there is `recover_units` of one chunk with 1 iteration,
continuing from the current images: the loop's per-iteration work plus a fresh Adam object.)

Variants: naive (official pattern); opt (the recover stage's step: fp32, channels_last, joint);
opt-nchw (opt without channels_last: ablation); opt-varmean (opt with the BN statistics
of `torch.var_mean` + autograd instead of `ChannelStats`: ablation); and any combination of
opt with -bf16 / -fp16 (recover.precision), -packK (K chunks of --batch images per step,
recover.pack), -seq (memory sequential), -compile (torch.compile; the first steps compile,
so use --warmup >= 3), e.g. opt-pack10-compile. Ratios are per image-iteration (a packed
step optimises K x batch images).
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
    from prism_hpc.recover.bench import BenchSpec, bench_recover
    if "varmean" in variant:  # ablation: BN statistics by torch.var_mean + autograd
        from prism_hpc.recover import objective
        def var_mean_stats(x):
            x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
            return torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        objective.channel_stats = var_mean_stats
    if "nchw" in variant:  # ablation: everything but channels_last
        def plain(teachers, cfg):
            return dict(teachers)
        loop.prepare_teachers = plain
    tokens = variant.split("-")[1:]
    pack = next((int(t[4:]) for t in tokens if t.startswith("pack")), 1)
    precision = next((t for t in tokens if t in ("bf16", "fp16")), "fp32")
    spec = BenchSpec(teachers, {res}, {batch}, precision=precision, pack=pack,
                     compile="compile" in tokens,
                     memory="sequential" if "seq" in tokens else "joint", threads={threads})
    r = bench_recover(spec, {iters}, warmup={warmup}, measure_memory=False, count=False)
print("RESULT " + json.dumps(r))
"""

KNOWN = {"bf16", "fp16", "seq", "compile", "nchw", "varmean"}


def check_variant(v: str) -> None:
    """naive, or opt followed by -bf16 / -fp16 / -seq / -compile / -packK / -nchw / -varmean."""
    parts = v.split("-")
    ok = v == "naive" or (
        parts[0] == "opt"
        and all(t in KNOWN or (t.startswith("pack") and t[4:].isdigit()) for t in parts[1:])
    )
    if not ok:
        raise SystemExit(f"unknown variant {v!r} (naive | opt[-bf16|-fp16][-packK][-seq]...)")


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


def paired(a) -> None:
    import random
    import time

    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from recover_naive import NaiveLoop

    from prism_hpc.recover.bench import BenchSpec, build_problem
    from prism_hpc.recover.loop import Unit, recover_units
    from prism_hpc.recover.objective import bn_hooks

    torch.set_num_threads(a.threads)
    teachers = a.teachers.split(",")
    variants = [v for v in a.variants.split(",") if v != "naive"]
    total = a.warmup + a.pairs
    naive = NaiveLoop(teachers, a.res, a.batch, total)
    opts = {}
    for v in variants:
        if v not in ("opt", "opt-bf16", "opt-seq", "opt-compile"):
            raise SystemExit(f"--paired supports opt, opt-bf16, opt-seq, opt-compile, not {v}")
        p = build_problem(BenchSpec(
            teachers, a.res, a.batch, precision="bf16" if v == "opt-bf16" else "fp32",
            compile=v == "opt-compile", memory="sequential" if v == "opt-seq" else "joint",
        ))  # fmt: skip
        opts[v] = {"p": p, "x": p.x0, "g": torch.Generator().manual_seed(1), "hooks": None}
    order = ["naive"] + variants
    times: dict[str, list[float]] = {v: [] for v in order}
    rng = random.Random(0)
    stack = [bn_hooks(o["p"].models, o["p"].cfg.first_bn_multiplier) for o in opts.values()]
    for o, ctx in zip(opts.values(), stack):
        o["hooks"] = ctx.__enter__()
    try:
        for i in range(total):
            rng.shuffle(order)
            for v in order:
                t0 = time.perf_counter()
                if v == "naive":
                    naive.step()
                else:
                    o = opts[v]
                    p = o["p"]
                    unit = Unit(o["x"], p.targets, 1, o["g"], o["g"], p.roles)
                    ((o["x"], _, _),) = recover_units([unit], p.models, o["hooks"], p.cfg,
                                                      p.bounds)  # fmt: skip
                if i >= a.warmup:
                    times[v].append(time.perf_counter() - t0)
    finally:
        for ctx in stack:
            ctx.__exit__(None, None, None)
        naive.close()
    print(
        f"{a.teachers} | {a.res} px | batch {a.batch} | {a.threads} threads | paired, "
        f"{a.pairs} iterations each (+{a.warmup} warm-up), order shuffled per pair"
    )
    print("| variant | median ms/iter | median of per-pair ratio naive / variant |")
    print("|---|---|---|")
    out = {"args": vars(a), "ms": {}, "ratio": {}}
    for v in ["naive"] + variants:
        med = statistics.median(times[v]) * 1e3
        out["ms"][v] = [round(t * 1e3, 2) for t in times[v]]
        if v == "naive":
            print(f"| naive | {med:.1f} | 1.00x |")
            continue
        ratios = [n / o for n, o in zip(times["naive"], times[v])]
        out["ratio"][v] = statistics.median(ratios)
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), 0, max(ratios)]
        print(f"| {v} | {med:.1f} | {statistics.median(ratios):.2f}x "
              f"(quartiles {q[0]:.2f}-{q[2]:.2f}) |")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(out))


def objective_check(a) -> None:
    """The loss of each variant's configuration against the official objective on the same
    input and augmentation draws (--draws of them): max |ours - official| / |official|. Packed
    variants: chunk 0 of the pack (the other chunks only share the teachers' forward)."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from recover_naive import NaiveSetup, naive_objective

    from prism_hpc.recover import augment
    from prism_hpc.recover.bench import BenchSpec, build_problem
    from prism_hpc.recover.loss import Part, packed_loss, recovery_loss
    from prism_hpc.recover.objective import bn_hooks
    from prism_hpc.recover.precision import prepare_teachers

    torch.set_num_threads(a.threads)
    teachers = a.teachers.split(",")
    setup = NaiveSetup(teachers, res=a.res, batch=a.batch, seed=0)
    print("| variant | max relative difference of the loss vs the official objective |")
    print("|---|---|")
    for v in [v for v in a.variants.split(",") if v != "naive"]:
        check_variant(v)
        tokens = v.split("-")[1:]
        pack = next((int(t[4:]) for t in tokens if t.startswith("pack")), 1)
        precision = next((t for t in tokens if t in ("bf16", "fp16")), "fp32")
        p = build_problem(BenchSpec(teachers, a.res, a.batch, precision=precision, pack=pack))
        models = prepare_teachers(p.models, p.cfg)
        g = torch.Generator().manual_seed(0)
        worst = 0.0
        with bn_hooks(models, p.cfg.first_bn_multiplier) as hooks, torch.no_grad():
            for _ in range(a.draws):
                d = augment.draw(p.cfg.augment, a.res, a.batch, g)
                ref = naive_objective(setup, setup.problem.x0, setup.problem.targets, d).item()
                if pack == 1:
                    part = Part(p.x0, p.targets, p.roles, d)
                    got = recovery_loss(part, models, hooks, p.cfg, False)[0].item()
                else:
                    parts = [Part(x, y, p.roles, d) for x, y in
                             zip(p.x0.split(a.batch), p.targets.split(a.batch), strict=True)]
                    got = packed_loss(parts, models, hooks, p.cfg, False)[0][0].item()
                worst = max(worst, abs(got - ref) / abs(ref))
        print(f"| {v} | {worst:.1e} ({a.draws} draws) |", flush=True)
    setup.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--teachers", default="resnet18,mobilenet_v2,shufflenet_v2_x0_5,efficientnet_b0"
    )
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default="naive,opt")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", default=None, help="write every run's result here")
    ap.add_argument("--paired", action="store_true", help="alternate iterations in one process")
    ap.add_argument("--pairs", type=int, default=30, help="--paired: timed iterations each")
    ap.add_argument("--objective", action="store_true",
                    help="compare each variant's loss with the official objective instead")  # fmt: skip
    ap.add_argument("--draws", type=int, default=5, help="--objective: augmentation draws")
    a = ap.parse_args(argv)
    if a.objective:
        objective_check(a)
        return
    if a.paired:
        paired(a)
        return
    variants = a.variants.split(",")
    for v in variants:
        check_variant(v)
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rnd in range(a.rounds):
        for v in variants:
            r = run_variant(v, a)
            images = a.batch * r.get("pack", 1)
            r.setdefault("ms_per_image_iteration", r["ms_per_iter"] / images)
            runs[v].append(r)
            print(f"round {rnd + 1}/{a.rounds} {v:12s} {r['ms_per_iter']:9.1f} ms/iter wall "
                  f"{r['cpu_ms_per_iter']:9.1f} ms/iter CPU", flush=True)  # fmt: skip
    summary = {}
    for v in variants:
        wall = [r["ms_per_iter"] for r in runs[v]]
        cpu = [r["cpu_ms_per_iter"] for r in runs[v]]
        per_image = [r["ms_per_image_iteration"] for r in runs[v]]
        summary[v] = {"wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu),
                      "image_ms": statistics.median(per_image), "wall_runs": wall,
                      "cpu_runs": cpu, "image_runs": per_image}  # fmt: skip
    base = summary.get("naive")
    print(
        f"\n{a.teachers} | {a.res} px | batch {a.batch} | {a.threads} threads | "
        f"{a.rounds} rounds x {a.iters} iters (median of run medians)"
    )
    print("| variant | ms/iter wall | CPU ms/iter | ms per image-iteration | naive / variant "
          "(per image-iteration, wall) | (CPU) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for v, s in summary.items():
        ratio = f"{base['image_ms'] / s['image_ms']:.2f}x" if base else "-"
        images = a.batch * runs[v][0].get("pack", 1)
        cratio = f"{base['cpu_ms'] / a.batch / (s['cpu_ms'] / images):.2f}x" if base else "-"
        print(f"| {v} | {s['wall_ms']:.1f} | {s['cpu_ms']:.1f} | {s['image_ms']:.2f} | {ratio} "
              f"| {cratio} |")  # fmt: skip
    if base:  # per-round ratios: both measured back to back
        for v in variants:
            if v != "naive":
                per = [
                    n["ms_per_image_iteration"] / o["ms_per_image_iteration"]
                    for n, o in zip(runs["naive"], runs[v])
                ]
                print(f"per-round ratio per image-iteration naive/{v}: "
                      + ", ".join(f"{x:.2f}" for x in per)
                      + f" (median {statistics.median(per):.2f})")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "summary": summary, "runs": runs}))


if __name__ == "__main__":
    main()
