#!/usr/bin/env bash
# Recovery speed and VRAM on one GPU, at 224 px and batch 100 (the paper's setting), 1 and 5
# teachers: the official per-iteration pattern (benchmarks/recover_naive.py) against ours in
# fp32 / bf16, unpacked / packed (recover.pack: 4 chunks of 100 per step), joint / sequential
# backward, cuDNN deterministic / autotuned, and bf16 + torch.compile; ms per iteration, ms per
# image-iteration, images x iterations / s, achieved TFLOP/s and the % of the card's peak for
# the row's precision (datasheet table in prism_hpc/cost/devices.py), peak VRAM of the step
# and in total. With more than one GPU visible it also times a 2-process NCCL init +
# all_reduce. Prints a markdown table (and a summary line: bf16 + packing vs the official
# pattern on this card).
#
#   bash benchmarks/gpu_recover.sh                 # on a GPU machine; stays within ~8 minutes
#   bash benchmarks/gpu_recover.sh --smoke         # CPU, tiny sizes: checks the script itself
#   bash benchmarks/gpu_recover.sh --out rows.jsonl   # also keep every row as JSON
#
# Teachers: 1 = resnet18 (logit + BN teacher); 5 = the PRISM pool resnet18, mobilenet_v2,
# efficientnet_b0, shufflenet_v2_x0_5, alexnet, every one a BN teacher (AlexNet has no BN
# layer: ours does not run it, the official pattern does; resnet18 is also the logit teacher,
# which the official pattern runs as a second copy).
# Everything runs in one Python process (one CUDA context; teachers are rebuilt per row).
# Rows run in order of importance; once BUDGET_S (default 420 s) is used up the remaining rows
# are printed as "skipped", so the table always comes out. Compile rows come last (the first
# compile of each architecture costs tens of seconds).
# --smoke: device cpu (1 thread), 16 px, batch 2, pack 2, 2 teachers (resnet18, shufflenet),
# 1 timed iteration, and torch.compile with backend "eager" (dynamo traces the models and the
# BN hooks, no inductor code generation, which would take minutes on a CPU), no memory column
# (the CPU probe starts a fresh process per row; tests/test_recover_bench.py covers it).
# Env: PYTHON (default .venv/bin/python if present, else python3), BUDGET_S, ITERS, WARMUP, PACK.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
SMOKE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "gpu_recover.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export SMOKE OUT
exec "$PY" - <<'PYEOF'
import functools
import json
import os
import socket
import sys
import time
import traceback

import torch

sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
from prism_hpc.recover.bench import BenchSpec, bench_recover  # noqa: E402
from recover_naive import run_naive  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT = os.environ.get("OUT") or None
POOL = ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5", "alexnet"]
if SMOKE:
    POOL = ["resnet18", "shufflenet_v2_x0_5"]  # the cheapest pair on a CPU
    device, res, batch, counts = "cpu", 16, 2, [2]
    iters, warmup = int(os.environ.get("ITERS", 1)), int(os.environ.get("WARMUP", 1))
    budget = float(os.environ.get("BUDGET_S", 600))
    pack = int(os.environ.get("PACK", 2))
    torch.set_num_threads(1)
    torch.compile = functools.partial(torch.compile, backend="eager")  # see header
else:
    if not torch.cuda.is_available():
        sys.exit("gpu_recover.sh: no CUDA device (use --smoke for a CPU check of the script)")
    device, res, batch, counts = "cuda", 224, 100, [1, 5]
    iters, warmup = int(os.environ.get("ITERS", 10)), int(os.environ.get("WARMUP", 3))
    budget = float(os.environ.get("BUDGET_S", 420))
    pack = int(os.environ.get("PACK", 4))

# (label, kind, precision, pack, compile, memory, deterministic); by count, compile rows last
P = pack
MODES = [
    ("naive (official), fp32", "naive", "fp32", 1, False, "joint", True),
    ("ours fp32 joint", "opt", "fp32", 1, False, "joint", True),
    ("ours fp32 sequential", "opt", "fp32", 1, False, "sequential", True),
    ("ours bf16 joint", "opt", "bf16", 1, False, "joint", True),
    ("ours bf16 sequential", "opt", "bf16", 1, False, "sequential", True),
    (f"ours fp32 pack {P} sequential", "opt", "fp32", P, False, "sequential", True),
    (f"ours bf16 pack {P} sequential", "opt", "bf16", P, False, "sequential", True),
    (f"ours bf16 pack {P} sequential, cuDNN autotune", "opt", "bf16", P, False, "sequential",
     False),
]
COMPILE_MODES = [("ours bf16 + compile joint", "opt", "bf16", 1, True, "joint", True)]
plan = [(k, m) for k in counts for m in MODES] + [(k, m) for k in counts for m in COMPILE_MODES]

dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
print(f"# recovery benchmark: {dev_name}, torch {torch.__version__}, {res} px, batch {batch} "
      f"per chunk, pack {P}, {iters} timed iterations (+{warmup} warm-up)"
      f"{' [SMOKE]' if SMOKE else ''}", flush=True)
start = time.time()
rows = []
for k, (label, kind, precision, pk, comp, memory, det) in plan:
    teachers = POOL[:k]
    row = {"k": k, "mode": label, "teachers": teachers, "kind": kind, "precision": precision,
           "pack": pk}
    if time.time() - start > budget:
        row["status"] = "skipped (time budget)"
    else:
        try:
            if kind == "naive":
                r = run_naive(teachers, res, batch, iters, warmup, device)
                r["ms_per_image_iteration"] = r["ms_per_iter"] / batch
                r["images_iters_per_s"] = round(batch * 1e3 / r["ms_per_iter"], 2)
            else:
                spec = BenchSpec(teachers, res, batch, device=device, memory=memory,
                                 precision=precision, pack=pk, compile=comp, deterministic=det)
                r = bench_recover(spec, iters, warmup=warmup, measure_memory=device == "cuda")
            row.update(r)
            row["status"] = "ok"
        except Exception as err:  # noqa: BLE001 - keep the table going (e.g. out of memory)
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
            traceback.print_exc(file=sys.stderr)
            if device == "cuda":
                torch.cuda.empty_cache()
    row["elapsed_s"] = round(time.time() - start, 1)
    rows.append(row)
    print(f"#   {k} teacher(s), {label}: {row.get('ms_per_iter', '-')} ms/iter, "
          f"{row['status']} [{row['elapsed_s']} s]", flush=True)
    if OUT:
        with open(OUT, "a") as f:
            f.write(json.dumps(row) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_worker(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    t0 = time.time()
    dist.init_process_group("nccl", rank=rank, world_size=2)
    x = torch.ones(1, device=f"cuda:{rank}") * (rank + 1)
    dist.all_reduce(x)
    torch.cuda.synchronize()
    queue.put((rank, float(x), time.time() - t0))
    dist.destroy_process_group()


nccl = "not run (one GPU visible)" if device == "cuda" else "not run (CPU smoke)"
if device == "cuda" and torch.cuda.device_count() > 1:
    import torch.multiprocessing as mp

    try:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        port = _free_port()
        procs = [ctx.Process(target=_nccl_worker, args=(r, port, queue)) for r in range(2)]
        for p in procs:
            p.start()
        got = sorted(queue.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(30)
        ok = all(v == 3.0 for _, v, _ in got)
        nccl = (f"{'ok' if ok else 'WRONG SUM'}: 2 processes, init + all_reduce "
                f"{max(t for _, _, t in got):.1f} s")
    except Exception as err:  # noqa: BLE001
        nccl = f"error: {type(err).__name__}: {err}"


def gb(v):
    return "-" if v is None else f"{v / 1024:.2f}"


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


print()
print("| teachers | mode | ms/iter | ms per image-iter | images x iters/s | TFLOP/s "
      "| % of peak | peak mem of step (GB) | peak mem total (GB) | status |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    tf = r.get("flop_per_s")
    frac = r.get("fraction_of_peak")
    print(f"| {r['k']} ({'+'.join(r['teachers'])}) | {r['mode']} | {fmt(r.get('ms_per_iter'), '.1f')} "
          f"| {fmt(r.get('ms_per_image_iteration'), '.3f')} | {r.get('images_iters_per_s', '-')} "
          f"| {'-' if not tf else f'{tf / 1e12:.1f}'} "
          f"| {'-' if frac is None else f'{100 * frac:.1f}'} "
          f"| {gb(r.get('peak_mem_mb'))} | {gb(r.get('peak_mem_total_mb'))} | {r['status']} |")
print()
for k in counts:
    mine = [r for r in rows if r["k"] == k and r["status"] == "ok"]
    naive = next((r for r in mine if r["kind"] == "naive"), None)
    best = min((r for r in mine if r["kind"] == "opt"), default=None,
               key=lambda r: r["ms_per_image_iteration"])
    if naive and best:
        print(f"{k} teacher(s): best = {best['mode']}: "
              f"{naive['ms_per_image_iteration'] / best['ms_per_image_iteration']:.2f}x fewer ms "
              f"per image-iteration than the official pattern on this card"
              + (f", {100 * best['fraction_of_peak']:.1f} % of the {best['precision']} peak "
                 f"({best['peak_source']})" if best.get("fraction_of_peak") else ""))
print(f"NCCL: {nccl}")
print(f"total {time.time() - start:.0f} s")
bad = [r for r in rows if r["status"].startswith("error")] + (
    [nccl] if nccl.startswith(("error", "WRONG")) else [])
sys.exit(1 if bad else 0)
PYEOF
