"""Model registry: teachers and students by name, adapted to the data, weights from local files."""

from prism_hpc.models.registry import (
    available_archs,
    bn_layers,
    create_model,
    freeze,
    load_weights,
)

__all__ = ["available_archs", "bn_layers", "create_model", "freeze", "load_weights"]
