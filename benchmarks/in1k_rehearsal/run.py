#!/usr/bin/env python
"""ImageNet-1K rehearsal: `configs/in1k_ipc50.yaml`, budgets shrunk by `rehearsal.yaml`, on a
fake 1000-class ImageNet, through the real SLURM path of the local cluster.

    .venv/bin/python benchmarks/in1k_rehearsal/run.py [--out DIR] [--classes 1000]
        [--resolution 224] [--backend slurm] [--quick] [--report PATH] [--set KEY=VALUE ...]

1. makes the fake ImageNet under OUT (make_fake_imagenet.py) unless it is there;
2. brings up / uses the local SLURM cluster (`slurm/localcluster.sh up`, exports SLURM_CONF;
   a cluster that already answers through $SLURM_CONF is used as it is);
3. ONE `prism-hpc submit configs/in1k_ipc50.yaml --set ...` (every leaf of rehearsal.yaml as a
   `--set`, printed): recover array (2 gloo ranks per task) -> collect -> relabel array ->
   DDP students (2 ranks) -> report; then polls `prism-hpc status RUN --json` every 15 s;
4. `prism-hpc export RUN OUT/exports/...` and `prism-hpc collect RUN` (results table);
5. writes REHEARSAL.md (and prints it): versions, host, git SHA, the command, per stage wall
   time (one batched sacct call), peak RSS per task (sacct MaxRSS; the product's own
   provenance where the cluster does not gather it, labelled), files and bytes written, and
   the checks (PASS/FAIL with the measured value). Exit 1 if any check fails.

`--quick`: the same code path at 20 classes and 96 px (a few minutes; the slurm-marked test).
96, not 64: at <= 64 px prism_hpc.models gives every network a small-input stem (stride-1
3x3 first conv, no max-pool), a different model layout from the 224 px run and ~16x the
compute per pixel; above 64 px the stems are ImageNet's, as at 224.
REHEARSAL.md goes to benchmarks/in1k_rehearsal/ only for the full shape (1000 classes, 224 px,
no extra --set); otherwise to OUT/REHEARSAL-<classes>c-<res>px.md unless --report says where.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from rehearsal_checks import run_checks
from rehearsal_report import render
from rehearsal_stats import (
    STAGES,
    file_stats,
    gather_type,
    local_stage_walls,
    marker_rss,
    slurm_stage_stats,
    stage_outputs,
)

CONFIG = Path("configs/in1k_ipc50.yaml")  # relative to REPO (the printed command)
OVERRIDES = HERE / "rehearsal.yaml"
LOCALCLUSTER = REPO / "slurm" / "localcluster.sh"
FAKE = HERE / "make_fake_imagenet.py"
POLL_S = 15  # never poll the scheduler faster
QUICK = {"classes": 20, "resolution": 96}
FULL = {"classes": 1000, "resolution": 224}


def say(msg: str) -> None:
    print(f"[rehearsal +{time.monotonic() - T0:.0f}s] {msg}", flush=True)


T0 = time.monotonic()


# ---------------------------------------------------------------- the override file -> --set


def leaves(node, prefix: tuple[str, ...] = ()):
    """(dotted key, value) for every leaf; lists and empty mappings are leaves."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, (*prefix, str(key)))
    else:
        yield ".".join(prefix), node


def yaml_text(value) -> str:
    """A value as `--set` reads it back (YAML-typed): plain strings stay plain."""
    if isinstance(value, str):
        try:
            plain = value and value.strip() == value and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain else json.dumps(value)
    return json.dumps(value)  # JSON is YAML: true, 2, 0.5, null, ["resnet18"]


def override_pairs(path: Path, **fill) -> list[str]:
    data = yaml.safe_load(path.read_text()) or {}
    pairs = []
    for key, value in leaves(data):
        if isinstance(value, str) and "{" in value:
            value = yaml.safe_load(value.format(**fill))  # "{classes}" -> 20 (an int)
        pairs.append(f"{key}={yaml_text(value)}")
    return pairs


# ---------------------------------------------------------------- processes


def _rel(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(REPO))
    except ValueError:
        return str(path)


def prism() -> str:
    exe = Path(sys.executable).with_name("prism-hpc")
    return _rel(exe) if exe.exists() else "prism-hpc"


def run(cmd: list[str], timeout: float = 600, echo: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         check=False)  # fmt: skip
    if echo:
        for text in (res.stdout, res.stderr):
            if text.strip():
                print(text.rstrip(), flush=True)
    return res


def _hwm(pid: int) -> int | None:
    """VmHWM (peak RSS since exec) of a live process, in bytes."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (output to `log`): wall seconds, rc and its peak RSS (VmHWM polled every
    0.05 s: ru_maxrss of a child would include the driver's own pages at fork time)."""
    start = time.monotonic()
    peak = 0
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, _hwm(proc.pid) or 0)
            time.sleep(0.05)
    text = log.read_text()
    if text.strip():
        print(text.rstrip(), flush=True)
    return {"wall_s": time.monotonic() - start, "rc": proc.returncode, "peak_rss": peak or None,
            "output": text}  # fmt: skip


def ensure_fake_imagenet(root: Path, classes: int) -> dict:
    if not (root / "manifest.json").is_file():
        say(f"making the fake ImageNet ({classes} classes) in {root}")
        res = run([sys.executable, str(FAKE), str(root), "--classes", str(classes)])
        if res.returncode != 0:
            raise SystemExit(f"rehearsal: make_fake_imagenet.py failed (rc {res.returncode})")
    manifest = json.loads((root / "manifest.json").read_text())
    if manifest["num_classes"] != classes:
        raise SystemExit(f"rehearsal: {root} has {manifest['num_classes']} classes, not {classes}")
    return manifest


def ensure_cluster() -> str:
    """SLURM_CONF of a cluster that answers: the caller's, else the local one (brought up)."""
    conf = os.environ.get("SLURM_CONF")
    if conf and run(["sinfo", "-h", "-o", "%a"], timeout=30, echo=False).returncode == 0:
        say(f"using the SLURM cluster of SLURM_CONF={conf}")
        return conf
    say("bringing up the local SLURM cluster (slurm/localcluster.sh up)")
    up = run(["bash", str(LOCALCLUSTER), "up"], timeout=900)
    if up.returncode != 0:
        raise SystemExit(f"rehearsal: slurm/localcluster.sh up failed (rc {up.returncode})")
    env = run(["bash", str(LOCALCLUSTER), "env"], echo=False).stdout
    m = re.search(r"SLURM_CONF=(\S+)", env)
    if not m:
        raise SystemExit(f"rehearsal: cannot parse `localcluster.sh env`: {env!r}")
    os.environ["SLURM_CONF"] = m.group(1).strip("'\"")
    return os.environ["SLURM_CONF"]


def status_rows(run_dir: Path) -> list[dict] | None:
    res = run([prism(), "status", str(run_dir), "--json"], timeout=300, echo=False)
    if res.returncode != 0:
        say(f"status failed (rc {res.returncode}): {res.stderr.strip()[-300:]}")
        return None
    return json.loads(res.stdout)


def wait(run_dir: Path, timeout_s: float, poll_s: float) -> tuple[str, list[dict]]:
    """Poll `prism-hpc status --json` until every stage is done, an item failed or timeout."""
    deadline = time.monotonic() + timeout_s
    last, rows = None, []
    while True:
        rows = status_rows(run_dir) or rows
        line = "  ".join(
            f"{r['stage']} {r['done']}/{r['total']}"
            + (f" ({len(r['running'])} running)" if r.get("running") else "")
            + (f" FAILED {r['failed']}" if r.get("failed") else "")
            for r in rows
        )
        if line != last:
            say(line)
            last = line
        if rows and all(r["done"] == r["total"] for r in rows):
            return "done", rows
        if any(r.get("failed") for r in rows):
            return "failed", rows
        if time.monotonic() > deadline:
            return "timeout", rows
        time.sleep(poll_s)


def show_failures(run_dir: Path, rows: list[dict]) -> list[str]:
    notes = []
    for r in rows:
        for idx in r.get("failed", []):
            path = run([prism(), "logs", str(run_dir), r["stage"], str(idx)], echo=False)
            log = Path(path.stdout.strip().splitlines()[0]) if path.stdout.strip() else None
            tail = log.read_text().splitlines()[-25:] if log and log.is_file() else []
            print(f"---- {r['stage']} item {idx}: {log}\n" + "\n".join(tail), flush=True)
            err = [t for t in tail if "Error" in t or "error" in t][-1:] or tail[-1:]
            notes.append(f"{r['stage']} item {idx} failed ({log}): {' '.join(err)[:300]}")
    return notes


# ---------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "runs" / "in1k_rehearsal",
                   help="fake data, run dirs and exports go here [runs/in1k_rehearsal]")  # fmt: skip
    p.add_argument("--classes", type=int, help="[1000; --quick 20]")
    p.add_argument("--resolution", type=int, help="[224; --quick 96]")
    p.add_argument("--backend", choices=("slurm", "local"), default="slurm")
    p.add_argument("--quick", action="store_true", help="20 classes at 96 px, same code path")
    p.add_argument("--report", type=Path, help="where REHEARSAL.md goes (see the docstring)")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="extra override after rehearsal.yaml's (repeatable)")  # fmt: skip
    p.add_argument("--timeout-min", type=float, help="give up waiting after this [120; quick 20]")
    p.add_argument("--poll", type=float, default=POLL_S, help="status poll interval, >= 15 s")
    args = p.parse_args(argv)
    shape = QUICK if args.quick else FULL
    args.classes = args.classes or shape["classes"]
    args.resolution = args.resolution or shape["resolution"]
    args.timeout_min = args.timeout_min or (20 if args.quick else 120)
    args.poll = max(args.poll, POLL_S)
    args.out = args.out.resolve()
    full = (args.classes, args.resolution) == (1000, 224) and not args.sets and not args.quick
    if args.report is None:
        name = "REHEARSAL.md" if full else f"REHEARSAL-{args.classes}c-{args.resolution}px.md"
        args.report = HERE / name if full else args.out / name
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = datetime.now(timezone.utc)
    given = list(argv) if argv is not None else sys.argv[1:]
    driver_cmd = shlex.join([_rel(Path(sys.executable)), _rel(Path(__file__)), *given])
    args.out.mkdir(parents=True, exist_ok=True)
    fill = {"out": str(args.out), "classes": args.classes, "resolution": args.resolution,
            "recover_mem_gb": 20 if args.resolution >= 160 else 8}  # fmt: skip
    pairs = override_pairs(OVERRIDES, **fill) + list(args.sets)
    root_pair = next(p for p in pairs if p.startswith("data.root="))
    data_root = Path(yaml.safe_load(root_pair.split("=", 1)[1]))
    manifest = ensure_fake_imagenet(data_root, args.classes)
    conf = ensure_cluster() if args.backend == "slurm" else None

    stamp = started.strftime("%Y%m%d-%H%M%S")
    tag = f"{args.classes}c-{args.resolution}px-{stamp}"
    run_dir = args.out / "runs" / "in1k_ipc50" / tag
    export_dir = args.out / "exports" / tag
    cmd = [prism(), "submit", str(CONFIG)]
    for pair in pairs:
        cmd += ["--set", pair]
    cmd += ["--backend", args.backend, "--run-dir", str(run_dir)]
    submit_cmd = shlex.join(cmd)
    say(f"running (cwd {REPO}):\n{submit_cmd}")
    t_submit = time.monotonic()
    sub = run(cmd, timeout=args.timeout_min * 60 if args.backend == "local" else 600)
    submit_s = time.monotonic() - t_submit
    notes: list[str] = []
    outcome, rows = "submit failed", []
    if sub.returncode != 0:
        notes.append(f"submit failed (rc {sub.returncode}): {sub.stderr.strip()[-500:]}")
    else:
        say(f"submit returned in {submit_s:.1f} s; waiting (status every {args.poll:.0f} s)")
        try:
            outcome, rows = wait(run_dir, args.timeout_min * 60, args.poll)
        except KeyboardInterrupt:
            say("interrupted: cancelling the run's jobs")
            run([prism(), "cancel", str(run_dir)])
            return 130
        say(f"pipeline {outcome} after {time.monotonic() - t_submit:.0f} s")
        notes += show_failures(run_dir, rows)
        if outcome == "timeout":
            run([prism(), "cancel", str(run_dir)])
    pipeline_s = time.monotonic() - t_submit

    post = {}
    if outcome == "done":
        export_dir.parent.mkdir(parents=True, exist_ok=True)
        say(f"prism-hpc export {run_dir} {export_dir}")
        post["export"] = timed([prism(), "export", str(run_dir), str(export_dir)],
                               args.out / f"export-{tag}.log")  # fmt: skip
        say(f"prism-hpc collect {run_dir}")
        post["collect"] = timed([prism(), "collect", str(run_dir)], args.out / f"collect-{tag}.log")

    stats: dict[str, dict] = {}
    gather = None
    if run_dir.is_dir() and (run_dir / "state.json").is_file() and args.backend == "slurm":
        gather = gather_type()
        stats, _ = slurm_stage_stats(run_dir)
    outputs = stage_outputs(run_dir, export_dir) if run_dir.is_dir() else {}
    if args.backend == "local" and outputs:
        stats = local_stage_walls(outputs, started.timestamp())
    table = []
    for stage in STAGES:
        s = dict(stats.get(stage, {}))
        if stage == "export" and "export" in post:
            ex = post["export"]
            s.update(wall_s=ex["wall_s"], task_max_s=ex["wall_s"], tasks=1, ranks_per_task=1,
                     peak_rss=ex["peak_rss"], rss_source="VmHWM of the command",
                     jobs=["(submit host)"])  # fmt: skip
        if s.get("peak_rss") is None and run_dir.is_dir():
            fallback = marker_rss(run_dir, stage)
            if fallback:
                s.update(peak_rss=fallback, rss_source="recover provenance peak_memory_mb (rank 0)")
        s["files"], s["bytes"] = file_stats(outputs.get(stage, []))
        table.append({"stage": stage, **s})

    checks, says = [], []
    if outcome == "done":
        checks, says = run_checks(run_dir, export_dir, data_root, args.classes,
                                  _ipc(run_dir), args.resolution)  # fmt: skip
    ok = outcome == "done" and bool(checks) and all(c.passed for c in checks)
    text = render(
        args=args, started=started, driver_cmd=driver_cmd, submit_cmd=submit_cmd, conf=conf,
        manifest=manifest, data_root=data_root, run_dir=run_dir, export_dir=export_dir,
        outcome=outcome, submit_s=submit_s, pipeline_s=pipeline_s, total_s=time.monotonic() - T0,
        table=table, checks=checks, says=says, gather=gather, post=post, notes=notes, repo=REPO,
    )  # fmt: skip
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text, flush=True)
    say(f"wrote {args.report}: {'ALL CHECKS PASS' if ok else 'FAILED'}")
    return 0 if ok else 1


def _ipc(run_dir: Path) -> int:
    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["recover"]["ipc"])


if __name__ == "__main__":
    sys.exit(main())
