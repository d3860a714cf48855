#!/bin/bash
# Student training + evaluation of a prism-hpc run with plain sbatch:
#
#   sbatch --array=0-8 slurm/eval_array.sh runs/in1k_ipc50/<stamp>
#
# Array index i is item i of the run's `train` stage, i.e. one (architecture, seed) pair in the
# order of plan.json (`prism-hpc plan CONFIG` prints them); finished items (valid .done marker)
# exit at once, so re-submitting the whole range is safe. Add your site's options on the sbatch
# command line (--partition, --account, --gpus-per-node=1, --time, ...). Set PRISM_PYTHON to
# the environment's python if `python` on the nodes is not the one with prism-hpc installed.
#SBATCH --job-name=prism-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --output=prism-eval_%A_%a.log
set -euo pipefail
RUN_DIR=${1:?usage: sbatch --array=0-N slurm/eval_array.sh RUN_DIR}
INDEX=${SLURM_ARRAY_TASK_ID:?submit this script with sbatch --array=...}
export HDF5_USE_FILE_LOCKING=FALSE PYTHONUNBUFFERED=1
PY=${PRISM_PYTHON:-python}
if [ ! -f "$RUN_DIR/config.yaml" ]; then
  echo "eval_array.sh: $RUN_DIR is not a prism-hpc run directory (no config.yaml)" >&2
  exit 2
fi
srun --unbuffered "$PY" -m prism_hpc.hpc.task "$RUN_DIR" train "$INDEX"
