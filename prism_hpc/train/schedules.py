"""Learning-rate factors per epoch (multiply the base lr; epoch e = 0 .. E-1, set at its start).

- `cosine`: 0.5 (1 + cos(pi e / E)).
- `ssrs` (official, discontinuous): 0.5 (1 + cos(pi e / (zeta E))) for e <= 5E/6, then
  0.75 (1 - e / E). At E = 300, zeta = 2.5: lambda(250) = 0.75 (the cosine branch at its end,
  cos(pi/3) = 0.5), lambda(251) = 0.1225: a drop by 6x. The constant 0.75 equals the cosine
  branch's end value only for zeta = 2.5.
- `ssrs_continuous`: the same cosine part, then a straight line from the cosine branch's value
  at 5E/6 to 0 at E (no jump, for any zeta).
- `smooth_cosine` (EDC's ImageNet students, shaoshitong/EDC `train.sh`: `--ls-type cos --st 2`):
  the cosine part over the whole run, 0.5 (1 + cos(pi e / (zeta E))), no tail. `ssrs` is
  EDC's other variant (`--ls-type cos2`: the same tail 0.75 (1 - e / E) after 5E/6 at
  zeta = 2.5).
"""

from __future__ import annotations

import math

SWITCH = 5 / 6


def cosine(epoch: float, epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def _ssrs_cos(epoch: float, epochs: int, zeta: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * epoch / (zeta * epochs)))


def ssrs(epoch: float, epochs: int, zeta: float = 2.5) -> float:
    if epoch <= SWITCH * epochs:
        return _ssrs_cos(epoch, epochs, zeta)
    return 0.75 * (1.0 - epoch / epochs)


def ssrs_continuous(epoch: float, epochs: int, zeta: float = 2.5) -> float:
    switch = SWITCH * epochs
    if epoch <= switch:
        return _ssrs_cos(epoch, epochs, zeta)
    return _ssrs_cos(switch, epochs, zeta) * (epochs - epoch) / (epochs - switch)


def lr_factor(name: str, epoch: float, epochs: int, zeta: float = 2.5) -> float:
    if name == "cosine":
        return cosine(epoch, epochs)
    if name == "ssrs":
        return ssrs(epoch, epochs, zeta)
    if name == "ssrs_continuous":
        return ssrs_continuous(epoch, epochs, zeta)
    if name == "smooth_cosine":
        return _ssrs_cos(epoch, epochs, zeta)
    raise ValueError(
        f"unknown schedule {name!r} (cosine | ssrs | ssrs_continuous | smooth_cosine)"
    )
