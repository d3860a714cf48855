"""The pipeline's stages. This package is the only place that knows their order."""

from prism_hpc.stages.pipeline import REGISTRY_REF, registry

__all__ = ["REGISTRY_REF", "registry"]
