"""Typed experiment configuration: schema, YAML loading, overrides, resolved dump."""

from prism_hpc.config.load import dump_config, load_config, parse_overrides
from prism_hpc.config.schema import (
    Config,
    DataConfig,
    RecoverConfig,
    RelabelConfig,
    Resources,
    SqueezeConfig,
    StudentsConfig,
    TeacherSpec,
)

__all__ = [
    "Config",
    "DataConfig",
    "RecoverConfig",
    "RelabelConfig",
    "Resources",
    "SqueezeConfig",
    "StudentsConfig",
    "TeacherSpec",
    "dump_config",
    "load_config",
    "parse_overrides",
]
