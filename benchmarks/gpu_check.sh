#!/usr/bin/env bash
# The whole GPU check in one command, for a session that is lent a GPU machine (15 minutes of
# device time in all): recovery rows first (benchmarks/gpu_recover.sh, its own ~7 min budget),
# then the student-training rows of issue 13 (benchmarks/train_speed.py on CUDA: ResNet-18 and
# ResNet-50 at 224 px, batch 50 in 2 micro-batches, before = the trainer before the DataLoader
# pipeline vs after in fp32 (channels_last + fused optimizer, the GPU defaults) and bf16,
# 4 loader workers), capped by TRAIN_S (default 200 s) so the whole check fits one call.
# Writes everything under OUT_DIR (default $OUT if set, else benchmarks/gpu_results).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --smoke    # CPU, tiny sizes: checks the script itself (~3 min)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DIR="${OUT_DIR:-${OUT:-benchmarks/gpu_results}}"
mkdir -p "$DIR"
if [ "${1:-}" = "--smoke" ]; then
  RECOVER=(--smoke)
  LIMIT="${TRAIN_S:-900}"  # a busy CPU: the smoke only checks that the script works
  TRAIN=(--device cpu --cases 32:resnet18 --variants before,after --reps 1 --images 50 --epochs 2)
else
  RECOVER=()
  LIMIT="${TRAIN_S:-200}"
  TRAIN=(--device cuda --cases 224:resnet18,224:resnet50 --variants before,after,after-bf16
         --reps 1 --images 400 --epochs 3 --threads 4 --workers 4)
fi
status=0
{ nvidia-smi || true; } > "$DIR/nvidia-smi.txt" 2>&1
bash benchmarks/gpu_recover.sh "${RECOVER[@]}" --out "$DIR/recover_rows.jsonl" \
  2>&1 | tee "$DIR/recover.md" || status=1
timeout "$LIMIT" "$PY" benchmarks/train_speed.py "${TRAIN[@]}" --out "$DIR/train.md" \
  2>&1 | tee "$DIR/train.log" || status=1
exit $status
