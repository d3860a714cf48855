"""The pipeline's stages, in order, as the product defines them (not a copy that can drift)."""

from __future__ import annotations

from functools import cache


@cache
def pipeline_stages() -> tuple[str, ...]:
    """Stage names of `prism_hpc.stages.registry()` in pipeline order. Stages without items
    for a config (rank, statistics for PRISM) leave no marker and so get no window."""
    from prism_hpc.stages import registry

    return tuple(stage.name for stage in registry().stages)
