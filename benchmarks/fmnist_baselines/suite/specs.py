"""The run list of the multi-method benchmark: one protocol, a method differs only in `recover`.

The protocol (data, teacher pool, squeeze, relabel ensemble, students, metrics) is the
PRISM-vs-SRe2L benchmark's `base.yaml` plus this folder's `protocol.yaml`. A method is a config
file: PRISM = `configs/fmnist_demo.yaml`, every other method = `configs/baselines/fmnist_*.yaml`
(found by glob, so a config another session adds is picked up). From the method file the run
takes its `recover` section, its `method` label and any top-level section the protocol does not
own (a method's own stage settings); from its `relabel` / `students` sections only keys that
differ from the demo and are not protocol sizing (e.g. EDC's `students.ema`), which then also
apply to the random-subset partner so that IOR compares like with like.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.fmnist_shared.runlist import RunSpec, load_yaml, pool_dir, set_dotted
from prism_hpc.config.load import deep_merge

HERE = Path(__file__).resolve().parent.parent  # benchmarks/fmnist_baselines
BENCHMARKS = HERE.parent
REPO = BENCHMARKS.parent
SIBLING = BENCHMARKS / "fmnist_prism_vs_sre2l"  # its base.yaml and variants/ are reused
VARIANTS = SIBLING / "variants"
DEMO = REPO / "configs" / "fmnist_demo.yaml"
BASELINES = REPO / "configs" / "baselines"
NUM_CLASSES = 10

# Sections the protocol owns: a method file's copies of them are ignored (except the
# mechanism keys of relabel/students, below).
PROTOCOL_SECTIONS = {"name", "seed", "backend", "data", "teachers", "squeeze", "relabel",
                     "students", "metrics", "resources", "run_root", "method"}  # fmt: skip
# Keys of relabel/students that size or define the shared evaluation: never taken from a method.
SIZING = {
    "relabel": {"teachers", "epochs_per_task", "batch_size", "ensemble", "mode"},
    "students": {"archs", "width", "seeds", "epochs", "eval_every", "eval_limit", "batch_size",
                 "cpu_threads", "workers", "lr", "weight_decay", "optimizer", "loss"},
}  # fmt: skip
# Methods whose mechanism fixes the init (DELT ranks real images, RDED crops them, EDC
# initialises from real multi-crops); the others also run from the other init.
REAL_ONLY = {"delt", "rded", "edc"}


@dataclass(frozen=True)
class Method:
    key: str  # prism, sre2l, cda, ... (file stem without fmnist_)
    label: str  # the config's `method`
    path: Path
    native_init: str
    recover: dict
    extra: dict  # top-level sections the protocol does not own
    eval_overlay: dict  # mechanism keys of relabel / students

    @property
    def inits(self) -> tuple[str, ...]:
        if self.key in REAL_ONLY:
            return (self.native_init,)
        other = "noise" if self.native_init == "real" else "real"
        return (self.native_init, other)


def _diff(section: dict, reference: dict, skip: set[str]) -> dict:
    return {k: v for k, v in section.items() if k not in skip and reference.get(k) != v}


def load_method(key: str, path: Path, demo: dict) -> Method:
    cfg = load_yaml(path)
    overlay = {}
    for sec in ("relabel", "students"):
        d = _diff(cfg.get(sec) or {}, demo.get(sec) or {}, SIZING[sec])
        if d:
            overlay[sec] = d
    return Method(
        key=key,
        label=str(cfg.get("method") or key),
        path=path,
        native_init=str(cfg["recover"].get("init", "real")),
        recover=copy.deepcopy(cfg["recover"]),
        extra={
            k: copy.deepcopy(v)
            for k, v in cfg.items()
            if k not in PROTOCOL_SECTIONS and k != "recover"
        },
        eval_overlay=overlay,
    )


def discover_methods() -> list[Method]:
    """PRISM first, then every configs/baselines/fmnist_*.yaml in name order."""
    demo = load_yaml(DEMO)
    methods = [load_method("prism", DEMO, demo)]
    for path in sorted(BASELINES.glob("fmnist_*.yaml")):
        methods.append(load_method(path.stem.removeprefix("fmnist_"), path, demo))
    return methods


@dataclass(frozen=True)
class Mode:
    name: str
    ipcs: tuple[int, ...]
    rec_seeds: tuple[int, ...]  # recovery seeds (config `seed`) of every method run
    student_seeds: tuple[int, ...]
    hard_seeds: tuple[int, ...]  # recovery seeds that also get a hard-label (syn-hard) run
    iter_scale: float  # x every method's recover.iterations (and iteration_step)
    student_visits: int  # images seen per student (= steps x batch), the same at every IPC
    real_hard_epochs: int = 1  # epochs over the 60k real images of the full-real run
    # methods that also run from their other init (None: every method that allows both)
    other_init: frozenset[str] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every run
    note: str = ""


MODES = {
    "full": Mode(
        "full", ipcs=(10, 50), rec_seeds=(0, 1, 2), student_seeds=(0, 1), hard_seeds=(0, 1, 2),
        iter_scale=0.5, student_visits=10000,
        note="the whole benchmark (README: several hours on 2 cores)",
    ),
    "ipc10": Mode(
        "ipc10", ipcs=(10,), rec_seeds=(0, 1, 2), student_seeds=(0, 1), hard_seeds=(0,),
        iter_scale=0.5, student_visits=10000,
        note="IPC10 MODE: the full protocol (every method, both inits where allowed, 3 "
        "recovery seeds x 2 student seeds, teachers squeezed for a whole epoch) at IPC 10 "
        "only; syn-hard runs for recovery seed 0 only (HLR, hence LRS, from one seed).",
    ),
    "quick": Mode(
        "quick", ipcs=(10,), rec_seeds=(0, 1), student_seeds=(0,), hard_seeds=(0,),
        iter_scale=0.5, student_visits=10000, overrides={"squeeze.max_steps": 150},
        other_init=frozenset({"prism", "sre2l"}),
        note="QUICK MODE: IPC 10 only, 2 recovery seeds x 1 student seed, syn-hard runs for "
        "recovery seed 0 only, each method from its own init (PRISM and SRe2L from both), "
        "teachers squeezed for 150 steps instead of 469. A preview, not the benchmark's "
        "numbers.",
    ),
    "smoke": Mode(
        "smoke", ipcs=(2,), rec_seeds=(0,), student_seeds=(0,), hard_seeds=(0,),
        iter_scale=0.1, student_visits=100,
        overrides={"squeeze.max_steps": 20, "students.eval_limit": 1000},
        note="SMOKE MODE: tiny sizes (squeeze 20 steps, IPC 2, a tenth of each method's "
        "iterations, 100 student image visits, 1000 test images): proves the driver end to "
        "end; the numbers mean nothing.",
    ),
}  # fmt: skip


def protocol(mode: Mode) -> dict:
    base = deep_merge(load_yaml(SIBLING / "base.yaml"), load_yaml(HERE / "protocol.yaml"))
    for dotted, value in mode.overrides.items():
        set_dotted(base, dotted, value)
    return base


def student_epochs(mode: Mode, ipc: int) -> int:
    return max(1, round(mode.student_visits / (ipc * NUM_CLASSES)))


def scaled_recover(rec: dict, scale: float) -> dict:
    """The method's recover section at the benchmark's budget: iterations (and DELT's step)
    scaled alike, so every method keeps the shape of its own schedule."""
    rec = copy.deepcopy(rec)
    if "iterations" in rec:
        rec["iterations"] = max(1, round(rec["iterations"] * scale))
        if rec.get("iteration_step"):
            period = int(rec.get("iteration_period", 8))
            step = max(0, round(rec["iteration_step"] * scale))
            while step and step * (period - 1) >= rec["iterations"]:
                step -= 1
            rec["iteration_step"] = step
    return rec


def merged_teachers(base: dict, methods: list[Method]) -> dict:
    """The pool: the protocol's teachers plus any a method file adds (same name, same spec)."""
    teachers = copy.deepcopy(base["teachers"])
    for m in methods:
        for name, spec in (load_yaml(m.path).get("teachers") or {}).items():
            if name not in teachers:
                teachers[name] = copy.deepcopy(spec)
            elif {k: v for k, v in teachers[name].items() if k != "weights"} != {
                k: v for k, v in spec.items() if k != "weights"
            }:
                raise SystemExit(
                    f"{m.path}: teacher {name!r} differs from the protocol's "
                    f"({spec} vs {teachers[name]}); give it another name"
                )
    return teachers


def hard_overlay() -> dict:
    """Hard labels (DD-Ranking's syn-hard / real-hard): the Table 2 rows' evaluation of the
    sibling benchmark (relabel none, CE with the mixed CutMix target, cosine lr)."""
    t2 = load_yaml(VARIANTS / "table2_common.yaml")
    return {"relabel": t2["relabel"], "students": t2["students"]}


def build_specs(
    mode: Mode, out: Path, methods: list[Method] | None = None, only: set[str] | None = None
) -> list[RunSpec]:
    """Every run of `mode`, the pool first: per IPC the method runs (each init, each recovery
    seed), their syn-hard partners, the random-real-subset runs; then the full-real run."""
    methods = discover_methods() if methods is None else methods
    if only is not None:
        unknown = only - {m.key for m in methods}
        if unknown:
            raise SystemExit(
                f"--methods: unknown {sorted(unknown)} (found: {[m.key for m in methods]})"
            )
        methods = [m for m in methods if m.key in only]
    base = protocol(mode)
    base["teachers"] = merged_teachers(base, methods)
    pool = pool_dir(out).resolve()
    pool_cfg = copy.deepcopy(base)
    pool_cfg.update(name="pool", method="teacher pool")
    specs = [RunSpec("pool", "pool", "pool", 0, "-", 0, pool_cfg)]
    from prism_hpc.cost import squeezed_teachers

    squeezed = squeezed_teachers(base)

    def finish(cfg: dict, name: str, seed: int, ipc: int | str, epochs: int, sseeds) -> dict:
        cfg["name"], cfg["seed"] = name, seed
        cfg["squeeze"]["enabled"] = False
        for t in squeezed:
            cfg["teachers"][t]["weights"] = str(pool / "teachers" / f"{t}.pt")
        cfg["recover"]["ipc"] = ipc
        cfg["recover"].setdefault("cpu_threads", 1)
        cfg["students"].update(seeds=list(sseeds), epochs=epochs, eval_every=epochs)
        cfg["relabel"]["epochs_per_task"] = epochs
        return cfg

    def method_cfg(m: Method, init: str, hard: bool) -> dict:
        cfg = copy.deepcopy(base)
        cfg["recover"] = scaled_recover(m.recover, mode.iter_scale)
        cfg["recover"]["cpu_threads"] = 1
        if init != m.native_init:  # the other init with its lr (the sibling's init_*.yaml)
            cfg = deep_merge(cfg, load_yaml(VARIANTS / f"init_{init}.yaml"))
        cfg = deep_merge(cfg, m.extra)
        cfg = deep_merge(cfg, m.eval_overlay)
        cfg["method"] = m.label + (" hard" if hard else "")
        return deep_merge(cfg, hard_overlay()) if hard else cfg

    for ipc in mode.ipcs:
        epochs = student_epochs(mode, ipc)
        for m in methods:
            inits = m.inits if mode.other_init is None or m.key in mode.other_init else m.inits[:1]
            for init in inits:
                for seed in mode.rec_seeds:
                    name = f"ipc{ipc}-{m.key}-{init}-s{seed}"
                    cfg = finish(method_cfg(m, init, False), name, seed, ipc, epochs,
                                 mode.student_seeds)  # fmt: skip
                    specs.append(RunSpec(name, "method", m.key, ipc, init, seed, cfg))
                for seed in mode.hard_seeds:
                    name = f"ipc{ipc}-{m.key}-{init}-hard-s{seed}"
                    cfg = finish(method_cfg(m, init, True), name, seed, ipc, epochs,
                                 mode.student_seeds)  # fmt: skip
                    specs.append(RunSpec(name, "hard", m.key, ipc, init, seed, cfg))
        # rdm-any: one set per distinct evaluation among the methods (usually one)
        evals: dict[str, dict] = {}
        for m in methods:
            evals.setdefault(json.dumps(m.eval_overlay, sort_keys=True), m.eval_overlay)
        for k, (_, overlay) in enumerate(sorted(evals.items())):
            tag = "" if not overlay else f"-eval{k}"
            for seed in mode.rec_seeds:
                name = f"ipc{ipc}-random_real{tag}-s{seed}"
                cfg = deep_merge(copy.deepcopy(base), load_yaml(VARIANTS / "real_images.yaml"))
                cfg = deep_merge(cfg, overlay)
                cfg["method"] = "Random real subset" + (f" (eval {k})" if overlay else "")
                cfg = finish(cfg, name, seed, ipc, epochs, mode.student_seeds)
                specs.append(RunSpec(name, "rdm", "random_real", ipc, "real", seed, cfg))
    # real-hard: the whole training set, hard labels (one recovery seed: nothing is random in
    # its images; the student seeds as everywhere)
    cfg = deep_merge(copy.deepcopy(base), load_yaml(VARIANTS / "real_images.yaml"))
    cfg = deep_merge(cfg, hard_overlay())
    cfg["method"] = "Full real data"
    cfg["recover"]["slices_per_task"] = 500
    cfg = finish(cfg, "full_real-hard", 0, "all", mode.real_hard_epochs, mode.student_seeds)
    # Order (names and configs do not depend on it): the longest single run first, so that it
    # overlaps the many short ones; then every method's first recovery seed, its syn-hard
    # partner and the random subset (and PRISM from both inits: every method's reference),
    # later seeds after, the other methods' other inits last; so a run cut short by its budget
    # has the whole comparison at one seed first.
    native = {m.key: m.native_init for m in methods}

    def late(s: RunSpec) -> bool:
        return (
            s.group in ("method", "hard") and s.variant != "prism" and s.init != native[s.variant]
        )

    rest = sorted(
        enumerate(specs[1:]), key=lambda t: (late(t[1]), mode.rec_seeds.index(t[1].seed), t[0])
    )
    real = RunSpec("full_real-hard", "real", "full_real", 0, "real", 0, cfg)
    return [specs[0], real] + [s for _, s in rest]


def validate(specs: list[RunSpec]) -> None:
    """Every merged config through the real schema (pydantic only, no torch)."""
    from prism_hpc.config.load import config_from_dict

    for s in specs:
        config_from_dict(s.config, f"{s.name} (merged config)")
