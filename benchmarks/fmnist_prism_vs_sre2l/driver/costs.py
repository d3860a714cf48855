"""Unit costs measured in this benchmark's runs; the prediction itself is `prism_hpc.cost`.

`calibrate` times what the smoke run's short items cannot separate, `measure_costs` reads the
finished items' markers (their `item_seconds`, and the stages' own `seconds`), shard provenance
and the submits' seconds in sweep.json; `estimate_wall` feeds the benchmark's run list to the
product's scheduler estimate with Fashion-MNIST's sizes."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.fmnist_shared.runlist import RunSpec, pool_dir, run_dir
from benchmarks.fmnist_shared.timing import item_times
from prism_hpc import cost as cost_model
from prism_hpc.store import layout

from .specs import NUM_CLASSES

FMNIST = cost_model.DatasetSize(num_classes=NUM_CLASSES, train_images=60000, test_images=10000)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _shard_provenance(path: Path) -> dict | None:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return json.loads(f.attrs["provenance"])
    except (OSError, KeyError, ValueError, ImportError):
        return None


def calibrate(base: dict) -> dict[str, float]:
    """One-thread costs the smoke cannot separate: a student step (batch of students.batch_size)
    and a forward per test image of the student architecture, the relabel ensemble's forward per
    image. A few seconds."""
    import torch

    from prism_hpc.models.registry import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    st = base["students"]
    res = base["data"]["resolution"]
    ch = base["data"]["channels"]
    model = create_model(
        st["archs"][0], NUM_CLASSES, in_channels=ch, resolution=res, width=st.get("width", 1.0)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(st["batch_size"], ch, res, res)
    y = torch.randint(0, NUM_CLASSES, (st["batch_size"],))

    def timed(fn, n, warm=2):
        for _ in range(warm):
            fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step_s = timed(step, 10)
    model.eval()
    xe = torch.randn(256, ch, res, res)
    with torch.no_grad():
        eval_s = timed(lambda: model(xe), 4, 1) / 256
        teachers = [
            create_model(
                t["arch"], NUM_CLASSES, in_channels=ch, resolution=res, width=t.get("width", 1.0)
            ).eval()
            for n, t in base["teachers"].items()
            if n in base["relabel"]["teachers"]
        ]
        xr = torch.randn(50, ch, res, res)
        visit_s = timed(lambda: [t(xr) for t in teachers], 4, 1) / 50
    return {"student_step_s": step_s, "eval_image_s": eval_s, "relabel_visit_s": visit_s}


def measure_costs(out: Path, specs: list[RunSpec], walls: dict[str, float]) -> dict[str, Any]:
    """Unit costs measured in this out dir's finished items (see README, "Sizing"); `walls`:
    per run, the seconds of its submits (sweep.json)."""
    costs: dict[str, Any] = {"recover_iter_s": {}, "n": {}}
    cal = _read_json(out / "calibration.json") or {}
    # squeeze: the teacher json's `seconds` covers the steps and the 10k test-set evaluation
    test_eval = FMNIST.test_images * cal.get("eval_image_s", 0.0)
    pool_items = {k: s for st, k, s in item_times(pool_dir(out)) if st == "squeeze"}
    sq_step, sq_over = [], []
    for name, item_s in pool_items.items():
        info = _read_json(layout.teacher_info(pool_dir(out), name))
        if info and info.get("steps"):
            sq_step.append(max(0.0, info["seconds"] - test_eval) / info["steps"])
            sq_over.append(max(0.0, item_s - info["seconds"]) + test_eval)
    if sq_step:
        costs["squeeze_step_s"] = sum(sq_step) / len(sq_step)
        costs["squeeze_overhead_s"] = sum(sq_over) / len(sq_over)  # test-set eval, start-up
    # recover: a chunk's `seconds` (provenance) = the iterations + one final forward and the
    # quantisation, which the init_only baseline's chunks measure alone
    init_only = []
    for s in specs[1:]:
        for st, key, _ in item_times(run_dir(out, s)):
            if st != "recover":
                continue
            prov = _shard_provenance(layout.recover_dir(run_dir(out, s)) / f"{key}.h5")
            if prov and not prov.get("iterations"):
                init_only.extend(c.get("seconds", 0.0) for c in prov.get("chunks", []))
    fixed = sum(init_only) / len(init_only) if init_only else 0.0
    per_iter: dict[str, list[float]] = {}
    slice_over, relabel_epoch, train_epoch, train_over = [], [], [], []
    report, collect, submit_over = [], [], []
    for s in specs[1:]:
        rd = run_dir(out, s)
        items = item_times(rd)
        if not items:
            continue
        by_stage: dict[str, list[tuple[str, float]]] = {}
        for st, key, sec in items:
            by_stage.setdefault(st, []).append((key, sec))
        for key, sec in by_stage.get("recover", []):
            prov = _shard_provenance(layout.recover_dir(rd) / f"{key}.h5")
            if not prov:
                continue
            inner = sum(c.get("seconds", 0.0) for c in prov.get("chunks", []))
            slice_over.append(max(0.0, sec - inner))
            if prov.get("iterations"):
                chunks = len(prov.get("chunks", [])) or 1
                per_iter.setdefault(s.variant, []).append(
                    max(0.0, inner - chunks * fixed) / prov["iterations"]
                )
        for key, sec in by_stage.get("relabel", []):
            m = _read_json(layout.relabel_dir(rd) / f"{key}.done") or {}
            visits = s.config["students"]["epochs"] * s.ipc * NUM_CLASSES
            if m.get("seconds") and cal:
                ens = visits * cal["relabel_visit_s"]
                relabel_epoch.append(max(0.0, m["seconds"] - ens) / s.config["students"]["epochs"])
            train_over.append(max(0.0, sec - m.get("seconds", sec)))
        for key, sec in by_stage.get("train", []):
            arch, seed = key.rsplit("-seed", 1)
            met = _read_json(layout.student_dir(rd, arch, int(seed)) / layout.METRICS_NAME) or {}
            if met.get("wall_seconds") is None or not cal:
                continue
            st = s.config["students"]
            n_eval = st.get("eval_limit") or FMNIST.test_images
            steps = cost_model.student_steps(st, s.ipc * NUM_CLASSES)
            rest = (
                met["wall_seconds"] - steps * cal["student_step_s"] - n_eval * cal["eval_image_s"]
            )
            train_epoch.append(max(0.0, rest) / st["epochs"])
            train_over.append(max(0.0, sec - met["wall_seconds"]))
        for _, sec in by_stage.get("report", []):
            report.append(max(0.0, sec - 2 * s.ipc * NUM_CLASSES * cal.get("eval_image_s", 0.0)))
        for _, sec in by_stage.get("collect", []):
            collect.append(sec)
        wall = walls.get(s.name)
        if wall:
            submit_over.append(max(0.0, wall - sum(sec for _, _, sec in items)))

    def mean(v):
        return sum(v) / len(v) if v else None

    costs["recover_iter_s"] = {k: mean(v) for k, v in per_iter.items()}
    costs["n"] = {k: len(v) for k, v in per_iter.items()}
    costs.update(
        recover_slice_overhead_s=mean(slice_over),
        recover_init_only_chunk_s=fixed if init_only else None,
        relabel_epoch_overhead_s=mean(relabel_epoch),
        train_epoch_overhead_s=mean(train_epoch),
        item_overhead_s=mean(train_over),  # load data/teachers/labels per relabel/train item
        report_s=mean(report),
        collect_s=mean(collect),
        submit_overhead_s=mean(submit_over),  # process start, plan, per submit attempt
        calibration=cal or None,
    )
    return costs


def plan(spec: RunSpec) -> cost_model.RunPlan:
    """A run as the cost model sees it: recovery cost by variant; the pool only squeezes."""
    return cost_model.RunPlan(
        spec.config, recover_key=spec.variant, squeeze_only=spec.group == "pool"
    )


def estimate_wall(specs: list[RunSpec], costs: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Greedy list scheduling of the predicted runs over `jobs` workers (the driver's order:
    the pool first, then the rest)."""
    pool, runs = plan(specs[0]), [plan(s) for s in specs[1:]]
    return cost_model.estimate_wall(pool, runs, costs, jobs, FMNIST)
