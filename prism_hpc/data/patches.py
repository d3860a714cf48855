"""The patch grid of an RDED image, shared by the synthesis (recover) and the relabel shuffle.

Both must cut an image at the same lines, and recover and relabel are peers that may not import
each other, so the one definition sits below both.
"""

from __future__ import annotations


def patch_edges(size: int, factor: int) -> list[int]:
    """Row (or column) boundaries of a factor x factor grid over `size` pixels: the first
    `size % factor` cells are one pixel larger, as RDED's `mix_images` lays them out."""
    base, extra = divmod(size, factor)
    edges = [0]
    for i in range(factor):
        edges.append(edges[-1] + base + (1 if i < extra else 0))
    return edges
