"""Intra-class diversity: mean pairwise cosine similarity of penultimate features (paper §4.3).

For one class with features f_1..f_n, the value is the mean of cos(f_a, f_b) over all n(n-1)
ordered pairs a != b (the same as over the n(n-1)/2 unordered pairs); lower = more diverse.
The run's number is the mean +- std (population std, ddof=0: the classes are all the classes,
not a sample) of the per-class values. It is computed for the distilled set and for the real
images the distilled set was initialised from (the reference): slot i of class c started from
the i-th training image of c (`prism_hpc.data.index`). For noise-initialised runs the reference
is the real images at the same slots, i.e. what a real-initialised run would have started from.

Features: the input of the extractor's last `nn.Linear` layer during a forward pass (for
torchvision ResNet / MobileNet / EfficientNet / ShuffleNet the globally pooled features, for
AlexNet fc7), found by hooking every Linear layer, so wrappers such as `Renormalize` and timm
heads work unchanged.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from prism_hpc.errors import UserError

DIVERSITY_JSON = "diversity.json"
FEATURES_NPZ = "diversity_features.npz"
EMBED_CLASSES = 10  # classes whose features are kept for the 2-D embedding (paper Fig. 1)


# ---------------------------------------------------------------------------------------------
# features and the metric


@torch.no_grad()
def penultimate_features(
    model: nn.Module,
    images_normalised: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(N, D) float32 CPU features: the input of the last `nn.Linear` called in `forward`.

    `images_normalised`: (N, C, H, W), already normalised the way the model expects (the data's
    mean/std; `Renormalize` wrappers convert further). Works in eval mode (dropout in front of
    the classifier is then the identity).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(
            f"metrics.extractor: model {type(model).__name__} has no nn.Linear classifier "
            "whose input could serve as penultimate features"
        )
    if device is None:
        try:
            device = next(model.parameters()).device
        except StopIteration:
            device = torch.device("cpu")
    captured: list[torch.Tensor] = []

    def hook(_module, inputs):
        captured[:] = [inputs[0]]  # only the latest Linear input is kept

    modes = [(m, m.training) for m in model.modules()]  # restored one by one afterwards
    model.eval()
    handles = [m.register_forward_pre_hook(hook) for m in linears]
    out = []
    try:
        for start in range(0, len(images_normalised), batch_size):
            captured.clear()
            x = images_normalised[start : start + batch_size].to(device, torch.float32)
            model(x)
            if not captured:
                raise UserError(
                    f"metrics.extractor: {type(model).__name__}'s forward never called a Linear"
                )
            feats = captured[-1]
            out.append(feats.reshape(feats.shape[0], -1).float().cpu())
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def intra_class_cosine(features, labels, eps: float = 1e-12) -> dict[str, Any]:
    """Mean pairwise cosine similarity within each class, then mean +- std over classes.

    Returns `{"per_class": {class: value}, "mean": float, "std": float, "counts": {class: n},
    "skipped": [classes with fewer than 2 samples]}`. A zero feature vector has cosine 0 with
    everything.
    """
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if f.ndim != 2 or f.shape[0] != len(y):
        raise ValueError(f"features {tuple(f.shape)} and labels {y.shape} do not match")
    f = f / f.norm(dim=1, keepdim=True).clamp_min(eps)
    per_class: dict[int, float] = {}
    counts: dict[int, int] = {}
    skipped: list[int] = []
    for c in np.unique(y).tolist():
        fc = f[torch.from_numpy(y == c)]
        n = fc.shape[0]
        counts[int(c)] = int(n)
        if n < 2:
            skipped.append(int(c))
            continue
        # sum over all pairs of cos = ||sum_a f_a||^2; remove the n diagonal terms (each ~1,
        # exactly ||f_a||^2, which is 0 for a zero vector)
        total = fc.sum(0).pow(2).sum() - fc.pow(2).sum()
        per_class[int(c)] = float(total / (n * (n - 1)))
    values = np.array(list(per_class.values()), dtype=np.float64)
    return {
        "per_class": per_class,
        "mean": float(values.mean()) if len(values) else float("nan"),
        "std": float(values.std()) if len(values) else float("nan"),
        "counts": counts,
        "skipped": skipped,
    }


def per_class_values(result: dict[str, Any]) -> dict[int, float]:
    """`per_class` with int keys (JSON turns them into strings)."""
    return {int(k): float(v) for k, v in (result.get("per_class") or {}).items()}


# ---------------------------------------------------------------------------------------------
# the distilled set of a run


@dataclass
class Distilled:
    """`distilled.h5`, lazily: pixels stay in the file (ImageNet IPC 50 is ~7.5 GB)."""

    path: Path
    labels: np.ndarray
    ipc_index: np.ndarray
    image_shape: tuple[int, ...]
    num_classes: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    method: str
    config_text: str
    slice_provenance: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, rows: slice | np.ndarray) -> np.ndarray:
        """uint8 (n, C, H, W) for a slice or sorted row positions."""
        with h5py.File(self.path, "r") as f:
            if isinstance(rows, slice):
                return f["images"][rows]
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) == 0:
                return np.zeros((0, *self.image_shape), np.uint8)
            order = np.argsort(rows, kind="stable")
            srt = rows[order]
            out = np.empty((len(rows), *self.image_shape), np.uint8)
            if np.all(np.diff(srt) > 0):  # h5py fancy indexing needs increasing positions
                out[order] = f["images"][srt]
            else:
                out[order] = np.stack([f["images"][int(r)] for r in srt])
            return out

    def iter_batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            yield start, self.read(slice(start, min(start + batch_size, len(self))))

    def rows_of_classes(self, classes, max_ipc: int | None = None) -> np.ndarray:
        """Row positions of the given classes, class-major then by IPC index."""
        rows = []
        for c in classes:
            r = np.flatnonzero(self.labels == c)
            r = r[np.argsort(self.ipc_index[r], kind="stable")]
            rows.append(r if max_ipc is None else r[:max_ipc])
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _attr_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_distilled(run_dir: Path) -> Distilled:
    """Open `run_dir/distilled.h5` (labels, index and attributes; pixels on demand)."""
    path = Path(run_dir) / "distilled.h5"
    if not path.is_file():
        raise UserError(f"{run_dir}: no distilled.h5 (run the collect stage first)")
    try:
        with h5py.File(path, "r") as f:
            labels = np.asarray(f["labels"][()], dtype=np.int64)
            ipc = np.asarray(f["ipc_index"][()], dtype=np.int64)
            shape = tuple(f["images"].shape[1:])
            attrs = dict(f.attrs)
    except (OSError, KeyError) as err:
        raise UserError(f"{path}: not a readable distilled set ({err})") from None
    if (labels < 0).any() or (ipc < 0).any():
        raise UserError(f"{path}: reads fill values (a recover shard is missing or unreadable)")
    num_classes = int(attrs.get("num_classes", int(labels.max()) + 1 if len(labels) else 0))
    names = attrs.get("class_names")
    class_names = [_attr_text(n) for n in names] if names is not None else []
    if len(class_names) != num_classes:
        class_names = [f"class {c}" for c in range(num_classes)]
    channels = shape[0] if shape else 1
    mean = [float(v) for v in np.atleast_1d(attrs.get("mean", [0.5] * channels))]
    std = [float(v) for v in np.atleast_1d(attrs.get("std", [0.5] * channels))]
    try:
        provenance = json.loads(_attr_text(attrs.get("slice_provenance", "[]")))
    except ValueError:
        provenance = []
    return Distilled(
        path=path,
        labels=labels,
        ipc_index=ipc,
        image_shape=shape,
        num_classes=num_classes,
        class_names=class_names,
        mean=mean,
        std=std,
        method=_attr_text(attrs.get("method", "")),
        config_text=_attr_text(attrs.get("config", "")),
        slice_provenance=provenance if isinstance(provenance, list) else [],
    )


def normalise(pixels_uint8: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(pixels_uint8)).float().div_(255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def embed_classes(num_classes: int, k: int = EMBED_CLASSES) -> list[int]:
    """Up to `k` classes spread evenly over the label range (all of them for <= k classes)."""
    if num_classes <= k:
        return list(range(num_classes))
    return sorted({round(float(v)) for v in np.linspace(0, num_classes - 1, k)})


# ---------------------------------------------------------------------------------------------
# reference (the real images the slots were initialised from)


def reference_indices(distilled: Distilled, train_labels: np.ndarray) -> np.ndarray:
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
    from prism_hpc.models.teachers import teacher_weights_path
    from prism_hpc.store.atomic import file_sha256

    spec = cfg.teachers[name]
    shape = f"{spec.arch}/w{spec.width}/{cfg.data.channels}x{cfg.data.resolution}"
    if spec.weights == "squeeze":
        path = teacher_weights_path(run_dir, name)
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


def _features_of_rows(model, distilled: Distilled, batch_size: int, device) -> torch.Tensor:
    parts = []
    for _, pixels in distilled.iter_batches(batch_size):
        parts.append(
            penultimate_features(
                model, normalise(pixels, distilled.mean, distilled.std), batch_size, device
            )
        )
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def _features_of_source(model, source, indices, mean, std, batch_size, device) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    parts = []
    for start in range(0, len(indices), batch_size):
        x = (source.load(indices[start : start + batch_size]) - m) / s
        parts.append(penultimate_features(model, x, batch_size, device))
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
    device = torch.device(device)
    distilled = load_distilled(run_dir)
    name, warning = extractor_choice(cfg)
    if warning:
        log(f"report: warning: {warning}")
    model = _load_extractor(cfg, name, run_dir, device)
    bs = cfg.metrics.batch_size
    feats = _features_of_rows(model, distilled, bs, device)
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
            ref = _features_of_source(model, source, idx, distilled.mean, distilled.std, bs, device)
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

    run_dir = Path(run_dir)
    out = run_dir / DIVERSITY_JSON
    with atomic_path(run_dir / FEATURES_NPZ) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    atomic_write_text(out, json.dumps(_jsonable(result), indent=1) + "\n")
    return out


def read_diversity(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / DIVERSITY_JSON).read_text())
    except (OSError, ValueError):
        return None


def read_features(run_dir: Path) -> dict[str, np.ndarray] | None:
    path = Path(run_dir) / FEATURES_NPZ
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None


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
    from prism_hpc.hpc.rundir import RunDir

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
