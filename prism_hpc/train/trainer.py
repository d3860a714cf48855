"""Student training on the distilled set, with stored (offline), online or no soft labels.

One call trains one (architecture, seed) pair:

- batches: the epoch plans of `prism_hpc.relabel.augment` (offline: replayed from the relabel
  files; online / none: drawn from the same seeded generator), so all modes see the same
  crops, flips and mixes; one plan batch (`students.batch_size`) is one optimizer step, split
  into `grad_accum` micro-batches (and over DDP ranks), with the loss weighted by micro-batch
  size so that a short last batch is handled exactly;
- AdamW (weight decay on >1-D weights only) or SGD; lr factor per epoch (cosine / SSRS);
- optional parameter EMA, used for evaluation;
- a checkpoint after every epoch (atomic; `torch.load(weights_only=True)` on resume). Every
  random choice is keyed by (seed, arch, student seed, epoch), so a run killed after epoch k
  and restarted ends with exactly the metrics of an uninterrupted run on CPU;
- top-1 / top-5 on the test split every `eval_every` epochs and after the last one.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import num_classes_of
from prism_hpc.errors import UserError
from prism_hpc.models.registry import create_model
from prism_hpc.relabel.augment import build_batch, plan_from_config
from prism_hpc.seeding import derive_seed
from prism_hpc.store.atomic import atomic_path, atomic_write_text
from prism_hpc.store.distilled import DistilledSet
from prism_hpc.store.rundir import CKPT_NAME, METRICS_NAME, student_dir
from prism_hpc.store.softlabels import SoftLabelReader
from prism_hpc.train.checks import check_train_config
from prism_hpc.train.ema import ModelEMA
from prism_hpc.train.evaluate import EvalData, amp_context, evaluate
from prism_hpc.train.losses import student_loss
from prism_hpc.train.schedules import lr_factor

_STOP = threading.Event()


class StopTraining(Exception):
    """Training stopped at an epoch boundary after its checkpoint (preemption or a test)."""

    def __init__(self, epoch: int):
        self.epoch = epoch
        super().__init__(f"training stopped after epoch {epoch} (checkpoint saved)")


def request_stop() -> None:
    """Ask running trainings in this process to stop after the current epoch's checkpoint.

    Safe to call from a signal handler or submitit's `checkpoint()`; a restarted task resumes
    from the checkpoint. If the job is killed before the epoch ends, the previous epoch's
    checkpoint is used (at most one epoch is lost, the result is the same).
    """
    _STOP.set()


def clear_stop() -> None:
    _STOP.clear()


# --------------------------------------------------------------------------- small helpers
def build_student(cfg: Config, arch: str, num_classes: int) -> nn.Module:
    return create_model(
        arch, num_classes, in_channels=cfg.data.channels, resolution=cfg.data.resolution,
        width=cfg.students.width,
    )  # fmt: skip


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on >1-D weights (convs, linear weights) only; not on biases / norms."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    st = cfg.students
    groups = param_groups(model, st.weight_decay)
    if st.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=st.lr, momentum=st.momentum)
    return torch.optim.AdamW(groups, lr=st.lr)


def _split(n: int, parts: int) -> list[np.ndarray]:
    return [p for p in np.array_split(np.arange(n), max(1, min(parts, n))) if len(p)]


def _stop_requested(world_size: int, device: torch.device) -> bool:
    """Local stop flag, agreed on by all ranks (a rank alone must not leave the others)."""
    flag = _STOP.is_set()
    if world_size > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = bool(t.item() > 0)
    return flag


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- training
def train_student(
    cfg: Config,
    run_dir: Path,
    arch: str,
    seed: int,
    out_dir: Path | None = None,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    log: Callable[[str], None] = print,
    progress: Callable[[dict[str, Any]], None] | None = None,
    stop_after_epoch: int | None = None,
    eval_data: EvalData | None = None,
) -> dict[str, Any]:
    """Train (or resume) one student; returns the metrics dict that rank 0 writes.

    `stop_after_epoch` (tests): raise StopTraining after that many epochs, like a kill.
    With `world_size > 1` the process group must already be initialised (DDP).
    """
    check_train_config(cfg)
    st, mode = cfg.students, cfg.relabel.mode
    device = torch.device(device)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else student_dir(run_dir, arch, seed)
    is_main = rank == 0
    if device.type == "cpu" and st.cpu_threads:
        torch.set_num_threads(st.cpu_threads)

    distilled = DistilledSet(run_dir / "distilled.h5")
    num_classes = num_classes_of(cfg.data, run_dir)
    if distilled.num_classes != num_classes:
        raise UserError(
            f"distilled.h5 has {distilled.num_classes} classes, the config {num_classes}"
        )
    if distilled.height != cfg.data.resolution:
        raise UserError(
            f"distilled.h5 images are {distilled.height} px, data.resolution is "
            f"{cfg.data.resolution}"
        )
    mean = torch.tensor(distilled.mean, dtype=torch.float32)
    std = torch.tensor(distilled.std, dtype=torch.float32)
    reader = SoftLabelReader(cfg, run_dir, distilled) if mode == "offline" else None
    labels = torch.from_numpy(distilled.labels)
    ensemble = None
    if mode == "online":
        from prism_hpc.relabel.ensemble import load_ensemble

        ensemble = load_ensemble(cfg, run_dir, device)

    torch.manual_seed(derive_seed(cfg.seed, "train-init", arch, seed))
    model = build_student(cfg, arch, num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    ema = ModelEMA(model, st.ema) if st.ema else None
    n_params = sum(p.numel() for p in model.parameters())

    start_epoch, history, train_log, wall = 0, [], [], 0.0
    ckpt_path = out_dir / CKPT_NAME
    state = load_checkpoint(ckpt_path)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        start_epoch = int(state["epoch"])
        history = json.loads(state["history"])
        train_log = json.loads(state["train_log"])
        wall = float(state["wall"])
        log(f"train {arch} seed {seed}: resumed after epoch {start_epoch}")
    del state

    net: nn.Module = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if eval_data is None and is_main:
        eval_data = EvalData(cfg, st.eval_limit, run_dir)

    sq_reduce = None
    if world_size > 1:

        def sq_reduce(sq: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(sq)
            return sq

    autocast = amp_context(device, st.amp)
    epochs = st.epochs
    try:
        for epoch in range(start_epoch, epochs):
            if _stop_requested(world_size, device):
                raise StopTraining(epoch)
            t0 = time.time()
            lr = st.lr * lr_factor(st.schedule, epoch, epochs, st.zeta)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(derive_seed(cfg.seed, "train-epoch", arch, seed, epoch))
            if reader is not None:
                stored = reader.epoch(epoch)
                plan = stored.plan
            else:
                stored = None
                plan = plan_from_config(
                    cfg, epoch, len(distilled), distilled.height, distilled.width
                )
            net.train()
            loss_sum, seen = 0.0, 0
            for b in range(plan.num_batches):
                sl = plan.batch_slice(b)
                rows = plan.order[sl]
                n = len(rows)
                if n < world_size:
                    continue  # a last batch smaller than the world: every rank skips it
                pixels = distilled.images(rows).to(device)
                x, perm, lam = build_batch(pixels, plan, b, mean, std)
                y = labels[rows].to(device)
                y_b = y[perm] if st.ce_target == "mixed" else None
                shard = np.array_split(np.arange(n), world_size)[rank]
                soft = None
                if stored is not None:
                    soft = stored.soft_labels(b).to(device)[shard]
                elif ensemble is not None:  # fp32, like the offline labels
                    soft = ensemble(x[shard], sq_reduce).float()
                x, y = x[shard], y[shard]
                y_b = y_b[shard] if y_b is not None else None
                micro = _split(len(shard), st.grad_accum)
                optimizer.zero_grad(set_to_none=True)
                for j, part in enumerate(micro):
                    part_t = torch.as_tensor(part, device=device)
                    sync = world_size == 1 or j == len(micro) - 1
                    ctx = contextlib.nullcontext() if sync else net.no_sync()
                    with ctx:
                        with autocast:
                            out = net(x[part_t]).float()
                        loss = student_loss(
                            st.loss, out, soft[part_t] if soft is not None else None, y[part_t],
                            temperature=st.temperature, ce_weight=st.ce_weight,
                            y_b=y_b[part_t] if y_b is not None else None, lam=lam,
                        )  # fmt: skip
                        # mean over the whole step batch; DDP averages over ranks -> * world_size
                        (loss * (len(part) / n) * world_size).backward()
                    loss_sum += float(loss.detach()) * len(part)
                    seen += len(part)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
            train_loss = loss_sum / max(seen, 1)
            if not math.isfinite(train_loss):
                raise RuntimeError(
                    f"train {arch} seed {seed}: loss is {train_loss} at epoch {epoch}"
                )
            train_log.append({"epoch": epoch + 1, "loss": round(train_loss, 6), "lr": lr})
            done = epoch + 1
            if done % st.eval_every == 0 or done == epochs:
                if is_main:
                    eval_model = ema.module if ema is not None else model
                    acc = evaluate(eval_model, eval_data, mean, std, device, st.amp)
                    history.append({"epoch": done, **acc, "eval_images": len(eval_data),
                                    "train_loss": round(train_loss, 6)})  # fmt: skip
                    log(
                        f"train {arch} seed {seed}: epoch {done}/{epochs} loss {train_loss:.4f} "
                        f"top-1 {acc['top1']:.4f} top-5 {acc['top5']:.4f}"
                    )
                if world_size > 1:
                    dist.barrier()
            wall += time.time() - t0
            if is_main:
                save_checkpoint(ckpt_path, {
                    "epoch": done,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "ema": ema.state_dict() if ema is not None else {},
                    "history": json.dumps(history),
                    "train_log": json.dumps(train_log),
                    "wall": wall,
                })  # fmt: skip
            if progress is not None:
                progress({"epoch": done, "epochs": epochs, "loss": round(train_loss, 4)})
            if stop_after_epoch is not None and done == stop_after_epoch and done < epochs:
                raise StopTraining(done)
    finally:
        if reader is not None:
            reader.close()
        distilled.close()

    final = history[-1] if history else {}
    best = max(history, key=lambda h: h["top1"]) if history else {}
    return {
        "arch": arch,
        "seed": seed,
        "units": "fraction",  # accuracies below are fractions of 1
        "method": cfg.method,
        "ipc": distilled.ipc,
        "num_classes": num_classes,
        "relabel_mode": mode,
        "loss": st.loss,
        "storage": cfg.relabel.storage if mode == "offline" else None,
        "epochs": epochs,
        "params": n_params,
        "ema": st.ema,
        "evals": history,
        "train": train_log,
        "best": {"epoch": best.get("epoch"), "top1": best.get("top1"), "top5": best.get("top5")},
        "final": {"top1": final.get("top1"), "top5": final.get("top5")},
        "wall_seconds": round(wall, 2),
    }


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = Path(out_dir) / METRICS_NAME
    atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    return path
