"""Plan-time checks of the recovery set-up that are warnings, not errors."""

from __future__ import annotations

import torch

from prism_hpc.config.schema import Config, OptimizeRecover


def bn_teacher_candidates(cfg: Config) -> list[str]:
    """Every teacher that can end up in a BN set (always, pool, logit with bn_include_logit);
    none for a method without the BN objective (RDED)."""
    rec = cfg.recover
    if not isinstance(rec, OptimizeRecover):
        return []
    names = list(rec.bn_always) + list(rec.bn_pool)
    if rec.bn_include_logit:
        names += ([rec.logit_teacher] if rec.logit_teacher else []) + list(rec.logit_pool)
    return list(dict.fromkeys(names))


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


def recover_warnings(cfg: Config) -> list[str]:
    """BN-less BN teachers (AlexNet), found by building the models on the meta device."""
    from prism_hpc.models.registry import bn_layers, create_model

    bnless = []
    for name in bn_teacher_candidates(cfg):
        spec = cfg.teachers[name]
        try:
            with torch.device("meta"):
                model = create_model(
                    spec.arch, 10, cfg.data.channels, cfg.data.resolution, spec.width
                )
        except Exception:  # noqa: BLE001 - a model that cannot be built is check_models' job
            model = None
        if model is not None and not bn_layers(model):
            bnless.append(name)
    if not bnless:
        return []
    return [bnless_message(bnless, cfg.recover.count_bnless, cfg.recover.reduction)]
