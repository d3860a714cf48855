"""`doctor` checks that need a config: data, teachers, the run root's file system, scheduler.

They answer, on the machine where the job will run (a compute node, through `srun`), what
`submit`'s preflight answers on the login node, plus what only shows up at run time: how fast
images decode, whether HDF5 works on that file system, whether the disk has room. Nothing is
written into a run directory: the data index is built in a temporary folder, the HDF5 test
file in a temporary folder under `run_root` that is removed again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from prism_hpc.config.schema import Config
from prism_hpc.errors import UserError
from prism_hpc.hardware.checks import Check, first_line

DECODE_SAMPLE = 64  # images decoded to time the data path
SCHEDULER_TIMEOUT_S = 10.0


def _open_train(cfg: Config, index_dir: Path) -> tuple[Any, str]:
    """The training source as a run would see it: ImageFolder data listed once into a
    data index (in `index_dir`, not a run dir) and read back from it."""
    from prism_hpc.data.listing import read_listing
    from prism_hpc.data.sources import open_source, write_data_index

    note = ""
    written = write_data_index(cfg.data, index_dir)
    for listing in map(read_listing, written):
        if listing.skipped:
            note = f"; {listing.skipped} hidden or non-image entr(ies) skipped in {listing.folder}"
    return open_source(cfg.data, "train", index_dir if written else None), note


def _counts_problem(cfg: Config, source: Any) -> str | None:
    from prism_hpc.data.sources import num_classes_of

    n = num_classes_of(cfg.data)
    if source.num_classes != n:
        return f"data.num_classes = {n}: the data has {source.num_classes} classes"
    counts = np.bincount(source.labels, minlength=n)
    if cfg.recover.ipc != "all" and cfg.recover.init == "real":
        need = cfg.recover.ipc_start + cfg.recover.ipc
        if counts.min() < need:
            return f"recover.ipc = {cfg.recover.ipc}: needs {need} images per class, the " \
                   f"smallest class has {int(counts.min())}"  # fmt: skip
    return None


def data_checks(cfg: Config, index_dir: Path) -> tuple[list[Check], Any]:
    """data (readable, index buildable, class counts), data_test, data_decode; returns the
    checks and a small decoded sample (None when the data is not readable)."""
    from prism_hpc.data.sources import open_source

    root = cfg.data.root
    try:
        start = time.perf_counter()
        source, note = _open_train(cfg, index_dir)
        listed = time.perf_counter() - start
        problem = _counts_problem(cfg, source)
    except (UserError, OSError) as err:
        return [Check("data", "fail", f"{root}: {first_line(err)}"),
                Check("data_decode", "skip", "data not readable")], None  # fmt: skip
    if problem:
        return [
            Check("data", "fail", problem),
            Check("data_decode", "skip", "data check failed"),
        ], None
    data = {"images": len(source), "classes": source.num_classes, "list_s": round(listed, 2)}
    checks = [Check("data", "ok", f"{root}: {len(source)} training images in "
                    f"{source.num_classes} classes ({cfg.data.source}){note}", data)]  # fmt: skip
    try:
        test = open_source(cfg.data, "test", index_dir)
        checks.append(Check("data_test", "ok", f"{len(test)} evaluation images"))
    except (UserError, OSError) as err:
        checks.append(Check("data_test", "warn", f"evaluation data: {first_line(err)} "
                            "(students cannot be evaluated until it is there)"))  # fmt: skip
    n = min(DECODE_SAMPLE, len(source))
    picks = np.linspace(0, len(source) - 1, n).astype(np.int64)
    try:
        start = time.perf_counter()
        source.load(picks[:1])  # Fashion-MNIST: reads the whole IDX file once
        first = time.perf_counter() - start
        start = time.perf_counter()
        sample = source.load(picks)
        took = max(time.perf_counter() - start, 1e-6)
    except Exception as err:  # noqa: BLE001 - a broken image raises whatever PIL raises
        checks.append(Check("data_decode", "fail", f"decoding a sample of {n}: {first_line(err)}"))
        return checks, None
    rate = n / took
    res = cfg.data.resolution
    detail = (f"{n} images decoded in {took * 1e3:.1f} ms ({rate:.0f} images/s at {res} px, "
              f"one thread; first read {first:.2f} s)")  # fmt: skip
    data = {"images_per_s": round(rate, 1), "first_read_s": round(first, 3)}
    checks.append(Check("data_decode", "ok", detail, data))
    return checks, sample


def _torchvision_cache_file(arch: str) -> Path:
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _fits(model: Any, sample: Any, num_classes: int) -> str:
    """One forward of two images; returns `1x32x32 -> 10 logits` or raises UserError."""
    import torch

    x = sample[:2]
    with torch.no_grad():
        out = model.eval()(x)
    if out.shape[-1] != num_classes:
        raise UserError(f"gives {out.shape[-1]} outputs for {num_classes} classes")
    return f"{'x'.join(map(str, x.shape[1:]))} -> {num_classes} logits"


def _teacher_check(cfg: Config, name: str, sample: Any, num_classes: int) -> Check:
    from prism_hpc.models.registry import load_weights
    from prism_hpc.models.teachers import build_untrained

    spec, key = cfg.teachers[name], f"teacher:{name}"
    try:
        model = build_untrained(cfg, spec)
        if spec.weights in ("squeeze", "random", "torchvision"):
            shape = _fits(model, sample, num_classes)
        else:
            path = Path(spec.weights).expanduser()
            load_weights(model, path, spec.key_map)
            return Check(key, "ok", f"{path} loads into {spec.arch}; "
                         f"{_fits(model, sample, num_classes)}")  # fmt: skip
    except (UserError, RuntimeError, ValueError) as err:
        return Check(key, "fail", f"{spec.arch}, weights {spec.weights}: {first_line(err)}")
    if spec.weights == "squeeze":
        return Check(key, "skip", f"trained by squeeze ({spec.arch} builds; {shape})")
    if spec.weights == "random":
        return Check(key, "skip", f"random weights ({spec.arch} builds; {shape})")
    cached = _torchvision_cache_file(spec.arch)
    if cached.is_file():
        return Check(key, "ok", f"torchvision weights cached at {cached}; {shape}")
    status = "fail" if cfg.offline else "warn"
    return Check(
        key,
        status,
        f"torchvision weights not cached at {cached}"
        + (" and `offline: true`" if cfg.offline else "; every task downloads them"),
    )


def teacher_checks(cfg: Config, sample: Any) -> list[Check]:
    """Each teacher's weights load into its architecture and take the data's images (random
    images of the configured shape when the data is not readable)."""
    import torch

    from prism_hpc.data.sources import num_classes_of

    try:
        n = num_classes_of(cfg.data)
    except UserError as err:
        return [Check(f"teacher:{t}", "skip", f"class count unknown: {first_line(err)}")
                for t in cfg.teachers]  # fmt: skip
    if sample is None:
        res, ch = cfg.data.resolution, cfg.data.channels
        sample = torch.rand(2, ch, res, res)
    return [_teacher_check(cfg, name, sample, n) for name in cfg.teachers]


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_root_checks(cfg: Config, storage_gb: float | None) -> list[Check]:
    """run_root writable with room for the plan's storage; HDF5 works on that file system."""
    root = Path(cfg.run_root).expanduser().absolute()
    base = _existing(root)
    where = str(root) if base == root else f"{root} (not made yet; checked at {base})"
    if not os.access(base, os.W_OK | os.X_OK):
        return [Check("run_root", "fail", f"{where}: not writable"),
                Check("hdf5", "skip", "run_root not writable")]  # fmt: skip
    free = shutil.disk_usage(base).free / 1e9
    data = {"free_gb": round(free, 2), "need_gb": storage_gb}
    if storage_gb is None:
        check = Check("run_root", "ok", f"{where}: writable, {free:.1f} GB free (storage "
                      "estimate not computed)", data)  # fmt: skip
    elif free < storage_gb:
        check = Check("run_root", "fail", f"{where}: {free:.1f} GB free, the plan writes "
                      f"{storage_gb:.2f} GB", data)  # fmt: skip
    else:
        check = Check("run_root", "ok", f"{where}: writable, {free:.1f} GB free, the plan "
                      f"writes {storage_gb:.2f} GB", data)  # fmt: skip
    return [check, _hdf5_check(base)]


def _hdf5_check(base: Path) -> Check:
    import h5py

    try:
        folder = Path(tempfile.mkdtemp(prefix=".prism-doctor-", dir=base))
    except OSError as err:
        return Check("hdf5", "fail", f"{base}: cannot make a temporary folder: {err}")
    path = folder / "probe.h5"
    want = np.arange(4096, dtype=np.uint8).reshape(4, 32, 32)
    try:
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=want, chunks=(1, 32, 32), compression="lzf")
        with h5py.File(path, "r") as f:
            same = bool(np.array_equal(f["x"][:], want))
        path.unlink()
    except OSError as err:
        hint = "; try HDF5_USE_FILE_LOCKING=FALSE" if "lock" in str(err).lower() else ""
        return Check("hdf5", "fail", f"{path}: {first_line(err)}{hint}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not same:
        return Check("hdf5", "fail", f"{path}: read back different data")
    return Check("hdf5", "ok", f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version}): "
                 f"create, write, read, delete in {base}")  # fmt: skip


def _answers(cmd: list[str]) -> str | None:
    """None when the command answers within the timeout, else why not (one line)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S,
                              check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not answer in {SCHEDULER_TIMEOUT_S:g} s"
    except OSError as err:
        return f"`{cmd[0]}`: {err.strerror or err}"
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`{' '.join(cmd)}` exited {done.returncode}: {tail}"
    return None


def scheduler_check(cfg: Config) -> Check:
    """SLURM answers when the run will use it; absent on the local backend is no failure."""
    if cfg.backend in ("local", "debug"):
        return Check("scheduler", "skip", f"backend {cfg.backend}: no scheduler used")
    if not shutil.which("sbatch"):
        if cfg.backend == "slurm":
            return Check("scheduler", "fail", "backend slurm: `sbatch` not found on PATH")
        return Check("scheduler", "skip", "backend auto: no `sbatch` on PATH, runs are local")
    for cmd in (["sinfo", "-h", "-o", "%P %a %D %T"], ["squeue", "-h", "-o", "%i"]):
        why = _answers(cmd)
        if why:
            if cfg.backend == "slurm":
                return Check("scheduler", "fail", why)
            return Check("scheduler", "warn", f"backend auto: {why}; runs go to this machine")
    return Check("scheduler", "ok", "sinfo and squeue answer")


@contextmanager
def _one_thread():
    """These checks test shapes and files, not speed; on a shared node two intra-op threads
    stall (a 30 ms teacher forward took 1 s under load here), one does not."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def config_checks(cfg: Config, storage_gb: float | None = None) -> list[Check]:
    """Every check that needs the config, in the order a run meets them."""
    with tempfile.TemporaryDirectory(prefix="prism-doctor-index-") as tmp, _one_thread():
        checks, sample = data_checks(cfg, Path(tmp))
        checks += teacher_checks(cfg, sample)
    checks += run_root_checks(cfg, storage_gb)
    checks.append(scheduler_check(cfg))
    return checks
