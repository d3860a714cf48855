"""Student training speed on CPU: images/s of optimizer steps, before vs after (issue 13).

    .venv/bin/python benchmarks/train_speed.py                  # the committed table
    .venv/bin/python benchmarks/train_speed.py --quick          # 32 px ResNet-18 only

"Before" is the trainer of a git commit (default: the one before the DataLoader pipeline),
extracted with `git archive` into a temp folder and imported from there in a subprocess;
"after" is this checkout. Every run is a fresh subprocess that trains `--epochs` epochs of
`--images` random 3-channel images (1000 classes, offline fp16 soft labels from a fixed fake
ensemble, batch 50 in 2 micro-batches = the official recipe, AdamW, mse_gt), with
checkpoint writing switched off in both; the first epoch is warm-up, the others are timed
(wall time between the trainer's end-of-epoch callbacks). Runs alternate before/after and
the table reports medians. The loss column compares the per-epoch training losses of the
same inputs (same plans, labels, initialisation) between the two trainers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEFORE_REF = "3fd088498f9d673087612f87cb7f2d965ad6937b"  # trainer before issue 13
NUM_CLASSES = 1000
VARIANTS = {
    "before": {},
    "after": {"channels_last": True, "workers": 1},
    "after-nchw": {"workers": 1},  # the CPU default layout (NCHW): bitwise = before
    "after-bf16": {"channels_last": True, "workers": 1, "precision": "bf16"},
}


def base_config(res: int, images: int, epochs: int) -> dict:
    return {
        "name": "train-speed",
        "data": {"resolution": res, "channels": 3, "num_classes": NUM_CLASSES,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "teachers": {"resnet18": {"arch": "resnet18"}},  # never run: fake stored labels
        "recover": {"logit_teacher": "resnet18", "bn_always": ["resnet18"], "bn_pool": []},
        "relabel": {"teachers": ["resnet18"], "epochs_per_task": epochs, "storage": "fp16"},
        "students": {"epochs": epochs, "batch_size": 50, "grad_accum": 2, "eval_every": 1000,
                     "eval_workers": 0, "cpu_threads": None},
    }  # fmt: skip


# --------------------------------------------------------------------------- child process
def child(args: argparse.Namespace) -> None:
    import h5py
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from prism_hpc.config.load import config_from_dict, deep_merge
    from prism_hpc.relabel.offline import write_relabel_chunk
    from prism_hpc.store.distilled import DistilledSet
    from prism_hpc.store.softlabels import chunk_marker, chunk_path
    from prism_hpc.train import loop, trainer
    from prism_hpc.workflow import TaskEnv

    overrides = json.loads(args.overrides)
    cfg_dict = base_config(args.res, args.images, args.epochs)
    cfg = config_from_dict(deep_merge(cfg_dict, {"students": overrides}))
    run_dir = Path(args.run_dir)
    if not (run_dir / "distilled.h5").is_file():  # same pixels for every tree (seeded)
        run_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        with h5py.File(run_dir / "distilled.h5", "w") as f:
            shape = (args.images, 3, args.res, args.res)
            f.create_dataset("images", data=rng.integers(0, 256, shape, dtype=np.uint8),
                             chunks=(1, 3, args.res, args.res))  # fmt: skip
            f.create_dataset("labels", data=np.arange(args.images) % NUM_CLASSES)
            f.attrs["num_classes"] = NUM_CLASSES
            f.attrs["mean"], f.attrs["std"] = cfg_dict["data"]["mean"], cfg_dict["data"]["std"]
        distilled = DistilledSet(run_dir / "distilled.h5")
        g = torch.Generator().manual_seed(1)
        fake = lambda x: 3 * torch.randn(len(x), NUM_CLASSES, generator=g)
        path = chunk_path(run_dir, 0, args.epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_relabel_chunk(cfg, path, range(args.epochs), distilled, fake, log=lambda m: None)
        chunk_marker(run_dir, 0, args.epochs).write_text("{}")
        distilled.close()

    class NoEval:
        def __len__(self) -> int:
            return 0

        def batches(self, **_):
            return iter(())

    loop.checkpoint = lambda *a: None  # time steps, not checkpoint writes
    stamps: list[float] = []
    cpu: list[float] = []  # this process's CPU time: robust to other load on a shared machine
    out = Path(tempfile.mkdtemp(prefix="train-speed-"))
    env = TaskEnv(run_dir, device=torch.device(args.device), log=lambda s: None,
                  progress=lambda info: (stamps.append(time.perf_counter()),
                                         cpu.append(time.process_time())))  # fmt: skip
    m = trainer.train_student(cfg, env, args.arch, 0, out, loop.TrainHooks(eval_data=NoEval()))
    timed = stamps[-1] - stamps[0]
    print(json.dumps({"images_per_s": (len(stamps) - 1) * args.images / timed,
                      "images_per_cpu_s": (len(cpu) - 1) * args.images / (cpu[-1] - cpu[0]),
                      "losses": [t["loss"] for t in m["train"]]}))  # fmt: skip


# --------------------------------------------------------------------------- parent
def extract(ref: str, folder: Path) -> Path:
    """The `prism_hpc` package of commit `ref` in `folder` (importable from there)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "prism_hpc"],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run_once(tree: Path, run_dir: Path, res: int, arch: str, overrides: dict,
             a: argparse.Namespace) -> dict:  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads))  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--res", str(res),
           "--arch", arch, "--images", str(a.images), "--epochs", str(a.epochs),
           "--threads", str(a.threads), "--run-dir", str(run_dir), "--device", a.device,
           "--overrides", json.dumps(overrides)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run failed ({tree}, {res} px, {arch}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--cases", default="32:resnet18,224:resnet18,32:resnet50,224:resnet50",
                   help="res:arch,... to measure")  # fmt: skip
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of " + ",".join(VARIANTS))
    p.add_argument("--images", type=int, default=100, help="images per epoch (2 steps of 50)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    p.add_argument("--reps", type=int, default=3, help="alternated runs per variant")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (main process)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU check (untested "
                   "here: no GPU on the development machine)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="loader workers of the after rows "
                   "(default 1; a GPU wants more)")  # fmt: skip
    p.add_argument("--before-ref", default=BEFORE_REF)
    p.add_argument("--quick", action="store_true", help="32 px ResNet-18, 2 reps")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = p.parse_args()
    if a.child:
        return child(a)
    if a.quick:
        a.cases, a.reps = "32:resnet18", 2
    variants = ["before"] + [v for v in a.variants.split(",") if v in VARIANTS and v != "before"]
    work = Path(tempfile.mkdtemp(prefix="train-speed-"))
    (work / "before").mkdir()
    (work / "after").mkdir()  # a snapshot: edits during a long run do not leak into it
    subprocess.run(["cp", "-r", str(REPO / "prism_hpc"), str(work / "after")], check=True)
    trees = {"before": extract(a.before_ref, work / "before"), "after": work / "after"}
    rows = []
    t_start = time.time()
    for case in a.cases.split(","):
        res, arch = int(case.split(":")[0]), case.split(":")[1]
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for rep in range(a.reps):
            order = variants if rep % 2 == 0 else variants[::-1]  # alternate the order too
            for v in order:
                tree = trees["before" if v == "before" else "after"]
                run_dir = work / f"{'before' if v == 'before' else 'after'}-{res}"
                over = dict(VARIANTS[v])
                if v != "before" and a.workers is not None:
                    over["workers"] = a.workers
                results[v].append(run_once(tree, run_dir, res, arch, over, a))
                print(f"{res} px {arch} {v}: {results[v][-1]['images_per_s']:.2f} img/s",
                      flush=True)  # fmt: skip
        base = statistics.median(r["images_per_s"] for r in results["before"])
        ref_losses = results["before"][0]["losses"]
        base_cpu = statistics.median(r.get("images_per_cpu_s", 0) for r in results["before"])
        for v in variants:
            med = statistics.median(r["images_per_s"] for r in results[v])
            med_cpu = statistics.median(r.get("images_per_cpu_s", 0) for r in results[v])
            losses = results[v][0]["losses"]
            diff = max(abs(x - y) / abs(y) for x, y in zip(losses, ref_losses))
            rows.append((res, arch, v, med, med / base, med_cpu, med_cpu / max(base_cpu, 1e-9),
                         diff, losses,
                         [round(r["images_per_s"], 2) for r in results[v]]))  # fmt: skip
    lines = [
        ("| px | student | trainer | images/s (median) | x before | images per main-process "
         "CPU-s | x before | max rel. loss diff | losses per epoch | runs (images/s) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res, arch, v, med, ratio, mcpu, rcpu, diff, losses, runs in rows:
        lines.append(f"| {res} | {arch} | {v} | {med:.2f} | {ratio:.2f} | {mcpu:.2f} | "
                     f"{rcpu:.2f} | {diff:.1e} | "
                     f"{', '.join(f'{x:.4f}' for x in losses)} | {runs} |")  # fmt: skip
    note = (f"({time.time() - t_start:.0f} s; {a.reps} alternated runs per variant, "
            f"{a.threads} thread(s), {a.images} images x {a.epochs} epochs per run, the first "
            f"epoch warm-up; before = {a.before_ref[:10]})")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    print(note)
    if a.out:  # appended: one section per invocation
        with open(a.out, "a") as f:
            f.write(f"{table}\n\n{note}\n\n")


if __name__ == "__main__":
    main()
