"""Where everything lives inside a run directory (DESIGN §3).

The one module that spells the run directory's folder and file names: stages write there,
the cluster layer logs there and `status`, `report`, `export` and `verify` read there, so
they all ask this module instead of joining names of their own, and a renamed folder cannot
leave one reader behind. Names only: no I/O beyond globbing, nothing heavy imported (`status`
and `plan` stay torch-free). The names are a contract with existing run directories: a
change here moves files of runs already on disk (`tests/test_layout.py` pins them).

    RUN/config.yaml config.input.yaml provenance.json state.json plan.json .lock
        data_index/<split>.json.gz      slurm/<stage>[.<chunk>].sbatch eval_array.sbatch
        logs/<stage>/...                canary/attempt<k>/{canary.done,config.yaml,run/}
        teachers/<name>.{pt,json,done}  statistics/<teacher>.{pt,done}  rank/order.{npz,done}
        recover/slice_NNNNN.{h5,done}   recover/partial/slice_NNNNN/chunk_CCCC.npz
        distilled.h5 distilled.done     relabel/epochs_SSSS-EEEE.{h5,done}
        students/<arch>/seed<k>/{ckpt.pt,metrics.json,progress.json,eval.json,.done}
        <stage>/<key>.done              diversity.json diversity_features.npz
        report.md report.json results.md results.csv figures/  tracking/{tensorboard,wandb}/
"""

from __future__ import annotations

from pathlib import Path

PathLike = Path | str

DISTILLED_NAME = "distilled.h5"
MARKER_SUFFIX = ".done"
# students/<arch>/seed<k>/: ckpt.pt (the restart point), metrics.json, then the .done marker
CKPT_NAME = "ckpt.pt"
METRICS_NAME = "metrics.json"
DONE_NAME = ".done"
PROGRESS_NAME = "progress.json"  # a student's epoch/loss/ETA, read by `status` (no torch)
EVAL_NAME = "eval.json"  # a checkpoint evaluated without training (the evaluation array)


# ------------------------------------------------------------------ the run's own records
def config_file(run_dir: PathLike) -> Path:
    """The resolved config: what makes a folder a run directory."""
    return Path(run_dir) / "config.yaml"


def input_config_file(run_dir: PathLike) -> Path:
    return Path(run_dir) / "config.input.yaml"


def provenance_file(run_dir: PathLike) -> Path:
    return Path(run_dir) / "provenance.json"


def state_file(run_dir: PathLike) -> Path:
    return Path(run_dir) / "state.json"


def plan_file(run_dir: PathLike) -> Path:
    return Path(run_dir) / "plan.json"


def lock_file(run_dir: PathLike) -> Path:
    return Path(run_dir) / ".lock"


def stage_marker(run_dir: PathLike, stage: str, key: str) -> Path:
    """A stage's marker when the stage keeps no files of its own to put it beside."""
    return Path(run_dir) / stage / f"{key}{MARKER_SUFFIX}"


# ------------------------------------------------------------------------ data index
def data_index_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "data_index"


def data_index(run_dir: PathLike, split: str) -> Path:
    return data_index_dir(run_dir) / f"{split}.json.gz"


def data_index_files(run_dir: PathLike) -> list[Path]:
    return sorted(data_index_dir(run_dir).glob("*.json.gz"))


# ------------------------------------------------------------------ scripts and logs
def slurm_scripts_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "slurm"


def stage_script(scripts_dir: PathLike, stage: str, suffix: str = "") -> Path:
    """A stage array's rendered script in `slurm_scripts_dir(run)` (or `plan --out`'s)."""
    return Path(scripts_dir) / f"{stage}{suffix}.sbatch"


def eval_array_script(scripts_dir: PathLike) -> Path:
    return Path(scripts_dir) / "eval_array.sbatch"


def logs_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "logs"


def stage_logs(run_dir: PathLike, stage: str) -> Path:
    return logs_dir(run_dir) / stage


def task_log(run_dir: PathLike, stage: str, key: str, rank: int | None = None) -> Path:
    """A local task's log (one per rank when the item runs on several)."""
    suffix = f".rank{rank}" if rank is not None else ""
    return stage_logs(run_dir, stage) / f"{key}{suffix}.log"


def sbatch_log(run_dir: PathLike, stage: str, prefix: str = "sbatch") -> Path:
    """`--output` of a rendered array script (%A, %a: SLURM's job and array index)."""
    return stage_logs(run_dir, stage) / f"{prefix}_%A_%a.log"


def submitit_logs(run_dir: PathLike, stage: str, attempt: int, array: int) -> Path:
    """submitit's folder for one array of one submission attempt."""
    return stage_logs(run_dir, stage) / f"attempt{attempt}_array{array}"


# --------------------------------------------------------------------------- canary
def canary_dir(run_dir: PathLike, attempt: int) -> Path:
    """Everything a canary job writes (never counted as work of the run)."""
    return Path(run_dir) / "canary" / f"attempt{attempt}"


def canary_marker(run_dir: PathLike, attempt: int) -> Path:
    return canary_dir(run_dir, attempt) / "canary.done"


def canary_run(canary_folder: PathLike) -> Path:
    """The scratch run the canary drives through the pipeline, inside its folder."""
    return Path(canary_folder) / "run"


def canary_logs(run_dir: PathLike, attempt: int, shape: int) -> Path:
    """submitit's folder for the canary of one resource shape."""
    return logs_dir(run_dir) / "canary" / f"attempt{attempt}_{shape}"


# ------------------------------------------------------------------ teachers, statistics, rank
def teachers_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "teachers"


def teacher_weights(run_dir: PathLike, name: str) -> Path:
    return teachers_dir(run_dir) / f"{name}.pt"


def teacher_info(run_dir: PathLike, name: str) -> Path:
    """What squeeze recorded about a teacher it trained (accuracy, steps)."""
    return teachers_dir(run_dir) / f"{name}.json"


def teacher_infos(run_dir: PathLike) -> list[Path]:
    return sorted(teachers_dir(run_dir).glob("*.json"))


def teacher_marker(run_dir: PathLike, key: str) -> Path:
    return teachers_dir(run_dir) / f"{key}{MARKER_SUFFIX}"


def statistics_file(run_dir: PathLike, teacher: str) -> Path:
    return Path(run_dir) / "statistics" / f"{teacher}.pt"


def statistics_marker(run_dir: PathLike, teacher: str) -> Path:
    return statistics_file(run_dir, teacher).with_suffix(MARKER_SUFFIX)


def rank_order(run_dir: PathLike) -> Path:
    return Path(run_dir) / "rank" / "order.npz"


def rank_marker(run_dir: PathLike) -> Path:
    return rank_order(run_dir).with_suffix(MARKER_SUFFIX)


# --------------------------------------------------------------------------- recover
def recover_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "recover"


def _slice_name(slice_index: int) -> str:
    return f"slice_{slice_index:05d}"


def recover_shard(run_dir: PathLike, slice_index: int) -> Path:
    return recover_dir(run_dir) / f"{_slice_name(slice_index)}.h5"


def recover_partial_dir(run_dir: PathLike) -> Path:
    """Finished chunks of slices in progress (removed once the slice's shard is written)."""
    return recover_dir(run_dir) / "partial"


def slice_partial_dir(run_dir: PathLike, slice_index: int) -> Path:
    return recover_partial_dir(run_dir) / _slice_name(slice_index)


def partial_chunk(partial_dir: PathLike, slice_index: int, chunk: int) -> Path:
    """A finished chunk's restart file under a partial folder (`recover_partial_dir(run)`)."""
    return Path(partial_dir) / _slice_name(slice_index) / f"chunk_{chunk:04d}.npz"


# -------------------------------------------------------------------- distilled, relabel
def distilled_file(run_dir: PathLike) -> Path:
    return Path(run_dir) / DISTILLED_NAME


def distilled_marker(run_dir: PathLike) -> Path:
    return Path(run_dir) / "distilled.done"


def relabel_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "relabel"


def softlabel_key(start: int, stop: int) -> str:
    """The [start, stop) epoch chunk's name: its file stem and its item key."""
    return f"epochs_{start:04d}-{stop - 1:04d}"


def softlabel_chunk(run_dir: PathLike, start: int, stop: int) -> Path:
    return relabel_dir(run_dir) / f"{softlabel_key(start, stop)}.h5"


def softlabel_marker(run_dir: PathLike, start: int, stop: int) -> Path:
    return relabel_dir(run_dir) / f"{softlabel_key(start, stop)}{MARKER_SUFFIX}"


def softlabel_chunks(run_dir: PathLike) -> list[Path]:
    return sorted(relabel_dir(run_dir).glob("epochs_*.h5"))


# -------------------------------------------------------------------------- students
def students_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "students"


def safe_arch(arch: str) -> str:
    """One path component from an architecture name (timm names may hold ':' or '/')."""
    return arch.replace(":", "_").replace("/", "_")


def student_dir(run_dir: PathLike, arch: str, seed: int) -> Path:
    return students_dir(run_dir) / safe_arch(arch) / f"seed{seed}"


def student_files(run_dir: PathLike, name: str) -> list[Path]:
    """The file `name` (e.g. METRICS_NAME) of every student that has one, sorted."""
    return sorted(students_dir(run_dir).glob(f"*/seed*/{name}"))


# ------------------------------------------------------------------ results and report
def results_md(run_dir: PathLike) -> Path:
    return Path(run_dir) / "results.md"


def results_csv(run_dir: PathLike) -> Path:
    return Path(run_dir) / "results.csv"


def report_md(run_dir: PathLike) -> Path:
    """The report; `prism-hpc report RUNS --out DIR` writes the same names into DIR."""
    return Path(run_dir) / "report.md"


def report_json(run_dir: PathLike) -> Path:
    return Path(run_dir) / "report.json"


def figures_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "figures"


def diversity_json(run_dir: PathLike) -> Path:
    return Path(run_dir) / "diversity.json"


def diversity_features(run_dir: PathLike) -> Path:
    """Features of a few classes, for the report's embedding figure."""
    return Path(run_dir) / "diversity_features.npz"


# -------------------------------------------------------------------------- tracking
def tracking_dir(run_dir: PathLike) -> Path:
    return Path(run_dir) / "tracking"


def tensorboard_dir(run_dir: PathLike, stage_part: str, key_part: str) -> Path:
    """An item's TensorBoard folder; both parts must already be single path components."""
    return tracking_dir(run_dir) / "tensorboard" / stage_part / key_part


def wandb_dir(run_dir: PathLike) -> Path:
    """The folder handed to `wandb.init(dir=...)`."""
    return tracking_dir(run_dir) / "wandb"


def wandb_offline_dir(run_dir: PathLike) -> Path:
    """W&B's own `wandb/` level inside `wandb_dir`, where offline runs end up."""
    return wandb_dir(run_dir) / "wandb"
