"""REHEARSAL.md: header (versions, host, git, commands), per-stage table, checks. Used by run.py."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

import yaml
from rehearsal_stats import human_bytes, human_s

PACKAGES = ("prism-hpc", "torch", "torchvision", "numpy", "h5py", "pillow", "submitit", "pydantic")
WALL_NOTE = (
    "wall: first task start -> last task end of the stage (sacct Start/End, one batched sacct "
    "call for all jobs; it excludes the queue wait before the stage). peak RSS per task: sacct "
    "MaxRSS of the job steps (the srun step of the ranks; the maximum over the stage's tasks "
    "and ranks), sampled every 2 s by jobacct_gather/linux (`--acctg-freq=task=2` from "
    "rehearsal.yaml), so a peak between samples can be missed. export runs on the submit host "
    "(`prism-hpc export`): wall and peak RSS (VmHWM) of that process. files/bytes: recover/, "
    "distilled.h5 (+marker), relabel/, students/, report.md + figures/ + diversity + report/ "
    "marker, the export folder."
)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _git(repo: Path) -> str:
    def git(*a):
        return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,
                              check=False).stdout.strip()  # fmt: skip

    sha = git("rev-parse", "HEAD") or "unknown"
    dirty = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    return f"`{sha}`" + (f" + uncommitted changes in {len(dirty)} path(s)" if dirty else " (clean)")


def _versions() -> str:
    out = [f"python {platform.python_version()}"]
    for pkg in PACKAGES:
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False)
    if slurm.returncode == 0:
        out.append(slurm.stdout.strip())
    return ", ".join(out)


def _host() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    load = ", load {:.1f} {:.1f} {:.1f} at the end".format(*os.getloadavg())
    return f"{socket.gethostname()} ({platform.platform()}), {os.cpu_count()} CPUs{mem}{load}"


def _budgets(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return "n/a"
    c = yaml.safe_load(path.read_text())
    r, st, rl = c["recover"], c["students"], c["relabel"]
    res = c["resources"]
    return (
        f"{c['data']['num_classes']} classes at {c['data']['resolution']} px; IPC {r['ipc']}, "
        f"{r['iterations']} iteration(s) per batch of {r['classes_per_batch']} classes, teachers "
        f"{', '.join(c['teachers'])} (weights: random); relabel {', '.join(rl['teachers'])}, "
        f"{rl['epochs_per_task']} epoch(s) per task; students {st['archs']} x seeds "
        f"{st['seeds']}, {st['epochs']} epoch(s), batch {st['batch_size']} x accum "
        f"{st['grad_accum']}; ranks per task: recover {res['recover']['tasks_per_node']}, train "
        f"{res['train']['tasks_per_node']}"
    )


def render(*, args, started, driver_cmd, submit_cmd, conf, manifest, data_root, run_dir,
           export_dir, outcome, submit_s, pipeline_s, total_s, table, checks, says, gather,
           post, notes, repo) -> str:  # fmt: skip
    passed = sum(c.passed for c in checks)
    verdict = (f"**{passed}/{len(checks)} checks pass**" if outcome == "done"
               else f"**pipeline {outcome}**: no checks run")  # fmt: skip
    t = manifest["totals"]
    cluster = args.backend + (f", SLURM_CONF={conf}, JobAcctGatherType={gather}" if conf else "")
    data = (f"{manifest['num_classes']} classes, {t['train']} train + {t['val']} val images "
            f"(fake ImageNet, `{data_root}`)")  # fmt: skip
    lines = [
        "# ImageNet-1K rehearsal",
        "",
        (
            f"`configs/in1k_ipc50.yaml` through the real SLURM path on a fake ImageNet; {verdict};"
            f" submit -> all stages done in {human_s(pipeline_s)} (the whole driver: "
            f"{human_s(total_s)}). Written by `benchmarks/in1k_rehearsal/run.py` "
            "(see README.md there)."
        ),
        "",
        "| | |",
        "|---|---|",
        f"| date | {started.strftime('%Y-%m-%d %H:%M:%S')} UTC |",
        f"| host | {_cell(_host())} |",
        f"| git | {_git(repo)} |",
        f"| versions | {_cell(_versions())} |",
        f"| cluster | {cluster} |",
        f"| data | {data} |",
        f"| budgets | {_cell(_budgets(run_dir))} |",
        f"| run dir | `{run_dir}` |",
        f"| export | `{export_dir}` |",
        "",
        "Driver:",
        "",
        "```",
        driver_cmd,
        "```",
        "",
        "The command it ran (cwd: the repository root; every leaf of `rehearsal.yaml` as a `--set`):",
        "",
        "```",
        submit_cmd,
        "```",
        "",
        f"`submit` returned in {submit_s:.1f} s.",
        "",
        "## Per stage",
        "",
        "| stage | jobs | tasks x ranks | wall | longest task | peak RSS per task | files | bytes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        ranks = row.get("ranks_per_task")
        tasks = row.get("tasks")
        shape = f"{tasks if tasks is not None else 'n/a'} x {ranks if ranks else '?'}"
        rss = human_bytes(row.get("peak_rss"))
        if row.get("rss_source") and row["rss_source"] != "sacct MaxRSS":
            rss += f" ({row['rss_source']})"
        lines.append(
            f"| {row['stage']} | {_cell(' '.join(row.get('jobs', [])) or 'n/a')} | {shape} | "
            f"{human_s(row.get('wall_s'))} | {human_s(row.get('task_max_s'))} | {_cell(rss)} | "
            f"{row['files']} | {human_bytes(row['bytes'])} |"
        )
    lines += [
        "",
        WALL_NOTE,
        "",
    ]
    if gather and gather != "jobacct_gather/linux":
        lines += [
            (
                f"The cluster runs `JobAcctGatherType={gather}`: sacct has no MaxRSS, so peak "
                "RSS is what the product recorded itself (where it records one) or n/a. "
                "`slurm/localcluster.sh` now writes `jobacct_gather/linux`; restart the cluster "
                "(`down`, `up`) to measure it."
            ),
            "",
        ]
    lines += ["## Checks", "", "| check | result | measured | expected |", "|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {_cell(c.name)} | {'PASS' if c.passed else '**FAIL**'} | "
                     f"{_cell(c.measured)} | {_cell(c.expected)} |")  # fmt: skip
    if not checks:
        lines.append(f"| pipeline | **FAIL** | {outcome} | every stage done |")
    if says:
        lines += ["", "What the report says about the classes its figures show:", ""]
        lines += [f"> {s[:300]}" for s in says]
    if post:
        lines += ["", "Commands after the pipeline:", ""]
        for name, p in post.items():
            last = (p["output"].strip().splitlines() or [""])[-1]
            lines.append(f"- `prism-hpc {name}`: rc {p['rc']}, {p['wall_s']:.1f} s, peak RSS "
                         f"{human_bytes(p['peak_rss'])}: {last}")  # fmt: skip
    if notes:
        lines += ["", "## Problems", ""] + [f"- {_cell(n)}" for n in notes]
    return "\n".join(lines) + "\n"
