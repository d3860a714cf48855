"""Squeeze: train the teacher pool on the data set (one item per teacher with weights: squeeze)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prism_hpc.config.schema import Config
from prism_hpc.data.sources import open_source, source_stats
from prism_hpc.models.teachers import build_untrained, teacher_weights_path
from prism_hpc.seeding import derive_seed, generator
from prism_hpc.stages.base import Item, Stage, TaskEnv
from prism_hpc.store.atomic import atomic_path, write_marker


@torch.no_grad()
def evaluate_top1(model, source, mean, std, device, batch_size: int = 500) -> float:
    """Top-1 on every image of `source` (the test split)."""
    model.eval()
    correct = 0
    for start in range(0, len(source), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(source))).numpy()
        x = ((source.load(idx) - mean) / std).to(device)
        y = torch.as_tensor(source.labels[idx], device=device)
        correct += (model(x).argmax(1) == y).sum().item()
    return correct / len(source)


def _augment(x: torch.Tensor, g: torch.Generator, pad: int) -> torch.Tensor:
    """Random shift (pad + crop) and flip, batch-wise, seeded: enough for a CPU teacher."""
    n, _, h, w = x.shape
    xp = F.pad(x, (pad,) * 4, mode="replicate")
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
    x = xp[..., dy : dy + h, dx : dx + w]
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class SqueezeStage(Stage):
    name = "squeeze"
    depends_on = ()

    def items(self, cfg: Config) -> list[Item]:
        if not cfg.squeeze.enabled:
            return []
        names = [n for n, spec in cfg.teachers.items() if spec.weights == "squeeze"]
        return [Item(self.name, i, name, {"teacher": name}) for i, name in enumerate(names)]

    def marker_path(self, run_dir: Path, item: Item) -> Path:
        return Path(run_dir) / "teachers" / f"{item.key}.done"

    def estimate(self, cfg: Config) -> dict:
        return {"note": f"{len(self.items(cfg))} teacher(s), {cfg.squeeze.epochs} epoch(s) each"}

    def run(self, cfg: Config, item: Item, env: TaskEnv) -> None:
        name = item.payload["teacher"]
        sq = cfg.squeeze
        device = env.device
        torch.manual_seed(derive_seed(cfg.seed, "squeeze-init", name))
        model = build_untrained(cfg, cfg.teachers[name]).to(device)
        train = open_source(cfg.data, "train")
        test = open_source(cfg.data, "test")
        m, s = source_stats(cfg.data)
        mean = torch.tensor(m).view(1, -1, 1, 1)
        std = torch.tensor(s).view(1, -1, 1, 1)
        steps_per_epoch = math.ceil(len(train) / sq.batch_size)
        steps = max(1, int(sq.epochs * steps_per_epoch))
        if sq.max_steps:
            steps = min(steps, sq.max_steps)
        opt = torch.optim.SGD(
            model.parameters(), lr=sq.lr, momentum=0.9, nesterov=True, weight_decay=sq.weight_decay
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=sq.lr, total_steps=steps)
        g = generator(cfg.seed, "squeeze", name)
        order = torch.randperm(len(train), generator=g)
        pad = max(1, cfg.data.resolution // 16)
        start = time.time()
        model.train()
        for step in range(steps):
            pos = (step * sq.batch_size) % len(train)
            if pos + sq.batch_size > len(train):
                order = torch.randperm(len(train), generator=g)
                pos = 0
            idx = order[pos : pos + sq.batch_size].numpy()
            x = _augment((train.load(idx) - mean) / std, g, pad).to(device)
            y = torch.as_tensor(train.labels[idx], device=device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if (step + 1) % 50 == 0 or step + 1 == steps:
                env.progress({"step": step + 1, "steps": steps, "loss": round(loss.item(), 4)})
        top1 = evaluate_top1(model, test, mean, std, device)
        env.log(f"squeeze {name}: {steps} steps, test top-1 {top1:.4f}")
        out = teacher_weights_path(env.run_dir, name)
        with atomic_path(out) as tmp:
            torch.save(model.state_dict(), tmp)
        info = {
            "teacher": name,
            "arch": cfg.teachers[name].arch,
            "test_top1": top1,
            "steps": steps,
            "seconds": round(time.time() - start, 1),
            "params": sum(p.numel() for p in model.parameters()),
        }
        with atomic_path(out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(info, indent=1))
        write_marker(self.marker_path(env.run_dir, item), info)
