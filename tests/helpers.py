"""Helpers shared by several test modules (test modules do not import each other: importing
one also collects its tests' module-level set-up and couples unrelated files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from prism_hpc.config.load import config_from_dict, deep_merge
from prism_hpc.data.sources import FASHION_MNIST_STATS

# --------------------------------------------------------------------------- the command line
CLI = [sys.executable, "-m", "prism_hpc.cli"]


def with_canary_choice(args: tuple, canary: bool) -> list[str]:
    """`submit`/`resubmit` without the SLURM canary job unless a test is about it: each
    canary is a whole pipeline at a minimal budget, and most tests check other things."""
    args = [str(a) for a in args]
    if args and args[0] in ("submit", "resubmit") and not canary:
        args.append("--no-canary")
    return args


def run_cli(*args, cwd=None, timeout=600, canary=False) -> subprocess.CompletedProcess:
    """`prism-hpc ARGS` in a fresh process, as users run it (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    args = with_canary_choice(args, canary)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env, check=False)  # fmt: skip


def write_stub(folder: Path, name: str, body: str) -> None:
    """An executable bash script `folder/name` standing in for a cluster command."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


# --------------------------------------------------------------------------- fake runs
BASE = {
    "name": "t",
    "data": {"resolution": 16},
    "teachers": {
        "resnet18": {"arch": "resnet18", "width": 0.25, "weights": "squeeze"},
        "mobilenet_v2": {"arch": "mobilenet_v2", "width": 0.25, "weights": "squeeze"},
    },
    "recover": {
        "logit_teacher": "resnet18", "bn_always": ["resnet18"], "bn_pool": [],
        "iterations": 10, "iteration_step": 0, "ipc": 2,
    },
    "relabel": {
        "teachers": ["resnet18", "mobilenet_v2"], "batch_size": 4, "epochs_per_task": 2,
        "precision": "fp32",  # fp32 on every CPU: auto would follow its bf16 flags
    },
    "students": {
        "archs": ["resnet18"], "seeds": [0], "epochs": 3, "batch_size": 8, "width": 0.25,
        "eval_every": 1, "eval_limit": 200, "eval_batch_size": 100, "eval_workers": 0,
        "cpu_threads": 1, "precision": "fp32",
    },
}  # fmt: skip


def write_distilled(path: Path, num_classes: int = 10, ipc: int = 2, res: int = 16, seed=0):
    """A tiny distilled.h5 in the DESIGN §4 layout (random pixels)."""
    rng = np.random.default_rng(seed)
    n = num_classes * ipc
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=rng.integers(0, 256, (n, 1, res, res), dtype=np.uint8))
        f.create_dataset("labels", data=np.repeat(np.arange(num_classes), ipc).astype(np.int64))
        f.create_dataset("ipc_index", data=np.tile(np.arange(ipc), num_classes).astype(np.int32))
        f.attrs["num_classes"] = num_classes
        f.attrs["mean"] = FASHION_MNIST_STATS[0]
        f.attrs["std"] = FASHION_MNIST_STATS[1]
        f.attrs["class_names"] = [f"c{i}" for i in range(num_classes)]


def make_run(tmp_path: Path, **sections) -> tuple:
    """A fake run dir: config, random teachers saved as squeeze outputs, distilled.h5."""
    from prism_hpc.models.teachers import build_untrained, teacher_weights_path

    cfg = config_from_dict(deep_merge(BASE, sections))
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(cfg.teachers):
        torch.manual_seed(100 + i)
        model = build_untrained(cfg, cfg.teachers[name])
        with torch.no_grad():  # non-trivial BN statistics so eval-mode logits vary
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        path = teacher_weights_path(run_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    write_distilled(run_dir / "distilled.h5", res=cfg.data.resolution)
    return cfg, run_dir


def run_relabel(cfg, run_dir: Path) -> None:
    """Every relabel item of `cfg` in this process, each checked done."""
    from prism_hpc.stages.relabel import RelabelStage
    from prism_hpc.workflow import TaskEnv

    stage = RelabelStage()
    env = TaskEnv(run_dir=run_dir, log=lambda m: None)
    for item in stage.items(cfg):
        stage.run(cfg, item, env)
        assert stage.is_done(run_dir, item)


# --------------------------------------------------------------------------- exported folders
def imagefolder_matches_h5(run_dir: Path, out: Path):
    """Load `out` as DD-Ranking does (`torchvision.datasets.ImageFolder(root=image_path)`) and
    compare every sample's class index and pixels with distilled.h5. Returns the dataset."""
    from torchvision.datasets import ImageFolder

    with h5py.File(run_dir / "distilled.h5", "r") as f:
        images, labels, ipc = f["images"][:], f["labels"][:], f["ipc_index"][:]
    ds = ImageFolder(str(out))
    n = int(labels.max()) + 1
    assert ds.classes == sorted(ds.classes) and len(ds.classes) == n
    assert [ds.class_to_idx[name] for name in ds.classes] == list(range(n))
    # class-major, IPC index ascending: the order DD-Ranking's tensor input and hard labels
    # (`[c] * ipc for c in range(num_classes)`) assume
    order = np.lexsort((ipc, labels))
    assert len(ds) == len(order)
    for k, row in enumerate(order):
        pil, target = ds[k]
        assert target == labels[row]
        img = images[row]
        rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img  # the loader makes RGB
        np.testing.assert_array_equal(np.asarray(pil).transpose(2, 0, 1), rgb)
    return ds


# --------------------------------------------------------------------------- statistic matching
def two_level_batch() -> torch.Tensor:
    """(2, 1, 32, 16): image 0 is 1 above / 3 below row 16, image 1 is 5 / 7. Channel
    mean 4, var 5; patch (top, bottom) means 3, 5, variances 4, 4."""
    x = torch.empty(2, 1, 32, 16)
    for i, (top, bottom) in enumerate([(1.0, 3.0), (5.0, 7.0)]):
        x[i, :, :16] = top
        x[i, :, 16:] = bottom
    return x


def conv_bn_net() -> nn.Module:
    """A 1x1 identity conv then a BN with running mean 0 / var 1: both layers see x."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    return net.eval()


def reference_stats() -> dict[str, torch.Tensor]:
    return {
        "global/0/mean": torch.tensor([0.0]),
        "global/0/var": torch.tensor([1.0]),
        "global/0/patch_mean": torch.tensor([0.0, 0.0]),
        "global/0/patch_var": torch.tensor([1.0, 1.0]),
    }


def hooked_terms(matcher, net: nn.Module, x: torch.Tensor, targets=None) -> list[float]:
    """The statistic-matching terms a `StatMatcher` hooked into `net` records for `x`."""
    matcher.active, matcher.targets, matcher.terms = "net", targets, []
    net(x)
    matcher.active = None
    return [float(t.detach()) for t in matcher.terms]
