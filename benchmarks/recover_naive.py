"""Baseline: the official SRe2L/PRISM per-iteration pattern (FACTS A/B), same inputs as the bench.

What it does per iteration, on purpose (this is the thing we compare against):
- the logit teacher is a separate copy of teachers[0] (same weights), so that model runs twice
  (once for the logits, once as BN teacher);
- BN hooks compute `mean` and `permute(1, 0, 2, 3).contiguous().reshape(C, -1).var(1)`;
- `transforms.Compose([RandomResizedCrop, RandomHorizontalFlip])` is rebuilt every iteration
  and drawn from the global RNG; jitter with `random.randint` + `torch.roll`;
- TV (four-neighbour L2) and image-L2 priors are computed although their scales are 0;
- `loss.item()` every iteration and a clone of the images (the official "best_inputs");
- per-channel clamp with numpy mean/std.

Teachers, images and targets come from `prism_hpc.recover.bench.build_problem` with the same
seed, so the weights are those of `prism-hpc bench recover`.

    python benchmarks/recover_naive.py --teachers resnet18,mobilenet_v2 --res 32 --batch 10 \
        --iters 10 --threads 2 [--device cuda] [--json]

`naive_objective` computes the official loss for a given input and augmentation draw; the tests
compare it with `prism_hpc.recover.loss.recovery_loss`.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prism_hpc.recover.bench import IMAGENET_MEAN, IMAGENET_STD, BenchSpec, build_problem


class BNFeatureHook:
    """The official hook (SRe2L `BNFeatureHook`)."""

    def __init__(self, module: nn.BatchNorm2d):
        self.hook = module.register_forward_hook(self.hook_fn)
        self.r_feature = None

    def hook_fn(self, module, input, output):
        nch = input[0].shape[1]
        mean = input[0].mean([0, 2, 3])
        var = input[0].permute(1, 0, 2, 3).contiguous().reshape([nch, -1]).var(1, unbiased=False)
        self.r_feature = torch.norm(module.running_var.data - var, 2) + torch.norm(
            module.running_mean.data - mean, 2
        )

    def close(self):
        self.hook.remove()


def get_image_prior_losses(inputs_jit):
    diff1 = inputs_jit[:, :, :, :-1] - inputs_jit[:, :, :, 1:]
    diff2 = inputs_jit[:, :, :-1, :] - inputs_jit[:, :, 1:, :]
    diff3 = inputs_jit[:, :, 1:, :-1] - inputs_jit[:, :, :-1, 1:]
    diff4 = inputs_jit[:, :, :-1, :-1] - inputs_jit[:, :, 1:, 1:]
    loss_var_l2 = torch.norm(diff1) + torch.norm(diff2) + torch.norm(diff3) + torch.norm(diff4)
    loss_var_l1 = (
        (diff1.abs() / 255.0).mean()
        + (diff2.abs() / 255.0).mean()
        + (diff3.abs() / 255.0).mean()
        + (diff4.abs() / 255.0).mean()
    )
    loss_var_l1 = loss_var_l1 * 255.0
    return loss_var_l1, loss_var_l2


def clip(image_tensor):
    mean = np.array(IMAGENET_MEAN)
    std = np.array(IMAGENET_STD)
    for c in range(3):
        m, s = mean[c], std[c]
        image_tensor[:, c] = torch.clamp(image_tensor[:, c], -m / s, (1 - m) / s)
    return image_tensor


def lr_cosine(base_lr: float, iteration: int, total: int) -> float:
    return 0.5 * (1 + np.cos(np.pi * iteration / total)) * base_lr


class NaiveSetup:
    """Official model layout: a logit model + BN models with hooks (teachers[0] duplicated)."""

    def __init__(self, archs, res, batch, device="cpu", seed=0):
        p = build_problem(BenchSpec(list(archs), res, batch, device, seed=seed))
        self.problem = p
        self.res = res
        self.logit_model = copy.deepcopy(p.models[p.names[0]])  # the official duplicate
        self.bn_models = [p.models[n] for n in p.names]
        self.hooks = [
            [BNFeatureHook(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
            for model in self.bn_models
        ]
        self.r_bn = p.cfg.r_bn
        self.first_bn_multiplier = p.cfg.first_bn_multiplier
        self.l2_scale = 0.0
        self.tv_l2 = 0.0

    def close(self):
        for hs in self.hooks:
            for h in hs:
                h.close()

    def loss(self, inputs_jit: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Official loss of an already augmented batch."""
        batch_size = inputs_jit.shape[0]
        outputs = self.logit_model(inputs_jit)
        loss_ce = nn.CrossEntropyLoss()(outputs, targets)
        loss_r_bn_feature = 0.0
        for model, hooks in zip(self.bn_models, self.hooks):
            model(inputs_jit)
            rescale = [self.first_bn_multiplier] + [1.0 for _ in range(len(hooks) - 1)]
            loss_r_bn_feature = loss_r_bn_feature + sum(
                [mod.r_feature * rescale[idx] for (idx, mod) in enumerate(hooks)]
            )
        loss_r_bn_feature = loss_r_bn_feature / len(self.bn_models)
        _, loss_var_l2 = get_image_prior_losses(inputs_jit)
        loss_l2 = torch.norm(inputs_jit.reshape(batch_size, -1), dim=1).mean()
        loss_aux = (
            self.tv_l2 * loss_var_l2 + self.l2_scale * loss_l2 + self.r_bn * loss_r_bn_feature
        )
        return loss_ce + loss_aux


def naive_objective(
    setup: NaiveSetup, x: torch.Tensor, targets: torch.Tensor, draw
) -> torch.Tensor:
    """Official loss for input `x` and an explicit augmentation draw (`augment.AugmentDraw`,
    whole-batch crop): torchvision's functional resized_crop + hflip + roll."""
    (top, left, h, w), flip = draw.boxes[0], draw.flips[0]
    size = x.shape[-1]
    xa = TF.resized_crop(x, top, left, h, w, [size, size],
                         interpolation=transforms.InterpolationMode.BILINEAR, antialias=True)  # fmt: skip
    if flip:
        xa = TF.hflip(xa)
    xa = torch.roll(xa, shifts=draw.shift, dims=(2, 3))
    return setup.loss(xa, targets)


class NaiveLoop:
    """The official loop, one iteration per `step()` (so that it can be interleaved)."""

    def __init__(self, archs, res, batch, total, device="cpu", seed=0, jitter=32, lr=0.05):
        random.seed(seed)
        torch.manual_seed(seed)
        self.setup = NaiveSetup(archs, res, batch, device, seed)
        self.inputs = self.setup.problem.x0.clone().requires_grad_(True)
        self.targets = self.setup.problem.targets
        self.res, self.total, self.jitter, self.lr = res, total, jitter, lr
        self.optimizer = torch.optim.Adam([self.inputs], lr=lr, betas=[0.5, 0.9], eps=1e-8)
        self.iteration = 0
        self.best_cost = 1e4
        self.best_inputs = None

    def step(self) -> float:
        inputs, optimizer = self.inputs, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = lr_cosine(self.lr, self.iteration, self.total)
        aug_function = transforms.Compose(
            [transforms.RandomResizedCrop(self.res, scale=(0.08, 1)),
             transforms.RandomHorizontalFlip()]
        )  # fmt: skip
        inputs_jit = aug_function(inputs)
        off1 = random.randint(0, self.jitter)
        off2 = random.randint(0, self.jitter)
        inputs_jit = torch.roll(inputs_jit, shifts=(off1, off2), dims=(2, 3))
        optimizer.zero_grad()
        loss = self.setup.loss(inputs_jit, self.targets)
        loss.backward()
        optimizer.step()
        inputs.data = clip(inputs.data)
        cost = loss.item()  # host sync every iteration (official)
        self.best_cost = min(self.best_cost, cost)
        self.best_inputs = inputs.data.clone()  # official: on improvement; here every step
        self.iteration += 1
        return cost

    def close(self) -> None:
        self.setup.close()


def run_naive(archs, res, batch, iters, warmup=3, device="cpu", threads=None, seed=0,
              jitter=32, lr=0.05) -> dict:  # fmt: skip
    """The official loop for `warmup + iters` iterations; median ms per timed iteration."""
    if threads:
        torch.set_num_threads(threads)
    total = warmup + iters
    loop = NaiveLoop(archs, res, batch, total, device, seed, jitter, lr)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times, cpu_times = [], []
    for _ in range(total):
        t0, c0 = time.perf_counter(), time.process_time()
        loop.step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    loop.close()
    timed = times[warmup:]
    mem = {}
    if cuda:  # the whole run's peak (steps are alike), incl. the duplicate logit model
        peak = torch.cuda.max_memory_allocated()
        mem = {"peak_mem_mb": round((peak - base) / 2**20, 1),
               "peak_mem_total_mb": round(peak / 2**20, 1)}  # fmt: skip
    return {
        "baseline": "naive",
        "teachers": list(archs),
        "res": res,
        "batch": batch,
        "iters": iters,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "ms_per_iter": round(statistics.median(timed) * 1e3, 3),
        "ms_per_iter_mean": round(statistics.fmean(timed) * 1e3, 3),
        "ms_per_iter_min": round(min(timed) * 1e3, 3),
        "cpu_ms_per_iter": round(statistics.median(cpu_times[warmup:]) * 1e3, 3),
        "images_iters_per_s": round(batch / statistics.median(timed), 2),
        **mem,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--teachers", default="resnet18,mobilenet_v2,shufflenet_v2_x0_5,efficientnet_b0"
    )
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    out = run_naive(a.teachers.split(","), a.res, a.batch, a.iters, a.warmup, a.device, a.threads)
    if a.device.startswith("cuda"):
        out["device_name"] = torch.cuda.get_device_name()
    if a.json:
        print(json.dumps(out))
    else:
        print(f"naive {','.join(out['teachers'])} res {a.res} batch {a.batch}: "
              f"{out['ms_per_iter']:.1f} ms/iter (median of {a.iters})")  # fmt: skip


if __name__ == "__main__":
    main()
