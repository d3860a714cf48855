"""The tracker interface, the fan-out over sinks, and the guard that keeps a sink from ever
failing the task.

Tracking is a side channel: a lost curve is a nuisance, a lost recovery slice costs GPU hours.
So every call into a sink goes through `GuardedSink`, which turns the first exception of any
kind (missing package, unwritable folder, refused project name, network error) into one
warning line and switches that sink off for the rest of the task; the other sinks go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

if TYPE_CHECKING:
    from types import TracebackType

    from numpy.typing import ArrayLike

    ImageLike = str | Path | ArrayLike

Warn = Callable[[str], None]

# what to install when a sink's package is missing (the `tracking` extra has both)
INSTALL_HINT = "pip install 'prism-hpc[tracking]'"
_MAX_CAUSE = 300


class Tracker(Protocol):
    """What a stage logs to. Steps are the stage's own counter (iteration, optimiser step,
    epoch); values are plain floats (call `.item()` on tensors once, at the logging step)."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Several curves at one step (one W&B history row, one TensorBoard point each)."""

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """A block of text or Markdown (a results table, a summary)."""

    def image(self, tag: str, image: ImageLike, step: int = 0) -> None:
        """An image file (PNG, JPEG) or an array: HxW, HxWxC or CxHxW (C in 1, 3, 4);
        uint8, or floats in [0, 1]."""

    def close(self) -> None:
        """Flush and release; later calls are ignored."""


def one_line(err: BaseException) -> str:
    """The exception as one short line: a warning must never spill over into many log lines
    (wandb's messages can carry newlines and tracebacks)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > _MAX_CAUSE:
        text = text[: _MAX_CAUSE - 3] + "..."
    return f"{type(err).__name__}: {text}"


def failure_line(sink: str, err: BaseException, package: str) -> str:
    """The one warning for a sink that stops: which sink, why, and what to install when the
    cause is its missing package."""
    if isinstance(err, ImportError) and (err.name or "").split(".")[0] == package.split(".")[0]:
        cause = f"package {package!r} is not installed ({INSTALL_HINT}, or pip install {package})"
    else:
        cause = one_line(err)
    return f"tracking: {sink} is off for the rest of this task: {cause}"


def as_row(step: int, values: Mapping[str, float]) -> tuple[int, dict[str, float]]:
    """Step and values as plain int and floats (0-d tensors and numpy scalars included).
    Called inside each sink, behind its guard, so that a value that is not a number switches
    tracking off with a warning instead of failing the task."""
    return int(step), {str(k): float(v) for k, v in values.items()}


class GuardedSink:
    """One sink behind a guard: an exception while building it or in any later call warns
    once, naming the sink and the cause, and switches it off for the rest of the task."""

    def __init__(self, name: str, package: str, build: Callable[[], Tracker], warn: Warn):
        self.name = name
        self._package = package
        self._warn = warn
        self._sink: Tracker | None = None
        try:
            self._sink = build()
        except Exception as err:  # noqa: BLE001 - tracking must never fail the task
            self._fail(err)

    @property
    def active(self) -> bool:
        return self._sink is not None

    def _fail(self, err: BaseException) -> None:
        sink, self._sink = self._sink, None
        self._warn(failure_line(self.name, err, self._package))
        if sink is not None:
            with contextlib.suppress(Exception):  # already warned once for this sink
                sink.close()

    def _call(self, method: str, *args: Any) -> None:
        if self._sink is None:
            return
        try:
            getattr(self._sink, method)(*args)
        except Exception as err:  # noqa: BLE001 - tracking must never fail the task
            self._fail(err)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._call("scalars", step, values)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self._call("text", tag, text, step)

    def image(self, tag: str, image: ImageLike, step: int = 0) -> None:
        self._call("image", tag, image, step)

    def close(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            sink.close()
        except Exception as err:  # noqa: BLE001 - tracking must never fail the task
            self._warn(failure_line(self.name, err, self._package))


class FanOut:
    """What `open_tracker` returns: every call goes to each sink still on. With no sinks it
    is the null tracker (tracking off), which does nothing and imports nothing."""

    def __init__(self, sinks: Sequence[GuardedSink] = ()):
        self._sinks = list(sinks)

    @property
    def active(self) -> list[str]:
        """Names of the sinks still on (for a status line, and for tests)."""
        return [s.name for s in self._sinks if s.active]

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for sink in self._sinks:
            sink.scalars(step, values)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        for sink in self._sinks:
            sink.text(tag, text, step)

    def image(self, tag: str, image: ImageLike, step: int = 0) -> None:
        for sink in self._sinks:
            sink.image(tag, image, step)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def null_tracker() -> FanOut:
    """The tracker when tracking is off, or on ranks other than 0."""
    return FanOut()


@dataclass(frozen=True)
class TrackedTask:
    """Which task is tracked: a stage builds one from its item and `TaskEnv`.

    `run_name` groups the items of one run (W&B `group`), `stage` is the W&B `job_type` and
    a TensorBoard folder, `item_key` names the W&B run and the innermost folder; `config` is
    the resolved config (`cfg.model_dump(mode="json")`), stored with the W&B run and as text
    beside the TensorBoard curves. Ranks other than 0 get the null tracker: one writer per item.
    """

    run_dir: Path
    stage: str
    item_key: str
    run_name: str
    config: Mapping[str, Any] = field(default_factory=dict)
    rank: int = 0
