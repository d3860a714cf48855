"""A tiny run of every method config, through the real CLI: `configs/baselines/fmnist_*.yaml`
(found by glob, so a method added later is covered without editing this file), each shrunk to
IPC 2, a few iterations, one student epoch, and the session's two squeezed tiny teachers
(`tiny_teachers`, conftest) standing in for the config's teacher pool. Per method: the run
finishes, `verify` passes, `distilled.h5` has 2 x 10 images, the student has a top-1, the export
loads as an ImageFolder with index = label, and the method's mechanism is visible in what the
run recorded."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import h5py
import pytest
import yaml

from tests.conftest import REPO, TINY, write_yaml
from tests.helpers import imagefolder_matches_h5, run_cli

CONFIGS = sorted((REPO / "configs" / "baselines").glob("fmnist_*.yaml"))
IPC = 2


def stand_in(name: str) -> str:
    """Which tiny teacher plays a config's teacher: ResNets the tiny ResNet-18, the others the
    tiny ShuffleNet (two real families, so multi-teacher methods still mix architectures)."""
    return "resnet18" if "resnet" in name else "shufflenet"


def shrink(cfg: dict, teachers: dict[str, str], root: Path) -> dict:
    """The method's config at smoke size; the method's own keys are kept as they are."""
    cfg = copy.deepcopy(cfg)
    cfg.update(backend="local", run_root=str(root))
    cfg["data"].update(resolution=TINY["data"]["resolution"], train_limit_per_class=50)
    cfg["teachers"] = {
        name: {**TINY["teachers"][stand_in(name)], "weights": teachers[stand_in(name)]}
        for name in cfg["teachers"]
    }
    cfg["squeeze"] = {"enabled": False}
    rec = cfg["recover"]
    rec.update(ipc=IPC, log_every=4, cpu_threads=1)
    if "iterations" in rec:
        rec["iterations"] = 8
        if rec.get("iteration_step"):
            rec["iteration_step"] = 1  # T_0 = 8, T_1 = 7: still an EarlyLate budget
    if cfg["relabel"].get("mode") != "none":
        cfg["relabel"].update(batch_size=10, epochs_per_task=1)
    cfg["students"].update(epochs=1, eval_every=1, batch_size=10, eval_limit=200, width=0.25,
                           seeds=[0], workers=0)  # fmt: skip
    cfg["resources"] = {"default": {"concurrency": 1}}
    _cap_limits(rec)
    return cfg


def _cap_limits(node: dict, cap: int = 20) -> None:
    """A method's own per-class image limits (G-VBSM's statistics) at smoke size too."""
    for key, value in node.items():
        if isinstance(value, dict):
            _cap_limits(value, cap)
        elif key.endswith("limit_per_class") and value is not None:
            node[key] = min(int(value), cap)


def _traces(cfg: dict, prov: list[dict], attrs_cfg: dict, run: Path) -> list[str]:
    """What each mechanism leaves behind; returns the names of the traces checked."""
    import numpy as np

    rec = cfg["recover"]
    checked = []
    chunks = [c for p in prov for c in p["chunks"]]
    assert [p["slice"] for p in prov] == list(range(IPC))
    if rec.get("iteration_step"):  # DELT (EarlyLate): each IPC position its own budget
        assert [p["iterations"] for p in prov] == [8, 7]
        checked.append("varying iterations")
    if rec.get("synthesis") == "rded":  # RDED: factor^2 scored real patches per image
        factor = rec["rded"]["factor"]
        assert all(c["synthesis"] == "rded" for c in chunks)
        picks = [pk for c in chunks for pk in c["rded"]["picks"]]
        assert len(picks) == IPC * 10 and all(len(pk["sources"]) == factor**2 for pk in picks)
        checked.append(f"RDED picks ({factor}x{factor} patches per image)")
    if rec.get("batching") == "joint":  # G-VBSM/EDC/DELT: the slices optimised together
        assert all(p.get("batching") == "joint" for p in prov)
        checked.append("joint batches")
    if rec.get("init_order", "file") != "file":  # DELT: real images ranked by the teacher
        order = np.load(run / "rank" / "order.npz")
        assert len(order.files) > 0
        checked.append(f"rank stage order ({rec['init_order']})")
    matching = rec.get("matching") or {}
    if matching.get("enabled"):  # G-VBSM/EDC: statistics precomputed per backbone, one per step
        for name in matching["backbones"]:
            assert (run / "statistics" / f"{name}.pt").is_file()
        used = {r.get("logit_teacher") for c in chunks for r in c["roles"]}
        assert len(used) > 1, used  # the backbone changes between steps
        checked.append(f"statistics of {len(matching['backbones'])} backbones, {len(used)} used")
    single = rec.get("bn_always") and not rec.get("bn_pool") and not matching.get("enabled")
    if single and "bn_teachers" in prov[0]:
        # SRe2L family: the one teacher is logit and only BN teacher in every slice
        assert all(p["bn_teachers"] == rec["bn_always"] for p in prov)
        assert all(p["logit_teacher"] == rec["logit_teacher"] for p in prov)
        checked.append("single BN teacher")
    if rec.get("bn_pool") and "bn_teachers" in prov[0]:  # PRISM-style draw from the pool
        allowed = set(rec.get("bn_always", [])) | set(rec["bn_pool"])
        assert all(set(p["bn_teachers"]) <= allowed for p in prov)
        checked.append("BN teachers drawn from the pool")
    curriculum = (rec.get("augment") or {}).get("curriculum", "none")
    if curriculum != "none":  # CDA: not in the provenance; the resolved config carries it
        assert attrs_cfg["recover"]["augment"]["curriculum"] == curriculum
        checked.append(f"{curriculum} crop curriculum in the resolved config")
    if rec.get("init") == "real":
        assert all(c.get("init_indices") is not None for c in chunks)
        checked.append("real-image init indices")
    return checked


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_method_runs_end_to_end(config, tmp_path, tiny_teachers):
    cfg = shrink(yaml.safe_load(config.read_text()), tiny_teachers, tmp_path / "runs")
    path = write_yaml(tmp_path / f"{config.stem}.yaml", cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "local")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    verify = run_cli("verify", run)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    with h5py.File(run / "distilled.h5") as f:
        assert f["images"].shape[0] == IPC * 10
        assert sorted(f["labels"][:].tolist()) == sorted(list(range(10)) * IPC)
        assert f.attrs["method"] == cfg["method"]
        prov = json.loads(f.attrs["slice_provenance"])
        attrs_cfg = yaml.safe_load(f.attrs["config"])
    checked = _traces(cfg, prov, attrs_cfg, run)
    print(f"{config.stem}: traces checked: {checked or 'none recorded for this method'}")

    metrics = json.loads((run / "students" / "resnet18" / "seed0" / "metrics.json").read_text())
    assert metrics["method"] == cfg["method"] and 0.0 <= metrics["final"]["top1"] <= 1.0

    out = tmp_path / "export"
    exported = run_cli("export", run, out)
    assert exported.returncode == 0, exported.stderr
    assert len(imagefolder_matches_h5(run, out)) == IPC * 10
