"""One line of a hardware report: a named check with a status, shared by `probe` and `doctor`.

Statuses: `ok`; `warn` (works, but slower or riskier than it could be); `fail` (a run would
break: `prism-hpc doctor` exits 1 naming it); `skip` (does not apply here, or not asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES = ("ok", "warn", "fail", "skip")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    data: dict[str, Any] = field(default_factory=dict)  # machine-readable numbers for --json

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"check {self.name}: status {self.status!r} not in {STATUSES}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "detail": self.detail}
        if self.data:
            out["data"] = self.data
        return out


def first_line(err: BaseException) -> str:
    """An exception as one line (torch errors run to pages)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
