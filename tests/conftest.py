"""Shared fixtures: tiny configs, real Fashion-MNIST teachers trained once per session, SLURM."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from tests.slurm_cluster import slurm_cluster  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parent.parent
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# A small but complete pipeline: two real teacher families at 16 px, seconds per stage.
TINY = {
    "name": "tiny",
    "seed": 0,
    "backend": "local",
    "data": {"source": "fashion_mnist", "root": str(FMNIST), "resolution": 16, "channels": 1},
    "teachers": {
        "resnet18": {"arch": "resnet18", "width": 0.25},
        "shufflenet": {"arch": "shufflenet_v2_x0_5", "width": 0.5},
    },
    "squeeze": {"max_steps": 80, "batch_size": 64, "lr": 0.1},
    "recover": {
        "precision": "fp32",  # the tests' reference numbers are fp32 on every CPU
        "ipc": 3,
        "iterations": 12,
        "iteration_step": 2,
        "iteration_period": 4,
        "classes_per_batch": 10,
        "logit_teacher": "resnet18",
        "bn_always": ["resnet18"],
        "bn_pool": ["shufflenet"],
        "augment": {"crop_scale": [0.5, 1.0], "jitter": 2},
        "log_every": 4,
    },
    # fp32 like recover: the tests' numbers must not follow the CPU's bf16 flags
    "relabel": {
        "teachers": ["resnet18", "shufflenet"],
        "batch_size": 10,
        "epochs_per_task": 2,
        "precision": "fp32",
    },
    "students": {
        "archs": ["resnet18"],
        "epochs": 2,
        "batch_size": 10,
        "eval_every": 2,
        "precision": "fp32",
    },
}


def pytest_configure(config):
    torch.set_num_threads(1)  # also for session fixtures, which start before the one below


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """One intra-op thread per test: the 2 CI cores are shared by subprocess ranks and 2
    threads oversubscribe. Restored afterwards, so a test that sets its own count cannot leak
    it into the next one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_cfg() -> dict:
    """A fresh copy of the tiny config dict (mutate freely)."""
    return copy.deepcopy(TINY)


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def fmnist_available() -> Path:
    if not (FMNIST / "train-labels-idx1-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (make test does)")
    return FMNIST


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory, fmnist_available) -> dict[str, str]:
    """The tiny config's teachers squeezed once for the session: name -> weights file."""
    from prism_hpc.config.load import config_from_dict
    from prism_hpc.stages.squeeze import SqueezeStage
    from prism_hpc.workflow import TaskEnv

    root = tmp_path_factory.mktemp("teachers")
    cfg = config_from_dict(TINY)
    stage = SqueezeStage()
    for item in stage.items(cfg):
        stage.run(cfg, item, TaskEnv(run_dir=root, log=lambda m: None))
    return {name: str(root / "teachers" / f"{name}.pt") for name in cfg.teachers}


@pytest.fixture
def tiny_cfg_pretrained(tiny_cfg, tiny_teachers) -> dict:
    """Tiny config whose teachers load the session's weights (no squeeze stage needed)."""
    for name, path in tiny_teachers.items():
        tiny_cfg["teachers"][name]["weights"] = path
    tiny_cfg["squeeze"]["enabled"] = False
    return tiny_cfg


def submit_imagefolder(tmp_path: Path, root: Path, name: str, ipc: int):
    """`prism-hpc submit` of a minimal run on the ImageFolder at `root` (random teacher, two
    iterations): the submit-time checks of real-world folders run exactly as for users."""
    import subprocess
    import sys

    cfg = {
        "name": name, "run_root": str(tmp_path / "runs"),
        "data": {"source": "imagefolder", "root": str(root), "resolution": 8, "channels": 3},
        "teachers": {"r": {"arch": "resnet18", "width": 0.25, "weights": "random"}},
        "squeeze": {"enabled": False},
        "recover": {"ipc": ipc, "iterations": 2, "iteration_step": 0, "logit_teacher": "r",
                    "bn_always": ["r"], "bn_pool": []},
        "relabel": {"teachers": ["r"]},
    }  # fmt: skip
    path = write_yaml(tmp_path / "c.yaml", cfg)
    return subprocess.run([sys.executable, "-m", "prism_hpc.cli", "submit", str(path),
                           "--backend", "local"], capture_output=True, text=True,
                          check=False)  # fmt: skip
