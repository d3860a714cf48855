"""`prism-hpc bench recover`: the recovery-step benchmark as a Typer sub-app.

Wired in `prism_hpc/cli.py` with `app.add_typer(bench_app, name="bench")`; command-line code
lives beside the CLI, the measurement itself in `prism_hpc.recover.bench`.
"""

from __future__ import annotations

import json

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
    amp: str = typer.Option("none", help="Older spelling of --precision: none | bf16."),
    precision: str | None = typer.Option(
        None, help="fp32 | bf16 | fp16 (autocast; BN statistics/loss, CE, Adam in fp32)."
    ),
    pack: int = typer.Option(1, min=1, help="Chunks of --batch images optimised at once."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile each teacher."),
    memory: str = typer.Option("joint", help="joint | sequential (per-teacher backward)."),
    threads: int | None = typer.Option(None, min=1, help="CPU intra-op threads."),
    no_memory: bool = typer.Option(False, "--no-memory", help="Skip the peak-memory probe."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Median ms per recovery iteration, throughput, FLOP/s and peak memory of one step."""
    from prism_hpc.recover.bench import bench_recover

    for bad, message in (
        (amp not in ("none", "bf16"), "--amp must be none or bf16"),
        (precision not in (None, "fp32", "bf16", "fp16"), "--precision must be fp32, bf16 or fp16"),
        (memory not in ("joint", "sequential"), "--memory must be joint or sequential"),
    ):
        if bad:  # one line and exit 2 (prism-hpc's main), not a traceback
            raise UserError(message)
    archs = [t.strip() for t in teachers.split(",") if t.strip()]
    if not archs:
        raise typer.BadParameter("--teachers needs at least one architecture")
    try:
        r = bench_recover(
            archs, res, batch, iters, device=device, amp=amp, compile=compile, memory=memory,
            warmup=warmup, threads=threads, measure_memory=not no_memory,
            precision=precision, pack=pack,
        )  # fmt: skip
    except (RuntimeError, ValueError) as err:
        raise UserError(str(err)) from None
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
