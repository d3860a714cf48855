"""HDF5 and marker I/O: atomic writes, validated shards, the collected distilled set."""

from prism_hpc.store.atomic import atomic_write_text, file_sha256, read_marker, write_marker
from prism_hpc.store.shards import read_shard, validate_shard, write_shard

__all__ = [
    "atomic_write_text",
    "file_sha256",
    "read_marker",
    "read_shard",
    "validate_shard",
    "write_marker",
    "write_shard",
]
