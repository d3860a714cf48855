"""LayerNorm teachers as statistic teachers: the registry's small LN networks, the `prior` key
and its default, the statistics stage's norm items and their price, and a tiny recovery with a
ViT as statistic teacher, end to end (recover/norm_prior.py, docs/recover.md section 11)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from prism_hpc.config.load import config_from_dict, load_config
from prism_hpc.config.priors import default_prior
from prism_hpc.config.schema import TeacherSpec
from prism_hpc.models.registry import (
    available_archs,
    bn_layers,
    create_model,
    layer_prior,
    norm_layers,
)
from prism_hpc.stages.statistics import StatisticsStage, statistics_path
from prism_hpc.workflow import TaskEnv
from tests.conftest import TINY

REPO = Path(__file__).resolve().parent.parent
SMALL = ["vit_mini", "convnext_mini"]
# timm families whose layers the name table must get right (hybrids with BN included)
TIMM = ["vit_small_patch16_224", "deit_small_patch16_224", "convnext_tiny", "convnextv2_atto",
        "swin_tiny_patch4_window7_224", "poolformer_s12", "mixer_b16_224", "levit_128",
        "xcit_tiny_12_p16_224", "maxvit_tiny_tf_224", "mobilevit_xxs", "resmlp_12_224",
        "resnet18", "efficientnet_b0"]  # fmt: skip


@pytest.mark.parametrize("arch", SMALL)
@pytest.mark.parametrize("res", [28, 32])
def test_registry_builds_small_layernorm_teachers_for_fashion_mnist(arch, res):
    assert arch in available_archs()
    model = create_model(arch, 10, in_channels=1, resolution=res).eval()
    assert model(torch.zeros(2, 1, res, res)).shape == (2, 10)
    assert not bn_layers(model) and layer_prior(model) == "norm_stats"
    assert TeacherSpec(arch=arch).resolved_prior() == "norm_stats"  # the default: its layers
    assert sum(p.numel() for p in model.parameters()) < 300_000  # CPU-cheap


def _on_meta(arch: str):
    try:
        with torch.device("meta"):
            return create_model(arch, 10, 3, 224)
    except NotImplementedError:  # regnets' init does not run on meta
        return None


def test_prior_table_matches_the_layers():
    """`auto` is read from the name (torch-free, for status and the stage's items); it must be
    what the layers allow for every torchvision model and the timm families above."""
    names = [a for a in available_archs() if not a.startswith("regnet")]
    names += [f"timm:{n}" for n in TIMM]
    wrong = {}
    for arch in names:
        model = _on_meta(arch)
        if model is not None and default_prior(arch) != layer_prior(model):
            wrong[arch] = (default_prior(arch), layer_prior(model))
    assert not wrong
    assert default_prior("alexnet") == "none" and default_prior("vgg11_bn") == "bn"


def _norm_cfg(ln_arch: str = "vit_mini", **recover) -> dict:
    data = copy.deepcopy(TINY)
    data["teachers"] = {
        "resnet18": {"arch": "resnet18", "width": 0.25, "weights": "random"},
        "vit": {"arch": ln_arch, "weights": "random"},  # the LN statistic teacher
    }
    data["squeeze"]["enabled"] = False
    data["relabel"]["teachers"] = ["resnet18"]
    data["recover"].update(
        ipc=1, iterations=4, iteration_step=0, bn_always=["resnet18", "vit"], bn_pool=[],
        norm_stats={"batch_size": 16, "limit_per_class": 3},
    )  # fmt: skip
    data["recover"].update(recover)
    return data


def test_statistics_items_only_for_norm_stats_teachers():
    stage = StatisticsStage()
    assert stage.items(config_from_dict(copy.deepcopy(TINY))) == []  # BN teachers: no work
    items = stage.items(config_from_dict(_norm_cfg()))
    assert [(i.key, i.payload) for i in items] == [
        ("statistics_vit", {"teacher": "vit", "kind": "norm"})
    ]
    data = _norm_cfg()
    data["teachers"]["vit"]["prior"] = "none"  # opted out: no statistics pass
    assert stage.items(config_from_dict(data)) == []
    data = _norm_cfg(bn_always=["resnet18"], logit_teacher="vit")  # logit only: no prior
    assert stage.items(config_from_dict(data)) == []


def test_plan_prices_the_statistics_pass():
    cfg, _ = load_config(REPO / "configs" / "in1k_ipc50_norm_priors.yaml")
    stage = StatisticsStage()
    assert [i.payload["teacher"] for i in stage.items(cfg)] == ["vit_small", "convnext_tiny"]
    est = stage.estimate(cfg)
    assert est["gpu_hours"] > 0 and "1281000 images per teacher" in est["cost_note"]
    plain, _ = load_config(REPO / "configs" / "in1k_ipc50.yaml")
    assert stage.items(plain) == [] and stage.estimate(plain)["gpu_hours"] == 0.0


def test_a_prior_that_does_not_fit_the_layers_is_refused():
    from prism_hpc.errors import UserError
    from prism_hpc.recover.checks import recover_warnings

    data = _norm_cfg()
    data["teachers"]["resnet18"]["prior"] = "norm_stats"  # a CNN without LayerNorm
    with pytest.raises(UserError, match="teachers.resnet18: prior norm_stats"):
        recover_warnings(config_from_dict(data))
    data = _norm_cfg()
    data["teachers"]["vit"]["prior"] = "bn"  # allowed: today's BN-less BN teacher
    assert "['vit'] have no BatchNorm layer" in recover_warnings(config_from_dict(data))[0]
    assert recover_warnings(config_from_dict(_norm_cfg())) == []  # the default fits


@pytest.mark.parametrize("ln_arch", SMALL)
def test_tiny_recovery_with_a_layernorm_statistic_teacher(tmp_path, fmnist_available, ln_arch):
    from prism_hpc.models.teachers import load_teacher
    from prism_hpc.recover import augment
    from prism_hpc.recover.loss import Part, recovery_loss
    from prism_hpc.recover.norm_prior import NormStatistics, prior_hooks
    from prism_hpc.recover.sampler import Roles
    from prism_hpc.stages.recover import RecoverStage, slice_path
    from prism_hpc.store.shards import read_shard

    cfg = config_from_dict(_norm_cfg(ln_arch))
    env = TaskEnv(run_dir=tmp_path, log=lambda m: None)
    for stage in (StatisticsStage(), RecoverStage()):
        for item in stage.items(cfg):
            stage.run(cfg, item, env)
            assert stage.is_done(tmp_path, item)
    stats = torch.load(statistics_path(tmp_path, "vit"), weights_only=True)
    assert stats["meta/images"].item() == 30
    layers = norm_layers(create_model(ln_arch, 10, 1, 16))
    assert len(layers) >= 9 and {k for k in stats if k.startswith("norm/")} == {
        f"norm/{name}/{stat}" for name, _, _ in layers for stat in ("mean", "var")
    }  # one mean and variance per LayerNorm, named as in the model
    prov = read_shard(slice_path(tmp_path, 0))["provenance"]
    assert prov["bn_teachers"] == ["resnet18", "vit"]
    history = prov["chunks"][0]["history"]
    assert all(torch.isfinite(torch.tensor(h["bn"])) for h in history)

    # the loss: the ViT's LayerNorm term joins the BN sum, K = 2 statistic teachers
    teachers = {n: load_teacher(cfg, n, tmp_path) for n in cfg.teachers}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 1, 16, 16, generator=g), torch.arange(10)
    draw = augment.draw(cfg.recover.augment, 10, 16, g)
    with prior_hooks(teachers, {"vit": "norm_stats"}, 10.0, {"vit": stats}) as hooks:
        assert isinstance(hooks["vit"], NormStatistics)
        both = recovery_loss(Part(x, y, Roles("resnet18", ("resnet18", "vit")), draw),
                             teachers, hooks, cfg.recover, False)  # fmt: skip
        alone = recovery_loss(Part(x, y, Roles("resnet18", ("resnet18",)), draw),
                              teachers, hooks, cfg.recover, False)  # fmt: skip
    total, ce, bn = both
    assert bn > alone[2] > 0  # the LayerNorm term adds to the BN sum
    torch.testing.assert_close(total, ce + cfg.recover.r_bn / 2 * bn)
