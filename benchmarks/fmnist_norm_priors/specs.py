"""The run list of the norm-prior experiment: statistic pool (BN-only, BN+LN, LN-only) x init
(real, noise) x recovery seed, plus the DD-Ranking partner runs that LRS needs.

The protocol is the PRISM-vs-SRe2L benchmark's `base.yaml` (data, squeeze, relabel ensemble,
students, metrics) with this folder's `teachers.yaml` added to its teacher pool; a run differs
from another only in its `recover` teacher block (variants/*.yaml), its init (the sibling's
variants/init_*.yaml: real lr 0.05, noise lr 0.25) and its seed. The pool of teachers is
squeezed once by the sweep's first point and loaded by every run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.fmnist_shared.runlist import RunSpec, load_yaml, pool_dir, set_dotted
from prism_hpc.config.load import deep_merge

HERE = Path(__file__).resolve().parent
SIBLING = HERE.parent / "fmnist_prism_vs_sre2l"  # base.yaml and variants/ (read, not copied)
NUM_CLASSES = 10
POOLS = ("bn_only", "bn_ln", "ln_only")  # variants/<pool>.yaml; bn_only is the reference
INITS = ("real", "noise")


@dataclass(frozen=True)
class Mode:
    name: str
    ipc: int
    rec_seeds: tuple[int, ...]
    student_seeds: tuple[int, ...]
    hard_seeds: tuple[int, ...]  # recovery seeds that also get a hard-label (syn-hard) run
    iterations: int  # recover.iterations of every image (iteration_step 0, as base.yaml)
    student_visits: int  # images per student (= steps x batch 50)
    squeeze_steps: int  # squeeze.max_steps of every teacher of the pool
    real_hard_ipc: int  # real-hard: the first N training images of each class, hard labels
    real_hard_epochs: int  # ... trained for this many epochs
    # the LN teachers' statistics pass (every run with an LN teacher makes its own): the first
    # N training images of each class, not all 6000
    norm_stats_per_class: int
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every run
    note: str = ""


MODES = {
    "full": Mode(
        "full", ipc=10, rec_seeds=(0, 1, 2), student_seeds=(0, 1), hard_seeds=(0,),
        iterations=60, student_visits=4000, squeeze_steps=250, real_hard_ipc=300,
        real_hard_epochs=3, norm_stats_per_class=1000,
        note="the experiment (README: ~35 min on 2 cores with --jobs 2)",
    ),
    "smoke": Mode(
        "smoke", ipc=2, rec_seeds=(0,), student_seeds=(0,), hard_seeds=(0,),
        iterations=10, student_visits=100, squeeze_steps=20, real_hard_ipc=5,
        real_hard_epochs=1, norm_stats_per_class=10,
        overrides={"students.eval_limit": 1000},
        note="SMOKE MODE: tiny sizes (squeeze 20 steps, IPC 2, 10 iterations, 100 student "
        "image visits, 1000 test images, real-hard on 5 images per class): proves the "
        "experiment end to end; the numbers mean nothing.",
    ),
}  # fmt: skip


def protocol(mode: Mode) -> dict:
    base = deep_merge(load_yaml(SIBLING / "base.yaml"), load_yaml(HERE / "teachers.yaml"))
    base["name"] = "fmnist_norm_priors"
    set_dotted(base, "squeeze.max_steps", mode.squeeze_steps)
    set_dotted(base, "recover.iterations", mode.iterations)
    set_dotted(base, "recover.norm_stats.limit_per_class", mode.norm_stats_per_class)
    # a run's slices in one recover task: one process start instead of IPC (the images do not
    # depend on how slices are grouped into tasks)
    set_dotted(base, "recover.slices_per_task", mode.ipc)
    for dotted, value in mode.overrides.items():
        set_dotted(base, dotted, value)
    return base


def student_epochs(mode: Mode, ipc: int) -> int:
    return max(1, round(mode.student_visits / (ipc * NUM_CLASSES)))


def hard_overlay() -> dict:
    """Hard labels (DD-Ranking's syn-hard / real-hard): the sibling's Table 2 evaluation
    (relabel none, CE with the mixed CutMix target, cosine lr); its recover keys are not used."""
    t2 = load_yaml(SIBLING / "variants" / "table2_common.yaml")
    return {"relabel": t2["relabel"], "students": t2["students"]}


def build_specs(mode: Mode, out: Path) -> list[RunSpec]:
    """Every run of `mode`, the pool first: the pool x init x recovery-seed grid, the syn-hard
    partners, one random real subset (rdm-any) and one real-hard run."""
    from prism_hpc.cost import squeezed_teachers

    base = protocol(mode)
    pool = pool_dir(out).resolve()
    pool_cfg = copy.deepcopy(base)
    pool_cfg.update(name="pool", method="teacher pool")
    specs = [RunSpec("pool", "pool", "pool", 0, "-", 0, pool_cfg)]
    squeezed = squeezed_teachers(base)

    def make(name: str, group: str, variant: str, overlays: list[dict], seed: int,
             ipc: int, student_seeds) -> RunSpec:  # fmt: skip
        cfg = copy.deepcopy(base)
        for overlay in overlays:
            cfg = deep_merge(cfg, overlay)
        cfg.update(name=name, seed=seed)
        cfg["squeeze"]["enabled"] = False
        for t in squeezed:
            cfg["teachers"][t]["weights"] = str(pool / "teachers" / f"{t}.pt")
        epochs = student_epochs(mode, ipc)
        cfg["recover"]["ipc"] = ipc
        cfg["students"].update(seeds=list(student_seeds), epochs=epochs, eval_every=epochs)
        cfg["relabel"]["epochs_per_task"] = epochs
        return RunSpec(name, group, variant, ipc, cfg["recover"]["init"], seed, cfg)

    def grid(variant: str, init: str) -> list[dict]:
        return [load_yaml(HERE / "variants" / f"{variant}.yaml"),
                load_yaml(SIBLING / "variants" / f"init_{init}.yaml")]  # fmt: skip

    for seed in mode.rec_seeds:  # seed-major: a cut-short run has whole seeds first
        for init in INITS:
            for v in POOLS:
                specs.append(make(f"{v}-{init}-s{seed}", "method", v, grid(v, init), seed,
                                  mode.ipc, mode.student_seeds))  # fmt: skip
            if seed in mode.hard_seeds:
                for v in POOLS:
                    specs.append(make(f"{v}-{init}-hard-s{seed}", "hard", v,
                                      [*grid(v, init), hard_overlay()], seed, mode.ipc,
                                      mode.student_seeds[:1]))  # fmt: skip
    real = load_yaml(SIBLING / "variants" / "real_images.yaml")
    specs.append(make("random_real-s0", "rdm", "random_real", [real], 0, mode.ipc,
                      mode.student_seeds))  # fmt: skip
    cfg = make(
        "real-hard",
        "real",
        "real_hard",
        [real, hard_overlay()],
        0,
        mode.real_hard_ipc,
        mode.student_seeds[:1],
    ).config
    cfg["recover"]["slices_per_task"] = mode.real_hard_ipc  # init_only slices: one task
    epochs = mode.real_hard_epochs
    cfg["students"].update(epochs=epochs, eval_every=epochs)
    cfg["relabel"]["epochs_per_task"] = epochs
    specs.append(RunSpec("real-hard", "real", "real_hard", mode.real_hard_ipc, "real", 0, cfg))
    return specs


def validate(specs: list[RunSpec]) -> None:
    """Every merged config through the real schema (pydantic only, no torch)."""
    from prism_hpc.config.load import config_from_dict

    for s in specs:
        config_from_dict(s.config, f"{s.name} (merged config)")
