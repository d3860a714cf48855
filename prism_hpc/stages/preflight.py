"""Checks that turn bad input into one-line errors before a run directory exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import num_classes_of, open_source
from prism_hpc.errors import UserError
from prism_hpc.models.registry import available_archs


def check_models(cfg: Config) -> None:
    known = set(available_archs())
    for name, spec in cfg.teachers.items():
        if spec.arch.startswith("timm:"):
            import timm

            ok = timm.is_model(spec.arch.removeprefix("timm:"))
        else:
            ok = spec.arch in known
        if not ok:
            raise UserError(
                f"teachers.{name}.arch = '{spec.arch}': unknown model (expected a torchvision "
                "name such as resnet18, mobilenet_v2, efficientnet_b0, shufflenet_v2_x0_5, "
                "alexnet, or timm:<name>)"
            )
        if spec.weights == "squeeze" and not cfg.squeeze.enabled:
            raise UserError(
                f"teachers.{name}.weights = 'squeeze' but squeeze.enabled is false "
                "(give a weights file or enable squeeze)"
            )
        if spec.weights == "torchvision":
            check_torchvision_fits(cfg, name)
    for arch in cfg.students.archs:
        if arch not in known and not arch.startswith("timm:"):
            raise UserError(f"students.archs: '{arch}' is not a known model")


IMAGENET_CLASSES = 1000  # what every torchvision classification `DEFAULT` weight set predicts


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def check_torchvision_fits(cfg: Config, name: str) -> None:
    """`weights: torchvision` is torchvision's ImageNet network as published (1000 classes,
    RGB input): refuse data it cannot classify instead of a silently wrong teacher."""
    try:
        classes: int | None = num_classes_of(cfg.data)
    except UserError:
        classes = None  # plan without the data: the channels can still be checked
    wrong = []
    if classes is not None and classes != IMAGENET_CLASSES:
        wrong.append(_count(classes, "class"))
    if cfg.data.channels != 3:
        wrong.append(_count(cfg.data.channels, "channel"))
    if wrong:
        raise UserError(
            f"teachers.{name}: weights torchvision are a {IMAGENET_CLASSES}-class 3-channel "
            f"ImageNet network, but the data has {' and '.join(wrong)}"
        )


def torchvision_cache_file(arch: str) -> Path:
    """Where `torchvision.models.get_model(arch, weights="DEFAULT")` reads its download."""
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def check_weights(cfg: Config, run_dir: Path | None = None) -> list[str]:
    """Every teacher's weights loadable where the tasks run, before anything is submitted:
    a local file loads with `weights_only=True` into its architecture; `torchvision` weights
    are in the cache when the nodes are offline (else a warning). Returns warnings."""
    from prism_hpc.models.registry import load_weights
    from prism_hpc.models.teachers import build_untrained

    warnings = []
    for name, spec in cfg.teachers.items():
        if spec.weights in ("squeeze", "random"):
            continue
        if spec.weights == "torchvision":
            cached = torchvision_cache_file(spec.arch)
            if not cached.is_file():
                message = (f"teachers.{name}.weights = torchvision: {cached} is not in the "
                           "cache")  # fmt: skip
                if cfg.offline:
                    raise UserError(
                        f"{message} and `offline: true` (nodes cannot download); fetch it on a "
                        "login node or give a weights file"
                    )
                warnings.append(f"{message}; every task will download it")
            continue
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise UserError(f"teachers.{name}.weights = '{spec.weights}': file not found")
        try:
            load_weights(build_untrained(cfg, spec, run_dir), path, spec.key_map)
        except UserError as err:
            raise UserError(f"teachers.{name}.weights: {err}") from None
    return warnings


def check_data(cfg: Config, require_data: bool = True) -> list[str]:
    """Data present, matching the config, and enough images per class for the IPC slices
    asked for. Data that is absent is an error for `submit` and a warning for `plan` (a dry
    run may be made away from the data); data that is there and does not match is an error
    for both."""
    try:
        source = open_source(cfg.data, "train")
    except UserError as err:
        if require_data:
            raise
        return [f"data not checked: {err}"]
    n = cfg.data.num_classes if cfg.data.num_classes is not None else source.num_classes
    if source.num_classes != n:
        raise UserError(f"data.num_classes = {n}: the data has {source.num_classes} classes")
    names = cfg.data.class_names
    if names is not None and len(names) != n:
        raise UserError(f"data.class_names has {len(names)} name(s), the data has {n} classes")
    counts = np.bincount(source.labels, minlength=n)
    if cfg.recover.ipc == "all":
        return []  # every slice holds only the classes that have an image for it
    need = cfg.recover.ipc_start + cfg.recover.ipc
    if cfg.recover.init == "real" and counts.min() < need:
        raise UserError(
            f"recover.ipc = {cfg.recover.ipc}: needs {need} images per class, the smallest class "
            f"of {cfg.data.root} has {int(counts.min())}"
        )
    return []


def precision_warnings(cfg: Config) -> list[str]:
    """An explicit half precision a stage's device lacks natively (a CPU without
    AVX512-BF16, a V100): it still runs as asked, several times slower. One line per stage
    (recover, relabel when it runs teachers, train)."""
    from prism_hpc.stages.precision import STAGES, planned_precision

    out = []
    for stage in STAGES:
        if stage == "relabel" and cfg.relabel.mode == "none":
            continue
        res = cfg.resources.for_stage(stage)
        choice = planned_precision(cfg, not (res.gpus_per_node or res.gpu), stage)
        if choice.warning:
            out.append(f"{stage}: {choice.warning}")
    return out


def preflight(cfg: Config, require_data: bool = True) -> list[str]:
    """Raise UserError on bad input; return warnings (data absent when not required)."""
    from prism_hpc.recover.checks import recover_warnings

    check_models(cfg)
    warnings = recover_warnings(cfg)
    if require_data:  # submit: weights must load; plan (a dry run) does not load them
        warnings += check_weights(cfg)
        warnings += precision_warnings(cfg)  # plan shows them in its estimate
    return warnings + check_data(cfg, require_data)


def files_read(cfg: Config, run_dir: Path) -> list[Path]:
    """The image files the stages will read: the real-init images of every slice (the first
    `ipc_start + ipc` of each class), and every validation image."""
    if cfg.data.source != "imagefolder":
        return []
    from prism_hpc.data.sources import index_path

    paths: list[Path] = []
    train = open_source(cfg.data, "train", run_dir)
    if cfg.recover.init == "real":
        listing = train.listing
        stop = None if cfg.recover.ipc == "all" else cfg.recover.ipc_start + cfg.recover.ipc
        for name, files in zip(listing.classes, listing.files):
            paths += [Path(listing.folder) / name / f for f in files[:stop]]
    if index_path(run_dir, "test").is_file():
        paths += open_source(cfg.data, "test", run_dir).files
    return paths


def check_images(cfg: Config, run_dir: Path) -> int:
    """Refuse (one line, naming them) when files the run will read are not complete images;
    returns how many were checked."""
    from prism_hpc.data.imagecheck import unreadable_images

    paths = files_read(cfg, run_dir)
    bad = unreadable_images(paths)
    if bad:
        shown = "; ".join(f"{p}: {why}" for p, why in bad[:3])
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(
            f"{len(bad)} of the {len(paths)} images the run reads are broken: {shown}{more}; "
            "replace or remove them"
        )
    return len(paths)
