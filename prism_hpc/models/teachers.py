"""Teachers of a run: built from the config's pool, weights resolved, frozen, re-normalised."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from prism_hpc.config.schema import Config, TeacherSpec
from prism_hpc.data.sources import num_classes_of, source_stats
from prism_hpc.errors import UserError
from prism_hpc.models.registry import create_model, freeze, load_weights
from prism_hpc.store import layout


class Renormalize(nn.Module):
    """Maps images normalised with the data's mean/std to the teacher's own convention.

    Needed for real checkpoints trained with another normalisation (EfficientNet-Lite: [-1, 1]).
    """

    def __init__(self, model: nn.Module, data_stats, teacher_stats):
        super().__init__()
        self.model = model
        (dm, ds), (tm, ts) = data_stats, teacher_stats
        shape = (1, -1, 1, 1)
        scale = torch.tensor(ds) / torch.tensor(ts)
        shift = (torch.tensor(dm) - torch.tensor(tm)) / torch.tensor(ts)
        self.register_buffer("scale", scale.view(shape))
        self.register_buffer("shift", shift.view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


def teacher_weights_path(run_dir: Path, name: str) -> Path:
    return layout.teacher_weights(run_dir, name)


def build_untrained(cfg: Config, spec: TeacherSpec, run_dir: Path | None = None) -> nn.Module:
    return create_model(
        spec.arch,
        num_classes_of(cfg.data, run_dir),
        in_channels=cfg.data.channels,
        resolution=cfg.data.resolution,
        width=spec.width,
    )


def load_teacher(cfg: Config, name: str, run_dir: Path, device: torch.device | str = "cpu"):
    """A frozen, eval-mode teacher ready for normalised images of the run's data."""
    if name not in cfg.teachers:
        raise UserError(f"teacher '{name}' is not in the config's `teachers` pool")
    spec = cfg.teachers[name]
    with torch.random.fork_rng(devices=[]):
        # `weights: random` must give the same teacher in every stage and process
        from prism_hpc.seeding import derive_seed

        torch.manual_seed(derive_seed(cfg.seed, "teacher-init", name))
        model = build_untrained(cfg, spec, run_dir)
    if spec.weights == "squeeze":
        path = teacher_weights_path(run_dir, name)
        if not path.is_file():
            raise UserError(f"teacher '{name}': {path} missing (run the squeeze stage first)")
        load_weights(model, path)
    elif spec.weights == "torchvision":
        import torchvision

        model = torchvision.models.get_model(spec.arch, weights="DEFAULT")
    elif spec.weights != "random":
        load_weights(model, Path(spec.weights).expanduser(), spec.key_map)
    if spec.mean is not None and spec.std is not None:
        model = Renormalize(model, source_stats(cfg.data), (spec.mean, spec.std))
    return freeze(model).to(device)
