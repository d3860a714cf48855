"""The epoch loop of one student: steps, EMA, progress, then per epoch the evaluation and
the checkpoint. Every random choice is keyed by (seed, arch, student seed, epoch), so a run
resumed after epoch k ends exactly like an uninterrupted one (on CPU)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.seeding import derive_seed
from prism_hpc.train.checkpoint import History, checkpoint
from prism_hpc.train.ema import ModelEMA
from prism_hpc.train.evaluate import EvalData, evaluate
from prism_hpc.train.progress import ProgressLog
from prism_hpc.train.schedules import lr_factor
from prism_hpc.train.step import StepOptions, to_device, train_step
from prism_hpc.workflow import TaskEnv


class StopTraining(Exception):
    """Training stopped at an epoch boundary after its checkpoint (`TrainHooks`: a kill)."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        super().__init__(f"training stopped after epoch {epoch} (checkpoint saved)")


@dataclass(frozen=True)
class TrainHooks:
    """Ways for tests and benchmarks into one student's training; none changes its result.

    `eval_data`: the test split, prepared once for several students; `stop_after_epoch`:
    raise StopTraining after that many epochs, like a kill after the checkpoint;
    `step_hook(epoch, batch, model)` sees each step's reduced gradients just before the
    optimizer step."""

    eval_data: EvalData | None = None
    stop_after_epoch: int | None = None
    step_hook: Callable[[int, int, nn.Module], None] | None = None


@dataclass
class Training:
    """One student being trained, as `trainer.train_student` set it up for the loop."""

    cfg: Config
    env: TaskEnv
    student: tuple[str, int]  # (arch, seed)
    model: nn.Module  # what is saved and evaluated
    net: nn.Module  # what is stepped: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    opts: StepOptions
    ensemble: Any | None  # online relabel: the teachers' soft labels per batch
    batches: Iterator[dict[str, Any]] | None
    steps: int
    prog: ProgressLog
    eval_data: EvalData | None
    stats: tuple[torch.Tensor, torch.Tensor]  # the distilled set's mean, std
    ckpt_path: Path
    history: History
    hooks: TrainHooks


def run_epochs(t: Training) -> None:
    """From the first unfinished epoch to the last; each ends with its checkpoint."""
    epochs = t.cfg.students.epochs
    for epoch in range(t.history.epoch, epochs):
        t0 = time.time()
        train_loss, lr = _train_epoch(t, epoch)
        done = epoch + 1
        t.history.train_log.append({"epoch": done, "loss": round(train_loss, 6), "lr": lr})
        extra = _evaluate(t, done, train_loss)
        t.history.wall += time.time() - t0
        t.history.epoch = done
        if t.env.is_main:
            checkpoint(t.ckpt_path, t.history, t.model, t.optimizer, t.ema, t.opts.scaler)
        t.prog.report(done, 0, train_loss, lr, "done" if done == epochs else "running", extra)
        t.env.progress({"epoch": done, "epochs": epochs, "loss": round(train_loss, 4)})
        stop = t.hooks.stop_after_epoch
        if stop is not None and done == stop and done < epochs:
            raise StopTraining(done)


def _train_epoch(t: Training, epoch: int) -> tuple[float, float]:
    """Every step of `epoch`; returns (mean training loss, lr)."""
    cfg, st = t.cfg, t.cfg.students
    (arch, seed), device = t.student, t.opts.device
    lr = st.lr * lr_factor(st.schedule, epoch, st.epochs, st.zeta)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(derive_seed(cfg.seed, "train-epoch", arch, seed, epoch))
    t.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    for b in range(t.steps):
        batch = next(t.batches)
        if batch["epoch"] != epoch or batch["batch"] != b:  # the loader is ordered
            raise RuntimeError(f"loader out of step: {batch['epoch']}/{batch['batch']}")
        if batch["skip"]:
            continue  # a last batch smaller than the world: every rank skips it
        batch = to_device(batch, device)
        soft = batch.get("soft")
        if t.ensemble is not None:  # fp32, like the offline labels
            soft = t.ensemble(batch["x"], _sq_reduce if t.opts.world_size > 1 else None).float()
        before = None
        if t.hooks.step_hook is not None:
            before = lambda _e=epoch, _b=b: t.hooks.step_hook(_e, _b, t.model)
        loss_sum += train_step(t.net, t.optimizer, batch, t.opts, soft, before)
        seen += sum(batch["sizes"])
        if t.ema is not None:
            t.ema.update(t.model)
        t.prog.step(batch["n"])
        if (b + 1) % st.log_every == 0 and b + 1 < t.steps:
            running = float(loss_sum) / max(seen, 1)
            t.prog.report(epoch, b + 1, running, lr)
            t.env.progress({  # the local backend's terminal line
                "epoch": f"{epoch}+{b + 1}/{t.steps}", "epochs": st.epochs,
                "loss": round(running, 4), "img/s": round(t.prog.rate(), 1),
            })  # fmt: skip
    train_loss = float(loss_sum) / max(seen, 1)
    if not math.isfinite(train_loss):
        raise RuntimeError(f"{t.prog.name}: loss is {train_loss} at epoch {epoch}")
    return train_loss, lr


def _sq_reduce(sq: torch.Tensor) -> torch.Tensor:
    """The online ensemble's per-batch norms summed over the ranks' pieces."""
    dist.all_reduce(sq)
    return sq


def _evaluate(t: Training, done: int, train_loss: float) -> str:
    """Top-1/top-5 every `eval_every` epochs and after the last (rank 0; the others wait);
    returns the text the epoch's progress line ends with."""
    st = t.cfg.students
    if not (done % st.eval_every == 0 or done == st.epochs):
        return ""
    extra = ""
    if t.env.is_main:
        model = t.ema.module if t.ema is not None else t.model
        mean, std = t.stats
        acc = evaluate(model, t.eval_data, mean, std, t.opts.device, t.opts.precision)
        t.history.evals.append({"epoch": done, **acc, "eval_images": len(t.eval_data),
                                "train_loss": round(train_loss, 6)})  # fmt: skip
        extra = f" top-1 {acc['top1']:.4f} top-5 {acc['top5']:.4f}"
    if t.opts.world_size > 1:
        dist.barrier()
    return extra
