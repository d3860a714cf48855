"""Measurements of a finished rehearsal run: per-stage wall time and peak RSS from one batched
`sacct` call, files and bytes per stage from the run directory. Used by run.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path

SLURM_STAGES = ("recover", "collect", "relabel", "train", "report")
STAGES = (*SLURM_STAGES, "export")
SACCT_FIELDS = ("JobID", "JobName", "State", "Start", "End", "ElapsedRaw", "MaxRSS", "NTasks")
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED"}


def stage_jobs(run_dir: Path) -> dict[str, list[str]]:
    """stage -> array job ids of every submission (state.json, append-only)."""
    out: dict[str, list[str]] = {}
    for event in json.loads((run_dir / "state.json").read_text()):
        if event.get("event") == "submit":
            out.setdefault(event["stage"], []).extend(a["job_id"] for a in event["arrays"])
    return out


def _rss_bytes(text: str) -> int | None:
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", text.strip())
    if not m:
        return None
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _owner(job_id: str) -> str:
    """'123_4.0' -> '123' (the array job), '123.batch' -> '123'."""
    return job_id.split(".")[0].split("_")[0]


def sacct_rows(job_ids: list[str], settle_s: float = 60.0) -> list[dict]:
    """Accounting rows (allocations and steps) of `job_ids`: ONE sacct call per attempt,
    repeated (every 3 s) only until every allocation row has finished and has an End time
    (slurmdbd receives the final rows a few seconds after a job ends)."""
    cmd = ["sacct", "--parsable2", "--noheader", "-j", ",".join(job_ids),
           "--format=" + ",".join(SACCT_FIELDS)]  # fmt: skip
    deadline = time.monotonic() + settle_s
    rows: list[dict] = []
    while True:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if res.returncode == 0:
            rows = [dict(zip(SACCT_FIELDS, line.split("|"))) for line in res.stdout.splitlines()]
            allocs = [r for r in rows if "." not in r["JobID"]]
            seen = {_owner(r["JobID"]) for r in allocs}
            settled = all(
                (r["State"].split() or [""])[0] not in UNFINISHED
                and r["End"] not in ("", "Unknown")
                for r in allocs
            )
            if settled and seen >= set(job_ids):
                return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(3)


def _ts(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def slurm_stage_stats(run_dir: Path) -> tuple[dict[str, dict], list[dict]]:
    """Per SLURM stage: jobs, tasks, wall (first Start -> last End), longest task, peak RSS of
    one task (MaxRSS of the job steps; None if the cluster does not gather it)."""
    jobs = stage_jobs(run_dir)
    all_ids = [j for ids in jobs.values() for j in ids]
    rows = sacct_rows(all_ids) if all_ids else []
    stats = {}
    for stage, ids in jobs.items():
        mine = [r for r in rows if _owner(r["JobID"]) in ids]
        allocs = [r for r in mine if "." not in r["JobID"]]
        steps = [r for r in mine if "." in r["JobID"]]
        starts = [t for t in (_ts(r["Start"]) for r in allocs) if t is not None]
        ends = [t for t in (_ts(r["End"]) for r in allocs) if t is not None]
        rss = [b for b in (_rss_bytes(r["MaxRSS"]) for r in steps) if b]
        # the srun step (".0") holds the ranks; the batch step is the shell script
        rank_rss = [b for r in steps if r["JobID"].split(".")[-1].isdigit()
                    for b in [_rss_bytes(r["MaxRSS"])] if b]  # fmt: skip
        stats[stage] = {
            "jobs": ids,
            "tasks": len(allocs),
            "states": sorted({(r["State"].split() or ["?"])[0] for r in allocs}),
            "ranks_per_task": max(
                (
                    int(r["NTasks"])
                    for r in steps
                    if r["JobID"].split(".")[-1].isdigit() and r["NTasks"].isdigit()
                ),
                default=None,
            ),
            "wall_s": (max(ends) - min(starts)) if starts and ends else None,
            "task_max_s": max(
                (int(r["ElapsedRaw"]) for r in allocs if r["ElapsedRaw"].isdigit()), default=None
            ),
            "first_start": min(starts) if starts else None,
            "last_end": max(ends) if ends else None,
            "peak_rss": max(rank_rss or rss) if (rank_rss or rss) else None,
            "rss_source": "sacct MaxRSS" if (rank_rss or rss) else None,
        }
    return stats, rows


def gather_type() -> str:
    res = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                         timeout=30, check=False)  # fmt: skip
    m = re.search(r"^JobAcctGatherType\s*=\s*(\S+)", res.stdout, re.MULTILINE)
    return m.group(1) if m else "unknown"


def marker_rss(run_dir: Path, stage: str) -> int | None:
    """Fallback peak memory recorded by the product itself (recover: `peak_memory_mb` of rank
    0 in each slice's provenance = ru_maxrss on CPU). Other stages record none."""
    if stage != "recover":
        return None
    import h5py

    peaks = []
    for path in sorted((run_dir / "recover").glob("slice_*.h5")):
        with h5py.File(path, "r") as f:
            for key in ("provenance", "slice_provenance"):
                if key in f.attrs:
                    prov = json.loads(f.attrs[key])
                    for p in prov if isinstance(prov, list) else [prov]:
                        if isinstance(p, dict) and p.get("peak_memory_mb"):
                            peaks.append(p["peak_memory_mb"] * 2**20)
    return int(max(peaks)) if peaks else None


def stage_outputs(run_dir: Path, export_dir: Path) -> dict[str, list[Path]]:
    """The files each stage wrote (markers included)."""

    def tree(p: Path) -> list[Path]:
        if p.is_file():
            return [p]
        return sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []

    collect = [p for p in run_dir.iterdir() if p.name.startswith("distilled")]
    collect += tree(run_dir / "collect")
    report = [p for p in run_dir.iterdir() if p.name.startswith(("report.md", "diversity"))]
    report += tree(run_dir / "figures") + tree(run_dir / "report")
    return {
        "recover": tree(run_dir / "recover"),
        "collect": sorted(set(collect)),
        "relabel": tree(run_dir / "relabel"),
        "train": tree(run_dir / "students"),
        "report": sorted(set(report)),
        "export": tree(export_dir),
    }


def local_stage_walls(outputs: dict[str, list[Path]], start: float) -> dict[str, dict]:
    """Local backend (stages run one after another, no scheduler): a stage's wall time is from
    the previous stage's last output to its own last output (file mtimes)."""
    stats, prev = {}, start
    for stage in SLURM_STAGES:
        times = [p.stat().st_mtime for p in outputs.get(stage, [])]
        if times:
            stats[stage] = {"wall_s": max(times) - prev, "jobs": ["(local: from file times)"]}
            prev = max(times)
    return stats


def file_stats(files: list[Path]) -> tuple[int, int]:
    return len(files), sum(os.path.getsize(p) for p in files)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_s(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 10:
        return f"{s:.1f} s"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"
