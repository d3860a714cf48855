"""A sweep spec: one base config and axes, expanded into named points.

An axis is either a `--set` path with a list of values (`recover.ipc: [10, 50]`) or the
special key `configs` with a list of config files (methods that differ in more than one
key). Points are the cartesian product, axes in the order written, so the same spec always
gives the same points with the same names; a point's name is its run's folder name, which is
what lets a rerun of the spec find (and skip) the points that are already done.

Run lists that are no product are written out instead (`points:`, and `first:` for runs that
must be finished before the others start, such as a teacher pool): see `sweep.listed`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_hpc.config.load import safe_load_unique
from prism_hpc.errors import UserError
from prism_hpc.sweep.listed import check_sets, listed_points

SPEC_KEYS = {"name", "base", "set", "axes", "throttle", "points", "first"}
CONFIGS_AXIS = "configs"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Point:
    """One run of the sweep: which config file and which overrides."""

    name: str
    config: Path
    overrides: tuple[str, ...]
    coords: tuple[tuple[str, Any], ...]  # (axis, value) in axis order, for tables
    stages: tuple[str, ...] | None = None  # a subset of the pipeline (`submit --stages`)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "config": str(self.config),
               "overrides": list(self.overrides), "coords": [list(c) for c in self.coords]}  # fmt: skip
        if self.stages:  # only when given: the digest of a plain grid stays what it was
            out["stages"] = list(self.stages)
        return out


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: Path
    points: tuple[Point, ...]
    throttle: int | None  # SLURM: at most this many array tasks of one stage at once
    digest: str  # of the expanded points: a sweep folder is never reused for another grid
    first: tuple[Point, ...] = ()  # run one at a time, finished before any of `points` starts

    @property
    def every(self) -> tuple[Point, ...]:
        return (*self.first, *self.points)


def _slug(value: Any) -> str:
    text = Path(value).stem if isinstance(value, Path) else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "x"


def _axis_label(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _yaml_value(value: Any) -> str:
    """A value as `--set` text that YAML reads back as the same value."""
    return json.dumps(value) if not isinstance(value, str) else value


def _check_axes(axes: Any, source: Path) -> list[tuple[str, list[Any]]]:
    if not isinstance(axes, dict) or not axes:
        raise UserError(f"{source}: axes: expected a mapping of KEY.PATH: [values, ...]")
    out = []
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"{source}: axes.{key}: expected a non-empty list of values")
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) != len(values):
            raise UserError(f"{source}: axes.{key}: lists a value twice")
        out.append((str(key), values))
    return out


def _point(spec_name: str, base: Path, fixed: list[str], combo: tuple) -> Point:
    config, overrides, parts, coords = base, list(fixed), [], []
    for key, value in combo:
        if key == CONFIGS_AXIS:
            config = value
            parts.append(_slug(value))
            coords.append((key, value.stem))
        else:
            overrides.append(f"{key}={_yaml_value(value)}")
            parts.append(f"{_axis_label(key)}{_slug(value)}")
            coords.append((key, value))
    name = "_".join([spec_name, *parts])[:120]
    return Point(name, config, tuple(overrides), tuple(coords))


def _listed(data: dict, key: str, path: Path, base: Path | None, fixed: list[str]):
    if key not in data:
        return ()
    entries = listed_points(data[key], key, path, base, fixed)
    return tuple(Point(name, config, sets, (), stages) for name, config, sets, stages in entries)


def load_spec(path: Path) -> SweepSpec:
    """Read and expand a spec; every problem is one line naming the file and the key."""
    if not path.is_file():
        raise UserError(f"{path}: sweep spec not found")
    data = safe_load_unique(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with base, axes (and name, set, throttle)")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise UserError(
            f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(SPEC_KEYS))})"
        )
    name = str(data.get("name") or path.stem)
    if not NAME.fullmatch(name):
        raise UserError(f"{path}: name = {name!r}: letters, digits, '.', '_' or '-' (64 at most)")
    listed = "points" in data or "first" in data
    axes = _check_axes(data.get("axes"), path) if "axes" in data or not listed else []
    here = path.parent
    base_text = data.get("base")
    if base_text is None and axes and CONFIGS_AXIS not in dict(axes):
        raise UserError(f"{path}: missing required key 'base' (or an axis '{CONFIGS_AXIS}')")
    resolved = []
    for key, values in axes:
        if key == CONFIGS_AXIS:
            values = [(here / str(v)).resolve() for v in values]
            missing = [v for v in values if not v.is_file()]
            if missing:
                raise UserError(f"{path}: axes.configs: {missing[0]}: config file not found")
        resolved.append([(key, v) for v in values])
    base = (here / str(base_text)).resolve() if base_text is not None else Path()
    if base_text is not None and not base.is_file():
        raise UserError(f"{path}: base = {base_text!r}: config file not found")
    fixed = check_sets(data.get("set"), f"{path}: set")
    throttle = data.get("throttle")
    if throttle is not None and (not isinstance(throttle, int) or throttle < 1):
        raise UserError(f"{path}: throttle = {throttle!r}: expected a positive integer")
    grid = [_point(name, base, fixed, combo) for combo in itertools.product(*resolved)]
    listed_base = base if base_text is not None else None
    points = (*_listed(data, "points", path, listed_base, fixed), *(grid if axes else []))
    first = _listed(data, "first", path, listed_base, fixed)
    if not points:
        raise UserError(f"{path}: no points: give axes or points")
    every = [p.name for p in (*first, *points)]
    if len(set(every)) != len(every):
        raise UserError(f"{path}: two points get the same name; make the axis values distinct")
    digest = hashlib.sha256(
        json.dumps([p.to_json() for p in (*first, *points)], sort_keys=True).encode()
    ).hexdigest()[:16]
    return SweepSpec(name, path.resolve(), tuple(points), throttle, digest, first)
