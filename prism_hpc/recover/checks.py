"""Plan-time checks of the recovery set-up: warnings (BN-less BN teachers, `prior: none`) and
the one refusal that needs the model built (a `prior` that does not fit its layers)."""

from __future__ import annotations

import torch

from prism_hpc.config.schema import Config, OptimizeRecover
from prism_hpc.errors import UserError


def bn_teacher_candidates(cfg: Config) -> list[str]:
    """Every teacher that can end up in a BN set (always, pool, logit with bn_include_logit);
    none for a method without the BN objective (RDED)."""
    rec = cfg.recover
    return rec.statistic_candidates() if isinstance(rec, OptimizeRecover) else []


def bnless_message(names: list[str], count_bnless: bool, reduction: str) -> str:
    if reduction == "sum":
        effect = "they add nothing to the BN term (reduction: sum has no divisor K)"
    elif count_bnless:
        effect = "they add nothing to the BN term but count in K (count_bnless: true, official)"
    else:
        effect = (
            "they add nothing to the BN term and do not count in K (the official code counts "
            "them: set recover.count_bnless: true or recover.preset: official to match it)"
        )
    return f"recover: BN teacher(s) {names} have no BatchNorm layer: {effect}"


def prior_problem(name: str, spec, model) -> str | None:
    """Why teacher `name`'s `prior` does not fit its layers (None: it fits). `auto` comes
    from the architecture's name (config/priors.py); a name the table gets wrong for the
    model's layers is refused, asking for an explicit prior. `auto` giving `bn` to a model
    without any normalisation layer is today's BN-less teacher (a warning, not a problem)."""
    from prism_hpc.models.registry import layer_prior, norm_layers

    prior = spec.resolved_prior()
    if prior == "norm_stats" and not norm_layers(model):
        return (
            f"teachers.{name}: prior norm_stats, but {spec.arch} has no LayerNorm/GroupNorm layer"
        )
    layers = layer_prior(model)
    if spec.prior == "auto" and prior != layers and not (prior == "bn" and layers == "none"):
        return (
            f"teachers.{name}: prior auto gives {prior} for {spec.arch} (by its name), but its "
            f"layers allow {layers}: set teachers.{name}.prior to bn, norm_stats or none"
        )
    return None


def check_priors(cfg: Config, models: dict, priors: dict[str, str]) -> None:
    """The recover task's check of the loaded teachers (plan/submit do it on the meta
    device): one line for the first teacher whose prior does not fit its layers."""
    for name in priors:
        problem = prior_problem(name, cfg.teachers[name], models[name])
        if problem:
            raise UserError(problem)


def recover_warnings(cfg: Config) -> list[str]:
    """BN-less BN teachers (AlexNet) and `prior: none` teachers, found by building the
    models on the meta device; a prior that does not fit its model's layers is refused."""
    from prism_hpc.models.registry import bn_layers, create_model

    bnless, silenced = [], []
    matching = isinstance(cfg.recover, OptimizeRecover) and cfg.recover.matching.enabled
    for name in bn_teacher_candidates(cfg):
        spec = cfg.teachers[name]
        try:
            with torch.device("meta"):
                model = create_model(
                    spec.arch, 10, cfg.data.channels, cfg.data.resolution, spec.width
                )
        except Exception:  # noqa: BLE001 - a model that cannot be built is check_models' job
            model = None
        if model is None:
            continue
        prior = "bn" if matching else spec.resolved_prior()  # matching: its own layers
        problem = None if matching else prior_problem(name, spec, model)
        if problem:
            raise UserError(problem)
        if not bn_layers(model) and prior != "norm_stats":
            bnless.append(name)
        elif prior == "none":
            silenced.append(name)
    out = []
    if bnless:
        out.append(bnless_message(bnless, cfg.recover.count_bnless, cfg.recover.reduction))
    if silenced:
        out.append(f"recover: BN teacher(s) {silenced} have prior none: no statistic term "
                   "(they count in K only with count_bnless)")  # fmt: skip
    return out
