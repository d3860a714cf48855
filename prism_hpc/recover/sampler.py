"""Teacher roles: which model gives the logits and which subset aligns BN statistics.

Two samplers for the BN pool (the "always" set is always in):
- `include_prob` (official): each pool member independently with probability p, no repeats;
- `uniform` (paper eq. 5): a uniformly random non-empty subset of size <= k_max.
`k_max` caps how many pool members are added in both modes (include_prob: a uniformly random
k_max of the members whose coin came up, when more did).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prism_hpc.config.schema import RecoverConfig


@dataclass(frozen=True)
class Roles:
    logit: str
    bn: tuple[str, ...]

    def to_json(self) -> dict:
        return {"logit_teacher": self.logit, "bn_teachers": list(self.bn)}


def _uniform_subset(pool: list[str], k_max: int, g: torch.Generator) -> list[str]:
    """Uniform over all subsets with 1..k_max members: size by C(n, s) weight, then members."""
    n = len(pool)
    sizes = list(range(1, min(k_max, n) + 1))
    weights = torch.tensor([math.comb(n, s) for s in sizes], dtype=torch.float64)
    size = sizes[int(torch.multinomial(weights, 1, generator=g))]
    chosen = torch.randperm(n, generator=g)[:size].sort().values
    return [pool[i] for i in chosen.tolist()]


def sample_roles(cfg: RecoverConfig, g: torch.Generator, logit: str | None = None) -> Roles:
    """Draw the logit teacher (fixed, or from `logit_pool`) and the BN set.

    BN set = the logit teacher (with `bn_include_logit`: single-teacher alignment) + `bn_always`
    + members drawn from `bn_pool`, without repeats. `logit` given: keep that logit teacher
    (intra scope without `resample_logit`) and draw only the BN set.
    """
    if logit is None:
        if cfg.logit_pool:
            logit = cfg.logit_pool[int(torch.randint(len(cfg.logit_pool), (), generator=g))]
        else:
            logit = cfg.logit_teacher
    always = list(dict.fromkeys(([logit] if cfg.bn_include_logit else []) + list(cfg.bn_always)))
    pool = [n for n in dict.fromkeys(cfg.bn_pool) if n not in always]
    k_max = cfg.k_max if cfg.k_max is not None else len(pool)
    drawn: list[str] = []
    if pool and k_max > 0:
        if cfg.sampler == "uniform":
            drawn = _uniform_subset(pool, k_max, g)
        else:
            coins = torch.rand(len(pool), generator=g, dtype=torch.float64)
            drawn = [n for n, c in zip(pool, coins.tolist()) if c < cfg.include_prob]
            if len(drawn) > k_max:  # keep a random k_max of them (no bias towards pool order)
                keep = torch.randperm(len(drawn), generator=g)[:k_max].sort().values
                drawn = [drawn[i] for i in keep.tolist()]
    return Roles(logit, tuple(always + drawn))
