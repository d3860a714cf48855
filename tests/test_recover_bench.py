"""Benchmark plumbing (issue 7): the optimised recovery step against the official pattern.

No timing is asserted here: speed lives in benchmarks/recover_speed.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from prism_hpc.cli_bench import bench_app
from prism_hpc.config.schema import OptimizeRecover
from prism_hpc.recover import augment
from prism_hpc.recover.bench import BenchSpec, bench_recover, build_problem
from prism_hpc.recover.loss import Part, recovery_loss
from prism_hpc.recover.objective import bn_hooks
from prism_hpc.recover.precision import prepare_teachers

REPO = Path(__file__).resolve().parent.parent
FOUR = ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "efficientnet_b0"]


def _naive_module():
    spec = importlib.util.spec_from_file_location(
        "recover_naive", REPO / "benchmarks" / "recover_naive.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def naive():
    return _naive_module()


def test_optimised_objective_equals_official_pattern(naive):
    """Same input, same crop/flip/roll: the optimised objective (one forward for the model
    that is logit and BN teacher, var_mean hooks, channels_last, no priors) equals the official
    one (duplicate logit model, permute+contiguous+var hooks, torchvision crop) in fp32."""
    setup = naive.NaiveSetup(FOUR, res=16, batch=4, seed=3)  # its own models (NCHW)
    p = build_problem(BenchSpec(FOUR, 16, 4, seed=3))  # same weights, separate instances
    models = prepare_teachers(p.models, p.cfg)  # what the loop runs: channels_last
    g = torch.Generator().manual_seed(0)
    cfg = p.cfg.model_copy(update={"augment": p.cfg.augment.model_copy(update={"jitter": 4})})
    with bn_hooks(models, cfg.first_bn_multiplier) as hooks, torch.no_grad():
        for _ in range(3):
            d = augment.draw(cfg.augment, 16, 4, g)
            ref = naive.naive_objective(setup, setup.problem.x0, setup.problem.targets, d)
            got, ce, bn = recovery_loss(
                Part(p.x0, p.targets, p.roles, d), models, hooks, cfg, backward=False
            )
            assert torch.isfinite(got)
            assert abs(got.item() - ref.item()) <= 1e-5 * abs(ref.item()), (got, ref, d)
            assert ce.item() > 0 and bn.item() > 0
    setup.close()


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_bench_problem_sequential_grad_equals_joint(amp):
    """The bench's 4-teacher problem: x.grad from per-teacher backward (augmented batch as a
    leaf, gradient pushed through the augmentation once) equals the joint backward."""
    p = build_problem(BenchSpec(FOUR, 16, 4, precision="bf16" if amp == "bf16" else "fp32",
                                seed=1))  # fmt: skip
    models = prepare_teachers(p.models, p.cfg)
    d = augment.draw(p.cfg.augment, 16, 4, torch.Generator().manual_seed(5))
    grads, losses = {}, {}
    with bn_hooks(models, p.cfg.first_bn_multiplier) as hooks:
        for memory in ("joint", "sequential"):
            cfg = p.cfg.model_copy(update={"memory": memory})
            x = p.x0.clone().requires_grad_(True)
            losses[memory], _, _ = recovery_loss(
                Part(x, p.targets, p.roles, d), models, hooks, cfg, backward=True
            )
            grads[memory] = x.grad.clone()
    assert torch.isfinite(grads["joint"]).all() and grads["joint"].abs().sum() > 0
    tol = 1e-5 if amp == "none" else 1e-2  # bf16: the two orders round differently
    assert _rel(grads["sequential"], grads["joint"]) <= tol
    assert abs(losses["sequential"].item() - losses["joint"].item()) <= tol * abs(
        losses["joint"].item()
    )


def test_bf16_objective_close_to_fp32():
    """bf16 autocast changes the forward's rounding only: objective within a few percent,
    and not bit-identical (else the bf16 path did not run)."""
    p = build_problem(BenchSpec(["resnet18", "shufflenet_v2_x0_5"], 16, 4, seed=2))
    models = prepare_teachers(p.models, p.cfg)
    d = augment.draw(p.cfg.augment, 16, 4, torch.Generator().manual_seed(1))
    out = {}
    with bn_hooks(models, p.cfg.first_bn_multiplier) as hooks, torch.no_grad():
        for precision in ("fp32", "bf16"):
            cfg = OptimizeRecover.model_validate({**p.cfg.model_dump(), "precision": precision})
            assert cfg.precision == precision
            out[precision] = recovery_loss(Part(p.x0, p.targets, p.roles, d), models, hooks,
                                           cfg, False)[0]  # fmt: skip
    fp32, bf16 = out["fp32"].item(), out["bf16"].item()
    assert out["bf16"].dtype == torch.float32  # losses stay fp32
    assert bf16 != fp32, "bf16 gave the fp32 objective bit for bit: no autocast"
    assert abs(bf16 - fp32) <= 0.05 * fp32


def test_bench_recover_reports_sane_numbers():
    spec = BenchSpec(["resnet18", "shufflenet_v2_x0_5"], res=16, batch=2, threads=1)
    r = bench_recover(spec, iters=2, warmup=1)
    for key in ("ms_per_iter", "ms_per_iter_mean", "images_iters_per_s", "cpu_ms_per_iter"):
        assert r[key] > 0, key
    assert r["flops_per_iter"] > 1e6 and r["flop_per_s"] > 0
    assert r["teachers"] == ["resnet18", "shufflenet_v2_x0_5"]
    assert r["threads"] == 1 and r["device"] == "cpu" and r["memory"] == "joint"
    assert r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0
    assert r["peak_mem_total_mb"] >= r["peak_mem_mb"]
    assert r["memory_method"].startswith(("rss_growth", "ru_maxrss"))
    json.dumps(r)  # serialisable for --json


def _bench_json(teachers: str, *extra: str) -> dict:
    """`bench recover --json` at the smallest size: one timed iteration at 16 px."""
    result = CliRunner().invoke(
        bench_app,
        ["recover", "--teachers", teachers, "--res", "16", "--batch", "2", "--iters", "1",
         "--warmup", "0", "--threads", "1", "--no-memory", "--json", *extra],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def test_bench_cli_json():
    r = _bench_json("shufflenet_v2_x0_5,shufflenet_v2_x0_5", "--memory", "sequential")
    assert r["memory"] == "sequential" and r["peak_mem_mb"] is None
    assert r["teachers"] == ["shufflenet_v2_x0_5", "shufflenet_v2_x0_5"]  # repeats allowed
    bad = CliRunner().invoke(bench_app, ["recover", "--amp", "fp8", "--no-memory"])
    assert bad.exit_code != 0


def test_gpu_script_smoke():
    """The GPU table script, at tiny sizes on the CPU (compile with the eager backend)."""
    env = dict(os.environ, WARMUP="0", ITERS="1")
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_recover.sh"), "--smoke"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 9  # header + 9 modes (smoke: 2 teachers only)
    assert all("| ok |" in row for row in rows[1:]), out.stdout
    assert any("pack 2" in row for row in rows) and "fewer ms per image-iteration" in out.stdout


def test_bench_precision_auto_times_what_the_recover_stage_would_run():
    from prism_hpc.hardware.capability import detect

    r = _bench_json("shufflenet_v2_x0_5", "--precision", "auto")
    assert r["precision"] == ("bf16" if detect("cpu").native_bf16 else "fp32")
    assert r["precision_reason"].startswith(f"auto: {r['precision']}")

