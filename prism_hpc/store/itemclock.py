"""The clock of the item a task is running, read when its markers are sealed.

The task runner (`hpc.task.run_item`) starts it around the stage's work on one item
(`stage.run`: loading its inputs, computing, writing); every marker sealed meanwhile records
`item_seconds`, the seconds since that work began. So how long an item took is a fact of the
run directory, like the files it made, and nothing has to read it back from a log.
Markers sealed outside a task (tests, `collect`, a re-seal) get no clock and no such field.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

ITEM_SECONDS = "item_seconds"  # the marker key; some stages' own `seconds` mean something else

_started: ContextVar[float | None] = ContextVar("prism_item_started", default=None)


@contextmanager
def item_clock() -> Iterator[None]:
    """Time one item: markers sealed inside the block record the seconds since it began."""
    token = _started.set(time.monotonic())
    try:
        yield
    finally:
        _started.reset(token)


def elapsed() -> float | None:
    """Seconds since the running item began; None outside an item."""
    start = _started.get()
    return None if start is None else round(time.monotonic() - start, 3)
