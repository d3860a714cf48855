#!/bin/bash
# Student training + evaluation of a prism-hpc run with plain sbatch -- the generic script.
#
# Prefer the rendered one: `prism-hpc submit` and `prism-hpc plan CONFIG --out DIR` write
# RUN/slurm/eval_array.sbatch with the #SBATCH lines of the config's `resources.train` (GPUs,
# tasks, time, memory, partition/account/qos, setup lines, warning signal), quoted like every
# rendered script:
#
#   sbatch runs/in1k_ipc50/<stamp>/slurm/eval_array.sbatch [RUN_DIR]
#
# A static script cannot read the YAML at submission time, so this one carries only the
# options every site accepts; give the rest on the command line, matching resources.train:
#
#   sbatch --array=0-8 --gpus-per-node=4 --ntasks-per-node=4 --time=600 \
#          slurm/eval_array.sh runs/in1k_ipc50/<stamp>
#
# (one SLURM task per GPU: --ntasks-per-node = --gpus-per-node; the shipped ImageNet configs
# train each student on one GPU). Evaluate saved checkpoints without training (EMA weights
# when present; writes students/<arch>/seed<k>/eval.json):
#
#   sbatch --array=0-8 --gpus-per-node=1 slurm/eval_array.sh runs/in1k_ipc50/<stamp> eval
#
# Array index i is item i of the
# run's `train` stage, i.e. one (architecture, seed) pair in the order of plan.json
# (`prism-hpc plan CONFIG` prints them); finished items (valid .done marker) exit at once, so
# re-submitting the whole range is safe. Set PRISM_PYTHON to the environment's python if
# `python` on the nodes is not the one with prism-hpc installed.
#
# USR2 arrives 90 s before the time limit (--signal=B:USR2@90, for this batch shell; override
# with --signal=B:SIG@SECONDS, keeping B:): the script requeues the job (at most 5 times) and
# the requeued task resumes training from its last epoch checkpoint.
#SBATCH --job-name=prism-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --signal=B:USR2@90
#SBATCH --open-mode=append
#SBATCH --output=prism-eval_%A_%a.log
set -euo pipefail
RUN_DIR=${1:?usage: sbatch --array=0-N slurm/eval_array.sh RUN_DIR [eval]}
INDEX=${SLURM_ARRAY_TASK_ID:?submit this script with sbatch --array=...}
export HDF5_USE_FILE_LOCKING=FALSE PYTHONUNBUFFERED=1
PY=${PRISM_PYTHON:-python}
if [ ! -f "$RUN_DIR/config.yaml" ]; then
  echo "eval_array.sh: $RUN_DIR is not a prism-hpc run directory (no config.yaml)" >&2
  exit 2
fi
prism_requeue() {
  echo "eval_array.sh: warning signal before the time limit (restart ${SLURM_RESTART_COUNT:-0})"
  if [ "${SLURM_RESTART_COUNT:-0}" -lt 5 ]; then
    scontrol requeue "$SLURM_JOB_ID" || echo "eval_array.sh: scontrol requeue failed" >&2
  fi
}
trap prism_requeue USR2 USR1
# in the background, so that the trap runs at once instead of after the step
if [ "${2:-}" = eval ]; then
  exec "$PY" -m prism_hpc.train.eval_array "$RUN_DIR" "$INDEX"
fi
srun --unbuffered "$PY" -m prism_hpc.hpc.task "$RUN_DIR" train "$INDEX" &
STEP=$!
rc=0
wait "$STEP" || rc=$?
while kill -0 "$STEP" 2>/dev/null; do rc=0; wait "$STEP" || rc=$?; done
exit "$rc"
