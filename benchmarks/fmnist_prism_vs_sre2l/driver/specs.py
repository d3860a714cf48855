"""The benchmark's run list: modes, and per run the merged config (base.yaml + variants/);
`benchmarks.fmnist_shared.runlist` turns it into the sweep spec that runs it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.fmnist_shared.runlist import RunSpec, load_yaml, pool_dir, set_dotted
from prism_hpc.config.load import deep_merge
from prism_hpc.cost import squeezed_teachers

HERE = Path(__file__).resolve().parent.parent  # benchmarks/fmnist_prism_vs_sre2l
REPO = HERE.parent.parent
VARIANTS = HERE / "variants"
NUM_CLASSES = 10  # Fashion-MNIST

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
    pool = pool_dir(out).resolve()
    pool_cfg = copy.deepcopy(base)
    pool_cfg.update(name="pool", method="teacher pool")
    specs = [RunSpec("pool", "pool", "pool", 0, "-", 0, pool_cfg)]
    squeezed = squeezed_teachers(base)

    def make(name, group, overlays, ipc, init, seed, student_seeds) -> RunSpec:
        cfg = copy.deepcopy(base)
        for overlay in overlays:
            cfg = deep_merge(cfg, load_yaml(VARIANTS / f"{overlay}.yaml"))
        epochs = student_epochs(base, mode, ipc)
        cfg["name"] = name
        cfg["seed"] = seed
        cfg["squeeze"]["enabled"] = False
        for t in squeezed:
            cfg["teachers"][t]["weights"] = str(pool / "teachers" / f"{t}.pt")
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
    from prism_hpc.config.load import config_from_dict

    for s in specs:
        config_from_dict(s.config, f"{s.name} (merged config)")
