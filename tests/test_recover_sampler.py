"""Teacher roles: the BN-subset samplers' distributions, k_max, determinism, and the scopes."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from prism_hpc.config.load import config_from_dict
from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.recover.sampler import sample_roles
from prism_hpc.recover.schedules import slice_roles
from prism_hpc.seeding import generator

DRAWS = 10_000
POOL = ["p1", "p2", "p3", "p4"]


def _draws(cfg: OptimizeRecover, n: int = DRAWS, seed: int = 0):
    g = generator(seed, "test-sampler")
    return [sample_roles(cfg, g) for _ in range(n)]


def _within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_include_prob_distribution(p):
    cfg = OptimizeRecover(logit_teacher="r", bn_always=["r"], bn_pool=POOL, include_prob=p)
    draws = _draws(cfg)
    assert all(d.bn[0] == "r" and d.logit == "r" for d in draws)  # always set always in
    assert all(len(set(d.bn)) == len(d.bn) for d in draws)  # no repeats
    counts = Counter(n for d in draws for n in d.bn[1:])
    for name in POOL:  # each pool member at its probability (5 sigma: ~0.025 at p=0.5)
        assert _within(counts[name], DRAWS, p), (name, counts[name])
    # members are drawn independently: P(p1 and p2) = p^2
    both = sum(1 for d in draws if "p1" in d.bn and "p2" in d.bn)
    assert _within(both, DRAWS, p * p)
    sizes = Counter(len(d.bn) - 1 for d in draws)
    for k in range(5):
        assert _within(sizes[k], DRAWS, math.comb(4, k) * p**k * (1 - p) ** (4 - k))


def test_include_prob_k_max_respected_without_order_bias():
    cfg = OptimizeRecover(logit_teacher="r", bn_always=["r"], bn_pool=POOL, include_prob=0.9,
                        k_max=2)  # fmt: skip
    draws = _draws(cfg)
    assert max(len(d.bn) - 1 for d in draws) == 2
    counts = Counter(n for d in draws for n in d.bn[1:])
    # symmetric pool: every member equally often (the first k_max members are not favoured)
    mean = sum(counts.values()) / 4
    assert all(abs(counts[n] - mean) < 0.05 * mean for n in POOL), counts


@pytest.mark.parametrize("k_max", [1, 2, 4])
def test_uniform_over_valid_subsets(k_max):
    cfg = OptimizeRecover(logit_teacher="r", bn_always=[], bn_pool=POOL, sampler="uniform",
                        k_max=k_max)  # fmt: skip
    draws = _draws(cfg)
    valid = [frozenset(c) for s in range(1, k_max + 1) for c in itertools.combinations(POOL, s)]
    counts = Counter(frozenset(d.bn) for d in draws)
    assert set(counts) == set(valid)  # non-empty, size <= k_max, nothing else
    for subset in valid:
        assert _within(counts[subset], DRAWS, 1 / len(valid)), (subset, counts[subset])


def test_uniform_with_always_set_adds_a_non_empty_pool_subset():
    cfg = OptimizeRecover(logit_teacher="r", bn_always=["r"], bn_pool=POOL, sampler="uniform",
                        k_max=2)  # fmt: skip
    draws = _draws(cfg, 2000)
    assert all(d.bn[0] == "r" and 1 <= len(d.bn) - 1 <= 2 for d in draws)


def test_logit_pool_uniform_and_bn_include_logit():
    cfg = OptimizeRecover(logit_teacher=None, logit_pool=["a", "b", "c"], bn_include_logit=True,
                        bn_always=[], bn_pool=["a", "b", "c", "d"], include_prob=0.5)  # fmt: skip
    draws = _draws(cfg)
    counts = Counter(d.logit for d in draws)
    for name in "abc":
        assert _within(counts[name], DRAWS, 1 / 3)
    for d in draws:
        assert d.bn[0] == d.logit and len(set(d.bn)) == len(d.bn)  # logit first, no repeats
    # the other pool members keep their probability given the logit teacher
    others = [d for d in draws if d.logit == "a"]
    assert _within(sum("b" in d.bn for d in others), len(others), 0.5)


def test_sampler_determinism():
    cfg = OptimizeRecover(logit_teacher=None, logit_pool=["a", "b"], bn_always=["r"],
                        bn_pool=POOL, k_max=3)  # fmt: skip
    assert _draws(cfg, 200, seed=5) == _draws(cfg, 200, seed=5)
    assert _draws(cfg, 200, seed=5) != _draws(cfg, 200, seed=6)
    ucfg = cfg.model_copy(update={"sampler": "uniform"})
    assert _draws(ucfg, 200, seed=5) == _draws(ucfg, 200, seed=5)


def _full_cfg(scope: str):
    return config_from_dict({
        "name": "t",
        "teachers": {n: {"arch": "resnet18", "weights": "random"} for n in ["r", *POOL]},
        "squeeze": {"enabled": False},
        "relabel": {"mode": "none"},
        "recover": {"logit_teacher": "r", "bn_always": ["r"], "bn_pool": POOL, "scope": scope},
    })  # fmt: skip


def test_scopes_pre_per_batch_intra():
    pre, per_batch, intra = (_full_cfg(s) for s in ("pre", "per_batch", "intra"))
    # pre: one draw per IPC slice, the same for every class chunk, and seeded by the slice
    for s in range(20):
        assert len({slice_roles(pre, s, c) for c in range(5)}) == 1
    assert len({slice_roles(pre, s, 0).bn for s in range(40)}) > 4
    assert slice_roles(pre, 3, 0) == slice_roles(_full_cfg("pre"), 3, 0)
    # per_batch: a draw per (slice, chunk)
    assert len({slice_roles(per_batch, 0, c).bn for c in range(40)}) > 4
    assert slice_roles(per_batch, 2, 7) == slice_roles(per_batch, 2, 7)
    # intra: redrawn inside the loop (tests/test_recover_loop.py)
    assert slice_roles(intra, 0, 0) is None


def test_seed_changes_pre_roles():
    a = _full_cfg("pre")
    b = a.model_copy(update={"seed": 1})
    assert [slice_roles(a, s, 0) for s in range(30)] != [slice_roles(b, s, 0) for s in range(30)]


def test_generator_is_cpu_and_independent_of_global_rng():
    cfg = OptimizeRecover(logit_teacher="r", bn_always=["r"], bn_pool=POOL)
    torch.manual_seed(0)
    first = _draws(cfg, 50)
    torch.manual_seed(123)
    torch.rand(10)
    assert _draws(cfg, 50) == first
