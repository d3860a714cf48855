"""Every shipped config validates and plans here, although ImageNet is absent (a warning)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from prism_hpc.cli import app
from prism_hpc.config.load import load_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TABLE2 = {
    "table2_sre2l", "table2_single_intra", "table2_dual_intra", "table2_single_pre",
    "table2_dual_pre", "table2_multi_pre_2bn", "table2_multi_pre_3bn", "table2_multi_pre_4bn",
}  # fmt: skip


def test_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"in1k_ipc10", "in1k_ipc50", "in1k_ipc100", "in1k_sre2l_ipc50"} <= names
    assert TABLE2 <= {p.stem for p in (REPO / "configs" / "ablations").glob("*.yaml")}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_config_passes_plan(path):
    result = CliRunner().invoke(app, ["plan", str(path)])
    assert result.exit_code == 0, (result.output, result.exception)
    cfg, _ = load_config(path)
    if cfg.data.source == "imagefolder" and not (Path(cfg.data.root) / "train").is_dir():
        assert "warning: data not checked" in result.output + getattr(result, "stderr", "")


def _recover(name: str):
    return load_config(REPO / "configs" / "ablations" / f"{name}.yaml")[0].recover


def test_table2_rows_mean_what_the_docs_say():
    pool = ["resnet18", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5"]
    sre2l = _recover("table2_sre2l")
    assert (sre2l.logit_teacher, sre2l.bn_always, sre2l.bn_pool) == ("resnet18", ["resnet18"], [])
    for scope in ("intra", "pre"):
        single, dual = _recover(f"table2_single_{scope}"), _recover(f"table2_dual_{scope}")
        assert single.scope == dual.scope == scope
        assert single.logit_pool == pool and single.bn_include_logit and not single.bn_pool
        assert dual.logit_teacher == "resnet18" and "resnet18" not in dual.bn_pool
        assert (dual.sampler, dual.k_max, dual.bn_always) == ("uniform", 1, [])
    for k in (2, 3, 4):
        multi = _recover(f"table2_multi_pre_{k}bn")
        assert (multi.scope, multi.sampler, multi.k_max, multi.bn_pool) == (
            "pre",
            "uniform",
            k,
            pool,
        )


def test_paper_configs_recover_settings():
    for ipc in (10, 50, 100):
        cfg = load_config(REPO / "configs" / f"in1k_ipc{ipc}.yaml")[0]
        rec = cfg.recover
        assert rec.ipc == ipc and rec.preset == "official" and rec.count_bnless
        assert (rec.lr, rec.iterations, rec.iteration_step, rec.iteration_period) == (
            0.05, 4000, 500, 8
        )  # fmt: skip
        assert (rec.r_bn, rec.classes_per_batch, rec.augment.jitter) == (0.01, 100, 32)
        assert rec.logit_teacher == "resnet18" and rec.bn_always == ["resnet18"]
        assert rec.bn_pool == ["mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5", "alexnet"]
        assert (cfg.data.resolution, cfg.data.channels) == (224, 3)
        assert cfg.students.archs == ["resnet18", "resnet50", "resnet101"]
        assert cfg.students.seeds == [0, 1, 2]
