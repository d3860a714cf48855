"""Predicted seconds of a distillation run, from its merged config and measured unit costs.

Why here: sizing work (how long a sweep takes on N workers, what to ask a cluster for) needs
the arithmetic the Fashion-MNIST benchmark validated against its own measured wall time, and
that must not depend on the benchmark's code. Pure arithmetic on plain config dicts (what
`prism-hpc submit` reads): no torch, no files, no measurement.

`costs` holds one-thread unit costs in seconds; every key is optional and a missing (or None)
one falls back to a rough default:

- `recover_iter_s`: {recover_key: one recovery iteration of one chunk}; an unknown key takes
  the largest measured one;
- `recover_init_only_chunk_s` (a chunk's final forward and quantisation, alone),
  `recover_slice_overhead_s` (teachers, data per slice item);
- `squeeze_step_s`, `squeeze_overhead_s` (per squeezed teacher: test-set eval, start-up);
- `collect_s`, `relabel_epoch_overhead_s`, `train_epoch_overhead_s`, `item_overhead_s`
  (loading per relabel/train item), `report_s`, `submit_overhead_s` (per `prism-hpc submit`);
- `calibration`: {`student_step_s`, `eval_image_s`, `relabel_visit_s`}, the costs that short
  runs cannot separate (measured in-process).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSize:
    """The sizes a config does not state but the cost of squeeze, train and eval depends on."""

    num_classes: int
    train_images: int
    test_images: int


@dataclass(frozen=True)
class RunPlan:
    """One run to predict: its merged config, the key of its recovery cost in
    `costs["recover_iter_s"]` (the recovery cost depends on the teacher set, which the config
    expresses in several ways), and whether it only squeezes teachers (a shared teacher pool,
    submitted with `--stages squeeze`)."""

    config: Mapping[str, Any]
    recover_key: str = ""
    squeeze_only: bool = False


def squeezed_teachers(config: Mapping[str, Any]) -> list[str]:
    """Teachers the squeeze stage trains (`weights: squeeze`, the default)."""
    return [n for n, t in config["teachers"].items() if t.get("weights", "squeeze") == "squeeze"]


def squeeze_steps(squeeze: Mapping[str, Any], train_images: int) -> int:
    """Optimizer steps of one squeezed teacher: `max_steps`, else epochs over the train set."""
    return squeeze.get("max_steps") or math.ceil(
        squeeze["epochs"] * math.ceil(train_images / squeeze["batch_size"])
    )


def student_steps(students: Mapping[str, Any], n_images: int) -> int:
    """Optimizer steps of one student trained on `n_images` distilled images."""
    return students["epochs"] * math.ceil(n_images / students["batch_size"])


def predict_run(run: RunPlan, costs: Mapping[str, Any], size: DatasetSize) -> dict[str, float]:
    """Predicted one-thread seconds per stage of one run (plus `overhead`, per submit)."""
    cal = costs.get("calibration") or {}
    iters = costs.get("recover_iter_s") or {}
    fallback = max(iters.values()) if iters else 0.1
    cfg = run.config
    pred: dict[str, float] = {}
    if run.squeeze_only:
        steps = squeeze_steps(cfg["squeeze"], size.train_images)
        n = len(squeezed_teachers(cfg))
        pred["squeeze"] = n * (
            steps * (costs.get("squeeze_step_s") or 0.5) + (costs.get("squeeze_overhead_s") or 15.0)
        )
        pred["overhead"] = costs.get("submit_overhead_s") or 5.0
        return pred
    rec = cfg["recover"]
    slices = rec["ipc"]
    if rec.get("init_only"):
        per_slice = costs.get("recover_init_only_chunk_s") or 0.1
    else:
        per_slice = rec["iterations"] * (iters.get(run.recover_key) or fallback)
        per_slice += costs.get("recover_init_only_chunk_s") or 0.0
    pred["recover"] = slices * (per_slice + (costs.get("recover_slice_overhead_s") or 0.5))
    pred["collect"] = costs.get("collect_s") or 0.2
    st = cfg["students"]
    n_img = rec["ipc"] * size.num_classes
    steps = student_steps(st, n_img)
    item_over = costs.get("item_overhead_s") or 2.0
    if cfg["relabel"]["mode"] == "offline":
        pred["relabel"] = (
            st["epochs"] * n_img * cal.get("relabel_visit_s", 0.005)
            + st["epochs"] * (costs.get("relabel_epoch_overhead_s") or 0.01)
            + item_over
        )
    n_eval = st.get("eval_limit") or size.test_images
    per_student = (
        steps * cal.get("student_step_s", 0.2)
        + n_eval * cal.get("eval_image_s", 0.002)
        + st["epochs"] * (costs.get("train_epoch_overhead_s") or 0.02)
        + item_over
    )
    pred["train"] = len(st["seeds"]) * per_student
    pred["report"] = (costs.get("report_s") or 10.0) + 2 * n_img * cal.get("eval_image_s", 0.002)
    pred["overhead"] = costs.get("submit_overhead_s") or 5.0
    return pred


def estimate_wall(
    pool: RunPlan,
    runs: Sequence[RunPlan],
    costs: Mapping[str, Any],
    jobs: int,
    size: DatasetSize,
) -> dict[str, Any]:
    """Elapsed seconds on `jobs` one-thread workers: the teacher pool first (its teachers side
    by side), then greedy list scheduling of `runs` in their order; with the CPU seconds per
    stage (pool included), the number of runs and of students."""
    pool_pred = predict_run(pool, costs, size)
    preds = [predict_run(r, costs, size) for r in runs]
    n_sq = max(1, len(squeezed_teachers(pool.config)))
    per_teacher = pool_pred["squeeze"] / n_sq
    pool_wall = math.ceil(n_sq / jobs) * per_teacher + pool_pred["overhead"]
    workers = [0.0] * jobs
    for p in preds:
        i = workers.index(min(workers))
        workers[i] += sum(p.values())
    by_stage: dict[str, float] = {}
    for p in [pool_pred, *preds]:
        for k, v in p.items():
            by_stage[k] = by_stage.get(k, 0.0) + v
    return {
        "wall_s": pool_wall + max(workers),
        "cpu_s": sum(by_stage.values()),
        "by_stage_cpu_s": by_stage,
        "runs": len(runs),
        "students": sum(len(r.config["students"]["seeds"]) for r in runs),
    }
