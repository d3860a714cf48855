"""A run's diversity: the metric of `prism_hpc.metrics.diversity` on the distilled set and on
the real images the distilled set was initialised from (the reference), cached in the run dir
as `diversity.json` (+ `diversity_features.npz` for the embedding figure).

Slot i of class c started from the i-th training image of c (`prism_hpc.data.index`). For
noise-initialised runs the reference is the real images at the same slots, i.e. what a
real-initialised run would have started from.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prism_hpc.errors import UserError
from prism_hpc.metrics.diversity import (
    embed_classes,
    intra_class_cosine,
    normalise,
    penultimate_features,
    standardise,
)
from prism_hpc.metrics.runs import read_diversity
from prism_hpc.store import layout
from prism_hpc.store.distilled import DistilledSet, open_distilled

# ---------------------------------------------------------------------------------------------
# reference (the real images the slots were initialised from)


def reference_indices(distilled: DistilledSet, train_labels: np.ndarray) -> np.ndarray:
    """Training-set position of the real image of each distilled row's (class, IPC slot).

    Uses the `init_indices` recorded per chunk in the slice provenance when present (what
    recovery actually loaded), else recomputes them from the class index.
    """
    from prism_hpc.data.index import class_index

    recorded: dict[tuple[int, int], int] = {}
    for prov in distilled.slice_provenance:
        s = prov.get("slice")
        for chunk in prov.get("chunks", []) or []:
            idx = chunk.get("init_indices") or []
            classes = chunk.get("classes") or []
            if s is None or len(idx) != len(classes):
                continue
            for c, i in zip(classes, idx):
                recorded[(int(c), int(s))] = int(i)
    per_class = class_index(np.asarray(train_labels, np.int64), distilled.num_classes)
    out = np.empty(len(distilled), np.int64)
    for row, (c, i) in enumerate(zip(distilled.labels.tolist(), distilled.ipc_index.tolist())):
        if (c, i) in recorded:
            out[row] = recorded[(c, i)]
        elif i < len(per_class[c]):
            out[row] = per_class[c][i]
        else:
            raise UserError(f"class {c} has no training image for IPC slot {i} (reference)")
    return out


# ---------------------------------------------------------------------------------------------
# a run


def extractor_choice(cfg) -> tuple[str, str | None]:
    """(teacher-pool name, warning or None): `metrics.extractor`, else the logit teacher."""
    if cfg.metrics.extractor:
        return cfg.metrics.extractor, None
    name = cfg.recover.logit_teacher or cfg.recover.logit_pool[0]
    return name, (
        f"metrics.extractor is not set: diversity uses the logit teacher '{name}', which "
        "shaped the images itself (set metrics.extractor to a pool model that is not a "
        "recovery teacher for an unbiased measurement)"
    )


def extractor_identity(cfg, name: str, run_dir: Path) -> str:
    """A string that is equal for two runs iff they measure with the same feature space."""
    from prism_hpc.store.atomic import file_sha256

    spec = cfg.teachers[name]
    shape = f"{spec.arch}/w{spec.width}/{cfg.data.channels}x{cfg.data.resolution}"
    if spec.weights == "squeeze":
        path = layout.teacher_weights(run_dir, name)
        digest = file_sha256(path)[:16] if path.is_file() else "missing"
        return f"{shape}/squeeze:{digest}"
    if spec.weights in ("random", "torchvision"):
        return f"{shape}/{spec.weights}"
    path = Path(spec.weights).expanduser()
    return f"{shape}/file:{file_sha256(path)[:16] if path.is_file() else path}"


def _load_extractor(cfg, name: str, run_dir: Path, device):
    from prism_hpc.models.teachers import load_teacher

    # `random` weights must not depend on the global RNG: the same arch gives the same features
    # in every run (and in every process).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return load_teacher(cfg, name, run_dir, device)


def _features(model, batches: Iterable[torch.Tensor], batch_size: int, device) -> torch.Tensor:
    parts = [penultimate_features(model, x, batch_size, device) for x in batches]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def compute_diversity(
    cfg,
    run_dir: Path,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    reference: bool = True,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Diversity of the distilled set and of its real reference; (JSON-able dict, features).

    `features` holds float16 features of the `embed_classes` classes (keys `distilled`,
    `reference`, `labels`, `ipc_index`) for the 2-D embedding figure.
    """
    run_dir = Path(run_dir)
    with open_distilled(run_dir) as distilled:
        return _measure(cfg, run_dir, distilled, torch.device(device), log, reference)


def _measure(
    cfg, run_dir: Path, distilled: DistilledSet, device, log, reference: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    name, warning = extractor_choice(cfg)
    if warning:
        log(f"report: warning: {warning}")
    model = _load_extractor(cfg, name, run_dir, device)
    bs = cfg.metrics.batch_size
    mean, std = distilled.mean, distilled.std
    feats = _features(
        model, (normalise(p, mean, std) for _, p in distilled.iter_batches(bs)), bs, device
    )
    result: dict[str, Any] = {
        "extractor": name,
        "extractor_arch": cfg.teachers[name].arch,
        "extractor_identity": extractor_identity(cfg, name, run_dir),
        "extractor_is_recovery_teacher": name in cfg.recover.teacher_names(),
        "warning": warning,
        "feature_dim": int(feats.shape[1]) if feats.ndim == 2 else 0,
        "num_images": len(distilled),
        "num_classes": distilled.num_classes,
        "class_names": distilled.class_names,
        "init": cfg.recover.init,
        "distilled": intra_class_cosine(feats, distilled.labels),
        "reference": None,
    }
    keep = np.isin(distilled.labels, embed_classes(distilled.num_classes))
    arrays = {
        "distilled": feats[torch.from_numpy(keep)].numpy().astype(np.float16),
        "labels": distilled.labels[keep],
        "ipc_index": distilled.ipc_index[keep],
    }
    if reference:
        try:
            from prism_hpc.data.sources import open_source

            source = open_source(cfg.data, "train")
            idx = reference_indices(distilled, source.labels)
            batches = (
                standardise(source.load(idx[k : k + bs]), mean, std) for k in range(0, len(idx), bs)
            )
            ref = _features(model, batches, bs, device)
            result["reference"] = intra_class_cosine(ref, distilled.labels)
            result["reference"]["kind"] = (
                "real initial images"
                if cfg.recover.init == "real"
                else "real images of the same slots (the run started from noise)"
            )
            arrays["reference"] = ref[torch.from_numpy(keep)].numpy().astype(np.float16)
        except UserError as err:
            log(f"report: warning: no real reference for diversity: {err}")
            result["reference_error"] = str(err)
    d, r = result["distilled"], result["reference"]
    if r:
        result["delta_mean"] = d["mean"] - r["mean"]
    log(
        f"report: diversity ({name}): distilled {d['mean']:.4f} +- {d['std']:.4f}"
        + (f", real reference {r['mean']:.4f} +- {r['std']:.4f}" if r else "")
    )
    return result, arrays


def write_diversity(run_dir: Path, result: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """`run_dir/diversity.json` (+ `diversity_features.npz`), atomically."""
    from prism_hpc.store.atomic import atomic_path, atomic_write_text

    out = layout.diversity_json(run_dir)
    with atomic_path(layout.diversity_features(run_dir)) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    atomic_write_text(out, json.dumps(_jsonable(result), indent=1) + "\n")
    return out


def run_diversity(
    run_dir: Path,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
    recompute: bool = False,
) -> dict[str, Any]:
    """diversity.json of a run: read it, or compute (and cache) it from the run's config."""
    run_dir = Path(run_dir)
    if not recompute:
        cached = read_diversity(run_dir)
        if cached is not None:
            return cached
    from prism_hpc.store.rundir import RunDir

    cfg = RunDir(run_dir).load_config()
    result, arrays = compute_diversity(cfg, run_dir, device, log)
    with contextlib.suppress(OSError):  # a read-only run dir: report without caching
        write_diversity(run_dir, result, arrays)
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return None if np.isnan(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
