"""Per-item seconds live in the item's `.done` markers (`store.itemclock`), written by the task
runner's clock, and `hpc.status.item_seconds` reads them back per stage: no log line involved."""

from __future__ import annotations

import json

from prism_hpc.store.atomic import write_marker
from prism_hpc.store.integrity import check_marker, sealed
from prism_hpc.store.itemclock import ITEM_SECONDS, elapsed, item_clock
from tests.conftest import write_yaml
from tests.helpers import run_cli


def test_only_markers_sealed_inside_an_item_record_its_seconds(tmp_path):
    assert elapsed() is None
    assert ITEM_SECONDS not in sealed({"a": 1})  # tests, collect, a re-seal: no clock
    with item_clock():
        inside = sealed({"a": 1})
        kept = sealed({"a": 1, ITEM_SECONDS: 7.5}, keep_id="x")  # a re-seal keeps its time
    assert inside[ITEM_SECONDS] >= 0 and kept[ITEM_SECONDS] == 7.5 and kept["id"] == "x"
    assert elapsed() is None  # the clock stops with the item


def test_a_timed_marker_checks_like_any_other_and_keeps_its_id(tmp_path):
    out = tmp_path / "x.bin"
    out.write_bytes(b"data")
    up = write_marker(tmp_path / "up.done", {}, tmp_path)
    with item_clock():
        down = write_marker(tmp_path / "x.done", {"rows": 1}, tmp_path, outputs=[out],
                            inputs={"up.done": up["id"]})  # fmt: skip
    assert ITEM_SECONDS in down and ITEM_SECONDS not in up
    assert check_marker(tmp_path, tmp_path / "x.done", full=True) == []


def test_a_local_run_records_positive_seconds_per_stage(tmp_path, tiny_cfg_pretrained):
    from prism_hpc.hpc.status import item_seconds

    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=1)
    cfg["students"].update(epochs=1, eval_every=1)
    cfg["relabel"].update(epochs_per_task=1)
    run = tmp_path / "run"
    done = run_cli("submit", write_yaml(tmp_path / "c.yaml", cfg), "--run-dir", run,
                   "--backend", "local")  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = item_seconds(run)
    stages = [stage for stage, _, _ in found]
    assert stages == sorted(stages, key=stages.index)  # grouped, in plan order
    assert {"recover", "collect", "relabel", "train", "report"} <= set(stages)
    assert all(sec > 0 for _, _, sec in found)
    train = [(key, sec) for stage, key, sec in found if stage == "train"]
    assert [key for key, _ in train] == ["resnet18-seed0"]
    # the marker itself holds the number the reader returned
    from prism_hpc.config.load import config_from_dict
    from prism_hpc.stages import registry

    stage = registry().by_name("train")
    (marker,) = stage.markers(run, stage.items(config_from_dict(cfg))[0])
    assert json.loads(marker.read_text())[ITEM_SECONDS] == train[0][1]
