"""Points written out one by one (`points:`, `first:`), for run lists that are no product.

A benchmark's runs are rarely a full grid: a baseline at every IPC, two methods x two inits,
a few ablation rows, and a teacher pool that every other run loads. Each listed point names its
run folder and may give its own config file, its own `--set` overrides (after the spec's `set`)
and `stages` (a subset, as `submit --stages`). `first:` points run one at a time before every
other point: what they make (a pool's `teachers/*.pt`) is there when the others start.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prism_hpc.errors import UserError

POINT_KEYS = {"name", "config", "set", "stages"}
POINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$")


def check_sets(value: Any, where: str) -> list[str]:
    """A list of KEY.PATH=VALUE strings (the spec's `set`, a point's `set`)."""
    sets = value or []
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        raise UserError(f"{where}: expected a list of KEY.PATH=VALUE strings")
    return sets


def _stages(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise UserError(f"{where}: expected a non-empty list of stage names")
    return tuple(value)


def _config(entry: dict, where: str, here: Path, base: Path | None) -> Path:
    if entry.get("config") is None:
        if base is None:
            raise UserError(f"{where}: no 'config' and the spec has no 'base'")
        return base
    path = (here / str(entry["config"])).resolve()
    if not path.is_file():
        raise UserError(f"{where}.config: {path}: config file not found")
    return path


def listed_points(entries: Any, key: str, source: Path, base: Path | None, fixed: list[str]):
    """The `key` list of the spec at `source` as (name, config, overrides, stages) tuples."""
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{source}: {key}: expected a non-empty list of points (name, config, ...)")
    out = []
    for k, entry in enumerate(entries):
        where = f"{source}: {key}[{k}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with name (and config, set, stages)")
        unknown = sorted(set(entry) - POINT_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}' (known: "
                            f"{', '.join(sorted(POINT_KEYS))})")  # fmt: skip
        name = str(entry.get("name") or "")
        if not POINT_NAME.fullmatch(name):
            raise UserError(f"{where}: name = {name!r}: letters, digits, '.', '_' or '-' "
                            "(120 at most)")  # fmt: skip
        config = _config(entry, where, source.parent, base)
        sets = check_sets(entry.get("set"), f"{where}.set")
        out.append((name, config, (*fixed, *sets), _stages(entry.get("stages"), f"{where}.stages")))
    return out
