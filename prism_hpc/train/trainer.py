"""Student training on the distilled set, with stored (offline), online or no soft labels.

One call trains one (architecture, seed) pair; this module sets it up and sums it up, the
pieces live next to it:

- batches (`data`): the epoch plans of `prism_hpc.relabel.augment` (offline: replayed from
  the relabel files; online / none: drawn from the same seeded generator), so all modes see
  the same crops, flips and mixes; one plan batch (`students.batch_size`) is one optimizer
  step, split into `grad_accum` micro-batches (and over DDP ranks) (`step`);
- AdamW (weight decay on >1-D weights only) or SGD (`student`); lr factor per epoch
  (cosine / SSRS, `schedules`); optional parameter EMA, used for evaluation (`ema`);
- the epoch loop (`loop`), with a checkpoint after every epoch (`checkpoint`: atomic,
  `torch.load(weights_only=True)` on resume); a killed or requeued task resumes after the
  last finished epoch with exactly the metrics of an uninterrupted run on CPU;
- top-1 / top-5 on the test split every `eval_every` epochs and after the last one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import num_classes_of
from prism_hpc.errors import UserError
from prism_hpc.seeding import derive_seed
from prism_hpc.store.atomic import atomic_write_text
from prism_hpc.store.distilled import DistilledSet
from prism_hpc.store.layout import CKPT_NAME, EVAL_NAME, distilled_file, student_dir
from prism_hpc.train.checkpoint import History, load_checkpoint, restore
from prism_hpc.train.checks import check_train_config
from prism_hpc.train.data import StepBatches, step_loader
from prism_hpc.train.ema import ModelEMA
from prism_hpc.train.evaluate import EvalData, evaluate
from prism_hpc.train.loop import TrainHooks, Training, run_epochs
from prism_hpc.train.progress import ProgressLog
from prism_hpc.train.step import StepOptions
from prism_hpc.train.student import (
    build_student,
    grad_scaler,
    make_optimizer,
    student_precision,
    use_channels_last,
    use_fused_optimizer,
)
from prism_hpc.train.syncbn import convert_sync_bn
from prism_hpc.workflow import TaskEnv


def _open_distilled(cfg: Config, run_dir: Path) -> tuple[DistilledSet, int]:
    """The run's distilled set and class count, refused when they contradict the config."""
    distilled = DistilledSet(distilled_file(run_dir))
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
    return distilled, num_classes


def train_student(
    cfg: Config,
    env: TaskEnv,
    arch: str,
    seed: int,
    out_dir: Path | None = None,
    hooks: TrainHooks | None = None,
) -> dict[str, Any]:
    """Train (or resume) one student where `env` says (run dir, device, DDP rank and world,
    log, progress); returns the metrics dict that rank 0 writes. With `env.world_size > 1`
    the process group must already be initialised (DDP)."""
    check_train_config(cfg)
    hooks = hooks if hooks is not None else TrainHooks()
    st, mode = cfg.students, cfg.relabel.mode
    device = torch.device(env.device)
    run_dir = Path(env.run_dir)
    out_dir = Path(out_dir) if out_dir is not None else student_dir(run_dir, arch, seed)
    world_size, log = env.world_size, env.log
    if device.type == "cpu" and st.cpu_threads:
        torch.set_num_threads(st.cpu_threads)

    distilled, num_classes = _open_distilled(cfg, run_dir)
    mean = torch.tensor(distilled.mean, dtype=torch.float32)
    std = torch.tensor(distilled.std, dtype=torch.float32)
    ensemble = None
    if mode == "online":
        from prism_hpc.relabel.ensemble import load_ensemble, relabel_precision

        ensemble = load_ensemble(cfg, run_dir, device, relabel_precision(cfg, device).precision)
    precision = student_precision(cfg, device)
    if env.is_main and (precision.warning or st.requested_precision() == "auto"):
        log(f"warning: {precision.warning}" if precision.warning else
            f"students precision {precision.reason}")  # fmt: skip
    opts = StepOptions(st, device, world_size, precision.precision,
                       use_channels_last(cfg, device, log if env.is_main else None),
                       grad_scaler(precision.precision, device))  # fmt: skip

    torch.manual_seed(derive_seed(cfg.seed, "train-init", arch, seed))
    model = build_student(cfg, arch, num_classes)
    if world_size > 1 and st.sync_bn:
        model = convert_sync_bn(model, device)
    model = model.to(device)
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model, use_fused_optimizer(cfg, device))
    ema = ModelEMA(model, st.ema) if st.ema else None
    n_params = sum(p.numel() for p in model.parameters())

    name = f"train {arch} seed {seed}"
    ckpt_path = out_dir / CKPT_NAME
    history = restore(ckpt_path, model, optimizer, ema, opts.scaler)
    if history is not None:
        log(f"{name}: resumed after epoch {history.epoch}")

    net: torch.nn.Module = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        if not st.sync_bn and env.is_main:
            per = st.batch_size / st.grad_accum / world_size
            log(f"{name}: sync_bn off, each rank's BatchNorm sees ~{per:.0f} images (one GPU: "
                f"{st.batch_size / st.grad_accum:.0f})")  # fmt: skip
    eval_data = hooks.eval_data
    if eval_data is None and env.is_main:
        eval_data = EvalData(cfg, st.eval_limit, run_dir)

    history = history or History()
    data = StepBatches(cfg, run_dir, distilled, history.epoch, env.rank, world_size)
    steps = data.num_batches
    batches = iter(step_loader(data, st.workers, st.prefetch, device.type == "cuda"))
    prog = ProgressLog(out_dir, name, st.epochs, steps, log, env.is_main)
    if env.is_main:
        log(f"{name}: {st.epochs} epochs x {steps} steps of {st.batch_size} "
            f"images ({st.grad_accum} micro-batch(es), {world_size} rank(s), sync_bn "
            f"{st.sync_bn and world_size > 1}, {opts.precision}"
            f"{' + loss scaling' if opts.scaler is not None else ''}"
            f"{', channels_last' if opts.channels_last else ''}"
            f"{', fused optimizer' if optimizer.defaults.get('fused') else ''}, "
            f"{st.workers} loader worker(s))")  # fmt: skip
    training = Training(cfg, env, (arch, seed), model, net, optimizer, ema, opts, ensemble,
                        batches, steps, prog, eval_data, (mean, std), ckpt_path, history,
                        hooks)  # fmt: skip
    del batches  # the loop holds the loader's only reference: dropped, its workers stop
    try:
        run_epochs(training)
    finally:
        training.batches = None
        distilled.close()
    metrics = _metrics(cfg, (arch, seed), history, distilled.ipc, num_classes, n_params)
    metrics["precision"] = {"resolved": opts.precision, "reason": precision.reason,
                            "device": str(device)}  # fmt: skip
    if ensemble is not None:  # online relabel: the teachers' forwards, resolved the same way
        metrics["precision"]["relabel"] = ensemble.precision
    return metrics


def _metrics(cfg: Config, student: tuple[str, int], history: History, ipc: Any,
             num_classes: int, n_params: int) -> dict[str, Any]:  # fmt: skip
    """The metrics dict of a finished student (`metrics.json`)."""
    st, mode = cfg.students, cfg.relabel.mode
    evals = history.evals
    final = evals[-1] if evals else {}
    best = max(evals, key=lambda h: h["top1"]) if evals else {}
    return {
        "arch": student[0],
        "seed": student[1],
        "units": "fraction",  # accuracies below are fractions of 1
        "method": cfg.method,
        "ipc": ipc,
        "num_classes": num_classes,
        "relabel_mode": mode,
        "loss": st.loss,
        "storage": cfg.relabel.storage if mode == "offline" else None,
        "epochs": st.epochs,
        "params": n_params,
        "ema": st.ema,
        "evals": evals,
        "train": history.train_log,
        "best": {"epoch": best.get("epoch"), "top1": best.get("top1"), "top5": best.get("top5")},
        "final": {"top1": final.get("top1"), "top5": final.get("top5")},
        "wall_seconds": round(history.wall, 2),
    }


def evaluate_checkpoint(
    cfg: Config, run_dir: Path, arch: str, seed: int, device: torch.device | str = "cpu",
    log: Callable[[str], None] = print, eval_data: EvalData | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Top-1/top-5 of a student's saved checkpoint (EMA weights when it has them), without
    training; writes `eval.json` next to the checkpoint and returns it."""
    device = torch.device(device)
    out_dir = student_dir(run_dir, arch, seed)
    state = load_checkpoint(out_dir / CKPT_NAME)
    if state is None:
        raise UserError(f"{out_dir / CKPT_NAME}: no checkpoint to evaluate (train first)")
    distilled = DistilledSet(distilled_file(run_dir))
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
    acc = evaluate(model, data, mean, std, device, student_precision(cfg, device).precision)
    result = {"arch": arch, "seed": seed, "epoch": int(state["epoch"]), "weights": weights,
              **acc, "eval_images": len(data), "seconds": round(time.time() - t0, 2)}  # fmt: skip
    atomic_write_text(out_dir / EVAL_NAME, json.dumps(result, indent=1) + "\n")
    log(f"eval {arch} seed {seed}: epoch {result['epoch']} ({weights} weights) top-1 "
        f"{acc['top1']:.4f} top-5 {acc['top5']:.4f} on {len(data)} images")  # fmt: skip
    return result
