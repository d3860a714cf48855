"""Ensemble soft labels: FKD-style offline storage (HDF5) and online relabelling.

- `augment`: per-epoch plans (order, crops, flips, CutMix/Mixup) and their exact replay.
- `ensemble`: norm-rescaled / plain mean of teacher logits.
- `offline`: one HDF5 file per chunk of epochs, and the reader that training uses.
"""

from prism_hpc.relabel.augment import EpochPlan, build_batch, make_epoch_plan, plan_from_config
from prism_hpc.relabel.ensemble import Ensemble, combine_logits, load_ensemble
from prism_hpc.relabel.offline import DistilledSet, SoftLabelReader, write_relabel_chunk

__all__ = [
    "DistilledSet", "Ensemble", "EpochPlan", "SoftLabelReader", "build_batch", "combine_logits",
    "load_ensemble", "make_epoch_plan", "plan_from_config", "write_relabel_chunk",
]  # fmt: skip
