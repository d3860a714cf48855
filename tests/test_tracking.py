"""Experiment tracking (docs/tracking.md): what the sinks write is read back with each tool's
own reader, a failing sink costs one warning line and never the task, tracking off imports
neither package, and the W&B key never lands in the run directory."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from prism_hpc.config.tracking import TrackingConfig
from prism_hpc.errors import UserError
from prism_hpc.tracking import TrackedTask, open_tracker, sync_run
from prism_hpc.tracking.base import GuardedSink
from prism_hpc.tracking.images import to_hwc
from prism_hpc.tracking.sync import offline_runs
from prism_hpc.tracking.tensorboard_sink import tensorboard_dir
from prism_hpc.tracking.wandb_sink import wandb_dir, wandb_mode

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"name": "demo", "seed": 3, "recover": {"iterations": 20}}


def _task(run_dir: Path, **kw) -> TrackedTask:
    return TrackedTask(run_dir, "recover", kw.pop("item", "ipc10_s0"), "demo-run", CONFIG, **kw)


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline, quiet, and nothing written outside tmp_path (W&B's config and caches)."""
    for var, value in {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": "cfg",
        "WANDB_CACHE_DIR": "cache", "WANDB_DATA_DIR": "data",
    }.items():  # fmt: skip
        monkeypatch.setenv(var, value if var in ("WANDB_MODE", "WANDB_SILENT")
                           else str(tmp_path / value))  # fmt: skip
    for var in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)


def _records(path: Path):
    """The protobuf records of a W&B transaction log (`run-<id>.wandb`), decoded with W&B's
    own `Record` message. Layout: a 7-byte file header (':W&B', magic, version), then
    32 KiB blocks of chunks, each with a 7-byte header (checksum, length, type: 1 whole,
    2 first, 3 middle, 4 last); a block tail shorter than a header is padding."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _history(log: Path) -> tuple[dict, list[dict]]:
    run, rows = {}, []
    for record in _records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = {"project": r.project, "group": r.run_group, "job_type": r.job_type,
                   "name": r.display_name,
                   "config": {u.key: json.loads(u.value_json) for u in r.config.update}}  # fmt: skip
        elif kind == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                         for i in record.history.item})  # fmt: skip
    return run, rows


# --- config ---------------------------------------------------------------------------------


def test_tracking_is_off_by_default_and_names_are_checked_at_load():
    from prism_hpc.config.load import load_config

    demo = ROOT / "configs" / "fmnist_demo.yaml"
    assert load_config(demo)[0].tracking == TrackingConfig() and not TrackingConfig().enabled
    cfg, _ = load_config(demo, ["tracking.wandb=offline", "tracking.tensorboard=true"])
    assert (cfg.tracking.wandb, cfg.tracking.tensorboard) == ("offline", True)
    with pytest.raises(UserError, match="tracking.project"):
        load_config(demo, ["tracking.project=team/x"])
    assert TrackingConfig(wandb="offline", project="prism fmnist", entity="my-team_1").enabled
    for bad in ({"project": "a/b"}, {"project": "two\nlines"}, {"project": "x" * 129},
                {"entity": "has space"}, {"wandb": "on"}, {"tensorbord": True}):  # fmt: skip
        with pytest.raises(ValidationError):
            TrackingConfig(**bad)


def test_tracking_off_imports_neither_package():
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from prism_hpc.config.tracking import TrackingConfig\n"
        "from prism_hpc.tracking import TrackedTask, open_tracker\n"
        "t = open_tracker(TrackingConfig(), TrackedTask(Path('r'), 'recover', 'k', 'run'), print)\n"
        "t.scalars(1, {'ce': 1.0}); t.text('a', 'b'); t.image('i', Path('x.png')); t.close()\n"
        "assert t.active == []\n"
        "heavy = ('wandb', 'tensorboard', 'torch.utils.tensorboard')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- TensorBoard ----------------------------------------------------------------------------


def test_tensorboard_scalars_text_and_images_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    warnings: list[str] = []
    with open_tracker(TrackingConfig(tensorboard=True), _task(tmp_path, item="a:b/c"),
                      warnings.append) as tracker:  # fmt: skip
        assert tracker.active == ["tensorboard"]
        for step in (0, 10, 20):
            tracker.scalars(step, {"ce": 1.0 / (step + 1), "lr": np.float32(0.25)})
        tracker.text("results", "| a | b |\n|---|---|\n| 1 | 2 |")
        tracker.image("grid", np.zeros((3, 4, 5), dtype=np.uint8), step=20)
        tracker.image("grey", np.ones((4, 5, 1)), step=20)
    assert warnings == []
    folder = tensorboard_dir(tmp_path, "recover", "a:b/c")
    assert folder == tmp_path / "tracking" / "tensorboard" / "recover" / "a_b_c"
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = events.Tags()
    assert {"ce", "lr"} <= set(tags["scalars"])
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("ce")] == [
        (0, 1.0), (10, round(1 / 11, 6)), (20, round(1 / 21, 6))]  # fmt: skip
    assert [e.value for e in events.Scalars("lr")] == [0.25] * 3
    assert sorted(tags["images"]) == ["grey", "grid"]
    assert {"config/text_summary", "results/text_summary"} <= set(tags["tensors"])


def test_an_unwritable_folder_costs_one_warning_and_the_task_goes_on(tmp_path, wandb_env):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the run directory's parent should be")
    for cfg, sink in ((TrackingConfig(tensorboard=True), "tensorboard"),
                      (TrackingConfig(wandb="offline"), "wandb")):  # fmt: skip
        warnings: list[str] = []
        with open_tracker(cfg, _task(blocker / "run"), warnings.append) as tracker:
            tracker.scalars(1, {"ce": 1.0})
            tracker.text("t", "x")
            tracker.image("i", np.zeros((2, 2)))
        assert len(warnings) == 1 and "\n" not in warnings[0], warnings
        assert warnings[0].startswith(f"tracking: {sink} is off") and "Error" in warnings[0]
        assert tracker.active == []


# --- the guard ------------------------------------------------------------------------------


class _Flaky:
    def __init__(self, fail_at: int | None):
        self.calls, self.fail_at = 0, fail_at

    def scalars(self, step, values):
        self.calls += 1
        if step == self.fail_at:
            raise ConnectionError("network unreachable\nretrying")

    def text(self, tag, text, step=0):
        self.calls += 1

    def image(self, tag, image, step=0):
        self.calls += 1

    def close(self):
        raise RuntimeError("already closed")


def test_a_sink_that_fails_later_warns_once_and_stops_while_others_go_on():
    from prism_hpc.tracking.base import FanOut

    warnings: list[str] = []
    flaky, steady = _Flaky(fail_at=3), _Flaky(fail_at=None)
    steady.close = lambda: None
    tracker = FanOut([GuardedSink("wandb", "wandb", lambda: flaky, warnings.append),
                      GuardedSink("tensorboard", "tensorboard", lambda: steady, warnings.append)])  # fmt: skip
    tracker.scalars(1, {"ce": 1.0})
    tracker.scalars(3, {"ce": 1.0})
    tracker.text("t", "x")
    tracker.close()
    tracker.close()
    assert flaky.calls == 2 and steady.calls == 3
    expected = "tracking: wandb is off for the rest of this task: ConnectionError: network"
    assert warnings == [f"{expected} unreachable retrying"]
    assert tracker.active == []


def test_a_missing_package_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    warnings: list[str] = []
    cfg = TrackingConfig(tensorboard=True, wandb="offline")
    with open_tracker(cfg, _task(tmp_path), warnings.append) as tracker:
        tracker.scalars(0, {"ce": 1.0})
    assert len(warnings) == 2
    for line, package in zip(warnings, ("tensorboard", "wandb"), strict=True):
        assert f"package '{package}' is not installed" in line
        assert "pip install 'prism-hpc[tracking]'" in line


def test_other_ranks_and_tracking_off_get_the_null_tracker(tmp_path):
    on = TrackingConfig(tensorboard=True)
    assert open_tracker(on, _task(tmp_path, rank=1), print).active == []
    assert open_tracker(TrackingConfig(), _task(tmp_path), print).active == []
    assert not (tmp_path / "tracking").exists()


def test_images_are_brought_to_one_layout(tmp_path):
    from PIL import Image

    assert to_hwc(np.zeros((3, 4, 5))).shape == (4, 5, 3)
    assert to_hwc(np.zeros((4, 5))).shape == (4, 5)
    Image.new("L", (5, 4)).save(tmp_path / "f.png")
    assert to_hwc(tmp_path / "f.png").shape == (4, 5, 3)
    with pytest.raises(ValueError, match="HxW"):
        to_hwc(np.zeros((2, 5, 5)))


# --- W&B ------------------------------------------------------------------------------------


def test_wandb_offline_run_reads_back_and_keeps_no_key(tmp_path, wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "secret123")
    run_dir = tmp_path / "run"
    warnings: list[str] = []
    cfg = TrackingConfig(wandb="offline", project="prism-test")
    with open_tracker(cfg, _task(run_dir), warnings.append) as tracker:
        assert tracker.active == ["wandb"]
        for step in (0, 10, 20):
            tracker.scalars(step, {"ce": 1.0 / (step + 1), "lr": 0.5})
        tracker.text("results", "a | b")  # logged at the last step: W&B steps never go back
        tracker.image("grid", np.zeros((3, 4, 4), dtype=np.uint8), step=5)
    assert warnings == []
    (log,) = (wandb_dir(run_dir) / "wandb").glob("offline-run-*/run-*.wandb")
    run, rows = _history(log)
    assert run["project"] == "prism-test" and run["group"] == "demo-run"
    assert (run["job_type"], run["name"]) == ("recover", "ipc10_s0")
    assert run["config"]["seed"] == 3 and run["config"]["recover"] == {"iterations": 20}
    scalars = [(r["_step"], r["ce"], r["lr"]) for r in rows if "ce" in r]
    assert scalars[:2] == [(0, 1.0, 0.5), (10, 1 / 11, 0.5)] and scalars[2][:2] == (20, 1 / 21)
    media = {key.split("/")[0]: rows[-1][key] for key in rows[-1] if key.endswith("/_type")}
    assert media == {"results": "html-file", "grid": "image-file"}, rows[-1]
    assert rows[-1]["_step"] == 20
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()
              and b"secret123" in p.read_bytes()]  # fmt: skip
    assert leaked == []
    assert [Path(p) for p in offline_runs(run_dir)] == [log.parent]


def test_a_project_name_wandb_refuses_costs_one_warning(tmp_path, wandb_env):
    # validation at load refuses it; a config built around the validator must not fail either
    cfg = TrackingConfig.model_construct(tensorboard=False, wandb="offline", project="a/b",
                                         entity=None)  # fmt: skip
    warnings: list[str] = []
    with open_tracker(cfg, _task(tmp_path), warnings.append) as tracker:
        tracker.scalars(0, {"ce": 1.0})
    assert len(warnings) == 1 and "Invalid project name" in warnings[0], warnings


def test_wandb_mode_only_turns_down_from_the_environment():
    assert wandb_mode("online", {"WANDB_MODE": "offline"}) == "offline"
    assert wandb_mode("offline", {"WANDB_MODE": "online"}) == "offline"
    assert wandb_mode("online", {"WANDB_MODE": "disabled"}) == "disabled"
    assert wandb_mode("online", {}) == "online"


# --- sync -----------------------------------------------------------------------------------


def _offline_run(run_dir: Path, run_id: str, synced: bool = False) -> Path:
    folder = wandb_dir(run_dir) / "wandb" / f"offline-run-20260101_000000-{run_id}"
    folder.mkdir(parents=True)
    (folder / f"run-{run_id}.wandb").write_bytes(b":W&B")
    if synced:
        (folder / f"run-{run_id}.wandb.synced").write_text("")
    return folder


def test_sync_uploads_only_runs_not_synced_yet(tmp_path, monkeypatch):
    assert sync_run(tmp_path) == []
    _offline_run(tmp_path, "old", synced=True)
    fresh = _offline_run(tmp_path, "new")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0))  # fmt: skip
    assert sync_run(tmp_path) == [str(fresh)]
    assert calls == [[sys.executable, "-m", "wandb", "sync", str(fresh)]]
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(UserError, match="wandb sync exited with 1"):
        sync_run(tmp_path)


def test_sync_without_wandb_names_what_to_install(tmp_path, monkeypatch):
    _offline_run(tmp_path, "abc")
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install 'prism-hpc\[tracking\]'"):
        sync_run(tmp_path)
    with pytest.raises(UserError, match="no such run directory"):
        sync_run(tmp_path / "missing")


def test_sync_command_says_when_there_is_nothing_to_sync(tmp_path):
    from typer.testing import CliRunner

    from prism_hpc.cli import app

    result = CliRunner().invoke(app, ["sync", str(tmp_path)])
    assert result.exit_code == 0 and "nothing to sync" in result.output
