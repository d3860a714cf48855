#!/usr/bin/env bash
# Recovery speed and VRAM on one GPU: 1-4 BN teachers at batch 100, 224 px (the paper's
# Table 2 VRAM column), fp32 vs bf16 vs bf16 + torch.compile, joint vs sequential backward,
# plus the official per-iteration pattern (benchmarks/recover_naive.py) as the baseline.
#
#   bash benchmarks/gpu_recover.sh                 # on a GPU machine; stays within ~8 minutes
#   bash benchmarks/gpu_recover.sh --smoke         # CPU, tiny sizes: checks the script itself
#   bash benchmarks/gpu_recover.sh --out rows.jsonl   # also keep every row as JSON
#
# Everything runs in one Python process (one CUDA context; teachers are rebuilt per row).
# Rows run in order of importance; once BUDGET_S (default 420 s) is used up the remaining rows
# are printed as "skipped", so the table always comes out. Compile rows come last (the first
# compile of each architecture costs tens of seconds).
# --smoke: device cpu (1 thread), 16 px, batch 2, 1-2 teachers (resnet18, shufflenet), 1 timed
# iteration, and torch.compile with backend "eager" (dynamo traces the models and the BN hooks,
# no inductor code generation, which would take minutes on a CPU), no memory column (the CPU
# probe starts a fresh process per row; tests/test_recover_bench.py covers it).
# Env: PYTHON (default .venv/bin/python if present, else python3), BUDGET_S, ITERS, WARMUP.
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
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_recover.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
export SMOKE OUT
exec "$PY" - <<'PYEOF'
import functools
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
from prism_hpc.recover.bench import bench_recover  # noqa: E402
from recover_naive import run_naive  # noqa: E402

SMOKE = os.environ.get("SMOKE") == "1"
OUT = os.environ.get("OUT") or None
POOL = ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5"]  # FACTS A order
if SMOKE:
    POOL = ["resnet18", "shufflenet_v2_x0_5"]  # the cheapest pair on a CPU
    device, res, batch, counts = "cpu", 16, 2, [1, 2]
    iters, warmup = int(os.environ.get("ITERS", 1)), int(os.environ.get("WARMUP", 1))
    budget = float(os.environ.get("BUDGET_S", 600))
    torch.set_num_threads(1)
    torch.compile = functools.partial(torch.compile, backend="eager")  # see header
else:
    if not torch.cuda.is_available():
        sys.exit("gpu_recover.sh: no CUDA device (use --smoke for a CPU check of the script)")
    device, res, batch, counts = "cuda", 224, 100, [1, 2, 3, 4]
    iters, warmup = int(os.environ.get("ITERS", 10)), int(os.environ.get("WARMUP", 3))
    budget = float(os.environ.get("BUDGET_S", 420))

# (label, kind, amp, compile, memory); rows run count by count, compile rows last
MODES = [
    ("fp32 joint", "opt", None, False, "joint"),
    ("fp32 sequential", "opt", None, False, "sequential"),
    ("naive (official)", "naive", None, False, "joint"),
    ("bf16 joint", "opt", "bf16", False, "joint"),
    ("bf16 sequential", "opt", "bf16", False, "sequential"),
]
COMPILE_MODES = [("bf16+compile joint", "opt", "bf16", True, "joint")]
plan = [(k, m) for k in counts for m in MODES] + [(k, m) for k in counts for m in COMPILE_MODES]

dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
print(f"# recovery benchmark: {dev_name}, torch {torch.__version__}, {res} px, batch {batch}, "
      f"{iters} timed iterations (+{warmup} warm-up){' [SMOKE]' if SMOKE else ''}", flush=True)
start = time.time()
rows = []
for k, (label, kind, amp, comp, memory) in plan:
    teachers = POOL[:k]
    row = {"k": k, "mode": label, "teachers": teachers}
    if time.time() - start > budget:
        row["status"] = "skipped (time budget)"
    else:
        try:
            if kind == "naive":
                r = run_naive(teachers, res, batch, iters, warmup, device)
            else:
                r = bench_recover(teachers, res, batch, iters, device=device, amp=amp,
                                  compile=comp, memory=memory, warmup=warmup,
                                  measure_memory=device == "cuda")
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


def gb(v):
    return "-" if v is None else f"{v / 1024:.2f}"


print()
print("| BN teachers | mode | ms/iter | images x iters/s | TFLOP/s | peak mem of step (GB) "
      "| peak mem total (GB) | status |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    tf = r.get("flop_per_s")
    print(f"| {r['k']} ({'+'.join(r['teachers'])}) | {r['mode']} | {r.get('ms_per_iter', '-')} "
          f"| {r.get('images_iters_per_s', '-')} | {'-' if not tf else f'{tf / 1e12:.1f}'} "
          f"| {gb(r.get('peak_mem_mb'))} | {gb(r.get('peak_mem_total_mb'))} | {r['status']} |")
print(f"\ntotal {time.time() - start:.0f} s")
bad = [r for r in rows if r["status"].startswith("error")]
sys.exit(1 if bad else 0)
PYEOF
