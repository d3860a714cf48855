"""G-VBSM statistic matching (Shao et al., CVPR 2024), also the base of EDC's objective.

What the official ImageNet-1K code does (shaoshitong/G_VBSM_Dataset_Condensation,
`Branch_full_ImageNet_1k/recover`), and so what `recover.matching` does:
- backbones resnet18, mobilenet_v2, efficientnet_b0, shufflenet_v2_x0_5; **one per step**,
  round robin (`counter % len(teachers)`), used for both the CE and the statistics (the
  "ensemble" is over steps; `schedule: random` draws one per step from the chunk's seed);
- loss = CE(f_t(A(x)), y) + r_bn * sum_l m_l * term_l (+ densify * D(A(x), y)), over the
  chosen backbone's BN and conv layers in module order, m_l = first_bn_multiplier for the
  first of them, 1 otherwise (recover/statistics.py says what is measured);
- BN term: ||running_var - s(var)||_2 + ||running_mean - s(mean)||_2; conv term: the same
  four norms for channel mean/var and patch mean/var against the precomputed statistics;
- s(.) is the "score distillation" EMA of the synthetic statistic: the matched value is
  e_t = momentum * e_{t-1} + (1 - momentum) * stat_t (e_0 = stat_0, no gradient through the
  history) and the gradient is that of stat_t (`e_t + stat_t - stat_t.detach()`);
- D (`nuc_norm` in the code): per class in the batch, KL(softmax(eig / tau) || softmax(eig))
  of the eigenvalues of the Gram matrix of the 32x32-average-pooled images (sum reduction).
  A class with one image in the batch contributes exactly 0, so D only acts on joint
  (intra-class) batches; on PRISM's cross-class batches it is a documented no-op.
ImageNet script: lr 0.1, 4000 iterations, r_loss 0.01, first multiplier 10, nuc_norm 1,
tau 4, momentum 0.4, drop rate 0, noise init, batch 80 (8 classes x 10 IPC).

Deviations, on purpose: the EMA restarts with every chunk (the official hooks carry it from
the previous batch, which would make a chunk depend on the one before: not world-size or
restart invariant); statistics are precomputed on the un-augmented training images in file
order (the official pass uses RandomResizedCrop + flip, shuffled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.errors import UserError
from prism_hpc.recover import augment
from prism_hpc.recover.edc import class_reference
from prism_hpc.recover.loss import Part, Terms
from prism_hpc.recover.objective import channel_stats, fp32, fp32_island, image_priors
from prism_hpc.recover.precision import autocast, device_layout, scaled
from prism_hpc.recover.sampler import Roles
from prism_hpc.recover.statistics import batch_patch_stats, stat_layers


def pick_backbone(names: list[str], schedule: str, step: int, g: torch.Generator) -> str:
    """The backbone of step `step`: round robin from the first, or drawn uniformly."""
    if schedule == "round_robin":
        return names[step % len(names)]
    return names[int(torch.randint(len(names), (), generator=g))]


def smoothed(value: torch.Tensor, previous: torch.Tensor | None, momentum: float):
    """(the matched value with the current batch's gradient, the new EMA state)."""
    now = value.detach()
    ema = now if previous is None else momentum * previous + (1 - momentum) * now
    return ema + (value - now), ema


def densify_loss(xa: torch.Tensor, targets: torch.Tensor, tau: float, pool: int) -> torch.Tensor:
    """G-VBSM's data densification term (see the module docstring); 0 for singleton classes."""
    z = F.adaptive_avg_pool2d(fp32(xa), pool).flatten(1)
    total = z.new_zeros(())
    labels = targets.tolist()
    for c in sorted(set(labels)):
        rows = z[[i for i, t in enumerate(labels) if t == c]]
        if rows.shape[0] < 2:
            continue
        eig = torch.linalg.eigvalsh(rows @ rows.T)
        target = F.softmax(eig / tau, dim=-1).detach()
        total = total + F.kl_div(F.log_softmax(eig, dim=-1), target, reduction="sum")
    return total


class StatMatcher:
    """Hooks on every backbone's BN (and conv) layers; a term per layer while its backbone is
    the active one. `loss` has `loss.recovery_loss`'s signature, so the loop calls either."""

    def __init__(
        self,
        teachers: dict[str, nn.Module],
        cfg: OptimizeRecover,
        statistics: dict[str, dict[str, torch.Tensor]] | None = None,
    ):
        self.cfg = cfg.matching
        self.names = cfg.matching_backbones()
        self.statistics = statistics or {}
        self.first = cfg.first_bn_multiplier
        self.active: str | None = None
        self.targets: torch.Tensor | None = None
        self.terms: list[torch.Tensor] = []
        self.ema: dict[tuple[str, str, str], torch.Tensor] = {}
        self._handles = []
        for name in self.names:
            layers = stat_layers(teachers[name], conv=self.cfg.conv)
            for i, (layer, kind, module) in enumerate(layers):
                weight = self.first if i == 0 else 1.0
                hook = self._hook(name, layer, kind, weight)
                self._handles.append(module.register_forward_hook(hook))
            if (self.cfg.conv or self.cfg.class_aware) and layers:
                self._check_statistics(name, layers)

    def _check_statistics(self, name: str, layers) -> None:
        """Refuse statistics computed for other settings (one line, not a KeyError later)."""
        stats = self.statistics.get(name)
        if stats is None:
            raise UserError(f"recover.matching: no precomputed statistics for teacher {name!r}")
        convs = [layer for layer, kind, _ in layers if kind == "conv"]
        wanted = [f"class/{layers[0][0]}/mean"] if self.cfg.class_aware else []
        if self.cfg.conv and convs:
            wanted.append(f"global/{convs[0]}/mean")
            if self.cfg.patch:
                wanted.append(f"global/{convs[0]}/patch_mean")
        missing = [key for key in wanted if key not in stats]
        if missing:
            raise UserError(
                f"recover.matching: the statistics of {name!r} lack {missing[0]} (computed "
                "with other matching settings: redo the statistics stage)"
            )

    def _hook(self, teacher: str, layer: str, kind: str, weight: float):
        def hook(module: nn.Module, inputs, output) -> None:
            if self.active != teacher:
                return
            x = inputs[0]
            with fp32_island(x):
                term = self._term(teacher, layer, kind, module, fp32(x))
            self.terms.append(term * weight if weight != 1.0 else term)

        return hook

    def _term(self, teacher: str, layer: str, kind: str, module, x: torch.Tensor):
        var, mean = channel_stats(x)
        current = {"mean": mean, "var": var}
        if kind == "conv" and self.cfg.patch:
            pvar, pmean = batch_patch_stats(x)
            current.update(patch_mean=pmean, patch_var=pvar)
        matched = {}
        for stat, value in current.items():
            key = (teacher, layer, stat)
            matched[stat], self.ema[key] = smoothed(value, self.ema.get(key), self.cfg.momentum)
        stats = self.statistics.get(teacher, {})
        if kind == "bn":
            reference = {"mean": module.running_mean, "var": module.running_var}
        else:
            reference = {s: stats[f"global/{layer}/{s}"] for s in matched}
        term = sum(torch.linalg.vector_norm(reference[s] - matched[s]) for s in matched)
        if self.cfg.class_aware:
            w = self.cfg.class_weight
            own = sum(
                torch.linalg.vector_norm(
                    class_reference(stats, layer, s, self.targets) - matched[s]
                )
                for s in matched
            )
            term = (1 - w) * term + w * own
        return term

    def reset(self) -> None:
        """A new chunk: the statistics' EMA starts again."""
        self.ema = {}
        self.terms = []

    def roles(self, step: int, g: torch.Generator) -> Roles:
        name = pick_backbone(self.names, self.cfg.schedule, step, g)
        return Roles(name, (name,))

    def loss(
        self, part: Part, teachers: dict[str, nn.Module], hooks, cfg: OptimizeRecover,
        backward: bool,
    ) -> Terms:  # fmt: skip
        """Total loss, CE and the summed statistic terms (unweighted by r_bn) of one step."""
        x, targets, roles = part.x, part.targets, part.roles
        xa = device_layout(augment.apply(x, part.draw))
        self.active, self.targets, self.terms = roles.logit, targets, []
        try:
            with autocast(cfg, x.device):
                logits = teachers[roles.logit](xa)
        finally:
            self.active = None
        with fp32_island(logits):
            ce = F.cross_entropy(fp32(logits), targets)
        feature = torch.stack(self.terms).sum() if self.terms else x.new_zeros(())
        self.terms = []
        total = ce + cfg.r_bn * feature
        if self.cfg.densify:
            total = total + self.cfg.densify * densify_loss(
                xa, targets, self.cfg.tau, self.cfg.densify_pool
            )
        if cfg.l2_scale or cfg.tv_scale:
            total = total + image_priors(xa, cfg.l2_scale, cfg.tv_scale)
        if backward:
            scaled(total, part.scaler).backward()
        return total.detach(), ce.detach(), feature.detach()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
