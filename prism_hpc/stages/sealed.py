"""The base of PRISM's stages: a marker vouches for the item's files and for what it was
computed from (`store.integrity`), so a finished item whose files went bad, or whose upstream
was redone, is not done any more and is redone on resume."""

from __future__ import annotations

from pathlib import Path

from prism_hpc.store.integrity import check_marker
from prism_hpc.workflow import Item, Stage


class SealedStage(Stage):
    def problems(self, run_dir: Path, item: Item, full: bool = False) -> list[str]:
        return [p for m in self.markers(run_dir, item) for p in check_marker(run_dir, m, full)]
