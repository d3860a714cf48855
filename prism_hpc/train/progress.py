"""A student's progress: lines for the task log and `progress.json` for `prism-hpc status`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from prism_hpc.store.atomic import atomic_write_text
from prism_hpc.store.layout import PROGRESS_NAME


class ProgressLog:
    """Progress lines for the task log (epoch, step, loss, lr, images/s, ETA) every
    `students.log_every` steps and at each epoch end, and `progress.json` next to the
    checkpoint (rank 0), which `prism-hpc status` reads without importing torch."""

    def __init__(self, out_dir: Path, name: str, epochs: int, steps: int,
                 log: Callable[[str], None], is_main: bool):  # fmt: skip
        self.path = Path(out_dir) / PROGRESS_NAME
        self.name, self.epochs, self.steps = name, epochs, steps
        self.log, self.is_main = log, is_main
        self.t0, self.done_steps, self.images = time.time(), 0, 0

    def step(self, images: int) -> None:
        self.done_steps += 1
        self.images += images

    def rate(self) -> float:
        return self.images / max(time.time() - self.t0, 1e-9)

    def eta_s(self, epoch: int, step: int) -> float:
        left = (self.epochs - epoch) * self.steps - step
        per_step = (time.time() - self.t0) / max(self.done_steps, 1)
        return max(left, 0) * per_step

    def report(self, epoch: int, step: int, loss: float, lr: float, state: str = "running",
               extra: str = "") -> None:  # fmt: skip
        """`epoch` counts finished epochs when `step == 0` (the end of an epoch)."""
        if not self.is_main:
            return
        rate, eta = self.rate(), self.eta_s(epoch, step)
        where = f"epoch {epoch}/{self.epochs}" + (f" step {step}/{self.steps}" if step else "")
        self.log(f"{self.name}: {where} loss {loss:.4f} lr {lr:.3g} {rate:.1f} img/s "
                 f"ETA {_hms(eta)}{extra}")  # fmt: skip
        info = {"epoch": epoch + (step / self.steps if step else 0.0), "epochs": self.epochs,
                "step": step, "steps": self.steps, "loss": round(loss, 6), "lr": lr,
                "images_per_s": round(rate, 2), "eta_s": round(eta, 1), "state": state,
                "updated": round(time.time(), 1)}  # fmt: skip
        atomic_write_text(self.path, json.dumps(info) + "\n")


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
