"""Ensemble soft labels: FKD-style offline storage (HDF5) and online relabelling.

- `augment`: per-epoch plans (order, crops, flips, CutMix/Mixup) and their exact replay.
- `ensemble`: norm-rescaled / plain mean of teacher logits.
- `offline`: the ensemble's logits for every stored epoch (file format: `store.softlabels`).

No re-exports here: importing the package must not import torch (planning, `status`)."""
