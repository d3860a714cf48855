#!/usr/bin/env python
"""PRISM vs SRe2L on the full Fashion-MNIST: every run of the benchmark, resumable, timed.

    .venv/bin/python benchmarks/fmnist_prism_vs_sre2l/run.py [--quick | --smoke] [--out DIR]
        [--jobs N] [--dry-run] [--only GLOB]

1. `pool`: a squeeze-only run (`prism-hpc submit ... --stages squeeze`) trains the teacher pool
   of base.yaml once; every other run points its teachers at `pool/teachers/<name>.pt`.
2. The runs, each a normal `prism-hpc submit` (recover -> collect -> relabel -> train -> report)
   in its own run dir under OUT/runs/: the real-image baseline, SRe2L and PRISM from real and
   noise init at each IPC x recovery seed (students: the seeds inside each run), and the rows of
   the paper's Table 2 at IPC 10. `--jobs` runs go side by side, one CPU thread each.
3. OUT/BENCHMARKS.md: accuracy (mean +- std), paired differences PRISM - SRe2L, diversity,
   Table 2, wall time of every stage, the command, measured unit costs and the estimated
   duration of every mode. A complete full run also copies it next to this file.

Resumable: a run whose report marker exists is skipped, a started run continues with
`prism-hpc submit --resume` (finished items are never redone), so rerunning the same command
after an interruption finishes the job. A run whose merged config changed since it started is
refused (use another --out). Stage times come from the local backend's "[stage] k/n done
(item, X s)" lines in OUT/logs/<run>.attempt<k>.log.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VARIANTS = HERE / "variants"
NUM_CLASSES = 10  # Fashion-MNIST
STAGES = ("squeeze", "recover", "collect", "relabel", "train", "report")

# Main comparison rows (variant file, label) and Table 2 rows (file, paper top-1 on ImageNet-1K).
MAIN_VARIANTS = ("real_images", "sre2l", "prism")
TABLE2_ROWS = (
    ("table2_sre2l", 17.9),
    ("table2_single_intra", 18.3),
    ("table2_dual_intra", 19.0),
    ("table2_single_pre", 32.4),
    ("table2_dual_pre", 36.2),
    ("table2_multi_pre_2bn", 37.4),
    ("table2_multi_pre_3bn", 38.7),
    ("table2_multi_pre_4bn", 39.1),
)


@dataclass(frozen=True)
class Mode:
    name: str
    ipcs: tuple[int, ...]
    rec_seeds: tuple[int, ...]  # recovery seeds (config `seed`) of SRe2L / PRISM / baseline
    student_seeds: tuple[int, ...]
    table2_ipc: int
    table2_seeds: tuple[int, ...]
    table2_student_seeds: tuple[int, ...]
    inits: tuple[str, ...] = ("real", "noise")
    # Student budget in image visits (= steps x batch): the same at every IPC. None: base.yaml's
    # students.epochs x recover.ipc x classes (100 x 10 x 10 = 10000, 200 steps of 50).
    student_visits: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every run
    note: str = ""


MODES = {
    "full": Mode(
        "full",
        ipcs=(10, 50),
        rec_seeds=(0, 1, 2),
        student_seeds=(0, 1, 2),
        table2_ipc=10,
        # Two Table 2 seeds (16 runs) keep the full run near 2 h on 2 cores; a third adds
        # ~20 min (README "Sizing").
        table2_seeds=(0, 1),
        table2_student_seeds=(0,),
        note="the whole benchmark (README: about 2 hours on 2 cores)",
    ),
    "quick": Mode(
        "quick",
        ipcs=(10,),
        rec_seeds=(0, 1),
        student_seeds=(0,),
        table2_ipc=10,
        table2_seeds=(0,),
        table2_student_seeds=(0,),
        overrides={"squeeze.max_steps": 150},
        note="QUICK MODE: IPC 10 only, 2 recovery seeds x 1 student seed, Table 2 with one "
        "seed, teachers squeezed for 150 steps instead of 469; expected about 30 minutes on "
        "2 cores (README). A preview, not the benchmark's numbers.",
    ),
    "smoke": Mode(
        "smoke",
        ipcs=(2,),
        rec_seeds=(0,),
        student_seeds=(0,),
        table2_ipc=2,
        table2_seeds=(0,),
        table2_student_seeds=(0,),
        student_visits=100,
        overrides={
            "squeeze.max_steps": 20,
            "recover.iterations": 30,
            "students.eval_limit": 1000,
        },
        note="SMOKE MODE: tiny sizes (squeeze 20 steps, IPC 2, 30 recovery iterations, "
        "5 student epochs, 1000 test images): proves the pipeline, measures unit costs; "
        "the numbers mean nothing.",
    ),
}


# ---------------------------------------------------------------------------------------------
# configs


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_yaml(path: Path) -> dict:
    data = yaml.safe_load(Path(path).read_text())
    return data if isinstance(data, dict) else {}


@dataclass
class RunSpec:
    name: str
    group: str  # pool | main | table2
    variant: str  # variant file stem (pool: "pool")
    ipc: int
    init: str
    seed: int
    config: dict

    @property
    def label(self) -> str:
        return self.name


def student_epochs(base: dict, mode: Mode, ipc: int) -> int:
    visits = mode.student_visits or (
        base["students"]["epochs"] * base["recover"]["ipc"] * NUM_CLASSES
    )
    return max(1, round(visits / (ipc * NUM_CLASSES)))


def build_specs(mode: Mode, out: Path, base_path: Path = HERE / "base.yaml") -> list[RunSpec]:
    """Every run of `mode`, the pool first, in execution order (main IPC by IPC, then Table 2)."""
    base = load_yaml(base_path)
    for dotted, value in mode.overrides.items():
        set_dotted(base, dotted, value)
    pool_dir = (out / "pool").resolve()
    pool_cfg = copy.deepcopy(base)
    pool_cfg.update(name="pool", method="teacher pool")
    specs = [RunSpec("pool", "pool", "pool", 0, "-", 0, pool_cfg)]
    squeezed = [n for n, t in base["teachers"].items() if t.get("weights", "squeeze") == "squeeze"]

    def make(name, group, overlays, ipc, init, seed, student_seeds) -> RunSpec:
        cfg = copy.deepcopy(base)
        for overlay in overlays:
            cfg = deep_merge(cfg, load_yaml(VARIANTS / f"{overlay}.yaml"))
        epochs = student_epochs(base, mode, ipc)
        cfg["name"] = name
        cfg["seed"] = seed
        cfg["squeeze"]["enabled"] = False
        for t in squeezed:
            cfg["teachers"][t]["weights"] = str(pool_dir / "teachers" / f"{t}.pt")
        cfg["recover"]["ipc"] = ipc
        if init is not None:  # recover.init and its lr (variants/init_*.yaml)
            cfg = deep_merge(cfg, load_yaml(VARIANTS / f"init_{init}.yaml"))
        cfg["students"].update(seeds=list(student_seeds), epochs=epochs, eval_every=epochs)
        cfg["relabel"]["epochs_per_task"] = epochs
        return RunSpec(name, group, overlays[-1], ipc, cfg["recover"]["init"], seed, cfg)

    for ipc in mode.ipcs:
        for seed in mode.rec_seeds:
            specs.append(
                make(
                    f"ipc{ipc}-real_images-s{seed}",
                    "main",
                    ["real_images"],
                    ipc,
                    None,
                    seed,
                    mode.student_seeds,
                )
            )
        for init in mode.inits:
            for variant in ("sre2l", "prism"):
                for seed in mode.rec_seeds:
                    specs.append(
                        make(
                            f"ipc{ipc}-{variant}-{init}-s{seed}",
                            "main",
                            [variant],
                            ipc,
                            init,
                            seed,
                            mode.student_seeds,
                        )
                    )
    for row, _ in TABLE2_ROWS:
        for seed in mode.table2_seeds:
            specs.append(
                make(
                    f"t2-{row.removeprefix('table2_')}-s{seed}",
                    "table2",
                    ["table2_common", row],
                    mode.table2_ipc,
                    None,
                    seed,
                    mode.table2_student_seeds,
                )
            )
    return specs


def validate(specs: list[RunSpec]) -> None:
    """Every merged config through the real schema (fast: pydantic only, no torch)."""
    sys.path.insert(0, str(REPO))
    from prism_hpc.config.load import config_from_dict

    for s in specs:
        config_from_dict(s.config, f"{s.name} (merged config)")


# ---------------------------------------------------------------------------------------------
# state of a run dir


def run_dir(out: Path, spec: RunSpec) -> Path:
    return out / "pool" if spec.group == "pool" else out / "runs" / spec.name


def _valid_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def squeezed_teachers(spec: RunSpec) -> list[str]:
    return [
        n for n, t in spec.config["teachers"].items() if t.get("weights", "squeeze") == "squeeze"
    ]


POOL_KEYS = ("seed", "data", "teachers", "squeeze")  # all that the teacher weights depend on


def _identity(spec: RunSpec, cfg: dict | None) -> Any:
    """What must not change between a run's start and its resume: the whole merged config;
    for the pool only what the squeezed teachers depend on (recover/students edits in base.yaml
    do not invalidate the teachers)."""
    if cfg is None or spec.group != "pool":
        return cfg
    return {k: cfg.get(k) for k in POOL_KEYS}


def status(out: Path, spec: RunSpec) -> str:
    """done | partial (resume) | new | changed (config differs) | broken (no config.yaml)."""
    rd = run_dir(out, spec)
    if not (rd / "config.yaml").is_file():
        if rd.exists() and any(rd.iterdir()):
            return "broken"
        return "new"
    stored = load_yaml(rd / "config.input.yaml") if (rd / "config.input.yaml").is_file() else None
    if _identity(spec, stored) != _identity(spec, spec.config):
        return "changed"
    if spec.group == "pool":
        names = squeezed_teachers(spec)
        ok = all(
            _valid_json(rd / "teachers" / f"{n}.done") and (rd / "teachers" / f"{n}.pt").is_file()
            for n in names
        )
        return "done" if ok else "partial"
    return "done" if _valid_json(rd / "report" / "report.done") else "partial"


def cli() -> list[str]:
    return [sys.executable, "-m", "prism_hpc.cli"]


def command(out: Path, spec: RunSpec, state: str, jobs: int) -> list[str]:
    rd = run_dir(out, spec)
    if state == "partial":
        cmd = [*cli(), "submit", "--resume", str(rd), "--backend", "local"]
    else:
        cmd = [
            *cli(),
            "submit",
            str(out / "configs" / f"{spec.name}.yaml"),
            "--run-dir",
            str(rd),
            "--backend",
            "local",
        ]
        if spec.group == "pool":
            cmd += ["--set", f"resources.squeeze.concurrency={jobs}"]
    if spec.group == "pool":
        cmd += ["--stages", "squeeze"]
    return cmd


# ---------------------------------------------------------------------------------------------
# logs and timings

ITEM_DONE = re.compile(r"^\[(\w+)\] \d+/\d+ done \((.+), ([0-9.]+) s\)\s*$")


def attempt_logs(out: Path, name: str) -> list[Path]:
    logs = list((out / "logs").glob(f"{name}.attempt*.log"))
    return sorted(logs, key=lambda p: int(re.search(r"attempt(\d+)", p.name).group(1)))


def item_times(out: Path, name: str) -> list[tuple[str, str, float]]:
    """(stage, item, seconds) of every item finished in any attempt of the run."""
    found = []
    for log in attempt_logs(out, name):
        for line in log.read_text(errors="replace").splitlines():
            m = ITEM_DONE.match(line)
            if m:
                found.append((m.group(1), m.group(2), float(m.group(3))))
    return found


def stage_seconds(out: Path, name: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for stage, _, sec in item_times(out, name):
        totals[stage] = totals.get(stage, 0.0) + sec
    return totals


class Timings:
    """OUT/timings.json: per run, every submit attempt (start, wall, rc); per driver session."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {"runs": {}, "sessions": []}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)

    def attempt(self, name: str, entry: dict) -> None:
        with self.lock:
            self.data["runs"].setdefault(name, []).append(entry)
            self.save()

    def session(self, entry: dict) -> None:
        with self.lock:
            self.data["sessions"].append(entry)
            self.save()

    def retire(self, name: str) -> None:
        with self.lock:
            old = self.data["runs"].pop(name, None)
            if old:
                self.data.setdefault("stale", {}).setdefault(name, []).extend(old)
                self.save()

    def submit_wall(self, name: str) -> float:
        return sum(a.get("wall_s", 0.0) for a in self.data["runs"].get(name, []))


# ---------------------------------------------------------------------------------------------
# execution


class Runner:
    def __init__(self, out: Path, jobs: int, timings: Timings):
        self.out, self.jobs, self.timings = out, jobs, timings
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False
        self.failed: list[tuple[str, Path]] = []

    def env(self) -> dict[str, str]:
        # One intra-op thread per process (recover/train also fix it in the config): --jobs
        # runs share the cores, and results do not depend on how many ran side by side.
        return dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        )

    def run(self, spec: RunSpec, progress: str) -> bool:
        if self.stopping:
            return False
        state = status(self.out, spec)
        if state == "done":
            return True
        if state == "changed":
            print(
                f"[bench] {spec.name}: config changed since the run started; refusing "
                f"(delete {run_dir(self.out, spec)} or use another --out)",
                flush=True,
            )
            self.failed.append((spec.name, run_dir(self.out, spec)))
            return False
        if state == "broken":  # created but never got its config.yaml: nothing to keep
            shutil.rmtree(run_dir(self.out, spec))
            state = "new"
        if state == "new":  # a fresh start: logs/timings of an earlier, deleted run go stale
            self.retire(spec.name)
        cmd = command(self.out, spec, state, self.jobs)
        k = len(attempt_logs(self.out, spec.name)) + 1
        log = self.out / "logs" / f"{spec.name}.attempt{k}.log"
        print(
            f"[bench] {progress} {spec.name}: {'resume' if state == 'partial' else 'start'} "
            f"(log {log.relative_to(self.out)})",
            flush=True,
        )
        start = time.time()
        with open(log, "w") as fh:
            fh.write("$ " + shlex.join(cmd) + "\n")
            fh.flush()
            proc = subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=REPO,
                start_new_session=True,
            )
            with self.lock:
                self.procs.add(proc)
            rc = proc.wait()
            with self.lock:
                self.procs.discard(proc)
        wall = time.time() - start
        self.timings.attempt(
            spec.name,
            {
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
                "wall_s": round(wall, 2),
                "rc": rc,
                "log": log.name,
                "resume": state == "partial",
            },
        )
        ok = rc == 0 and status(self.out, spec) == "done"
        outcome = "done" if ok else "stopped" if self.stopping else f"FAILED (exit {rc})"
        print(
            f"[bench] {spec.name}: {outcome} in {wall:.0f} s",
            flush=True,
        )
        if not ok and not self.stopping:
            self.failed.append((spec.name, log))
        return ok

    def retire(self, name: str) -> None:
        stale = self.out / "logs" / "stale"
        logs = attempt_logs(self.out, name)
        if logs:
            stale.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for log in logs:
                log.rename(stale / f"{stamp}-{log.name}")
        self.timings.retire(name)

    def stop(self) -> None:
        """Stop our own children: SIGTERM to each one's process group (each submit runs in its
        own session, with the item processes it spawns), SIGKILL after 20 s. Safe at any moment:
        outputs are written atomically and only a marker makes an item done."""
        self.stopping = True
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 20
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def run_all(out: Path, specs: list[RunSpec], jobs: int, timings: Timings) -> list[tuple[str, Path]]:
    runner = Runner(out, jobs, timings)
    pool, runs = specs[0], specs[1:]
    ex = None
    try:
        if not runner.run(pool, "[pool]"):
            print("[bench] the teacher pool failed; nothing else can run", flush=True)
            return runner.failed or [("pool", out / "logs")]
        total = len(runs)
        ex = ThreadPoolExecutor(max_workers=jobs)
        futures = [ex.submit(runner.run, s, f"[{i + 1}/{total}]") for i, s in enumerate(runs)]
        for f in futures:
            while True:  # poll so that Ctrl-C / SIGTERM reach this thread
                try:
                    f.result(timeout=0.5)
                    break
                except TimeoutError:
                    continue
    except KeyboardInterrupt:
        print(
            "\n[bench] interrupted: stopping the runs in flight; rerun the same command to "
            "continue (finished items are kept)",
            flush=True,
        )
        runner.stop()  # no new runs start; ours get SIGTERM (SIGKILL after 20 s)
        raise
    finally:
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)
    return runner.failed


def _sigterm(signum, frame):
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# unit costs and estimates


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

    sys.path.insert(0, str(REPO))
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


def measure_costs(out: Path, specs: list[RunSpec], timings: Timings) -> dict[str, Any]:
    """Unit costs measured in this out dir's finished items (see README, "Sizing")."""
    costs: dict[str, Any] = {"recover_iter_s": {}, "n": {}}
    cal = _read_json(out / "calibration.json") or {}
    # squeeze: the teacher json's `seconds` covers the steps and the 10k test-set evaluation
    test_eval = 10000 * cal.get("eval_image_s", 0.0)
    pool_items = {k: s for st, k, s in item_times(out, "pool") if st == "squeeze"}
    sq_step, sq_over = [], []
    for name, item_s in pool_items.items():
        info = _read_json(out / "pool" / "teachers" / f"{name}.json")
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
        for st, key, _ in item_times(out, s.name):
            if st != "recover":
                continue
            prov = _shard_provenance(run_dir(out, s) / "recover" / f"{key}.h5")
            if prov and not prov.get("iterations"):
                init_only.extend(c.get("seconds", 0.0) for c in prov.get("chunks", []))
    fixed = sum(init_only) / len(init_only) if init_only else 0.0
    per_iter: dict[str, list[float]] = {}
    slice_over, relabel_epoch, train_epoch, train_over = [], [], [], []
    report, collect, submit_over = [], [], []
    for s in specs[1:]:
        rd = run_dir(out, s)
        items = item_times(out, s.name)
        if not items:
            continue
        by_stage: dict[str, list[tuple[str, float]]] = {}
        for st, key, sec in items:
            by_stage.setdefault(st, []).append((key, sec))
        for key, sec in by_stage.get("recover", []):
            prov = _shard_provenance(rd / "recover" / f"{key}.h5")
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
            m = _read_json(rd / "relabel" / f"{key}.done") or {}
            visits = s.config["students"]["epochs"] * s.ipc * NUM_CLASSES
            if m.get("seconds") and cal:
                ens = visits * cal["relabel_visit_s"]
                relabel_epoch.append(max(0.0, m["seconds"] - ens) / s.config["students"]["epochs"])
            train_over.append(max(0.0, sec - m.get("seconds", sec)))
        for key, sec in by_stage.get("train", []):
            arch, seed = key.rsplit("-seed", 1)
            met = _read_json(rd / "students" / arch / f"seed{seed}" / "metrics.json") or {}
            if met.get("wall_seconds") is None or not cal:
                continue
            st = s.config["students"]
            n_eval = st.get("eval_limit") or 10000
            steps = st["epochs"] * math.ceil(s.ipc * NUM_CLASSES / st["batch_size"])
            rest = (
                met["wall_seconds"] - steps * cal["student_step_s"] - n_eval * cal["eval_image_s"]
            )
            train_epoch.append(max(0.0, rest) / st["epochs"])
            train_over.append(max(0.0, sec - met["wall_seconds"]))
        for _, sec in by_stage.get("report", []):
            report.append(max(0.0, sec - 2 * s.ipc * NUM_CLASSES * cal.get("eval_image_s", 0.0)))
        for _, sec in by_stage.get("collect", []):
            collect.append(sec)
        wall = timings.submit_wall(s.name)
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


def predict_run(spec: RunSpec, c: dict[str, Any]) -> dict[str, float]:
    """Predicted one-thread seconds per stage of one run of another mode, from unit costs."""
    cal = c.get("calibration") or {}
    iters = c.get("recover_iter_s") or {}
    fallback = max(iters.values()) if iters else 0.1
    cfg = spec.config
    pred: dict[str, float] = {}
    if spec.group == "pool":
        steps = cfg["squeeze"].get("max_steps") or math.ceil(
            cfg["squeeze"]["epochs"] * math.ceil(60000 / cfg["squeeze"]["batch_size"])
        )
        n = len(squeezed_teachers(spec))
        pred["squeeze"] = n * (
            steps * (c.get("squeeze_step_s") or 0.5) + (c.get("squeeze_overhead_s") or 15.0)
        )
        pred["overhead"] = c.get("submit_overhead_s") or 5.0
        return pred
    rec = cfg["recover"]
    slices = rec["ipc"]
    if rec.get("init_only"):
        per_slice = c.get("recover_init_only_chunk_s") or 0.1
    else:
        per_slice = rec["iterations"] * (iters.get(spec.variant) or fallback)
        per_slice += c.get("recover_init_only_chunk_s") or 0.0
    pred["recover"] = slices * (per_slice + (c.get("recover_slice_overhead_s") or 0.5))
    pred["collect"] = c.get("collect_s") or 0.2
    st = cfg["students"]
    n_img = spec.ipc * NUM_CLASSES
    steps = st["epochs"] * math.ceil(n_img / st["batch_size"])
    item_over = c.get("item_overhead_s") or 2.0
    if cfg["relabel"]["mode"] == "offline":
        pred["relabel"] = (
            st["epochs"] * n_img * cal.get("relabel_visit_s", 0.005)
            + st["epochs"] * (c.get("relabel_epoch_overhead_s") or 0.01)
            + item_over
        )
    n_eval = st.get("eval_limit") or 10000
    per_student = (
        steps * cal.get("student_step_s", 0.2)
        + n_eval * cal.get("eval_image_s", 0.002)
        + st["epochs"] * (c.get("train_epoch_overhead_s") or 0.02)
        + item_over
    )
    pred["train"] = len(st["seeds"]) * per_student
    pred["report"] = (c.get("report_s") or 10.0) + 2 * n_img * cal.get("eval_image_s", 0.002)
    pred["overhead"] = c.get("submit_overhead_s") or 5.0
    return pred


def estimate_wall(specs: list[RunSpec], c: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Greedy list scheduling of the predicted runs over `jobs` workers (the driver's order)."""
    preds = {s.name: predict_run(s, c) for s in specs}
    pool = preds[specs[0].name]
    n_sq = max(1, len(squeezed_teachers(specs[0])))
    per_teacher = pool["squeeze"] / n_sq
    pool_wall = math.ceil(n_sq / jobs) * per_teacher + pool["overhead"]
    workers = [0.0] * jobs
    for s in specs[1:]:
        i = workers.index(min(workers))
        workers[i] += sum(preds[s.name].values())
    by_stage: dict[str, float] = {}
    for p in preds.values():
        for k, v in p.items():
            by_stage[k] = by_stage.get(k, 0.0) + v
    return {
        "wall_s": pool_wall + max(workers),
        "cpu_s": sum(by_stage.values()),
        "by_stage_cpu_s": by_stage,
        "runs": len(specs) - 1,
        "students": sum(len(s.config["students"]["seeds"]) for s in specs[1:]),
    }


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.1f} ms"


def _mean_std(values: list[float], digits: int = 2) -> str:
    from prism_hpc.metrics import tables

    return tables.fmt_mean_std(*tables.mean_std(values), digits)


def write_benchmarks(
    out: Path,
    mode: Mode,
    specs: list[RunSpec],
    timings: Timings,
    argv: list[str],
    jobs: int,
    failed: list[tuple[str, Path]],
) -> Path:
    sys.path.insert(0, str(REPO))
    from prism_hpc.metrics import tables

    states = {s.name: status(out, s) for s in specs}
    finished = [s for s in specs[1:] if states[s.name] == "done"]
    by_name = {s.name: s for s in specs}
    parts = [f"# PRISM vs SRe2L on Fashion-MNIST ({mode.name} mode)\n"]
    if mode.name != "full":
        parts.append(f"> **{mode.note}**\n")
    parts.append(
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} from `{out}`: "
        f"{len(finished)} of {len(specs) - 1} runs finished"
        + (f"; **failed: {', '.join(n for n, _ in failed)}**" if failed else "")
        + ".\n"
    )
    rel_script = os.path.relpath(Path(__file__).resolve(), REPO)
    py = (
        os.path.relpath(sys.executable, REPO)
        if str(sys.executable).startswith(str(REPO))
        else (sys.executable)
    )
    parts.append(
        "Command (from the repository root):\n\n```\n"
        + shlex.join([py, rel_script, *argv])
        + "\n```\n"
    )
    sessions = timings.data.get("sessions", [])
    total_wall = sum(x.get("wall_s", 0.0) for x in sessions)
    loads = [x.get("loadavg_start") for x in sessions if x.get("loadavg_start")]
    git = _git()
    parts.append(
        f"Machine: {os.cpu_count()} CPU cores, `--jobs {jobs}` runs side by side, one thread "
        f"each; driver wall time {_fmt_s(total_wall)} over {len(sessions)} session(s)"
        + (
            f"; 1-min load average at session starts: {', '.join(f'{x:.1f}' for x in loads)}"
            if loads
            else ""
        )
        + f". Code: {git}.\n"
    )
    parts.append(
        "How to read these numbers (hand-written, from the committed full run): "
        "[FINDINGS.md](FINDINGS.md), next to the committed copy of this file in "
        "`benchmarks/fmnist_prism_vs_sre2l/`.\n"
    )
    parts.append(_setup_section(specs, mode))

    # teachers
    pool_runs = tables.load_runs([out / "pool"]) if (out / "pool" / "config.yaml").is_file() else []
    if pool_runs:
        parts.append(
            "## Teacher pool (squeezed once, shared by every run)\n\n"
            + tables.teacher_table(pool_runs)
            + "\n"
        )

    main_specs = [s for s in finished if s.group == "main"]
    order = {
        ("real_images", "real"): 0,
        ("sre2l", "real"): 1,
        ("prism", "real"): 2,
        ("sre2l", "noise"): 3,
        ("prism", "noise"): 4,
    }
    main_specs.sort(key=lambda s: (order.get((s.variant, s.init), 9), s.ipc, s.seed))
    runs = tables.load_runs([run_dir(out, s) for s in main_specs]) if main_specs else []
    spec_of = {str(r.path): by_name[r.path.name] for r in runs}
    rows = {}
    for r in runs:
        s = spec_of[str(r.path)]
        rows[(s.variant, s.init)] = r.row
    parts.append("## Student accuracy (paper Table 1 layout)\n")
    parts.append((tables.accuracy_table(runs) if runs else "_No finished runs._") + "\n")
    parts.append(_paired_section(runs, rows, spec_of))
    parts.append(_diversity_section(runs, rows, spec_of))

    t2_specs = [s for s in finished if s.group == "table2"]
    t2_specs.sort(key=lambda s: ([r for r, _ in TABLE2_ROWS].index(s.variant), s.seed))
    t2 = tables.load_runs([run_dir(out, s) for s in t2_specs]) if t2_specs else []
    parts.append(_table2_section(t2, {str(r.path): by_name[r.path.name] for r in t2}))
    parts.append(_expectations(runs, rows, t2, {str(r.path): by_name[r.path.name] for r in t2}))
    parts.append(_timing_section(out, specs, timings, states))
    parts.append(_estimate_section(out, specs, timings, jobs, mode))
    parts.append(_figures_section(out, specs, states))
    parts.append(_per_run_section(out, specs, states, runs + t2, jobs))
    path = out / "BENCHMARKS.md"
    path.write_text("\n".join(parts))
    return path


def publish(out: Path, dest: Path) -> None:
    """Copy the report and the figures it links to next to the benchmark's code, so that the
    committed BENCHMARKS.md opens with working image links. Figures are replaced, not merged,
    so no stale image from an older run survives next to new numbers."""
    shutil.copyfile(out / "BENCHMARKS.md", dest / "BENCHMARKS.md")
    if (out / "figures").is_dir():
        shutil.rmtree(dest / "figures", ignore_errors=True)
        shutil.copytree(out / "figures", dest / "figures")


def _git() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            check=False,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO,
            capture_output=True,
            check=False,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"git {sha}" + (" + uncommitted changes" if dirty else "") if sha else "no git"
    except (OSError, subprocess.SubprocessError):
        return "no git"


def _setup_section(specs: list[RunSpec], mode: Mode) -> str:
    base = specs[1].config if len(specs) > 1 else specs[0].config
    rec, st = base["recover"], base["students"]
    ipcs = ", ".join(str(i) for i in mode.ipcs)
    epochs = {s.ipc: s.config["students"]["epochs"] for s in specs[1:] if s.group == "main"}
    limit = f" (first {st['eval_limit']} only)" if st.get("eval_limit") else ""
    by_kind = {}
    for s in specs[1:]:
        kind = f"{s.init} init" if s.group == "main" else "Table 2"
        by_kind.setdefault(kind, s.config["recover"]["lr"])
    lrs = ", ".join(f"{v} ({k})" for k, v in by_kind.items())
    lines = [
        "## Setup\n",
        (
            "- Data: Fashion-MNIST, all 60k training images (pool, relabel references) and the "
            f"10k test images{limit}, {base['data']['resolution']} px, 1 channel."
        ),
        (
            f"- Recovery: {rec['iterations']} iterations per image, Adam lr {lrs} (cosine), "
            f"r_bn {rec['r_bn']}, first-BN x{rec['first_bn_multiplier']}, crop scale "
            f"{rec['augment']['crop_scale']}, jitter {rec['augment']['jitter']}; real or noise "
            "init."
        ),
        (
            f"- Main comparison at IPC {ipcs}: recovery seeds {list(mode.rec_seeds)} x student "
            f"seeds {list(mode.student_seeds)}; rows: real initial images (no optimisation, "
            "`recover.init_only`), SRe2L (ResNet-18 logit + only BN teacher), PRISM (ResNet-18 "
            "logit; BN = ResNet-18 + each of MobileNetV2/ShuffleNetV2/EfficientNet-B0 with "
            "p 0.5 per slice)."
        ),
        (
            f"- Relabel: offline ensemble {base['relabel']['teachers']} (norm-rescaled mean), "
            f"CutMix; students: {st['archs']} width {st.get('width', 1.0)}, {st['loss']}, "
            f"{st['schedule']}, AdamW lr {st['lr']}, batch {st['batch_size']}, epochs per IPC "
            f"{epochs} (the same number of steps at every IPC); one evaluation at the end."
        ),
        (
            f"- Table 2 rows at IPC {mode.table2_ipc}: recovery seeds {list(mode.table2_seeds)} "
            f"x student seeds {list(mode.table2_student_seeds)}; recovery only (hard-label CE "
            "students), real init (variants/table2_*.yaml)."
        ),
        (
            "- Diversity: mean pairwise cosine similarity of penultimate features within a "
            "class (extractor `features_resnet18`, a pool ResNet-18 that is no recovery or "
            "relabel teacher), mean over classes; reference = the real images of the same slots."
        ),
    ]
    return "\n".join(lines) + "\n"


def _paired_section(runs, rows, spec_of) -> str:
    """PRISM - SRe2L (and each vs the real images), paired on (IPC, recovery seed, student seed)."""
    from prism_hpc.metrics import tables

    if not runs:
        return ""
    acc: dict[tuple, float] = {}
    for r in runs:
        s = spec_of[str(r.path)]
        for st in r.students:
            acc[(s.variant, s.init, s.ipc, s.seed, st.arch, st.seed)] = st.top1
    comparisons = [(("prism", init), ("sre2l", init)) for init in ("real", "noise")] + [
        (("prism", "real"), ("real_images", "real")),
        (("sre2l", "real"), ("real_images", "real")),
    ]
    lines = []
    for a, b in comparisons:
        if a not in rows or b not in rows:
            continue
        by_ipc: dict[tuple[int, str], list[tuple[int, float]]] = {}
        for (v, i, ipc, rs, arch, ss), top1 in acc.items():
            if (v, i) == a and (b[0], b[1], ipc, rs, arch, ss) in acc:
                by_ipc.setdefault((ipc, arch), []).append(
                    (rs, top1 - acc[(b[0], b[1], ipc, rs, arch, ss)])
                )
        for (ipc, arch), pairs in sorted(by_ipc.items()):
            d = [x for _, x in pairs]
            per_seed = {}
            for rs, x in pairs:
                per_seed.setdefault(rs, []).append(x)
            seed_means = [sum(v) / len(v) for _, v in sorted(per_seed.items())]
            lines.append(
                [
                    f"{rows[a]} − {rows[b]}",
                    str(ipc),
                    tables.pretty_arch(arch),
                    _mean_std(d),
                    f"{min(d):+.2f} … {max(d):+.2f}",
                    f"{sum(x > 0 for x in d)}/{len(d)}",
                    ", ".join(f"{m:+.2f}" for m in seed_means),
                    _mean_std(seed_means) if len(seed_means) > 1 else "-",
                ]
            )
    if not lines:
        return ""
    header = [
        "Difference",
        "IPC",
        "Student",
        "Δ top-1 [pp], mean ± std over pairs",
        "range",
        "wins",
        "per recovery seed",
        "mean ± std over recovery seeds",
    ]
    return (
        "### Paired differences\n\n" + tables._markdown(header, lines) + "\n\nPairs share "
        "IPC, recovery seed (config `seed`, also the relabel crops) and student seed. The "
        "student seeds of one recovery run are not independent; the last column (one mean "
        "per recovery seed) is the more honest spread.\n"
    )


def _diversity_section(runs, rows, spec_of) -> str:
    from prism_hpc.metrics import tables

    cells: dict[tuple, list[tuple[int, float, float | None]]] = {}
    for r in runs:
        d = r.diversity or {}
        if not d.get("distilled"):
            continue
        s = spec_of[str(r.path)]
        ref = (d.get("reference") or {}).get("mean")
        cells.setdefault((s.ipc, s.variant, s.init), []).append(
            (s.seed, d["distilled"]["mean"], ref)
        )
    if not cells:
        return "## Diversity\n\n_No diversity.json yet._\n"
    lines = []
    for (ipc, v, i), vals in sorted(
        cells.items(),
        key=lambda kv: (
            kv[0][0],
            list(rows).index((kv[0][1], kv[0][2])) if (kv[0][1], kv[0][2]) in rows else 9,
        ),
    ):
        dist = [x for _, x, _ in vals]
        refs = [x for _, _, x in vals if x is not None]
        delta = [x - y for _, x, y in vals if y is not None]
        lines.append(
            [
                rows.get((v, i), v),
                str(ipc),
                str(len(vals)),
                _mean_std(dist, 4),
                _mean_std(refs, 4) if refs else "-",
                _mean_std(delta, 4) if delta else "-",
            ]
        )
    text = (
        "## Diversity (intra-class cosine similarity, lower = more diverse)\n\n"
        + tables._markdown(
            [
                "Method",
                "IPC",
                "Runs",
                "Distilled cos",
                "Real reference cos",
                "Δ distilled − reference",
            ],
            lines,
        )
    )
    paired = []
    for ipc in sorted({k[0] for k in cells}):
        for init in ("real", "noise"):
            a = {sd: x for sd, x, _ in cells.get((ipc, "prism", init), [])}
            b = {sd: x for sd, x, _ in cells.get((ipc, "sre2l", init), [])}
            d = [a[k] - b[k] for k in sorted(a) if k in b]
            if d:
                paired.append(
                    [
                        f"PRISM − SRe2L ({init} init)",
                        str(ipc),
                        _mean_std(d, 4),
                        f"{sum(x < 0 for x in d)}/{len(d)}",
                    ]
                )
    if paired:
        text += (
            "\n\nPaired by recovery seed (negative = PRISM more diverse):\n\n"
            + tables._markdown(["Difference", "IPC", "Δ cos (mean ± std)", "PRISM lower"], paired)
        )
    return text + (
        "\n\nPer run: mean over the 10 classes of the mean pairwise cosine similarity; cells: "
        "mean ± sample std over recovery runs. Paper (ImageNet-1K): SRe2L/G-VBSM/DELT 0.86-0.92, "
        "PRISM <= 0.83.\n"
    )


def _table2_section(t2, spec_of) -> str:
    from prism_hpc.metrics import tables

    if not t2:
        return "## Table 2 rows\n\n_No finished Table 2 runs._\n"
    paper = dict(TABLE2_ROWS)
    lines = []
    for row in dict.fromkeys(r.row for r in t2):
        members = [r for r in t2 if r.row == row]
        s = spec_of[str(members[0].path)]
        acc = [st.top1 for r in members for st in r.students]
        div = [
            r.diversity["distilled"]["mean"]
            for r in members
            if r.diversity and r.diversity.get("distilled")
        ]
        acc_text = tables.fmt_mean_std(*tables.mean_std(acc), 2, show_n=False)
        lines.append(
            [
                row,
                f"{paper[s.variant]:.1f}",
                f"{acc_text} (n={len(acc)})",
                _mean_std(div, 4) if div else "-",
            ]
        )
    text = "## Table 2 rows (recovery only, hard-label students)\n\n" + tables._markdown(
        ["Row", "Paper top-1 [%] (ImageNet-1K)", "Top-1 [%] here", "Diversity (cos)"], lines
    )
    detail = tables.ablation_table(t2)
    if detail:
        text += "\n\nRoles as recorded in the shards (paper Table 2 layout):\n\n" + detail
    return text + "\n"


def _expectations(runs, rows, t2, t2_spec) -> str:
    """The paper's expectations, checked against the numbers above (no interpretation)."""
    out = []

    def acc_of(rs):
        return [st.top1 for r in rs for st in r.students]

    def div_of(rs):
        return [
            r.diversity["distilled"]["mean"]
            for r in rs
            if r.diversity and r.diversity.get("distilled")
        ]

    def mean(v):
        return sum(v) / len(v) if v else None

    for init in ("real", "noise"):
        for ipc in sorted({r.ipc for r in runs}):
            p = [r for r in runs if r.row == rows.get(("prism", init)) and r.ipc == ipc]
            s = [r for r in runs if r.row == rows.get(("sre2l", init)) and r.ipc == ipc]
            if not p or not s:
                continue
            dp, ds, ap, as_ = mean(div_of(p)), mean(div_of(s)), mean(acc_of(p)), mean(acc_of(s))
            if dp is not None and ds is not None:
                out.append(
                    f"- PRISM diversity below SRe2L ({init} init, IPC {ipc}): "
                    f"{dp:.4f} vs {ds:.4f} -> **{'holds' if dp < ds else 'fails'}**"
                )
            if ap is not None and as_ is not None:
                out.append(
                    f"- PRISM accuracy >= SRe2L ({init} init, IPC {ipc}): {ap:.2f} vs "
                    f"{as_:.2f} % -> **{'holds' if ap >= as_ else 'fails'}**"
                )
    by_variant: dict[str, list] = {}
    for r in t2:
        by_variant.setdefault(t2_spec[str(r.path)].variant, []).append(r)
    for pre, intra in (
        ("table2_single_pre", "table2_single_intra"),
        ("table2_dual_pre", "table2_dual_intra"),
    ):
        a, b = mean(acc_of(by_variant.get(pre, []))), mean(acc_of(by_variant.get(intra, [])))
        if a is not None and b is not None:
            out.append(
                f"- Pre above intra ({pre.split('_')[1]}-teacher): {a:.2f} vs {b:.2f} % -> "
                f"**{'holds' if a > b else 'fails'}**"
            )
    multi = [mean(acc_of(by_variant.get(f"table2_multi_pre_{k}bn", []))) for k in (2, 3, 4)]
    if all(m is not None for m in multi):
        ok = multi[0] < multi[1] < multi[2]
        out.append(
            f"- More BN teachers better (2 < 3 < 4): {', '.join(f'{m:.2f}' for m in multi)}"
            f" % -> **{'holds' if ok else 'fails'}**"
        )
    if not out:
        return ""
    return (
        "## The paper's expectations against these numbers\n\n"
        + "\n".join(out)
        + "\n\nMeans over all (recovery, student) seeds; see the spreads above before "
        "reading anything into a difference.\n"
    )


def _timing_section(out: Path, specs, timings: Timings, states) -> str:
    from prism_hpc.metrics import tables

    groups: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    for s in specs:
        g = (
            "pool (squeeze)"
            if s.group == "pool"
            else (f"main, IPC {s.ipc}" if s.group == "main" else f"Table 2, IPC {s.ipc}")
        )
        st = stage_seconds(out, s.name)
        if not st and not timings.submit_wall(s.name):
            continue
        acc = groups.setdefault(g, {})
        counts[g] = counts.get(g, 0) + 1
        for k, v in st.items():
            acc[k] = acc.get(k, 0.0) + v
        acc["submit wall"] = acc.get("submit wall", 0.0) + timings.submit_wall(s.name)
    if not groups:
        return ""
    cols = [*STAGES, "submit wall"]
    lines = []
    for g, acc in groups.items():
        lines.append(
            [g, str(counts[g])] + [_fmt_s(acc.get(c)) if acc.get(c) else "-" for c in cols]
        )
    total = {c: sum(a.get(c, 0.0) for a in groups.values()) for c in cols}
    lines.append(
        ["**all**", str(sum(counts.values()))]
        + [_fmt_s(total[c]) if total[c] else "-" for c in cols]
    )
    sessions = timings.data.get("sessions", [])
    return (
        "## Wall time of every stage\n\n"
        + tables._markdown(["Runs", "n", *cols], lines)
        + "\n\nSums over runs of the item times the local backend logs (`[stage] k/n done "
        "(item, X s)`), one thread per process, `--jobs` processes side by side (so a stage "
        "sum is CPU-ish time, not elapsed time). `submit wall`: elapsed time of the "
        "`prism-hpc submit` calls (process start-up, plan, all stages). Driver elapsed time: "
        + ", ".join(_fmt_s(x.get("wall_s")) for x in sessions)
        + ".\n"
    )


def _estimate_section(out: Path, specs, timings, jobs: int, mode: Mode) -> str:
    costs = measure_costs(out, specs, timings)
    (out / "costs.json").write_text(json.dumps(costs, indent=1) + "\n")
    iters = costs.get("recover_iter_s") or {}
    if not iters:
        return ""
    cal = costs.get("calibration") or {}
    lines = [
        "## Measured unit costs and the estimated duration of each mode\n",
        "One thread per process; measured in this run's items (`costs.json`):\n",
    ]
    lines.append("| cost | value |\n|:--|--:|")
    for v, x in iters.items():
        lines.append(f"| recovery iteration (10 images), {v} | {_ms(x)} |")
    for key, label in (
        ("recover_slice_overhead_s", "recover item overhead per slice (teachers, data)"),
        ("squeeze_step_s", "squeeze step (batch 128)"),
        ("squeeze_overhead_s", "squeeze item overhead (10k test eval, start-up)"),
        ("relabel_epoch_overhead_s", "relabel per epoch (plans, HDF5) beyond the ensemble"),
        ("train_epoch_overhead_s", "student per epoch (checkpoint, batches) beyond the steps"),
        ("item_overhead_s", "relabel/train item overhead (loading)"),
        ("report_s", "report stage per run (figures; without feature extraction)"),
        ("submit_overhead_s", "per `prism-hpc submit` (start-up, plan)"),
    ):
        if costs.get(key) is not None:
            lines.append(
                f"| {label} | {_fmt_s(costs[key]) if costs[key] >= 1 else _ms(costs[key])} |"
            )
    for key, label in (
        ("student_step_s", "student step (calibrated)"),
        ("eval_image_s", "student forward per test image (calibrated)"),
        ("relabel_visit_s", "relabel ensemble forward per image (calibrated)"),
    ):
        if key in cal:
            lines.append(f"| {label} | {_ms(cal[key])} |")
    rows = []
    for name, m in MODES.items():
        other = build_specs(m, out)
        est = estimate_wall(other, costs, jobs)
        rows.append(
            f"| {name} | {est['runs']} | {est['students']} | {_fmt_s(est['cpu_s'])} | "
            f"{_fmt_s(est['wall_s'])} | "
            + ", ".join(f"{k} {_fmt_s(v)}" for k, v in est["by_stage_cpu_s"].items())
            + " |"
        )
    lines.append(
        f"\nEstimated with these costs (`--jobs {jobs}`, greedy scheduling in the driver's "
        "order; contention with other processes is in the measured costs):\n"
    )
    lines.append(
        "| mode | runs | students | CPU time | wall time | CPU time by stage |\n"
        "|:--|--:|--:|--:|--:|:--|"
    )
    lines.extend(rows)
    return "\n".join(lines) + "\n"


def _figures_section(out: Path, specs, states) -> str:
    """`prism-hpc report` over the seed-0 runs of each (IPC, init): the same initial images
    side by side (paper Fig. 5), per-class diversity curves, embeddings. Written once."""
    lines = []
    groups: dict[tuple[int, str], list[RunSpec]] = {}
    for s in specs:
        if s.group == "main" and s.seed == min(x.seed for x in specs if x.group == "main"):
            groups.setdefault((s.ipc, s.init), []).append(s)
    for (ipc, init), members in sorted(groups.items()):
        if init == "noise":  # the real images belong next to both
            members = [
                x for x in groups.get((ipc, "real"), []) if x.variant == "real_images"
            ] + members
        if not all(states[m.name] == "done" for m in members):
            continue
        dest = out / "figures" / f"ipc{ipc}-{init}"
        if not (dest / "report.md").is_file():
            cmd = [*cli(), "report", *(str(run_dir(out, m)) for m in members), "--out", str(dest)]
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
            done = subprocess.run(
                cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                lines.append(
                    f"- IPC {ipc}, {init} init: report failed ({done.stderr.strip()[-200:]})"
                )
                continue
        rel = os.path.relpath(dest / "report.md", out)
        names = ", ".join(m.name for m in members)
        lines.append(f"- IPC {ipc}, {init} init ({names}): [{rel}]({rel})")
    if not lines:
        return ""
    return (
        "## Figures\n\nImage grids of the same initial slots side by side, per-class diversity, "
        "2-D feature embeddings (`prism-hpc report` over the first recovery seed):\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _per_run_section(out: Path, specs, states, runs, jobs: int) -> str:
    from prism_hpc.metrics import tables

    info = {r.path.name: r for r in runs}
    lines = []
    for s in specs:
        st = stage_seconds(out, s.name)
        r = info.get(s.name)
        accs = (
            ", ".join(f"{x.top1:.2f}" for x in sorted(r.students, key=lambda x: x.seed))
            if r
            else "-"
        )
        div = (
            f"{r.diversity['distilled']['mean']:.4f}"
            if r and r.diversity and r.diversity.get("distilled")
            else "-"
        )
        lines.append(
            [s.name, states[s.name], s.config.get("method", "-"), s.init, str(s.seed), accs, div]
            + [_fmt_s(st.get(k)) if st.get(k) else "-" for k in STAGES]
        )
    return (
        "<details><summary>Every run</summary>\n\n"
        + tables._markdown(
            [
                "Run",
                "State",
                "Method",
                "Init",
                "Seed",
                "Top-1 per student seed",
                "Diversity",
                *STAGES,
            ],
            lines,
        )
        + "\n\nConfigs: `configs/<run>.yaml` (base.yaml + variants/ overlay + per-run "
        "settings); logs: `logs/<run>.attempt<k>.log`; run dirs: `runs/<run>/` (each with "
        "its own report.md and figures).\n\n</details>\n"
    )


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    m = p.add_mutually_exclusive_group()
    m.add_argument("--quick", action="store_true", help="IPC 10 only, fewer seeds (~30 min)")
    m.add_argument("--smoke", action="store_true", help="tiny sizes: a few minutes, for tests")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/fmnist_prism_vs_sre2l[-quick|-smoke])",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs side by side, one CPU thread each (default: 2)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs, their state and command; run nothing"
    )
    p.add_argument(
        "--only", default=None, help="only runs whose name matches this glob (the pool always)"
    )
    p.add_argument("--no-report", action="store_true", help="skip writing BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    mode = MODES["quick" if args.quick else "smoke" if args.smoke else "full"]
    suffix = "" if mode.name == "full" else f"-{mode.name}"
    out = (args.out or REPO / "runs" / f"fmnist_prism_vs_sre2l{suffix}").resolve()
    jobs = max(1, args.jobs)
    specs = build_specs(mode, out)
    if args.only:
        specs = specs[:1] + [s for s in specs[1:] if fnmatch.fnmatch(s.name, args.only)]
    validate(specs)
    print(f"[bench] {mode.name} mode: {mode.note}", flush=True)
    print(
        f"[bench] out: {out}; {len(specs) - 1} runs + the teacher pool; --jobs {jobs}", flush=True
    )
    if args.dry_run:
        for s in specs:
            state = status(out, s) if out.exists() else "new"
            cmd = "-" if state in ("done", "changed") else shlex.join(command(out, s, state, jobs))
            print(f"{s.name:34s} {state:8s} {cmd}")
        return 0

    for sub in ("configs", "logs", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for s in specs:
        path = out / "configs" / f"{s.name}.yaml"
        text = yaml.safe_dump(s.config, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
    timings = Timings(out / "timings.json")
    signal.signal(signal.SIGTERM, _sigterm)  # `kill PID` stops the runs like Ctrl-C
    start = time.time()
    load0 = os.getloadavg()[0]
    failed: list[tuple[str, Path]] = []
    try:
        failed = run_all(out, specs, jobs, timings)
    except KeyboardInterrupt:
        timings.session(
            {
                "mode": mode.name,
                "wall_s": round(time.time() - start, 1),
                "interrupted": True,
                "loadavg_start": load0,
            }
        )
        return 130
    timings.session(
        {
            "mode": mode.name,
            "wall_s": round(time.time() - start, 1),
            "loadavg_start": load0,
            "loadavg_end": os.getloadavg()[0],
            "jobs": jobs,
            "argv": argv,
        }
    )
    if mode.name == "smoke" and not (out / "calibration.json").is_file():
        cal = calibrate(specs[1].config if len(specs) > 1 else specs[0].config)
        (out / "calibration.json").write_text(json.dumps(cal, indent=1) + "\n")
    if not args.no_report:
        path = write_benchmarks(out, mode, specs, timings, argv, jobs, failed)
        print(f"[bench] wrote {path}", flush=True)
        all_done = all(status(out, s) == "done" for s in specs)
        if mode.name == "full" and all_done and not args.only:
            publish(out, HERE)
            print(f"[bench] copied BENCHMARKS.md and figures/ to {HERE}", flush=True)
    for name, log in failed:
        print(f"[bench] FAILED: {name} (see {log})", flush=True)
    print(
        f"[bench] {mode.name} mode finished in {_fmt_s(time.time() - start)}"
        + (f"; {len(failed)} run(s) failed, rerun the same command to retry" if failed else ""),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
