"""BENCHMARKS.md sections on this benchmark's own results: Table 2 and the paper's expectations
checked against the numbers (paired differences and diversity: `benchmarks.fmnist_shared`)."""

from __future__ import annotations

from benchmarks.fmnist_shared.markdown import fmt_cell, md_table, mean_std_cell

from .specs import TABLE2_ROWS


def table2_section(t2, spec_of) -> str:
    from prism_hpc.metrics import tables
    from prism_hpc.metrics.ablation import ablation_table

    if not t2:
        return "## Table 2 rows\n\n_No finished Table 2 runs._\n"
    paper = dict(TABLE2_ROWS)
    lines = []
    for row in dict.fromkeys(r.row for r in t2):
        members = [r for r in t2 if r.row == row]
        s = spec_of[str(members[0].path)]
        acc = [st.top1 for r in members for st in r.students]
        div = [
            r.diversity["distilled"]["mean"]
            for r in members
            if r.diversity and r.diversity.get("distilled")
        ]
        acc_text = fmt_cell(*tables.mean_std(acc), 2, show_n=False)
        lines.append(
            [
                row,
                f"{paper[s.variant]:.1f}",
                f"{acc_text} (n={len(acc)})",
                mean_std_cell(div, 4) if div else "-",
            ]
        )
    text = "## Table 2 rows (recovery only, hard-label students)\n\n" + md_table(
        ["Row", "Paper top-1 [%] (ImageNet-1K)", "Top-1 [%] here", "Diversity (cos)"], lines
    )
    detail = ablation_table(t2)
    if detail:
        text += "\n\nRoles as recorded in the shards (paper Table 2 layout):\n\n" + detail
    return text + "\n"


def expectations(runs, rows, t2, t2_spec) -> str:
    """The paper's expectations, checked against the numbers above (no interpretation)."""
    out = []

    def acc_of(rs):
        return [st.top1 for r in rs for st in r.students]

    def div_of(rs):
        return [
            r.diversity["distilled"]["mean"]
            for r in rs
            if r.diversity and r.diversity.get("distilled")
        ]

    def mean(v):
        return sum(v) / len(v) if v else None

    for init in ("real", "noise"):
        for ipc in sorted({r.ipc for r in runs}):
            p = [r for r in runs if r.row == rows.get(("prism", init)) and r.ipc == ipc]
            s = [r for r in runs if r.row == rows.get(("sre2l", init)) and r.ipc == ipc]
            if not p or not s:
                continue
            dp, ds, ap, as_ = mean(div_of(p)), mean(div_of(s)), mean(acc_of(p)), mean(acc_of(s))
            if dp is not None and ds is not None:
                out.append(
                    f"- PRISM diversity below SRe2L ({init} init, IPC {ipc}): "
                    f"{dp:.4f} vs {ds:.4f} -> **{'holds' if dp < ds else 'fails'}**"
                )
            if ap is not None and as_ is not None:
                out.append(
                    f"- PRISM accuracy >= SRe2L ({init} init, IPC {ipc}): {ap:.2f} vs "
                    f"{as_:.2f} % -> **{'holds' if ap >= as_ else 'fails'}**"
                )
    by_variant: dict[str, list] = {}
    for r in t2:
        by_variant.setdefault(t2_spec[str(r.path)].variant, []).append(r)
    for pre, intra in (
        ("table2_single_pre", "table2_single_intra"),
        ("table2_dual_pre", "table2_dual_intra"),
    ):
        a, b = mean(acc_of(by_variant.get(pre, []))), mean(acc_of(by_variant.get(intra, [])))
        if a is not None and b is not None:
            out.append(
                f"- Pre above intra ({pre.split('_')[1]}-teacher): {a:.2f} vs {b:.2f} % -> "
                f"**{'holds' if a > b else 'fails'}**"
            )
    multi = [mean(acc_of(by_variant.get(f"table2_multi_pre_{k}bn", []))) for k in (2, 3, 4)]
    if all(m is not None for m in multi):
        ok = multi[0] < multi[1] < multi[2]
        out.append(
            f"- More BN teachers better (2 < 3 < 4): {', '.join(f'{m:.2f}' for m in multi)}"
            f" % -> **{'holds' if ok else 'fails'}**"
        )
    if not out:
        return ""
    return (
        "## The paper's expectations against these numbers\n\n"
        + "\n".join(out)
        + "\n\nMeans over all (recovery, student) seeds; see the spreads above before "
        "reading anything into a difference.\n"
    )
