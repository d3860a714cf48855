"""Config schema, YAML loading, overrides and one-line error messages."""

from __future__ import annotations

import copy

import pytest

from prism_hpc.config.load import config_from_dict, dump_config, load_config, parse_overrides
from prism_hpc.errors import UserError
from tests.conftest import write_yaml


def test_overrides_are_yaml_typed():
    parsed = {".".join(k): v for k, v in parse_overrides(
        ["recover.ipc=7", "recover.lr=1e-3", "squeeze.enabled=false", "name=abc", "a.b=[1, 2]"]
    )}  # fmt: skip
    assert parsed == {
        "recover.ipc": 7, "recover.lr": 1e-3, "squeeze.enabled": False, "name": "abc",
        "a.b": [1, 2],
    }  # fmt: skip


def test_override_applies_and_validates(tmp_path, tiny_cfg):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg)
    cfg, raw = load_config(path, ["recover.ipc=2", "recover.augment.jitter=0"])
    assert cfg.recover.ipc == 2 and cfg.recover.augment.jitter == 0
    assert raw["recover"]["ipc"] == 3  # the input is kept as given
    with pytest.raises(UserError, match=r"recover\.ipc = 'many'"):
        load_config(path, ["recover.ipc=many"])


def test_unknown_key_names_the_path(tmp_path, tiny_cfg):
    tiny_cfg["recover"]["iteratons"] = 5
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg)
    with pytest.raises(UserError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}: unknown key 'recover.iteratons' (check the spelling; see README 'Config reference')"
    )


def test_wrong_type_and_range(tiny_cfg):
    tiny_cfg["recover"]["iterations"] = 0
    with pytest.raises(UserError, match=r"recover\.iterations = 0: Input should be greater than"):
        config_from_dict(tiny_cfg, "x.yaml")
    tiny_cfg["recover"]["iterations"] = "lots"
    with pytest.raises(UserError, match=r"recover\.iterations = 'lots': Input should be a valid"):
        config_from_dict(tiny_cfg, "x.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nrecover: {ipc: 3\n")
    with pytest.raises(UserError, match=r"bad\.yaml: line \d+ column \d+: YAML syntax error"):
        load_config(path)


def test_missing_file():
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        load_config("nope.yaml")


def test_unknown_teacher_reference(tiny_cfg):
    tiny_cfg["recover"]["bn_pool"] = ["vgg_missing"]
    with pytest.raises(UserError, match=r"recover names teacher\(s\) \['vgg_missing'\]"):
        config_from_dict(tiny_cfg)


def test_official_preset_fills_only_unset(tiny_cfg):
    tiny_cfg["recover"]["preset"] = "official"
    assert config_from_dict(tiny_cfg).recover.count_bnless is True
    tiny_cfg["recover"]["count_bnless"] = False
    assert config_from_dict(tiny_cfg).recover.count_bnless is False


def test_iteration_rule_and_dump_roundtrip(tiny_cfg):
    cfg = config_from_dict(tiny_cfg)
    # T_i = 12 - 2 * (i mod 4)
    assert [cfg.recover.iterations_for(i) for i in range(6)] == [12, 10, 8, 6, 12, 10]
    import yaml

    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert dump_config(again) == dump_config(cfg)


def test_resources_inherit_default(tiny_cfg):
    tiny_cfg["resources"] = {"default": {"partition": "gpu", "time_min": 30},
                             "recover": {"time_min": 90, "gpus_per_node": 4}}  # fmt: skip
    res = config_from_dict(tiny_cfg).resources
    rec, train = res.for_stage("recover"), res.for_stage("train")
    assert (rec.partition, rec.time_min, rec.gpus_per_node) == ("gpu", 90, 4)
    assert (train.partition, train.time_min, train.gpus_per_node) == ("gpu", 30, 0)


def test_resources_stage_blocks_are_checked_against_the_registry(tmp_path, tiny_cfg):
    """A misspelt stage block would silently run the stage on the defaults."""
    from prism_hpc.stages import registry
    from prism_hpc.submission import prepare

    tiny_cfg["resources"] = {"recovr": {"time_min": 90}}
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg)
    res = load_config(path)[0].resources  # the schema knows no stage names
    assert list(res.stages) == ["recovr"] and res.unknown_stages(registry().names) == ["recovr"]
    with pytest.raises(UserError) as err:
        prepare(path, [], require_data=False)
    assert str(err.value) == (
        f"{path}: unknown key 'resources.recovr' (not a stage; stages: squeeze, rank, "
        "statistics, recover, collect, relabel, train, report; also default, canary)"
    )
    with pytest.raises(UserError, match=r"unknown key 'resources\.recover\.gpuu'"):
        load_config(path, ["resources.recover.gpuu=h100"])  # inside a block: still strict
    tiny_cfg["resources"] = {"recover": {"time_min": 90}}
    path = write_yaml(tmp_path / "ok.yaml", tiny_cfg)
    assert prepare(path, [], require_data=False)[0].resources.for_stage("recover").time_min == 90


def _rded(tiny_cfg: dict, **recover) -> dict:
    tiny_cfg["recover"] = {"synthesis": "rded", "ipc": 2, "logit_teacher": "resnet18", **recover}
    return tiny_cfg


def test_synthesis_picks_the_recover_model_and_defaults_to_optimize(tiny_cfg):
    from prism_hpc.config.schema import OptimizeRecover, RdedRecover

    assert isinstance(config_from_dict(copy.deepcopy(tiny_cfg)).recover, OptimizeRecover)
    rded = config_from_dict(_rded(copy.deepcopy(tiny_cfg))).recover
    assert isinstance(rded, RdedRecover) and rded.teacher_names() == ["resnet18"]
    assert rded.iterations_for(3) == 0 and rded.ranker_name() is None and rded.init == "real"
    tiny_cfg["recover"]["synthesis"] = "foo"
    with pytest.raises(UserError) as err:
        config_from_dict(tiny_cfg, "x.yaml")
    assert str(err.value) == "x.yaml: recover.synthesis = 'foo': expected one of 'optimize', 'rded'"


@pytest.mark.parametrize(
    "key,value", [("pack", 2), ("iterations", 10), ("bn_pool", []), ("preset", "official")]
)
def test_an_optimisation_key_in_an_rded_section_is_an_unknown_key(tiny_cfg, key, value):
    with pytest.raises(UserError) as err:
        config_from_dict(_rded(tiny_cfg, **{key: value}), "x.yaml")
    assert str(err.value) == (
        f"x.yaml: unknown key 'recover.{key}' (recover.synthesis rded has no such key; check "
        "the spelling; see README 'Config reference')"
    )


def test_errors_inside_a_recover_member_name_the_users_key_path(tiny_cfg):
    with pytest.raises(UserError) as err:
        config_from_dict(_rded(copy.deepcopy(tiny_cfg), rded={"factor": 9}), "x.yaml")
    assert str(err.value) == (
        "x.yaml: recover.rded.factor = 9: Input should be less than or equal to 8"
    )
    with pytest.raises(UserError, match=r"^x.yaml: recover.ipc = 'all': synthesis rded needs"):
        config_from_dict(_rded(copy.deepcopy(tiny_cfg), ipc="all"), "x.yaml")
    tiny_cfg["recover"]["bn_always"] = ["resnet18", "resnet18"]
    with pytest.raises(UserError) as err:
        config_from_dict(tiny_cfg, "x.yaml")
    assert str(err.value) == "x.yaml: recover.bn_always lists 'resnet18' twice"


def test_rded_config_dumps_and_reloads_without_optimisation_keys(tiny_cfg):
    import yaml

    cfg = config_from_dict(_rded(tiny_cfg))
    dumped = yaml.safe_load(dump_config(cfg))["recover"]
    assert dumped["synthesis"] == "rded" and "iterations" not in dumped and "bn_pool" not in dumped
    assert dump_config(config_from_dict(yaml.safe_load(dump_config(cfg)))) == dump_config(cfg)
