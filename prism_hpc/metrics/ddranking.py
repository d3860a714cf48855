"""DD-Ranking's Label-Robust Score (LRS) and its parts, HLR and IOR, from our own runs.

Definitions (NUS-HPC-AI-Lab/DD-Ranking, README "Label-Robust Score (LRS)" and
doc/introduction.md; code ddranking/metrics/soft_label.py `compute_metrics`, commit b8b0966):

- HLR (hard label recovery) = Acc(real-hard) - Acc(syn-hard): a student trained on the whole
  real training set with hard labels minus one trained on the distilled images with hard
  labels. Lower is better.
- IOR (improvement over random) = Acc(syn-any) - Acc(rdm-any): the distilled set under the
  method's own evaluation (here: its relabel + students sections, e.g. soft labels) minus a
  random real subset of the same size under that same evaluation. Higher is better.
- alpha = w * IOR - (1 - w) * HLR with w = 0.5 by default (the leaderboard's weight), and
  LRS = (e^alpha - e^-1) / (e - e^-1), which maps alpha in [-1, 1] onto [0, 1]; the docs
  report it x 100 %.

Units: the documented normalisation needs accuracies as fractions (then |alpha| <= 1 and LRS
lies in [0, 100] %). DD-Ranking's code at b8b0966 feeds its percent accuracies (its
`validate` returns acc x 100) into the same exp, which leaves [0, 1]; we follow the
documented definition: HLR and IOR are shown in percentage points, alpha uses them / 100.

Where the four accuracies come from (docs/baselines.md): a run's students are its final top-1
(mean over every matching run and student seed, per student architecture). DD-Ranking instead
takes the best epoch of each evaluation and averages LRS over evaluations; HLR and IOR are
linear so their means agree, LRS of the means differs from the mean of LRS only by the
curvature of exp over the seed spread.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from prism_hpc.metrics.runs import RunInfo
from prism_hpc.metrics.tables import markdown_table, pretty_arch

DEFAULT_WEIGHT = 0.5  # DD-Ranking's leaderboard default: IOR and HLR count equally


def hlr(real_hard: float, syn_hard: float) -> float:
    """Hard label recovery, in the accuracies' units: real-data minus distilled, hard labels."""
    return real_hard - syn_hard


def ior(syn_any: float, rdm_any: float) -> float:
    """Improvement over random, in the accuracies' units: distilled minus random real subset."""
    return syn_any - rdm_any


def lrs(hlr_pp: float, ior_pp: float, weight: float = DEFAULT_WEIGHT) -> float:
    """Label-Robust Score in percent from HLR and IOR in percentage points (see module doc)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"LRS weight must lie in [0, 1], got {weight}")
    alpha = (weight * ior_pp - (1.0 - weight) * hlr_pp) / 100.0
    return 100.0 * (math.exp(alpha) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


# --- which runs supply which accuracy ----------------------------------------------------------

SUPPLIERS = {
    "syn_hard": "a run with the same recover section and seed but relabel.mode: none "
    "(hard labels, students.loss ce)",
    "rdm_any": "a random-real-subset run (recover.init_only: true, recover.init: real, same "
    "IPC) with the same relabel and students sections",
    "real_hard": "a full-real run (recover.ipc: all, recover.init_only: true, recover.init: "
    "real, relabel.mode: none)",
}


def _sec(r: RunInfo, name: str) -> dict[str, Any]:
    node = r.cfg.get(name)
    return node if isinstance(node, dict) else {}


def _init_only(r: RunInfo) -> bool:
    return bool(_sec(r, "recover").get("init_only")) and r.init == "real"


def _hard(r: RunInfo) -> bool:
    return _sec(r, "relabel").get("mode") == "none"


def _full_real(r: RunInfo) -> bool:
    return _init_only(r) and _sec(r, "recover").get("ipc") == "all" and _hard(r)


def _eval_key(r: RunInfo) -> str:
    """The evaluation a run applies: relabel + students sections, without archs/seeds (the
    accuracies are compared per architecture and averaged over seeds anyway)."""
    students = {k: v for k, v in _sec(r, "students").items() if k not in ("archs", "seeds")}
    return json.dumps([_sec(r, "relabel"), students], sort_keys=True, default=str)


def _images_key(r: RunInfo) -> str:
    """What makes the distilled images: the recover section, seed and data set."""
    return json.dumps([_sec(r, "recover"), r.seed, r.data_key], sort_keys=True, default=str)


def _mean(runs: list[RunInfo], arch: str) -> float | None:
    vals = [s.top1 for r in runs for s in r.students if s.arch == arch]
    return sum(vals) / len(vals) if vals else None


@dataclass
class LRSRow:
    method: str
    arch: str
    ipc: int
    data_key: str
    syn_any: float | None
    syn_hard: float | None
    rdm_any: float | None
    real_hard: float | None
    missing: list[str] = field(default_factory=list)  # names of the absent accuracies

    @property
    def hlr(self) -> float | None:
        if self.real_hard is None or self.syn_hard is None:
            return None
        return hlr(self.real_hard, self.syn_hard)

    @property
    def ior(self) -> float | None:
        if self.syn_any is None or self.rdm_any is None:
            return None
        return ior(self.syn_any, self.rdm_any)

    @property
    def lrs(self) -> float | None:
        h, i = self.hlr, self.ior
        return None if h is None or i is None else lrs(h, i)


def lrs_rows(runs: list[RunInfo]) -> list[LRSRow]:
    """One row per (method row, student arch, IPC, data set, evaluation) of distilled runs.

    Hard-label runs that reproduce a soft-label run's images (same recover section, seed and
    data) are that run's syn-hard, not rows of their own; a hard-label run without such a
    partner is its own syn-hard (its own evaluation is hard labels).
    """
    distilled = [r for r in runs if not _sec(r, "recover").get("init_only")]
    soft = [r for r in distilled if not _hard(r)]
    hard_by_images: dict[str, list[RunInfo]] = {}
    for r in distilled:
        if _hard(r):
            hard_by_images.setdefault(_images_key(r), []).append(r)
    partnered = {_images_key(r) for r in soft}
    groups: dict[tuple[str, int, str, str], list[RunInfo]] = {}
    for r in distilled:
        if _hard(r) and _images_key(r) in partnered:
            continue
        groups.setdefault((r.row, r.ipc, r.data_key, _eval_key(r)), []).append(r)
    random_subsets = [r for r in runs if _init_only(r) and not _full_real(r)]
    full_real = [r for r in runs if _full_real(r)]
    rows = []
    for (method, ipc, data_key, key), members in groups.items():
        hard_runs = [h for m in members for h in hard_by_images.get(_images_key(m), [])]
        rdm = [
            r for r in random_subsets
            if r.ipc == ipc and r.data_key == data_key and _eval_key(r) == key
        ]  # fmt: skip
        real = [r for r in full_real if r.data_key == data_key]
        archs = list(dict.fromkeys(s.arch for m in members for s in m.students))
        for arch in archs:
            row = LRSRow(
                method, arch, ipc, data_key,
                syn_any=_mean(members, arch),
                syn_hard=_mean(hard_runs, arch),
                rdm_any=_mean(rdm, arch),
                real_hard=_mean(real, arch),
            )  # fmt: skip
            row.missing = [k for k in SUPPLIERS if getattr(row, k) is None]
            rows.append(row)
    return rows


def _pp(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def lrs_table(runs: list[RunInfo]) -> str | None:
    """Markdown: the four accuracies, HLR / IOR (points) and LRS (%); then, for every number
    that is missing, the run that would supply it. None when no run is a distilled run."""
    rows = lrs_rows(runs)
    if not rows:
        return None
    header = ["Method", "Student", "IPC", "syn-any", "syn-hard", "rdm-any", "real-hard",
              "HLR", "IOR", "LRS [%]"]  # fmt: skip
    body = [
        [r.method, pretty_arch(r.arch), str(r.ipc), _pp(r.syn_any), _pp(r.syn_hard), _pp(r.rdm_any),
         _pp(r.real_hard), _pp(r.hlr, True), _pp(r.ior, True), _pp(r.lrs)]
        for r in rows
    ]  # fmt: skip
    text = markdown_table(header, body, ["l", "l"] + ["r"] * 8)
    needs = sorted({k for r in rows for k in r.missing}, key=list(SUPPLIERS).index)
    if needs:
        text += "\n\nNot computed where a number is missing; these runs would supply them:\n"
        for k in needs:
            who = ", ".join(f"{r.method} {pretty_arch(r.arch)} IPC {r.ipc}" for r in rows
                            if k in r.missing)  # fmt: skip
            text += f"\n- {k} ({who}): {SUPPLIERS[k]}"
    return text


def lrs_summary(runs: list[RunInfo]) -> list[dict[str, Any]]:
    """report.json's `ddranking` entries (accuracies in %, HLR/IOR in points, LRS in %)."""
    return [
        {
            "method": r.method, "arch": r.arch, "ipc": r.ipc, "data": r.data_key,
            "syn_any": r.syn_any, "syn_hard": r.syn_hard, "rdm_any": r.rdm_any,
            "real_hard": r.real_hard, "hlr": r.hlr, "ior": r.ior, "lrs": r.lrs,
            "weight": DEFAULT_WEIGHT, "missing": r.missing,
        }
        for r in lrs_rows(runs)
    ]  # fmt: skip
