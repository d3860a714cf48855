"""YAML -> validated Config, with `--set a.b=c` overrides and one-line error messages."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError

from prism_hpc.config.schema import DEFAULT_SYNTHESIS, Config
from prism_hpc.errors import UserError

# `recover.preset: official` fills these in unless the YAML sets them (docs/recover.md).
# Only `count_bnless` differs from the clean default today; the rest pins the official values
# so that the preset keeps meaning "the official code's math" if a clean default changes.
OFFICIAL_RECOVER = {
    "count_bnless": True,
    "reduction": "mean",
    "sampler": "include_prob",
    "include_prob": 0.5,
    "k_max": None,
    "scope": "pre",
    "resample_logit": False,
    "bn_include_logit": False,
    "init": "real",
    "iterations": 4000,
    "iteration_step": 500,
    "iteration_period": 8,
    "lr": 0.05,
    "betas": [0.5, 0.9],
    "classes_per_batch": 100,
    "r_bn": 0.01,
    "first_bn_multiplier": 10.0,
    "l2_scale": 0.0,
    "tv_scale": 0.0,
    "augment": {"crop_scale": [0.08, 1.0], "flip": True, "jitter": 32, "per_sample": False},
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader (same tags, nothing executable) that refuses a key given twice
    in one mapping: plain YAML lets the last one win silently, which hides a config slip."""


def _mapping_without_repeats(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep=False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicated key {key!r} (first on line {seen[key] + 1})",
                key_node.start_mark,
            )  # fmt: skip
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats
)


def safe_load_unique(text: str):
    """Parse YAML like `yaml.safe_load`, but a duplicated key is an error."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: as safe


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursively for sections; lists and values replace."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(pairs: list[str]) -> list[tuple[list[str], Any]]:
    """`a.b=c` strings -> (key path, YAML-typed value); `x=1e-3` gives a float."""
    parsed = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected KEY.PATH=VALUE, for example recover.ipc=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; users mean a float
            try:
                value = float(value)
            except ValueError:
                pass
        parsed.append((key.strip().split("."), value))
    return parsed


def _apply(data: dict, path: list[str], value: Any, source: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(path[: i + 1])
            raise UserError(f"{source}: --set {'.'.join(path)}: {where} is not a section")
        node = child
    node[path[-1]] = value


def _apply_presets(data: dict) -> None:
    recover = data.get("recover")
    if (
        isinstance(recover, dict)
        and recover.get("synthesis", DEFAULT_SYNTHESIS) == DEFAULT_SYNTHESIS  # a preset of the loop
        and recover.get("preset") == "official"
    ):
        for key, value in OFFICIAL_RECOVER.items():
            recover.setdefault(key, copy.deepcopy(value))


def _value_at(data: Any, loc: tuple) -> Any:
    node = data
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
        else:
            return "<missing>"
    return node


def _existing_prefix(data: Any, loc: tuple) -> tuple:
    """The longest prefix of `loc` that names a value present in `data`."""
    for n in range(len(loc), 0, -1):
        if _value_at(data, loc[:n]) != "<missing>":
            return loc[:n]
    return loc


@cache
def _tagged_unions() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Config fields that are tagged unions -> (discriminator, default tag, every tag)."""
    out = {}
    for name, field in Config.model_fields.items():
        if isinstance(field.discriminator, str):
            members = get_args(field.annotation)
            tags = tuple(m.model_fields[field.discriminator].default for m in members)
            default = getattr(field.default_factory(), field.discriminator)
            out[name] = (field.discriminator, default, tags)
    return out


def _member(loc: tuple) -> tuple[tuple, str | None]:
    """`loc` without the union member's tag pydantic puts after a tagged union's field (the
    user never writes it), and that tag when it is not the default member's."""
    union = _tagged_unions().get(loc[0]) if loc else None
    if union is None or len(loc) < 2 or loc[1] not in union[2]:
        return loc, None
    return (loc[0], *loc[2:]), None if loc[1] == union[1] else f"{union[0]} {loc[1]}"


def format_validation_error(err: ValidationError, data: dict, source: str) -> str:
    """First problem of a pydantic error as `file: key.path = value: what was expected`."""
    first = err.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    loc, member = _member(loc)
    if first["type"] not in ("extra_forbidden", "missing"):
        loc = _existing_prefix(data, loc)  # drop union-member tags such as 'constrained-int'
    key = ".".join(str(p) for p in loc) or "<top level>"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        where = f"{loc[0]}.{member} has no such key; " if member else ""
        return (f"{source}: unknown key '{key}' ({where}check the spelling; see README "
                "'Config reference')")  # fmt: skip
    if first["type"] == "missing":
        return f"{source}: missing required key '{key}'"
    if first["type"] == "union_tag_invalid":  # e.g. recover.synthesis: foo
        ctx = first["ctx"]
        return (f"{source}: {key}.{ctx['discriminator'].strip(chr(39))} = {ctx['tag']!r}: "
                f"expected one of {ctx['expected_tags']}")  # fmt: skip
    if first["type"] == "duplicate":  # common.Unique
        return f"{source}: {key} {msg}"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    if not loc or msg.startswith(f"{key}."):  # the message names the keys itself
        return f"{source}: {msg}{more}"
    value = _value_at(data, loc)
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"{source}: {key}{shown}: {msg}{more}"


def config_from_dict(data: dict, source: str = "<config>") -> Config:
    data = copy.deepcopy(data)
    _apply_presets(data)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, data, source)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, dict]:
    """Read, override and validate; returns the config and the raw input (for provenance)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file (byte {err.start}); expected YAML") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        kind = "" if problem.startswith("duplicated key") else "YAML syntax error: "
        raise UserError(f"{path}:{where}: {kind}{problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    raw = copy.deepcopy(data)
    for key_path, value in parse_overrides(overrides or []):
        _apply(data, key_path, value, str(path))
    return config_from_dict(data, str(path)), raw


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (paths as strings), the form written to the run dir."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
