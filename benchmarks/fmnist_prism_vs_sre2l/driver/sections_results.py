"""BENCHMARKS.md sections on the results: paired differences, diversity, Table 2 and the
paper's expectations checked against them."""

from __future__ import annotations

from .markdown import fmt_cell, md_table, mean_std_cell
from .specs import TABLE2_ROWS


def paired_section(runs, rows, spec_of, comparisons=None) -> str:
    """PRISM - SRe2L (and each vs the real images), paired on (IPC, recovery seed, student seed);
    `comparisons`: other ((variant, init), (variant, init)) pairs (the multi-method benchmark)."""
    from prism_hpc.metrics import tables

    if not runs:
        return ""
    acc: dict[tuple, float] = {}
    for r in runs:
        s = spec_of[str(r.path)]
        for st in r.students:
            acc[(s.variant, s.init, s.ipc, s.seed, st.arch, st.seed)] = st.top1
    comparisons = comparisons or [
        (("prism", init), ("sre2l", init)) for init in ("real", "noise")
    ] + [
        (("prism", "real"), ("real_images", "real")),
        (("sre2l", "real"), ("real_images", "real")),
    ]
    lines = []
    for a, b in comparisons:
        if a not in rows or b not in rows:
            continue
        by_ipc: dict[tuple[int, str], list[tuple[int, float]]] = {}
        for (v, i, ipc, rs, arch, ss), top1 in acc.items():
            if (v, i) == a and (b[0], b[1], ipc, rs, arch, ss) in acc:
                by_ipc.setdefault((ipc, arch), []).append(
                    (rs, top1 - acc[(b[0], b[1], ipc, rs, arch, ss)])
                )
        for (ipc, arch), pairs in sorted(by_ipc.items()):
            d = [x for _, x in pairs]
            per_seed = {}
            for rs, x in pairs:
                per_seed.setdefault(rs, []).append(x)
            seed_means = [sum(v) / len(v) for _, v in sorted(per_seed.items())]
            lines.append(
                [
                    f"{rows[a]} − {rows[b]}",
                    str(ipc),
                    tables.pretty_arch(arch),
                    mean_std_cell(d),
                    f"{min(d):+.2f} … {max(d):+.2f}",
                    f"{sum(x > 0 for x in d)}/{len(d)}",
                    ", ".join(f"{m:+.2f}" for m in seed_means),
                    mean_std_cell(seed_means) if len(seed_means) > 1 else "-",
                ]
            )
    if not lines:
        return ""
    header = [
        "Difference",
        "IPC",
        "Student",
        "Δ top-1 [pp], mean ± std over pairs",
        "range",
        "wins",
        "per recovery seed",
        "mean ± std over recovery seeds",
    ]
    return (
        "### Paired differences\n\n" + md_table(header, lines) + "\n\nPairs share "
        "IPC, recovery seed (config `seed`, also the relabel crops) and student seed. The "
        "student seeds of one recovery run are not independent; the last column (one mean "
        "per recovery seed) is the more honest spread.\n"
    )


def diversity_section(runs, rows, spec_of) -> str:

    cells: dict[tuple, list[tuple[int, float, float | None]]] = {}
    for r in runs:
        d = r.diversity or {}
        if not d.get("distilled"):
            continue
        s = spec_of[str(r.path)]
        ref = (d.get("reference") or {}).get("mean")
        cells.setdefault((s.ipc, s.variant, s.init), []).append(
            (s.seed, d["distilled"]["mean"], ref)
        )
    if not cells:
        return "## Diversity\n\n_No diversity.json yet._\n"
    lines = []
    for (ipc, v, i), vals in sorted(
        cells.items(),
        key=lambda kv: (
            kv[0][0],
            list(rows).index((kv[0][1], kv[0][2])) if (kv[0][1], kv[0][2]) in rows else 9,
        ),
    ):
        dist = [x for _, x, _ in vals]
        refs = [x for _, _, x in vals if x is not None]
        delta = [x - y for _, x, y in vals if y is not None]
        lines.append(
            [
                rows.get((v, i), v),
                str(ipc),
                str(len(vals)),
                mean_std_cell(dist, 4),
                mean_std_cell(refs, 4) if refs else "-",
                mean_std_cell(delta, 4) if delta else "-",
            ]
        )
    text = "## Diversity (intra-class cosine similarity, lower = more diverse)\n\n" + md_table(
        [
            "Method",
            "IPC",
            "Runs",
            "Distilled cos",
            "Real reference cos",
            "Δ distilled − reference",
        ],
        lines,
    )
    paired = []
    for ipc in sorted({k[0] for k in cells}):
        for init in ("real", "noise"):
            a = {sd: x for sd, x, _ in cells.get((ipc, "prism", init), [])}
            b = {sd: x for sd, x, _ in cells.get((ipc, "sre2l", init), [])}
            d = [a[k] - b[k] for k in sorted(a) if k in b]
            if d:
                paired.append(
                    [
                        f"PRISM − SRe2L ({init} init)",
                        str(ipc),
                        mean_std_cell(d, 4),
                        f"{sum(x < 0 for x in d)}/{len(d)}",
                    ]
                )
    if paired:
        text += "\n\nPaired by recovery seed (negative = PRISM more diverse):\n\n" + md_table(
            ["Difference", "IPC", "Δ cos (mean ± std)", "PRISM lower"], paired
        )
    return text + (
        "\n\nPer run: mean over the 10 classes of the mean pairwise cosine similarity; cells: "
        "mean ± sample std over recovery runs. Paper (ImageNet-1K): SRe2L/G-VBSM/DELT 0.86-0.92, "
        "PRISM <= 0.83.\n"
    )


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
