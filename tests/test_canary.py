"""The canary job: shrunken config, shapes, and on the real local SLURM cluster: it runs before
the arrays, and when it fails no array task starts and `resubmit` recovers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from prism_hpc.canary import shrink
from prism_hpc.config.load import config_from_dict, dump_config
from prism_hpc.hpc.canary import canary_resources, shape_of
from tests.conftest import write_yaml
from tests.helpers import run_cli


def test_shrink_keeps_the_run_but_cuts_every_budget(tiny_cfg):
    tiny_cfg["students"].update(archs=["resnet18", "resnet50"], seeds=[3, 4], epochs=300)
    resolved = yaml.safe_load(dump_config(config_from_dict(tiny_cfg)))
    small = config_from_dict(shrink(resolved))
    assert small.name == "tiny-canary"
    assert (small.recover.ipc, small.recover.iterations, small.recover.iteration_step) == (1, 2, 0)
    assert small.students.archs == ["resnet18"] and small.students.seeds == [3]
    assert small.students.epochs == 1 and small.relabel.epochs_per_task == 1
    assert small.squeeze.max_steps == 2
    assert small.teachers == config_from_dict(tiny_cfg).teachers  # same weights are checked
    assert small.data == config_from_dict(tiny_cfg).data


def test_shape_and_canary_resources(tiny_cfg):
    a = {"partition": "gpu", "gpus_per_node": 4, "constraint": None, "time_min": 600}
    b = {**a, "time_min": 30, "mem_gb": 64}
    assert shape_of(a) == shape_of(b) == ("gpu", 4, "")
    assert shape_of({**a, "constraint": "a100"}) != shape_of(a)
    cfg = config_from_dict(tiny_cfg)
    assert canary_resources(cfg, a)["time_min"] == 20  # min(the stage's, 20)
    assert canary_resources(cfg, {**b, "time_min": 10})["time_min"] == 10
    tiny_cfg["resources"] = {"canary": {"time_min": 5, "mem_gb": 2}}
    sized = canary_resources(config_from_dict(tiny_cfg), b)
    assert (sized["time_min"], sized["mem_gb"], sized["gpus_per_node"]) == (5, 2, 4)
    # one task with the CPUs of all the stage's ranks: the local executor inside starts them
    ranked = canary_resources(cfg, {**a, "tasks_per_node": 2, "cpus_per_task": 3})
    assert (ranked["tasks_per_node"], ranked["cpus_per_task"]) == (1, 6)


def _events(run: Path, kind: str) -> list[dict]:
    return [e for e in json.loads((run / "state.json").read_text()) if e.get("event") == kind]


def _times(job_ids: list[str]) -> dict[str, tuple[str, str, str, str]]:
    """JobID -> (Start, End, Elapsed, State) of allocations, straight from sacct."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobID,Start,End,Elapsed,State",
                          "-j", ",".join(job_ids)], capture_output=True, text=True,
                         check=False).stdout  # fmt: skip
    rows = [line.split("|") for line in out.splitlines() if "|" in line]
    return {r[0]: (r[1], r[2], r[3], r[4].split()[0]) for r in rows}


def _wait(predicate, timeout: float = 600, what: str = "") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(2)


def _array_ids(run: Path) -> list[str]:
    return [a["job_id"] for e in _events(run, "submit") for a in e["arrays"]]


@pytest.mark.slurm
def test_canary_runs_before_the_arrays_and_the_run_completes(
    tmp_path, tiny_cfg_pretrained, slurm_cluster
):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm", canary=True)
    assert result.returncode == 0, result.stderr
    (canary,) = _events(run, "canary")
    assert "[canary]" in result.stdout and canary["job_id"] in result.stdout
    recover = next(e for e in _events(run, "submit") if e["stage"] == "recover")
    assert recover["dependency"] == f"afterok:{canary['job_id']}"
    _wait(lambda: (run / "report" / "report.done").exists(), what="the run to finish")
    assert (run / "canary" / "attempt0" / "canary.done").is_file()
    rows = slurm_cluster.sacct([canary["job_id"], *_array_ids(run)])
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    times = _times([canary["job_id"], *[a for a in _array_ids(run)]])
    recover_ids = [a["job_id"] for a in recover["arrays"]]
    first_recover = min(t[0] for j, t in times.items() if j.split("_")[0] in recover_ids)
    assert times[canary["job_id"]][1] <= first_recover  # ended before any recover task began
    status = run_cli("status", run)
    assert "canary (attempt 0): passed" in status.stdout


@pytest.mark.slurm
def test_failed_canary_starts_no_array_task_then_resubmit_completes(
    tmp_path, tiny_cfg_pretrained, slurm_cluster
):
    cfg = tiny_cfg_pretrained
    weights = Path(cfg["teachers"]["shufflenet"]["weights"])
    mine = tmp_path / "shufflenet.pt"
    shutil.copy(weights, mine)
    cfg["teachers"]["shufflenet"]["weights"] = str(mine)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm", canary=True)
    assert result.returncode == 0, result.stderr
    hidden = mine.rename(tmp_path / "away.pt")  # the file disappears after submit
    (canary,) = _events(run, "canary")
    arrays = _array_ids(run)
    final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}

    def all_final() -> bool:
        got = _times([canary["job_id"], *arrays])
        return len(got) > len(arrays) and all(t[3] in final for t in got.values())

    _wait(all_final, what="the canary and the cancelled arrays")
    times = _times([canary["job_id"], *arrays])
    assert times[canary["job_id"]][3] == "FAILED"
    tasks = {j: t for j, t in times.items() if j != canary["job_id"]}
    assert tasks and all(t[3] == "CANCELLED" and t[2] == "00:00:00" for t in tasks.values()), tasks
    assert not [p for p in (run / "logs").rglob("*.out") if "canary" not in p.parts]
    status = run_cli("status", run)
    lines = [line for line in status.stdout.splitlines() if line.startswith("canary")]
    assert len(lines) == 1 and "FAILED" in lines[0] and "resubmit" in lines[0], status.stdout

    hidden.rename(mine)
    again = run_cli("resubmit", run, canary=True)
    assert again.returncode == 0, again.stderr
    _wait(lambda: (run / "report" / "report.done").exists(), what="the resubmitted run")
    assert (run / "canary" / "attempt1" / "canary.done").is_file()
    assert "canary (attempt 1): passed" in run_cli("status", run).stdout
