"""Tracking wired into the stages: a tiny run with `tracking.tensorboard: true` leaves event
files whose scalars (read back with TensorBoard's own EventAccumulator) are the run's numbers."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_yaml
from tests.helpers import run_cli


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}  # fmt: skip


@pytest.mark.slow
def test_a_tracked_run_logs_recover_terms_and_student_accuracy(tmp_path, tiny_cfg_pretrained):
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=1)
    cfg["students"].update(epochs=2, eval_every=1)
    cfg["tracking"] = {"tensorboard": True}
    run = tmp_path / "run"
    result = run_cli("submit", write_yaml(tmp_path / "c.yaml", cfg), "--run-dir", run)
    assert result.returncode == 0, result.stderr
    board = run / "tracking" / "tensorboard"

    recover = _scalars(board / "recover" / "slice_00000")
    steps = [s for s, _ in recover["ce"]]
    assert steps[0] in (0, 1) and steps[-1] == cfg["recover"]["iterations"]
    assert set(recover) >= {"ce", "bn", "lr", "images_x_iters_per_s"}
    assert recover["lr"][0][1] == pytest.approx(0.05)  # the first step's cosine value

    student = _scalars(board / "train" / "resnet18-seed0")
    metrics = json.loads((run / "students" / "resnet18" / "seed0" / "metrics.json").read_text())
    assert [v for _, v in student["top1"]] == pytest.approx([e["top1"] for e in metrics["evals"]])
    assert [s for s, _ in student["top1"]] == [e["epoch"] for e in metrics["evals"]]
    assert {"loss", "lr", "top5"} <= set(student)
    relabel = next((board / "relabel").iterdir())
    assert "images_per_s" in _scalars(relabel)
