"""`prism-hpc bench recover`: the recovery-step benchmark as a Typer sub-app.

Wired in `prism_hpc/cli.py` with `app.add_typer(bench_app, name="bench")`; command-line code
lives beside the CLI, the measurement itself in `prism_hpc.recover.bench`.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from prism_hpc.errors import UserError

bench_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Benchmarks on random data and randomly initialised teachers.",
)


@bench_app.callback()
def _group() -> None:
    """Benchmarks on random data and randomly initialised teachers."""


def _fmt_flops(v: float | None) -> str:
    if not v:
        return "n/a"
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f} FLOP"


def _precision_choice(requested: str, device: str):
    """The rule the recover stage applies (`hardware.capability`), so `auto` here times
    exactly what a run on this device would use; a bad device is one line (exit 2)."""
    from prism_hpc.hardware.capability import resolve_precision

    return resolve_precision(requested, device)


@bench_app.command()
def recover(
    teachers: str = typer.Option(
        "resnet18", help="Comma-separated architectures; the first is also the logit teacher."
    ),
    res: int = typer.Option(32, min=8, help="Image resolution (px)."),
    batch: int = typer.Option(10, min=1, help="Images per step (classes per chunk)."),
    iters: int = typer.Option(10, min=1, help="Timed iterations (after --warmup)."),
    warmup: int = typer.Option(3, min=0, help="Untimed iterations first."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    precision: str = typer.Option(
        "fp32", help="auto | fp32 | bf16 | fp16 (autocast; BN statistics/loss, CE, Adam in "
        "fp32). auto: what `recover.precision: auto` runs on this device.",
    ),
    pack: int = typer.Option(1, min=1, help="Chunks of --batch images optimised at once."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each teacher."),
    memory: str = typer.Option("joint", help="joint | sequential (per-teacher backward)."),
    threads: int | None = typer.Option(None, min=1, help="CPU intra-op threads."),
    no_memory: bool = typer.Option(False, "--no-memory", help="Skip the peak-memory probe."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    calibrate: bool = typer.Option(
        False, "--calibrate",
        help="Also time student steps and forwards; write all three as this device's "
        "throughputs to the calibration file that `plan` prefers over the device table, with "
        "the speed options' timings that `recover.pack: auto` and `students.channels_last: "
        "auto` read (pack 1 vs --pack, or 4 when --pack is 1; student NCHW vs channels_last).",
    ),
    calibration: str | None = typer.Option(
        None, help="Calibration file (default: $PRISM_HPC_CALIBRATION or the user cache)."
    ),
    gpu: str | None = typer.Option(None, help="Device-table name of this GPU (default: guessed)."),
    student: str = typer.Option("resnet18", help="--calibrate: student architecture timed."),
    student_width: float = typer.Option(1.0, help="--calibrate: the student's width."),
    student_batch: int = typer.Option(50, min=1, help="--calibrate: student batch size."),
) -> None:
    """Median ms per recovery iteration, throughput, FLOP/s and peak memory of one step."""
    from prism_hpc.recover.bench import BenchSpec, bench_recover

    for bad, message in (
        (precision not in ("auto", "fp32", "bf16", "fp16"),
         "--precision must be auto, fp32, bf16 or fp16"),
        (memory not in ("joint", "sequential"), "--memory must be joint or sequential"),
    ):
        if bad:  # one line and exit 2 (prism-hpc's main), not a traceback
            raise UserError(message)
    archs = [t.strip() for t in teachers.split(",") if t.strip()]
    if not archs:
        raise typer.BadParameter("--teachers needs at least one architecture")
    choice = _precision_choice(precision, device)
    precision = choice.precision
    if choice.warning:
        typer.echo(f"warning: {choice.warning}", err=True)
    spec = BenchSpec(archs, res, batch, device=device, memory=memory, precision=precision,
                     pack=pack, compile=compile, threads=threads)  # fmt: skip
    try:
        r = bench_recover(spec, iters, warmup=warmup, measure_memory=not no_memory)
    except (RuntimeError, ValueError) as err:
        raise UserError(str(err)) from None
    r["precision_reason"] = choice.reason
    if calibrate:
        student_spec = (student, student_width, student_batch)
        r["calibration"] = _calibrate(r, spec, calibration, gpu, student_spec)
    if as_json:
        typer.echo(json.dumps(r))
        return
    mem = (
        "n/a" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f} MiB ({r['memory_method']})"
    )
    typer.echo(
        f"teachers {','.join(r['teachers'])} | res {res} | batch {batch} | {r['device_name']}"
        + (f" ({r['threads']} thread(s))" if r["threads"] else "")
        + f" | {r['precision']} | pack {r['pack']} | compile {r['compile']} | memory {r['memory']}\n"
        f"  {r['ms_per_iter']:.2f} ms/iter (median of {iters}; mean {r['ms_per_iter_mean']:.2f}),"
        f" {r['ms_per_image_iteration']:.3f} ms per image-iteration\n"
        f"  {r['images_iters_per_s']:.1f} images x iterations / s\n"
        f"  {_fmt_flops(r['flops_per_iter'])} per iter, {_fmt_flops(r['flop_per_s'])}/s achieved"
        + (f" = {100 * r['fraction_of_peak']:.1f} % of peak" if r["fraction_of_peak"] else "")
        + f" (peak: {r['peak_source']})\n"
        f"  peak memory of one step: {mem}"
    )


def _calibrate(
    r: dict, spec, path: str | None, gpu: str | None, student_spec: tuple[str, float, int]
) -> dict:
    """FLOP/s of the timed recovery step (counted the way `plan` counts: `models.flops`), of a
    student training step and of a no-grad forward, written per kind to the calibration file."""
    from pathlib import Path

    from prism_hpc.cost.calibration import Measured, write_entry
    from prism_hpc.cost.devices import guess_device
    from prism_hpc.errors import UserError
    from prism_hpc.models.flops import ModelSpec, arch_cost, measure_step_flops
    from prism_hpc.recover.bench import num_classes_for

    archs, res, batch, threads = list(spec.teachers), spec.res, spec.batch, spec.threads
    student, student_width, student_batch = student_spec

    cpu = r["device_name"] == "cpu"
    name = "cpu" if cpu else (gpu or guess_device(r["device_name"]))
    if name is None:
        raise UserError(f"--calibrate: {r['device_name']!r} is not in the device table; pass --gpu")
    nc = num_classes_for(res)
    images = batch * r.get("pack", 1)  # a packed step optimises pack chunks of batch images
    per_iter = images * sum(arch_cost(a, res, 3, nc).recover_flops for a in archs)
    precision = r.get("precision", "fp32")
    used = r.get("threads") or threads
    rates = {"recover": per_iter / (r["ms_per_iter"] / 1e3)}
    setup = f", {used or '?'} thread(s)" if cpu else ""
    for kind in ("train", "infer"):
        m = measure_step_flops(ModelSpec(student, res, 3, nc, student_width), student_batch,
                               kind, device=r["device"], threads=threads)  # fmt: skip
        rates[kind] = m["flop_per_s"]
    target = Path(path) if path else None
    for kind, rate in rates.items():
        what = (f"{','.join(archs)}, res {res}, batch {batch}" if kind == "recover" else
                f"{student} x{student_width:g}, res {res}, batch {student_batch}")  # fmt: skip
        measured = Measured(rate, used if cpu else None, f"{what}{setup}", precision)
        target = write_entry(name, kind, measured, target)
    typer.echo(f"calibration: {name} " + ", ".join(
        f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()) + f" -> {target}", err=True)
    settings = _calibrate_settings(r, spec, student_spec, target)
    return {"device": name, "file": str(target), **{k: v for k, v in rates.items()},
            "settings": settings}  # fmt: skip


def _calibrate_settings(r: dict, spec, student_spec: tuple[str, float, int], target) -> dict:
    """The speed options' timings on this device (`hardware.tuning`): seconds per
    image-iteration at pack 1 and packed (the step just timed, and one more bench at the other
    pack), and a student training step in NCHW and channels_last."""
    from dataclasses import replace

    from prism_hpc.cost.calibration import write_setting
    from prism_hpc.hardware.capability import detect
    from prism_hpc.hardware.layout_probe import time_student_layouts
    from prism_hpc.hardware.tuning import CHANNELS_LAST, PACK, PACK_TRIED, device_key
    from prism_hpc.models.flops import ModelSpec
    from prism_hpc.recover.bench import bench_recover, num_classes_for, num_threads

    key = device_key(detect(r["device"]))
    other = 1 if spec.pack > 1 else PACK_TRIED
    again = bench_recover(replace(spec, pack=other), r["iters"], r["warmup"],
                          measure_memory=False, count=False)  # fmt: skip
    packs = {p: q["ms_per_image_iteration"] / 1e3 for p, q in ((spec.pack, r), (other, again))}
    what = f"{','.join(spec.teachers)}, res {spec.res}, batch {spec.batch}, {r['precision']}"
    write_setting(key, PACK, packs, f"{what}; s per image-iteration", target)
    student, width, batch = student_spec
    model = ModelSpec(student, spec.res, 3, num_classes_for(spec.res), width)
    with num_threads(spec.threads):
        layouts = time_student_layouts(model, batch, r["device"])
    if len(layouts) == 2:
        write_setting(key, CHANNELS_LAST, layouts,
                      f"{student} x{width:g}, res {spec.res}, batch {batch}; s per step", target)  # fmt: skip
    shown = {PACK: packs, CHANNELS_LAST: layouts}
    typer.echo(f"calibration: {key}: " + "; ".join(
        f"{n} " + ", ".join(f"{v} {t * 1e3:.2f} ms" for v, t in sec.items())
        for n, sec in shown.items()), err=True)  # fmt: skip
    return {"device_key": key,
            **{n: {str(v): t for v, t in sec.items()} for n, sec in shown.items()}}  # fmt: skip


@bench_app.command("calibrate")
def calibrate_config(
    config: str = typer.Argument(help="Experiment YAML whose architectures are timed."),
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override KEY=VALUE.")
    ] = None,
    steps: int = typer.Option(3, min=1, help="Timed steps per architecture and kind."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N"),
    gpu: str | None = typer.Option(None, help="Device-table name of this GPU (default: guessed)."),
    calibration: str | None = typer.Option(
        None, help="Calibration file (default: $PRISM_HPC_CALIBRATION or the user cache)."
    ),
) -> None:
    """Time this config's own teachers and students here (recover, train and forward steps at
    the config's resolution, widths and batch sizes) and record their FLOP/s per architecture
    for `plan`. On the CPU every step runs on one thread (`plan` scales by the threads a stage
    gets) and the fastest step counts: other load on a shared machine slows steps, never
    speeds them up."""
    from pathlib import Path

    from prism_hpc.config.load import load_config
    from prism_hpc.cost.calibration import Measured, write_entry
    from prism_hpc.cost.devices import guess_device
    from prism_hpc.data.sources import num_classes_of
    from prism_hpc.errors import UserError
    from prism_hpc.models.flops import ModelSpec, arch_key, measure_step_flops

    cfg, _ = load_config(Path(config), set_ or [])
    d = cfg.data
    nc = num_classes_of(d)
    cpu = device == "cpu"
    if cpu:
        name = "cpu"
    else:
        import torch

        name = gpu or guess_device(torch.cuda.get_device_name(torch.device(device)))
        if name is None:
            raise UserError("bench calibrate: this GPU is not in the device table; pass --gpu")
    rec_names = cfg.recover.teacher_names()
    teacher_archs = {(cfg.teachers[n].arch, cfg.teachers[n].width) for n in cfg.teachers}
    student_archs = {(a, cfg.students.width) for a in cfg.students.archs}
    plan = {
        "recover": ({(cfg.teachers[n].arch, cfg.teachers[n].width) for n in rec_names},
                    cfg.recover.classes_per_batch, 1),
        "train": (teacher_archs | student_archs, cfg.students.batch_size, 1),
        "infer": (teacher_archs | student_archs, cfg.relabel.batch_size, 1),
    }  # fmt: skip
    target = Path(calibration) if calibration else None
    for kind, (archs, batch, threads) in plan.items():
        rates = {}
        for arch, width in sorted(archs):
            m = measure_step_flops(ModelSpec(arch, d.resolution, d.channels, nc, width), batch,
                                   kind, steps=steps, warmup=1, device=device,
                                   threads=threads if cpu else None)  # fmt: skip
            rates[arch_key(arch, d.resolution, d.channels, nc, width)] = m["flop_per_s_fastest"]
            typer.echo(f"{kind:8s} {arch} x{width:g}: {m['fastest_s'] * 1e3:.1f} ms/step "
                       f"(median {m['seconds'] * 1e3:.1f}), {m['flop_per_s_fastest'] / 1e9:.1f} "
                       "GFLOP/s")  # fmt: skip
        setup = f"{cfg.name}: batch {batch}, {d.resolution} px" + (
            f", {threads} thread(s)" if cpu else ""
        )
        measured = Measured(0.0, threads if cpu else None, setup, "fp32", archs=rates)
        target = write_entry(name, kind, measured, target)
    typer.echo(f"wrote {target} ({name})")
