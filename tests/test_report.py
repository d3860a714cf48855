"""Report stage and `write_report` on fake run dirs (tiny IDX data set, random-weight models)."""

from __future__ import annotations

import gzip
import json
import struct

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from prism_hpc.config.load import config_from_dict, dump_config
from prism_hpc.data.sources import FASHION_MNIST_CLASSES
from prism_hpc.metrics.report import write_report
from prism_hpc.metrics.runs import read_diversity
from prism_hpc.stages.report import ReportStage
from prism_hpc.workflow import TaskEnv

torch.set_num_threads(1)

PER_CLASS = 4  # training images per class in the fake data set


def _idx(path, header: bytes, payload: np.ndarray) -> None:
    with gzip.open(path, "wb") as fh:
        fh.write(header + payload.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Fashion-MNIST-format IDX files: 10 classes x PER_CLASS images, labels interleaved."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    n = 10 * PER_CLASS
    labels = np.tile(np.arange(10), PER_CLASS)
    images = rng.integers(0, 60, (n, 28, 28))
    for k, c in enumerate(labels):  # a class-specific bright block, position varies by image
        y, x = 2 + 2 * c, 2 + (k % 5) * 3
        images[k, y : y + 8, x : x + 10] = 200 + 5 * c
    for prefix in ("train", "t10k"):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, n, 28, 28), images)
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", struct.pack(">II", 2049, n), labels)
    return root, images, labels


def make_run(
    run_dir, data, method, students, *, seed=0, ipc=3, noise=0.0, recover=None, units=None
):
    """A run dir as collect/squeeze/train leave it: config, distilled.h5, teachers, students."""
    root, train_images, train_labels = data
    rec = {"ipc": ipc, "iterations": 10, "iteration_step": 1, "bn_pool": []}
    rec.update(recover or {})
    spec = {"arch": "resnet18", "width": 0.125, "weights": "random"}
    cfg = config_from_dict(
        {
            "name": "fake",
            "method": method,
            "seed": seed,
            "data": {"root": str(root), "resolution": 28},
            "teachers": {
                "resnet18": spec,
                "mobilenet_v2": {**spec, "arch": "mobilenet_v2"},
                "ext": spec,
            },
            "recover": rec,
            "relabel": {"teachers": ["resnet18"]},
            "metrics": {"extractor": "ext", "batch_size": 8},
        }
    )
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    rng = np.random.default_rng(seed + 100 * len(method))
    rows, labels, slots, provenance = [], [], [], []
    for i in range(ipc):
        init = [i * 10 + c for c in range(10)]  # i-th image of each class (labels interleaved)
        assert (train_labels[init] == np.arange(10)).all()
        x = train_images[init].astype(float) + noise * rng.normal(size=(10, 28, 28))
        rows.append(np.clip(np.round(x), 0, 255).astype(np.uint8)[:, None])
        labels.append(np.arange(10))
        slots.append(np.full(10, i))
        bn = ["resnet18"] + (["mobilenet_v2"] if rec.get("bn_pool") and i % 2 else [])
        role = {"logit_teacher": "resnet18", "bn_teachers": bn}
        provenance.append(
            {
                "slice": i,
                "iterations": 10,
                "seed": seed,
                "peak_memory_mb": 321.0,
                **role,
                "chunks": [
                    {"chunk": 0, "classes": list(range(10)), "init_indices": init, "roles": [role]}
                ],
            }
        )
    with h5py.File(run_dir / "distilled.h5", "w") as f:
        f.create_dataset("images", data=np.concatenate(rows), chunks=(1, 1, 28, 28))
        f["labels"] = np.concatenate(labels).astype(np.int64)
        f["ipc_index"] = np.concatenate(slots).astype(np.int32)
        f.attrs.update(
            {
                "num_classes": 10,
                "class_names": FASHION_MNIST_CLASSES,
                "mean": [0.286],
                "std": [0.353],
                "method": method,
                "config": dump_config(cfg),
                "slice_provenance": json.dumps(provenance),
            }
        )
    (run_dir / "teachers").mkdir()
    for name, top1 in (("resnet18", 0.912), ("mobilenet_v2", 0.9), ("ext", 0.895)):
        (run_dir / "teachers" / f"{name}.json").write_text(json.dumps({"test_top1": top1}))
    for student_seed, top1 in students.items():
        d = run_dir / "students" / "resnet18" / f"seed{student_seed}"
        d.mkdir(parents=True)
        metrics = {
            "arch": "resnet18",
            "seed": student_seed,
            "final": {"top1": top1, "top5": 0.99},
            "best": {"top1": top1},
            "epochs": [{"epoch": 1}],
        }
        if units:
            metrics["units"] = units
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / ".done").write_text("{}")
    return cfg


def _valid_png(path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) > 100


def test_report_stage_single_run(tmp_path, data_root):
    run = tmp_path / "run"
    cfg = make_run(run, data_root, "PRISM", {0: 0.70, 1: 0.75}, noise=30)
    stage = ReportStage()
    (item,) = stage.items(cfg)
    logs = []
    stage.run(cfg, item, TaskEnv(run_dir=run, log=logs.append))
    assert stage.is_done(run, item) and (run / "report" / "report.done").is_file()

    div = read_diversity(run)
    assert div["extractor"] == "ext" and not div["extractor_is_recovery_teacher"]
    assert set(div["distilled"]["per_class"]) == {str(c) for c in range(10)}
    assert div["reference"]["kind"] == "real initial images"
    assert -1 <= div["distilled"]["mean"] <= 1

    text = (run / "report.md").read_text()
    # seeds 70 % and 75 %: mean 72.5, sample std 5 / sqrt(2) = 3.54
    assert "| PRISM | 72.5 ± 3.5 |" in text
    assert "| resnet18 | resnet18 | logit, BN, relabel | 91.20 |" in text
    assert f"{div['distilled']['mean']:.4f} ± {div['distilled']['std']:.4f}" in text
    assert "## Notes" not in text  # nothing was skipped
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert pngs == ["compare_0.png", "diversity_per_class.png", "embedding.png", "grid_prism.png"]
    for name in pngs:
        _valid_png(run / "figures" / name)
        assert f"figures/{name}" in text


def test_extractor_defaults_to_logit_teacher_with_warning(tmp_path, data_root):
    run = tmp_path / "run"
    cfg = make_run(run, data_root, "PRISM", {0: 0.5})
    cfg.metrics.extractor = None
    logs = []
    stage = ReportStage()
    stage.run(cfg, stage.items(cfg)[0], TaskEnv(run_dir=run, log=logs.append))
    assert any("warning" in m and "logit teacher 'resnet18'" in m for m in logs)
    div = read_diversity(run)
    assert div["extractor"] == "resnet18" and div["extractor_is_recovery_teacher"]


def test_unchanged_init_images_have_the_reference_diversity(tmp_path, data_root):
    """noise 0: the distilled images are the real initial images, pixel for pixel."""
    run = tmp_path / "run"
    make_run(run, data_root, "Real", {0: 0.5}, noise=0.0)
    write_report([run], tmp_path / "out")
    div = read_diversity(run)
    assert div["distilled"]["per_class"] == pytest.approx(div["reference"]["per_class"], abs=1e-6)


def test_init_only_run_is_the_real_column_of_the_comparison(tmp_path, data_root):
    """A `recover.init_only` run stores the initial images: no second, identical real column."""
    runs = [tmp_path / "real_images", tmp_path / "sre2l"]
    make_run(runs[0], data_root, "Real images", {0: 0.5}, noise=0.0, recover={"init_only": True})
    make_run(runs[1], data_root, "SRe2L", {0: 0.6}, noise=5)
    text = write_report(runs, tmp_path / "both").read_text()
    assert "Real images, SRe2L:\n\n![comparison](figures/compare_0.png)" in text
    assert "Real (initial images)" not in text

    text = write_report(runs[1:], tmp_path / "one").read_text()  # no init_only run: real column
    assert "Real (initial images), SRe2L:\n\n![comparison](figures/compare_0.png)" in text


def test_several_runs_tables_and_ablation(tmp_path, data_root):
    runs = [tmp_path / n for n in ("sre2l", "intra", "prism", "prism_s1")]
    make_run(runs[0], data_root, "SRe2L", {0: 0.60, 1: 0.62}, noise=5)
    make_run(
        runs[1],
        data_root,
        "Single intra",
        {0: 0.61, 1: 0.60},
        noise=10,
        recover={"scope": "intra", "logit_pool": ["resnet18"]},
    )
    make_run(
        runs[2],
        data_root,
        "PRISM",
        {0: 64.0, 1: 66.0},
        noise=20,
        units="percent",
        recover={"bn_pool": ["mobilenet_v2"]},
    )
    make_run(
        runs[3],
        data_root,
        "PRISM",
        {0: 0.65, 1: 0.68},
        seed=1,
        noise=20,
        recover={"bn_pool": ["mobilenet_v2"]},
    )
    bad = runs[3] / "students" / "resnet18" / "seed2"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"arch": "resnet18", "epochs": [')  # half-written
    out = tmp_path / "report"
    path = write_report(runs, out)
    text = path.read_text()
    # Table 1: PRISM pools 2 recovery runs x 2 seeds: 64, 66, 65, 68 -> 65.75 ± 1.708
    assert "| Method | ResNet-18 (IPC=3) |" in text
    assert "| SRe2L | 61.0 ± 1.4 |" in text
    assert "| Single intra | 60.5 ± 0.7 |" in text
    assert "| PRISM | **65.8 ± 1.7** |" in text
    # paired on recovery seed 0 and student seeds 0/1: PRISM - SRe2L = 4, 4 -> 4.00 ± 0.00
    assert "| PRISM − SRe2L | ResNet-18 | 3 | 4.00 ± 0.00 | 2 | 2/2 |" in text
    # Table 2 layout: three variants of the recovery teachers at one IPC
    assert "(paper Table 2 layout)" in text
    assert "| SRe2L | resnet18 | - | single | 1 | 61.0 ± 1.4 |" in text
    assert "| Single intra | resnet18 | intra-distillation | single | 1 | 60.5 ± 0.7 |" in text
    assert "| PRISM | resnet18 | pre-distillation | multi | 1.3 (1-2) | 65.8 ± 1.7 |" in text
    assert "Pooled over recovery runs" in text
    assert "prism_s1" in text or "PRISM, seed 1" in text
    assert "resnet18/seed2 (unreadable, skipped)" in text  # named in Notes, not fatal
    for name in ("compare_0.png", "diversity_per_class.png", "embedding.png"):
        _valid_png(out / "figures" / name)
    assert len(list((out / "figures").glob("grid_*.png"))) == 4
    summary = json.loads((out / "report.json").read_text())
    cell = next(c for c in summary["accuracy"] if c["method"] == "PRISM")
    assert cell["n"] == 4 and cell["top1_mean"] == pytest.approx(65.75)
    assert cell["top1_std"] == pytest.approx(np.std([64, 66, 65, 68], ddof=1))


def test_a_grid_of_some_classes_says_which_ones():
    from prism_hpc.metrics.diversity import embed_classes
    from prism_hpc.metrics.report_figures import sampled_caption

    names = [f"n{c:08d}" for c in range(1000)]
    shown = embed_classes(1000)
    caption = sampled_caption(shown, 1000, names)
    assert caption.startswith("Showing 10 of 1000 classes")
    assert "n00000000, n00000111," in caption and caption.endswith("n00000999.")
    assert sampled_caption(embed_classes(10), 10, names[:10]) == ""  # all shown: no caption
