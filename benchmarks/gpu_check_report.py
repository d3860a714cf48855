"""The Python half of benchmarks/gpu_check.sh: the tiny pipeline config, one JSON row per
step, and the markdown table the rows become.

Why a file of its own: the shell script owns the order, the timeouts and the exit status;
this only reads what each step left behind (doctor's JSON, a run directory, a bench line) and
never fails on a missing or broken output: a step that died is a row saying so, and the
table is rewritten after every step, so a check killed half-way still leaves its results.

    python benchmarks/gpu_check_report.py config --device cuda --data DIR --out tiny.yaml
    python benchmarks/gpu_check_report.py record ROWS --kind pipeline --name fp32 ...
    python benchmarks/gpu_check_report.py render ROWS --doctor doctor.json --out result.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

DEMO = Path(__file__).resolve().parent.parent / "configs" / "fmnist_demo.yaml"
TAIL_LINES = 15

# Every stage at a tiny budget: on a GPU the demo's four teachers at 32 px; on a CPU (the
# script's own check) two small teachers at 16 px and fewer steps, minutes on 2 cores.
BUDGET = {
    "cuda": {"data": {"train_limit_per_class": 500},
             "squeeze": {"max_steps": 60},
             "recover": {"ipc": 2, "iterations": 40, "iteration_step": 5,
                         "iteration_period": 2, "log_every": 10},
             "relabel": {"epochs_per_task": 4},
             "students": {"epochs": 4, "eval_every": 4, "eval_limit": 2000}},
    "cpu": {"data": {"train_limit_per_class": 30, "resolution": 16},
            "squeeze": {"max_steps": 4, "batch_size": 32, "cpu_threads": 1},
            "recover": {"ipc": 2, "iterations": 3, "iteration_step": 1,
                        "iteration_period": 2, "log_every": 1, "bn_pool": ["shufflenet_v2_x0_5"],
                        "cpu_threads": 1},
            "relabel": {"epochs_per_task": 1, "teachers": ["resnet18", "shufflenet_v2_x0_5"]},
            "students": {"epochs": 1, "eval_every": 1, "eval_limit": 100, "width": 0.25,
                         "workers": 0, "eval_workers": 0, "cpu_threads": 1},
            "metrics": {"extractor": None},
            "resources": {"recover": {"concurrency": 1}}},
}  # fmt: skip
CPU_TEACHERS = ("resnet18", "shufflenet_v2_x0_5")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def make_config(device: str, data: str, out: Path) -> Path:
    """The demo config at the tiny budget of `device` (cuda | cpu), reading `data`."""
    cfg = yaml.safe_load(DEMO.read_text())
    cfg = _merge(cfg, BUDGET[device])
    cfg["name"] = f"gpu_check_{device}"
    cfg["data"]["root"] = data
    if device == "cpu":
        cfg["teachers"] = {n: cfg["teachers"][n] for n in CPU_TEACHERS}
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


# --------------------------------------------------------------------------- reading outputs
def _json(path: Path | None) -> Any:
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, ValueError):
        return None


def _last_json_line(path: Path | None) -> dict | None:
    """The last line of a log that parses as a JSON object (`bench recover --json`)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines() if path else []
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def _ran_in(run: Path) -> dict[str, str]:
    """The precision each stage resolved and recorded: recover (slice provenance in
    distilled.h5), relabel (the label files' markers), students (metrics.json)."""
    found: dict[str, set[str]] = {"recover": set(), "relabel": set(), "students": set()}
    try:
        import h5py

        with h5py.File(run / "distilled.h5", "r") as f:
            slices = json.loads(f.attrs.get("slice_provenance", "[]"))
        found["recover"] |= {str(s.get("precision")) for s in slices if s.get("precision")}
    except (OSError, ValueError, ImportError, TypeError):
        pass
    for marker in sorted((run / "relabel").glob("*.done")):
        text = json.dumps(_json(marker) or {})
        found["relabel"] |= {p for p in ("fp32", "bf16", "fp16") if f'"precision": "{p}"' in text}
    for metrics in sorted(run.glob("students/*/seed*/metrics.json")):
        resolved = ((_json(metrics) or {}).get("precision") or {}).get("resolved")
        if resolved:
            found["students"].add(resolved)
    return {k: "/".join(sorted(v)) or "?" for k, v in found.items()}


def _pipeline(run: Path, status: Path | None) -> dict[str, Any]:
    stages = [s for s in (_json(status) or []) if s.get("total")]
    done = ", ".join(f"{s['stage']} {s['done']}/{s['total']}" for s in stages)
    top1 = [((_json(m) or {}).get("final") or {}).get("top1")
            for m in sorted(run.glob("students/*/seed*/metrics.json"))]  # fmt: skip
    return {"stages": done or "?", "ran_in": _ran_in(run),
            "top1": next((t for t in top1 if t is not None), None)}  # fmt: skip


def _bench(log: Path) -> dict[str, Any]:
    """What `bench recover --json` printed; `ran` is the precision it resolved and timed."""
    r = _last_json_line(log) or {}
    keys = (
        "precision_reason",
        "ms_per_iter",
        "images_iters_per_s",
        "flop_per_s",
        "fraction_of_peak",
        "peak_mem_mb",
        "device_name",
        "teachers",
        "res",
        "batch",
    )
    return {"ran": r.get("precision"), **{k: r.get(k) for k in keys}}


def record(args: argparse.Namespace) -> None:
    """Append one step's row to the JSON-lines file, with what its outputs say."""
    row: dict[str, Any] = {k: getattr(args, k) for k in
                           ("kind", "name", "precision", "ranks", "status", "seconds", "log")}  # fmt: skip
    if args.kind == "pipeline" and args.run_dir:
        row.update(_pipeline(Path(args.run_dir), Path(args.status_json or "")))
    elif args.kind == "bench" and args.log:
        row.update(_bench(Path(args.log)))
    with open(args.rows, "a") as f:
        f.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------- the table
def _rows(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or value == "":
        return "–"
    return format(value, spec) if spec else str(value)


def _device_lines(doctor: dict | None, device: str) -> list[str]:
    if not doctor:
        return [f"Device: {device} (doctor gave no JSON: see its row below)"]
    cap = doctor.get("capability") or {}
    cc = cap.get("cuda_capability")
    what = f"{cap.get('name', '?')}" + (f", compute capability {cc[0]}.{cc[1]}" if cc else "")
    if cap.get("cpu_flags") is not None and cap.get("kind") == "cpu":
        what += f", flags {'+'.join(cap['cpu_flags']) or 'none'}"
    auto = doctor.get("precision") or {}
    torch_line = next((c["detail"] for c in doctor.get("checks", []) if c["name"] == "torch"), "")
    failed = ", ".join(doctor.get("failed") or []) or "none"
    return [f"Device: {what}; {torch_line}", (f"`precision: auto` here: {auto.get('auto', '?')} "
            f"({auto.get('reason', '?')}); doctor's failed checks: {failed}")]  # fmt: skip


def _pipeline_table(rows: list[dict]) -> list[str]:
    out = [("| run | asked | ranks | status | s | stages done | ran in (recover / relabel / "
           "students) | student top-1 |"), "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ran = r.get("ran_in") or {}
        ran_in = (
            " / ".join(ran.get(k, "?") for k in ("recover", "relabel", "students")) if ran else "–"
        )
        out.append(f"| {r['name']} | {r['precision']} | {r['ranks']} | {r['status']} | "
                   f"{_fmt(r.get('seconds'), '.0f')} | {_fmt(r.get('stages'))} | {ran_in} | "
                   f"{_fmt(r.get('top1'), '.4f')} |")  # fmt: skip
    return out


def _bench_table(rows: list[dict]) -> list[str]:
    out = [("| asked | ran in | status | ms / iter | images x iters / s | TFLOP/s | % of peak | "
           "peak MiB |"), "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        tflops = r["flop_per_s"] / 1e12 if r.get("flop_per_s") else None
        peak = 100 * r["fraction_of_peak"] if r.get("fraction_of_peak") else None
        out.append(f"| {r['precision']} | {_fmt(r.get('ran'))} | "
                   f"{r['status']} | {_fmt(r.get('ms_per_iter'), '.1f')} | "
                   f"{_fmt(r.get('images_iters_per_s'), '.0f')} | {_fmt(tflops, '.2f')} | "
                   f"{_fmt(peak, '.1f')} | {_fmt(r.get('peak_mem_mb'), '.0f')} |")  # fmt: skip
    return out


def _tail(path: str | None) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines() if path else []
    except OSError:
        return "(no log)"
    return "\n".join(lines[-TAIL_LINES:]) or "(empty log)"


def render(args: argparse.Namespace) -> None:
    """The markdown results file (rewritten after every step)."""
    rows = _rows(Path(args.rows))
    pipes = [r for r in rows if r["kind"] == "pipeline"]
    bench = [r for r in rows if r["kind"] == "bench"]
    bad = [r for r in rows if r["status"] != "ok"]
    lines = [f"# GPU check, {args.title}", "",
             f"`bash benchmarks/gpu_check.sh {args.command}` ({args.note})", "",
             *_device_lines(_json(Path(args.doctor)) if args.doctor else None, args.device), "",
             "## The whole Fashion-MNIST pipeline at a tiny budget", "",
             ("Every stage (squeeze, recover, collect, relabel, train, report) with "
             "`recover.precision`, `relabel.precision` and `students.precision` set to the "
             "asked value; \"ran in\" is what each stage recorded (slice provenance, the label "
             "files' markers, metrics.json). The budget is a smoke test's: the accuracy says "
             "only that training ran."), "", *_pipeline_table(pipes), "",
             "## Recovery speed (`prism-hpc bench recover`)", "",
             f"{_bench_setup(bench)}", "", *_bench_table(bench), ""]  # fmt: skip
    if bad:
        lines += ["## Steps that did not finish", ""]
        for r in bad:
            head = f"**{r['kind']} {r['name']}**: {r['status']}"
            if not r.get("log"):  # skipped: never ran
                lines += [head, ""]
                continue
            lines += [f"{head}, log `{r['log']}` (last lines):", "",
                      "```", _tail(r["log"]), "```", ""]  # fmt: skip
    Path(args.out).write_text("\n".join(lines))


def _bench_setup(rows: list[dict]) -> str:
    r = next((r for r in rows if r.get("teachers")), None)
    if r is None:
        return "No bench row finished."
    return (f"Teachers {', '.join(r['teachers'])}, {r['res']} px, batch {r['batch']}, on "
            f"{r.get('device_name')}; median ms per iteration, peak memory of one step.")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("--device", choices=("cuda", "cpu"), required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True)
    r = sub.add_parser("record")
    r.add_argument("rows")
    for flag in ("kind", "name", "precision", "status", "log", "run-dir", "status-json"):
        r.add_argument(f"--{flag}", default=None)
    r.add_argument("--ranks", type=int, default=1)
    r.add_argument("--seconds", type=float, default=None)
    m = sub.add_parser("render")
    m.add_argument("rows")
    for flag in ("doctor", "out", "title", "device", "command", "note"):
        m.add_argument(f"--{flag}", default="")
    args = parser.parse_args(argv)
    if args.cmd == "config":
        print(make_config(args.device, args.data, Path(args.out)))
    elif args.cmd == "record":
        record(args)
    else:
        render(args)


if __name__ == "__main__":
    sys.exit(main())
