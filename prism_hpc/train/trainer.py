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

import torch
import torch.distributed as dist
from torch import nn

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import num_classes_of
from prism_hpc.errors import UserError
from prism_hpc.models.registry import create_model
from prism_hpc.seeding import derive_seed
from prism_hpc.store.atomic import atomic_path, atomic_write_text
from prism_hpc.store.distilled import DistilledSet
from prism_hpc.store.rundir import (
    CKPT_NAME,
    EVAL_NAME,
    METRICS_NAME,
    PROGRESS_NAME,
    student_dir,
)
from prism_hpc.train.checks import check_train_config
from prism_hpc.train.data import StepBatches, step_loader
from prism_hpc.train.ema import ModelEMA
from prism_hpc.train.evaluate import EvalData, bf16_autocast, evaluate
from prism_hpc.train.losses import student_loss
from prism_hpc.train.schedules import lr_factor
from prism_hpc.train.syncbn import convert_sync_bn

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


def make_optimizer(cfg: Config, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or SGD; `fused` runs the update as one kernel over all parameters (CPU and CUDA):
    ~5 % of a 224 px ResNet-18 step on CPU (benchmarks/train_speed.md), same math up to
    float rounding, so it rides with channels_last rather than on the bitwise CPU default."""
    st = cfg.students
    groups = param_groups(model, st.weight_decay)
    extra = {"fused": True} if fused else {}
    if st.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=st.lr, momentum=st.momentum, **extra)
    return torch.optim.AdamW(groups, lr=st.lr, **extra)


def use_fused_optimizer(cfg: Config, device: torch.device) -> bool:
    fused = cfg.students.fused_optimizer
    return use_channels_last(cfg, device) if fused is None else bool(fused)


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


# --------------------------------------------------------------------------- progress
class ProgressLog:
    """Progress lines for the task log (epoch, step, loss, lr, images/s, ETA) every
    `students.log_every` steps and at each epoch end, and `progress.json` next to the
    checkpoint (rank 0), which `prism-hpc status` reads without importing torch."""

    def __init__(self, out_dir: Path, arch: str, seed: int, epochs: int, steps: int,
                 batch_size: int, log: Callable[[str], None], is_main: bool):  # fmt: skip
        self.path = Path(out_dir) / PROGRESS_NAME
        self.name, self.epochs, self.steps = f"train {arch} seed {seed}", epochs, steps
        self.batch_size, self.log, self.is_main = batch_size, log, is_main
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


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """`students.precision`: auto = bf16 on GPU when `amp` (fp32 on CPU), else as named."""
    p = cfg.students.precision
    if p == "auto":
        return bool(cfg.students.amp) and device.type == "cuda"
    return p == "bf16"


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    cl = cfg.students.channels_last
    return device.type == "cuda" if cl is None else bool(cl)


# --------------------------------------------------------------------------- one step
def train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    cfg: Config,
    device: torch.device,
    world_size: int = 1,
    soft: torch.Tensor | None = None,
    bf16: bool = False,
    channels_last: bool = False,
    before_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Forward/backward this rank's micro-batch pieces of one step, then the optimizer step.

    Each piece's loss is weighted by its share of the step batch (times the world size: DDP
    averages over ranks), so the gradient is that of the step-batch mean whatever the split.
    Returns the sum over pieces of (piece loss * piece size) as a float64 device tensor (no
    host sync).
    """
    st = cfg.students
    x = batch["x"]
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y, lam, n = batch["y"], batch["lam"], batch["n"]
    y_b = batch["y_b"] if st.ce_target == "mixed" else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    optimizer.zero_grad(set_to_none=True)
    sizes, offset = batch["sizes"], 0
    for j, size in enumerate(sizes):
        part = slice(offset, offset + size)
        offset += size
        last = j == len(sizes) - 1
        ctx = net.no_sync() if world_size > 1 and not last else contextlib.nullcontext()
        with ctx:
            with bf16_autocast(device, bf16):
                out = net(x[part]).float()
            loss = student_loss(
                st.loss, out, soft[part] if soft is not None else None, y[part],
                temperature=st.temperature, ce_weight=st.ce_weight,
                y_b=y_b[part] if y_b is not None else None, lam=lam,
            )  # fmt: skip
            (loss * (size / n) * world_size).backward()
        total += loss.detach().double() * size
    if before_step is not None:
        before_step()  # tests: the step's gradients, all ranks reduced
    optimizer.step()
    return total


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
            for k, v in batch.items()}  # fmt: skip


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
    step_hook: Callable[[int, int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) one student; returns the metrics dict that rank 0 writes.

    `stop_after_epoch` (tests): raise StopTraining after that many epochs, like a kill.
    `step_hook(epoch, batch, model)` (tests) sees each step's reduced gradients just before
    the optimizer step. With `world_size > 1` the process group must
    already be initialised (DDP).
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
    ensemble = None
    if mode == "online":
        from prism_hpc.relabel.ensemble import load_ensemble

        ensemble = load_ensemble(cfg, run_dir, device)
    bf16, channels_last = use_bf16(cfg, device), use_channels_last(cfg, device)

    torch.manual_seed(derive_seed(cfg.seed, "train-init", arch, seed))
    model = build_student(cfg, arch, num_classes)
    if world_size > 1 and st.sync_bn:
        model = convert_sync_bn(model, device)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model, use_fused_optimizer(cfg, device))
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
        if not st.sync_bn and is_main:
            per = st.batch_size / st.grad_accum / world_size
            log(f"train {arch} seed {seed}: sync_bn off, each rank's BatchNorm sees ~{per:.0f} "
                f"images (one GPU: {st.batch_size / st.grad_accum:.0f})")  # fmt: skip
    if eval_data is None and is_main:
        eval_data = EvalData(cfg, st.eval_limit, run_dir)

    sq_reduce = None
    if world_size > 1:

        def sq_reduce(sq: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(sq)
            return sq

    epochs = st.epochs
    data = StepBatches(cfg, run_dir, distilled, start_epoch, rank, world_size)
    steps = data.num_batches
    batches = iter(step_loader(data, st.workers, st.prefetch, device.type == "cuda"))
    prog = ProgressLog(out_dir, arch, seed, epochs, steps, st.batch_size, log, is_main)
    if is_main:
        log(f"train {arch} seed {seed}: {epochs} epochs x {steps} steps of {st.batch_size} "
            f"images ({st.grad_accum} micro-batch(es), {world_size} rank(s), sync_bn "
            f"{st.sync_bn and world_size > 1}, {'bf16' if bf16 else 'fp32'}"
            f"{', channels_last' if channels_last else ''}"
            f"{', fused optimizer' if optimizer.defaults.get('fused') else ''}, "
            f"{st.workers} loader worker(s))")  # fmt: skip
    try:
        for epoch in range(start_epoch, epochs):
            if _stop_requested(world_size, device):
                raise StopTraining(epoch)
            t0 = time.time()
            lr = st.lr * lr_factor(st.schedule, epoch, epochs, st.zeta)
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(derive_seed(cfg.seed, "train-epoch", arch, seed, epoch))
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            seen = 0
            for b in range(steps):
                batch = next(batches)
                if batch["epoch"] != epoch or batch["batch"] != b:  # the loader is ordered
                    raise RuntimeError(f"loader out of step: {batch['epoch']}/{batch['batch']}")
                if batch["skip"]:
                    continue  # a last batch smaller than the world: every rank skips it
                batch = _to(batch, device)
                soft = batch.get("soft")
                if ensemble is not None:  # fp32, like the offline labels
                    soft = ensemble(batch["x"], sq_reduce).float()
                before = None
                if step_hook is not None:
                    before = lambda _e=epoch, _b=b: step_hook(_e, _b, model)
                loss_sum += train_step(net, optimizer, batch, cfg, device, world_size, soft,
                                       bf16, channels_last, before)  # fmt: skip
                seen += sum(batch["sizes"])
                if ema is not None:
                    ema.update(model)
                prog.step(batch["n"])
                if (b + 1) % st.log_every == 0 and b + 1 < steps:
                    running = float(loss_sum) / max(seen, 1)
                    prog.report(epoch, b + 1, running, lr)
                    if progress is not None:  # the local backend's terminal line
                        progress({"epoch": f"{epoch}+{b + 1}/{steps}", "epochs": epochs,
                                  "loss": round(running, 4), "img/s": round(prog.rate(), 1)})  # fmt: skip
            train_loss = float(loss_sum) / max(seen, 1)
            if not math.isfinite(train_loss):
                raise RuntimeError(
                    f"train {arch} seed {seed}: loss is {train_loss} at epoch {epoch}"
                )
            train_log.append({"epoch": epoch + 1, "loss": round(train_loss, 6), "lr": lr})
            done = epoch + 1
            extra = ""
            if done % st.eval_every == 0 or done == epochs:
                if is_main:
                    eval_model = ema.module if ema is not None else model
                    acc = evaluate(eval_model, eval_data, mean, std, device, bf16)
                    history.append({"epoch": done, **acc, "eval_images": len(eval_data),
                                    "train_loss": round(train_loss, 6)})  # fmt: skip
                    extra = f" top-1 {acc['top1']:.4f} top-5 {acc['top5']:.4f}"
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
            prog.report(done, 0, train_loss, lr, "done" if done == epochs else "running", extra)
            if progress is not None:
                progress({"epoch": done, "epochs": epochs, "loss": round(train_loss, 4)})
            if stop_after_epoch is not None and done == stop_after_epoch and done < epochs:
                raise StopTraining(done)
    finally:
        del batches  # stops the loader's workers
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


# --------------------------------------------------------------------------- evaluation only
def evaluate_checkpoint(
    cfg: Config, run_dir: Path, arch: str, seed: int, device: torch.device | str = "cpu",
    log: Callable[[str], None] = print, eval_data: EvalData | None = None,
) -> dict[str, Any]:
    """Top-1/top-5 of a student's saved checkpoint (EMA weights when it has them), without
    training; writes `eval.json` next to the checkpoint and returns it."""
    device = torch.device(device)
    out_dir = student_dir(run_dir, arch, seed)
    state = load_checkpoint(out_dir / CKPT_NAME)
    if state is None:
        raise UserError(f"{out_dir / CKPT_NAME}: no checkpoint to evaluate (train first)")
    distilled = DistilledSet(Path(run_dir) / "distilled.h5")
    mean = torch.tensor(distilled.mean, dtype=torch.float32)
    std = torch.tensor(distilled.std, dtype=torch.float32)
    distilled.close()
    model = build_student(cfg, arch, num_classes_of(cfg.data, run_dir))
    weights = "ema" if state.get("ema") else "model"
    model.load_state_dict(state[weights])
    model = model.to(device)
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    data = eval_data if eval_data is not None else EvalData(cfg, cfg.students.eval_limit, run_dir)
    t0 = time.time()
    acc = evaluate(model, data, mean, std, device, use_bf16(cfg, device))
    result = {"arch": arch, "seed": seed, "epoch": int(state["epoch"]), "weights": weights,
              **acc, "eval_images": len(data), "seconds": round(time.time() - t0, 2)}  # fmt: skip
    atomic_write_text(out_dir / EVAL_NAME, json.dumps(result, indent=1) + "\n")
    log(f"eval {arch} seed {seed}: epoch {result['epoch']} ({weights} weights) top-1 "
        f"{acc['top1']:.4f} top-5 {acc['top5']:.4f} on {len(data)} images")  # fmt: skip
    return result


def write_metrics(out_dir: Path, metrics: dict[str, Any]) -> Path:
    path = Path(out_dir) / METRICS_NAME
    atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    return path
