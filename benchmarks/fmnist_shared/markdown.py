"""Cell and table formatting of both Fashion-MNIST BENCHMARKS.md files (the benchmarks' own,
fixed output format)."""

from __future__ import annotations

import math


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.1f} ms"


def fmt_cell(mean: float, std: float | None, n: int, digits: int = 2, show_n: bool = True) -> str:
    """A cell "mean ± std"; one value "x (n=1)" (no suffix if not `show_n`); none "-". The
    benchmark's own format, so BENCHMARKS.md does not change when the product's tables do."""
    if n == 0 or math.isnan(mean):
        return "-"
    if std is None:
        return f"{mean:.{digits}f}" + (" (n=1)" if show_n else "")
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def mean_std_cell(values: list[float], digits: int = 2) -> str:
    """mean ± sample std (ddof=1) of `values` in this file's cell format."""
    from prism_hpc.metrics import tables

    return fmt_cell(*tables.mean_std(values), digits)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, first column left-aligned, the others right-aligned (the layout of
    `prism_hpc.metrics.tables`' tables, kept here so this file's format is the benchmark's)."""
    sep = [":--"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
