"""The work each stage's tasks do, in FLOPs and bytes, priced by `prism_hpc.cost`.

Why a module of its own: the stages' `estimate` methods stay one call long, and the counting
(what a recovery iteration, a relabel epoch or a student step costs) lives in one place that
the cost tests pin. FLOPs per image come from `prism_hpc.models.flops` (counted once per
architecture and resolution, cached); devices and throughputs from `prism_hpc.cost`.

Assumptions a reader should know (docs/cost.md has the full list): one node per task; DDP and
multi-rank recovery scale linearly; data loading and JPEG decoding are free; ImageFolder data
without a listing has ImageNet-1K's 1,281 training and 50 validation images per class.

What this module computes is per task (seconds, memory, storage). How many tasks run at once
and how many CPU threads each gets belong to the executor that will run them: its `slots` and
`threads`, asked through `workflow.capacity()` (never re-derived here), turn the task seconds
into wall time (`cost.model.summarise`) and price CPU work.
"""

from __future__ import annotations

import math
from functools import lru_cache
from math import comb
from typing import Any

from prism_hpc.config.schema import Config
from prism_hpc.cost.calibration import default_path, lookup, read_calibration
from prism_hpc.cost.devices import TRAFFIC, Device
from prism_hpc.cost.model import Pricing, TaskLayout, Work, stage_device, summarise
from prism_hpc.cost.runtime import squeeze_steps
from prism_hpc.data.sources import num_classes_of
from prism_hpc.errors import UserError
from prism_hpc.hardware.capability import PrecisionChoice
from prism_hpc.models.flops import ArchCost, arch_cost, arch_key
from prism_hpc.stages.precision import planned_precision, requested
from prism_hpc.stages.tuning import planned_pack
from prism_hpc.workflow import capacity

GB = 1e9
IMAGENET_TRAIN_PER_CLASS = 1281  # 1,281,167 / 1000
IMAGENET_VAL_PER_CLASS = 50
COLLECT_BYTES_PER_S = 0.5e9  # validating shards + writing the VDS: disk-bound
REPORT_FIXED_S = 2.0  # figures and the markdown (the demo's report stage: ~2.6 s in all)


@lru_cache(maxsize=8)
def _calibration(path: str) -> dict:
    return read_calibration(path)


def _arch(cfg: Config, arch: str, width: float = 1.0) -> ArchCost:
    d = cfg.data
    return arch_cost(arch, d.resolution, d.channels, num_classes_of(d), width)


def teacher(cfg: Config, name: str) -> ArchCost:
    spec = cfg.teachers[name]
    return _arch(cfg, spec.arch, spec.width)


def key_of(cfg: Config, arch: str, width: float = 1.0) -> str:
    d = cfg.data
    return arch_key(arch, d.resolution, d.channels, num_classes_of(d), width)


def teacher_key(cfg: Config, name: str) -> str:
    spec = cfg.teachers[name]
    return key_of(cfg, spec.arch, spec.width)


def data_sizes(cfg: Config) -> tuple[int, int, str]:
    """(train images, test images, note) without listing folders."""
    d = cfg.data
    n = num_classes_of(d)
    if d.source == "fashion_mnist":
        train, note = 60000, ""
        if d.train_limit_per_class:
            train = min(train, d.train_limit_per_class * n)
        return train, 10000, note
    per = d.train_limit_per_class or IMAGENET_TRAIN_PER_CLASS
    return per * n, IMAGENET_VAL_PER_CLASS * n, (
        f"ImageFolder sizes assumed ({per} train, {IMAGENET_VAL_PER_CLASS} val per class)"
    )  # fmt: skip


def pricing(cfg: Config, stage: str, kind: str, precision: str, threads: int = 1):
    """(Pricing, resources, note) for `stage`: the device from `resources`, the calibration
    entry when the calibration file has one for it."""
    res = cfg.resources.for_stage(stage)
    dev, note = stage_device(res.gpu, res.gpus_per_node or 0)
    cal = lookup(_calibration(str(default_path())), dev.name, kind)
    if cal and dev.is_gpu and cal.get("precision", precision) != precision:
        cal = None  # a bf16 calibration does not price fp32 work
    return Pricing(dev, kind, precision, threads, cal), res, note


def _traffic(cost: ArchCost, images: float, kind: str, half: bool) -> float:
    return images * cost.act_bytes * TRAFFIC[kind] * (0.5 if half else 1.0)


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _with_precision(out: dict[str, Any], cfg: Config, stage: str,
                    choice: PrecisionChoice) -> dict[str, Any]:  # fmt: skip
    """The estimate shows the precision it priced, why when `auto` chose it, and the
    warning of an explicit half precision the stage's device lacks."""
    out["precision"] = choice.precision
    if requested(cfg, stage) == "auto":
        out["cost_note"] = _join(out.get("cost_note") or "", f"precision {choice.reason}")
    if choice.warning:
        out["warnings"] = [*(out.get("warnings") or []), choice.warning]
    return out


# --- recover ---------------------------------------------------------------------------------


def pool_member_prob(n: int, k_max: int | None, sampler: str, p: float) -> float:
    """Probability that one given `bn_pool` member is drawn for a slice (members are
    exchangeable, so it is E[number drawn] / n)."""
    if n == 0:
        return 0.0
    k = n if k_max is None else min(k_max, n)
    if sampler == "uniform":
        sizes = range(1, k + 1)
        weights = [comb(n, s) for s in sizes]
        return sum(s * w for s, w in zip(sizes, weights)) / sum(weights) / n
    expected = sum(min(j, k) * comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(n + 1))
    return expected / n


def teacher_probs(cfg: Config) -> dict[str, float]:
    """Probability that each teacher runs in a slice's iterations (logit and BN roles share
    one forward, as `recover.objective` does)."""
    rec = cfg.recover
    if rec.synthesis == "rded":  # the observer scores every crop
        return {rec.logit_teacher: 1.0}
    if rec.matching.enabled:  # G-VBSM / EDC: one backbone per step, each 1/K of the steps
        names = rec.matching_backbones()
        return {n: (1 / len(names) if n in names else 0.0) for n in rec.teacher_names()}
    logits = rec.logit_pool or [rec.logit_teacher]
    p_logit = {n: 1 / len(logits) for n in logits}
    always = set(rec.bn_always) | (set(logits) if rec.bn_include_logit else set())
    pool = [n for n in dict.fromkeys(rec.bn_pool) if n not in always]
    p_pool = pool_member_prob(len(pool), rec.k_max, rec.sampler, rec.include_prob)
    probs = {}
    for name in rec.teacher_names():
        b = 1.0 if name in always else (p_pool if name in pool else 0.0)
        a = p_logit.get(name, 0.0)
        probs[name] = a + b - a * b
    return probs


def recover_cost(cfg: Config, rows: dict[int, int], storage_gb: float) -> dict[str, Any]:
    """Per slice: chunks of `classes_per_batch` images x T_i iterations x the expected teacher
    forwards + backwards to the images; slices grouped `slices_per_task` per task."""
    rec = cfg.recover
    optimize = rec.synthesis == "optimize"  # RDED: fp32 forwards, no packs, no backward
    choice = planned_precision(cfg)
    precision = choice.precision
    half = precision != "fp32"
    price, res, note = pricing(cfg, "recover", "recover", precision, rec.cpu_threads)
    pack = planned_pack(cfg, capacity().name == "local") if optimize else None
    dev: Device = price.device
    probs = teacher_probs(cfg)
    costs = {n: teacher(cfg, n) for n in probs}
    ranks = (res.tasks_per_node or 1) if dev.is_gpu or res.tasks_per_node else 1
    per_slice = {}
    for s, n_rows in rows.items():
        sizes = [
            min(rec.classes_per_batch, n_rows - a) for a in range(0, n_rows, rec.classes_per_batch)
        ]
        if optimize:
            iters = 1 if rec.init_only else rec.iterations_for(s)
        else:  # RDED, no optimisation: one forward per scored crop of each candidate (a
            # forward ~ 1/3 of a forward + backward to the images)
            iters = rec.rded.candidates * rec.rded.crops / 3
        chunk_s = []
        for b in sizes:
            works = [Work(steps=iters / (pack.value if pack else 1))]  # packs share launches
            for name, p in probs.items():
                c = costs[name]
                works.append(Work(p * iters * b * c.recover_flops,
                                  p * iters * _traffic(c, b, "recover", half),
                                  arch=teacher_key(cfg, name)))  # fmt: skip
            chunk_s.append(price.seconds(*works))
        # chunks of one slice are dealt round-robin to the task's ranks
        per_slice[s] = max(sum(chunk_s[r::ranks]) for r in range(ranks))
    order = sorted(rows)
    per = rec.slices_per_task
    tasks = [
        sum(per_slice[s] for s in order[a : a + per]) + dev.task_overhead_s
        for a in range(0, len(order), per)
    ]
    b = rec.classes_per_batch
    act = {n: costs[n].act_bytes * b * (0.5 if half else 1.0) for n in probs if probs[n] > 0}
    fixed = (
        sum(c.params * 4 for c in costs.values())
        + 5 * b * cfg.data.channels * cfg.data.resolution**2 * 4
    )
    joint = (fixed + sum(act.values())) / GB + dev.context_gb
    sequential = (fixed + max(act.values(), default=0.0)) / GB + dev.context_gb
    out = summarise(
        "recover", tasks, price,
        TaskLayout(max(1, res.gpus_per_node or 0), capacity().slots(res, len(tasks)), res.time_min),
        storage_gb, joint if not optimize or rec.memory == "joint" else sequential,
        _join(note, f"expected teachers per iteration {sum(probs.values()):.2f}"),
    )  # fmt: skip
    _with_precision(out, cfg, "recover", choice)
    if optimize and rec.pack == "auto":
        out["pack"] = pack.value
        out["cost_note"] = _join(out.get("cost_note") or "", f"recover {pack.reason}")
    out["peak_mem_gb_joint"] = round(joint, 2)
    out["peak_mem_gb_sequential"] = round(sequential, 2)
    return out


# --- squeeze ---------------------------------------------------------------------------------


def squeeze_cost(cfg: Config, names: list[str]) -> dict[str, Any]:
    """Per squeezed teacher: its optimizer steps (fwd + bwd + update) and one test-set eval."""
    train, test, size_note = data_sizes(cfg)
    res = cfg.resources.for_stage("squeeze")
    price, res, note = pricing(cfg, "squeeze", "train", "fp32", capacity().threads(res))
    infer, _, _ = pricing(cfg, "squeeze", "infer", "fp32", price.threads)
    sq = cfg.squeeze
    tasks, peaks = [], []
    for name in names:
        c = teacher(cfg, name)
        steps = squeeze_steps(sq.model_dump(), train)
        img = steps * sq.batch_size
        k = teacher_key(cfg, name)
        t = price.seconds(Work(img * c.train_flops, _traffic(c, img, "train", False), steps, k))
        t += infer.seconds(Work(test * c.fwd_flops, _traffic(c, test, "infer", False), arch=k))
        tasks.append(t + price.device.task_overhead_s)
        peaks.append((c.params * 16 + sq.batch_size * c.act_bytes) / GB)
    peak = max(peaks, default=0.0) + price.device.context_gb
    return summarise("squeeze", tasks, price, TaskLayout(max(1, res.gpus_per_node or 0),
                     capacity().slots(res, len(tasks)), res.time_min), 0.0, peak,
                     _join(note, size_note))  # fmt: skip


# --- collect ---------------------------------------------------------------------------------


def collect_cost(cfg: Config, storage_gb: float) -> dict[str, Any]:
    """Reads every slice once (validation) and writes a Virtual Dataset: disk-bound."""
    price, res, note = pricing(cfg, "collect", "infer", "fp32")
    t = storage_gb * GB / COLLECT_BYTES_PER_S + price.device.task_overhead_s
    return summarise("collect", [t], price,
                     TaskLayout(max(1, res.gpus_per_node or 0), 1, res.time_min),
                     0.0, None, _join(note, "disk-bound"))  # fmt: skip


# --- relabel ---------------------------------------------------------------------------------


def relabel_cost(cfg: Config, n_images: int, chunks: list[tuple[int, int]],
                 storage_gb: float) -> dict[str, Any]:  # fmt: skip
    """Per file: its epochs x the distilled images x one forward of every ensemble teacher."""
    res = cfg.resources.for_stage("relabel")
    choice = planned_precision(cfg, stage="relabel")
    half = choice.precision != "fp32"
    price, res, note = pricing(cfg, "relabel", "infer", choice.precision,
                               capacity().threads(res))  # fmt: skip
    ens = [teacher(cfg, n) for n in cfg.relabel.teachers]
    keys = [teacher_key(cfg, n) for n in cfg.relabel.teachers]
    batches = math.ceil(n_images / cfg.relabel.batch_size)
    tasks = []
    for start, stop in chunks:
        img = (stop - start) * n_images
        works = [Work(img * c.fwd_flops, _traffic(c, img, "infer", half),
                      (stop - start) * batches, k) for c, k in zip(ens, keys)]  # fmt: skip
        tasks.append(price.seconds(*works) + price.device.task_overhead_s)
    b = cfg.relabel.batch_size
    peak = (
        sum(c.params * 4 for c in ens) + 3 * b * max((c.max_out_bytes for c in ens), default=0)
    ) / GB
    out = summarise("relabel", tasks, price, TaskLayout(max(1, res.gpus_per_node or 0),
                    capacity().slots(res, len(tasks)), res.time_min), storage_gb,
                    peak + price.device.context_gb, note)  # fmt: skip
    return _with_precision(out, cfg, "relabel", choice)


# --- train -----------------------------------------------------------------------------------


def evaluations(epochs: int, every: int) -> int:
    """Test-set evaluations of one student: every `eval_every` epochs and after the last."""
    return epochs // every + (1 if epochs % every else 0)


def train_cost(cfg: Config, n_images: int) -> dict[str, Any]:
    """Per student: epochs x distilled images x (fwd + bwd + weight gradients), the test-set
    evaluations, and with online relabel the ensemble's forwards."""
    st = cfg.students
    _, test, size_note = data_sizes(cfg)
    res = cfg.resources.for_stage("train")
    gpu = bool(res.gpus_per_node)
    choice = planned_precision(cfg, stage="train")
    prec = choice.precision
    half = prec != "fp32"
    threads = st.cpu_threads or capacity().threads(res)
    price, res, note = pricing(cfg, "train", "train", prec, threads)
    infer, _, _ = pricing(cfg, "train", "infer", prec, threads)
    ranks = max(1, res.tasks_per_node or 1) if gpu else 1
    n_eval = min(st.eval_limit or test, test)
    evals = evaluations(st.epochs, st.eval_every)
    steps = st.epochs * math.ceil(n_images / st.batch_size)
    online = []
    if cfg.relabel.mode == "online":
        online = [(teacher(cfg, n), teacher_key(cfg, n)) for n in cfg.relabel.teachers]
    tasks, peak, ckpt = [], 0.0, 0.0
    for arch in st.archs:
        c = _arch(cfg, arch, st.width)
        ckpt += len(st.seeds) * c.params * 12 / GB  # ckpt.pt: weights + AdamW's two moments
        img = st.epochs * n_images
        k = key_of(cfg, arch, st.width)
        w = Work(img * c.train_flops, _traffic(c, img, "train", half), steps * st.grad_accum, k)
        t = price.seconds(w.scaled(1 / ranks))
        n = evals * n_eval
        t += infer.seconds(Work(n * c.fwd_flops, _traffic(c, n, "infer", half), arch=k))
        t += infer.seconds(*(Work(img * tc.fwd_flops, _traffic(tc, img, "infer", half), arch=tk)
                             .scaled(1 / ranks) for tc, tk in online))  # fmt: skip
        micro = math.ceil(st.batch_size / ranks / st.grad_accum)
        peak = max(peak, (c.params * 16 + micro * c.act_bytes * (0.5 if half else 1.0)) / GB)
        tasks += [t + price.device.task_overhead_s] * len(st.seeds)
    out = summarise("train", tasks, price, TaskLayout(max(1, res.gpus_per_node or 0),
                    capacity().slots(res, len(tasks)), res.time_min), ckpt,
                    peak + price.device.context_gb,
                    _join(note, size_note, f"{ranks} rank(s) per student" if ranks > 1 else ""))  # fmt: skip
    return _with_precision(out, cfg, "train", choice)


# --- report ----------------------------------------------------------------------------------


def report_cost(cfg: Config, n_images: int) -> dict[str, Any]:
    """Diversity features of the distilled set and of as many real images, then the report."""
    res = cfg.resources.for_stage("report")
    price, res, note = pricing(cfg, "report", "infer", "fp32", capacity().threads(res))
    name = cfg.metrics.extractor or cfg.recover.logit_teacher or next(iter(cfg.teachers))
    c = teacher(cfg, name)
    img = 2 * n_images
    t = price.seconds(Work(img * c.fwd_flops, _traffic(c, img, "infer", False),
                           arch=teacher_key(cfg, name)))  # fmt: skip
    t += REPORT_FIXED_S + price.device.task_overhead_s
    return summarise("report", [t], price,
                     TaskLayout(max(1, res.gpus_per_node or 0), 1, res.time_min), 0.0,
                     (c.params * 4 + cfg.metrics.batch_size * 3 * c.max_out_bytes) / GB
                     + price.device.context_gb, note)  # fmt: skip


def safely(fn, *args) -> dict[str, Any]:
    """A cost that cannot be computed (an architecture the counter cannot build, a broken
    calibration file) becomes a note: `plan` still shows the rest, and `submit` (which plans
    with estimates too) never fails because of its estimate."""
    try:
        out = fn(*args)
    except UserError as err:
        return {"cost_note": f"no cost estimate: {err}"}
    except Exception as err:  # noqa: BLE001 - an estimate must never stop a submit
        return {"cost_note": f"no cost estimate: {type(err).__name__}: {err}"}
    name = capacity().name  # whose parallelism the wall hours assume
    return {**out, "backend": name} if name else out
