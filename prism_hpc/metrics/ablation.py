"""Paper Table 2 layout: variants of the recovery teachers (logit teacher, model selection,
BN alignment) at one data set and IPC, with accuracy, diversity and peak memory."""

from __future__ import annotations

import json

import numpy as np

from prism_hpc.metrics.runs import RunInfo
from prism_hpc.metrics.tables import (
    accuracy_cells,
    arch_order,
    fmt_mean_std,
    markdown_table,
    mean_std,
    ordered,
    pretty_arch,
)


def recovery_signature(r: RunInfo) -> tuple:
    keys = (
        "scope",
        "logit_teacher",
        "logit_pool",
        "bn_always",
        "bn_pool",
        "k_max",
        "sampler",
        "include_prob",
        "resample_logit",
        "init",
        "init_only",
        "r_bn",
        "iterations",
    )
    return tuple(json.dumps(r.get(f"recover.{k}"), sort_keys=True) for k in keys)


def _roles(r: RunInfo) -> list[tuple[str, tuple[str, ...]]]:
    roles = []
    for prov in r.provenance:
        chunks = prov.get("chunks") or []
        found = False
        for chunk in chunks:
            for role in chunk.get("roles") or []:
                roles.append((str(role.get("logit_teacher")), tuple(role.get("bn_teachers", []))))
                found = True
        if not found and "logit_teacher" in prov:
            roles.append((str(prov["logit_teacher"]), tuple(prov.get("bn_teachers", []))))
    return roles


def selection_label(r: RunInfo) -> str:
    if not r.get("recover.logit_pool") and not r.get("recover.bn_pool"):
        return "-"  # nothing is drawn: a fixed teacher set
    return {"pre": "pre-distillation", "intra": "intra-distillation", "per_batch": "per batch"}.get(
        str(r.get("recover.scope")), str(r.get("recover.scope"))
    )


def alignment_label(roles: list[tuple[str, tuple[str, ...]]]) -> tuple[str, str]:
    """(alignment, BN-teacher count) from the recorded roles."""
    if not roles:
        return "?", "?"
    counts = [len(bn) for _, bn in roles]
    if all(bn == (logit,) for logit, bn in roles):
        align = "single"
    elif all(logit not in bn for logit, bn in roles):
        align = "decoupled" if max(counts) == 1 else "multi, decoupled"
    else:
        align = "multi" if max(counts) > 1 else "mixed"
    lo, hi, avg = min(counts), max(counts), float(np.mean(counts))
    count = str(lo) if lo == hi else f"{avg:.1f} ({lo}-{hi})"
    return align, count


def forms_ablation(runs: list[RunInfo]) -> list[list[RunInfo]]:
    """Groups (same data, same IPC) with >= 3 row labels of distinct recovery settings.

    Two labels are a comparison (Table 1 shows it); three or more variants of the recovery
    teachers on the same data and IPC are an ablation series.
    """
    groups: dict[tuple[str, int], list[RunInfo]] = {}
    for r in runs:
        groups.setdefault((r.data_key, r.ipc), []).append(r)
    out = []
    for group in groups.values():
        signatures: dict[str, set] = {}
        for r in group:
            signatures.setdefault(r.row, set()).add(recovery_signature(r))
        distinct = {next(iter(s)) for s in signatures.values() if len(s) == 1}
        if len(signatures) >= 3 and len(distinct) >= 3:
            out.append(group)
    return out


def ablation_table(runs: list[RunInfo]) -> str | None:
    """Paper Table 2 layout for each group of runs that forms an ablation, else None."""
    groups = forms_ablation(runs)
    if not groups:
        return None
    cells = accuracy_cells(runs)
    blocks = []
    for group in groups:
        rows_keys = ordered(r.row for r in group)
        ipc = group[0].ipc
        archs = arch_order(ordered(a for (row, a, i) in cells if row in rows_keys and i == ipc))
        header = ["Variant", "Logit teacher", "Model selection", "Alignment", "BN teachers"]
        header += [f"Acc. [%] {pretty_arch(a)}" for a in archs]
        header += ["Diversity (cos)", "Peak mem [MB]"]
        rows = []
        for rk in rows_keys:
            members = [r for r in group if r.row == rk]
            first = members[0]
            roles = [x for r in members for x in _roles(r)]
            align, count = alignment_label(roles)
            logits = ordered(lg for lg, _ in roles) or [
                str(first.get("recover.logit_teacher") or first.get("recover.logit_pool"))
            ]
            line = [rk, ", ".join(logits), selection_label(first), align, count]
            for a in archs:
                cell = cells.get((rk, a, ipc))
                line.append(fmt_mean_std(cell["mean"], cell["std"], cell["n"]) if cell else "-")
            div = [
                r.diversity["distilled"]["mean"]
                for r in members
                if r.diversity and r.diversity.get("distilled")
            ]
            line.append(fmt_mean_std(*mean_std(div), 4) if div else "-")
            mem = [
                p.get("peak_memory_mb")
                for r in members
                for p in r.provenance
                if isinstance(p.get("peak_memory_mb"), (int, float))
            ]
            line.append(f"{max(mem):.0f}" if mem else "-")
            rows.append(line)
        blocks.append(
            f"{group[0].data_key}, IPC {ipc}:\n\n"
            + markdown_table(header, rows, ["l", "l", "l", "l", "r"] + ["r"] * (len(header) - 5))
            + "\n\nAlignment: `single` = the logit teacher is the only BN teacher; `decoupled` "
            "= BN teacher(s) differ from the logit teacher; `multi` = several BN teachers. "
            "BN teachers: count per slice as recorded in `slice_provenance` (avg and range "
            "when drawn). Peak memory: per recovery process (GPU allocated or CPU max RSS)."
        )
    return "\n\n".join(blocks)
