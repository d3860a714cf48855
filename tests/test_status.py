"""`status` is a bookkeeping command: markers + one scheduler query. On a run of any size it
imports no torch and never lists the data (ImageNet's 1.28 M files on a shared filesystem)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prism_hpc.config.load import load_config
from prism_hpc.hpc.launch import plans_for
from prism_hpc.hpc.plan import write_plan
from prism_hpc.stages import registry
from prism_hpc.store.rundir import new_run_dir

REPO = Path(__file__).resolve().parent.parent


def test_status_of_an_imagenet_run_imports_no_torch_and_lists_no_data(tmp_path):
    cfg, raw = load_config(REPO / "configs" / "in1k_ipc50.yaml", [
        f"data.root={tmp_path / 'no-imagenet-here'}", f"run_root={tmp_path}",
    ])  # fmt: skip
    rd = new_run_dir(cfg, tmp_path / "run", raw)
    write_plan(rd.plan, plans_for(cfg, registry()), registry().ref)
    marker = rd.recover / "slice_00003.done"
    marker.parent.mkdir()
    marker.write_text("{}")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no sbatch/sacct: markers only
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "prism_hpc.cli", "status", str(rd.root),
         "--json"], capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "torch" not in imported and "torchvision" not in imported
    rows = {r["stage"]: r for r in json.loads(result.stdout)}
    assert rows["recover"]["total"] == 50 and rows["train"]["total"] == 9
