"""Data sources, normalisation and the class/IPC index."""

from prism_hpc.data.index import class_index, initial_indices
from prism_hpc.data.sources import ImageSource, open_source, source_stats

__all__ = ["ImageSource", "class_index", "initial_indices", "open_source", "source_stats"]
