"""Evaluate saved student checkpoints without training: one array task per student.

    python -m prism_hpc.train.eval_array RUN_DIR INDEX
    python -m prism_hpc.train.eval_array RUN_DIR --array CHUNK ARRAY_INDEX

INDEX is the train stage's item index ((arch, seed) in `students.archs` x `students.seeds`
order, as `prism-hpc plan` lists them); `--array` maps an array task to an item through the
run's plan.json, like the training scripts. The result (EMA weights when the checkpoint has
them, the full test split unless `students.eval_limit`) goes to
`students/<arch>/seed<k>/eval.json`; the checkpoint and metrics.json are left as they are.
Only task 0 of a multi-task allocation works; bad input exits 2 with one line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prism_hpc.errors import UserError
from prism_hpc.store.rundir import RunDir
from prism_hpc.train.checks import student_pairs
from prism_hpc.workflow import array_item

STAGE = "train"  # the pipeline stage whose items are the students (plan.json's entry)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) == 4 and args[1] == "--array":
            run_dir = Path(args[0])
            index = array_item(RunDir(run_dir).plan, STAGE, int(args[2]), int(args[3]))
        elif len(args) == 2:
            run_dir, index = Path(args[0]), int(args[1])
        else:
            raise UserError("usage: eval_array RUN_DIR INDEX | RUN_DIR --array CHUNK INDEX")
        if int(os.environ.get("SLURM_PROCID", "0")) != 0:
            return 0  # one process evaluates; extra tasks of the allocation have nothing to do
        cfg = RunDir(run_dir).load_config()
        pairs = student_pairs(cfg)
        if not 0 <= index < len(pairs):
            raise UserError(f"student index {index} out of range (0-{len(pairs) - 1})")
        import torch

        from prism_hpc.train.trainer import evaluate_checkpoint

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        arch, seed = pairs[index]
        evaluate_checkpoint(cfg, run_dir, arch, seed, device)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
