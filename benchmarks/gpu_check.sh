#!/usr/bin/env bash
# The GPU check in one command, for a session that is lent a GPU machine (16 cores, one H100
# or H200, no internet); stays within BUDGET_S (default 450 s, so that an 8-minute call has
# room for start-up and the copy back). In order:
#   1. `prism-hpc doctor --device cuda --json` (saved as doctor.json);
#   2. the whole Fashion-MNIST pipeline on CUDA at a tiny budget (squeeze, recover, collect,
#      relabel, train, report; configs/fmnist_demo.yaml with fewer steps) once per precision
#      (PRECISIONS, default "fp32 bf16 fp16": recover.precision, relabel.precision and
#      students.precision all set to it), and once with 2 ranks (recover and train) when two
#      GPUs are visible;
#   3. the speed rows: `prism-hpc bench recover` per precision (4 teachers, 224 px, batch 100).
# Each step runs under `timeout` (and never past the budget: later steps become "skipped");
# after every step the results file is rewritten, so a check killed half-way still leaves its
# rows: benchmarks/gpu_results/<date>_<gpu>.md and <date>_<gpu>_doctor.json (--out DIR to write
# elsewhere, e.g. "$OUT" on the device machine; a --device cpu run writes into its work
# folder), plus rows.jsonl and the logs under the work folder (WORK_DIR, default in /tmp).
# Exit status: 0 when every step finished, 1 when any failed or timed out, 2 on bad usage.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run          # print the steps, run nothing
#   bash benchmarks/gpu_check.sh --device cpu       # CPU fallback: checks the script itself
#                                                   # (fp32, bf16; 16 px, 2 teachers; minutes)
#
# On the lent machine (its python3 has torch but not this project's pydantic/submitit): carry
# wheels in .whl/ (installed into /tmp/prism-site when present) and the data, which is not
# there: copy /usr/share/datasets/fashion-mnist to .data/fashion-mnist (add /.data/ to
# .git/info/exclude) and name .data and .whl in `carry`. Env: PYTHON, DATA_ROOT, BUDGET_S,
# PRECISIONS, WORK_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DEVICE=cuda
DRY=0
OUT_DIR=""
ARGS="$*"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --device) DEVICE="${2:-}"; shift ;;
    --out) OUT_DIR="${2:-}"; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$DEVICE" in
  cuda) BUDGET_S="${BUDGET_S:-450}"; PRECISIONS="${PRECISIONS:-fp32 bf16 fp16}"
        PIPE_S=150; DOCTOR_S=150; BENCH_S=75 ;;
  cpu)  BUDGET_S="${BUDGET_S:-240}"; PRECISIONS="${PRECISIONS:-fp32 bf16}"
        PIPE_S=200; DOCTOR_S=60; BENCH_S=60
        export CUDA_VISIBLE_DEVICES="" ;;  # the local backend and torch then see no GPU
  *) echo "gpu_check.sh: --device must be cuda or cpu" >&2; exit 2 ;;
esac

# --- python, data, names -----------------------------------------------------------------
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    PY=.venv/bin/python
  else
    PY=python3
  fi
fi
if [ "$DRY" = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/prism-site .whl/*.whl || echo "gpu_check.sh: installing .whl failed" >&2
  export PYTHONPATH="/tmp/prism-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CLI=("$PY" -m prism_hpc.cli)
REPORT=("$PY" benchmarks/gpu_check_report.py)

DATA="${DATA_ROOT:-}"
if [ -z "$DATA" ]; then
  for d in /usr/share/datasets/fashion-mnist "$ROOT/.data/fashion-mnist"; do
    if [ -f "$d/train-labels-idx1-ubyte.gz" ]; then DATA=$d; break; fi
  done
  DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
fi

GPUS=0
if [ "$DEVICE" = cuda ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 || true)
  fi
  NAME="${NAME:-no GPU visible}"
else
  NAME=$(grep -m 1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- || true)
  NAME="cpu ${NAME# }"
fi
SLUG=$(printf '%s' "${NAME:-unknown-gpu}" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-//;s/-$//')
STAMP=$(date -u +%Y-%m-%d)
WORK="${WORK_DIR:-/tmp/prism-gpu-check-$STAMP-$(date -u +%H%M%S)-$SLUG}"
if [ -z "$OUT_DIR" ]; then  # a CPU run checks the script: its table stays out of the repo
  if [ "$DEVICE" = cuda ]; then OUT_DIR=benchmarks/gpu_results; else OUT_DIR=$WORK; fi
fi
RESULT="$OUT_DIR/${STAMP}_${SLUG}.md"
ROWS="$WORK/rows.jsonl"

# --- the steps -----------------------------------------------------------------------------
STEPS=()  # "kind|name|precision|ranks|timeout|command..." (command words joined by \x1f)
add() {  # kind name precision ranks timeout command...
  local head="$1|$2|$3|$4|$5"; shift 5
  local IFS=$'\x1f'
  STEPS+=("$head|$*")
}
add doctor doctor - 1 "$DOCTOR_S" "${CLI[@]}" doctor --device "$DEVICE" --json
CONFIG="$WORK/tiny_$DEVICE.yaml"
pipeline() {  # name precision ranks [extra --set ...]
  local name="$1" p="$2" ranks="$3"; shift 3
  add pipeline "$name" "$p" "$ranks" "$PIPE_S" "${CLI[@]}" submit "$CONFIG" --backend local \
    --run-dir "$WORK/runs/$name" --set "recover.precision=$p" --set "relabel.precision=$p" \
    --set "students.precision=$p" "$@"
}
for p in $PRECISIONS; do pipeline "$p" "$p" 1; done
if [ "$GPUS" -ge 2 ]; then
  pipeline "bf16-2ranks" bf16 2 --set resources.recover.tasks_per_node=2 \
    --set resources.train.tasks_per_node=2
fi
if [ "$DEVICE" = cuda ]; then
  BENCH=(--teachers resnet18,mobilenet_v2,efficientnet_b0,shufflenet_v2_x0_5 --res 224
         --batch 100 --iters 10 --warmup 3 --device cuda)
else
  BENCH=(--teachers resnet18 --res 16 --batch 2 --iters 2 --warmup 1 --device cpu
         --threads 1 --no-memory)
fi
for p in $PRECISIONS; do
  add bench "recover-$p" "$p" 1 "$BENCH_S" "${CLI[@]}" bench recover "${BENCH[@]}" \
    --precision "$p" --json
done

split_step() {  # step $1 -> kind name p ranks limit and the array words (no globbing)
  IFS='|' read -r kind name p ranks limit _ <<<"$1"
  IFS=$'\x1f' read -r -a words <<<"${1#*|*|*|*|*|}"
}

if [ "$DRY" = 1 ]; then
  echo "# gpu_check.sh --dry-run: device $DEVICE, $GPUS GPU(s) seen, budget ${BUDGET_S} s"
  echo "# python $PY, data $DATA, work $WORK, results $RESULT"
  echo "${REPORT[*]} config --device $DEVICE --data $DATA --out $CONFIG"
  for s in "${STEPS[@]}"; do
    split_step "$s"
    printf '[%s %s, %s s] timeout %s %s\n' "$kind" "$name" "$limit" "$limit" "${words[*]}"
  done
  exit 0
fi

# --- running -------------------------------------------------------------------------------
mkdir -p "$WORK/logs" "$WORK/runs" "$OUT_DIR"
: >"$ROWS"
FAILED=0
START=$SECONDS
NOTE="device $DEVICE, budget ${BUDGET_S} s, precisions: $PRECISIONS"

render() {  # rewrite the results file from the rows so far (never fails the script)
  "${REPORT[@]}" render "$ROWS" --doctor "$WORK/doctor.json" --out "$RESULT" \
    --title "${NAME:-?} ($STAMP)" --device "$DEVICE" --command "$ARGS" --note "$NOTE" \
    || echo "gpu_check.sh: could not write $RESULT" >&2
}
finish() {
  local rc=$?
  render
  echo "gpu_check.sh: results in $RESULT (logs in $WORK/logs)"
  if [ "$rc" -ne 0 ] && [ "$FAILED" = 0 ]; then FAILED=1; fi
  exit "$FAILED"
}
trap finish EXIT
trap 'echo "gpu_check.sh: interrupted" >&2; FAILED=1; exit 1' INT TERM

if ! "$PY" -c "import prism_hpc.cli" >"$WORK/logs/imports.log" 2>&1; then
  "${REPORT[@]}" record "$ROWS" --kind doctor --name imports --status "failed (import)" \
    --log "$WORK/logs/imports.log" --seconds 0 || true
  FAILED=1
  echo "gpu_check.sh: $PY cannot import prism_hpc (see $WORK/logs/imports.log)" >&2
  exit 1
fi
"${REPORT[@]}" config --device "$DEVICE" --data "$DATA" --out "$CONFIG" >/dev/null

for s in "${STEPS[@]}"; do
  split_step "$s"
  log="$WORK/logs/$kind-$name.log"
  left=$((BUDGET_S - (SECONDS - START)))
  extra=()
  if [ "$kind" = pipeline ]; then extra=(--run-dir "$WORK/runs/$name" --status-json "$WORK/status-$name.json"); fi
  if [ "$left" -lt 20 ]; then
    "${REPORT[@]}" record "$ROWS" --kind "$kind" --name "$name" --precision "$p" --ranks "$ranks" \
      --status "skipped (budget)" || true
    FAILED=1
    render
    continue
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "gpu_check.sh: [$kind $name] up to ${limit} s: ${words[*]}"
  if [ "$kind" = pipeline ]; then rm -rf "$WORK/runs/$name"; fi  # a reused WORK_DIR
  t0=$SECONDS
  rc=0
  timeout --kill-after=10 "$limit" "${words[@]}" >"$log" 2>&1 || rc=$?
  took=$((SECONDS - t0))
  case "$rc" in
    0) status=ok ;;
    124|137) status="timeout (${limit} s)" ;;
    *) status="failed (rc $rc)" ;;
  esac
  if [ "$kind" = doctor ]; then  # the JSON object is the log's last line; keep it alone
    grep '^{' "$log" | tail -n 1 >"$WORK/doctor.json" || true
    [ -s "$WORK/doctor.json" ] && cp "$WORK/doctor.json" "$OUT_DIR/${STAMP}_${SLUG}_doctor.json"
  fi
  if [ "$kind" = pipeline ]; then
    timeout 60 "${CLI[@]}" status "$WORK/runs/$name" --json >"$WORK/status-$name.json" 2>/dev/null || true
  fi
  [ "$status" = ok ] || FAILED=1
  "${REPORT[@]}" record "$ROWS" --kind "$kind" --name "$name" --precision "$p" --ranks "$ranks" \
    --status "$status" --seconds "$took" --log "$log" "${extra[@]}" || true
  echo "gpu_check.sh: [$kind $name] $status after ${took} s"
  render
done
