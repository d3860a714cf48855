"""The SLURM backend against a real single-node cluster (slurm/localcluster.sh).

MaxArraySize is 5 in the test cluster, so array splitting is exercised for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from prism_hpc.store.atomic import file_sha256
from tests.conftest import write_yaml
from tests.helpers import run_cli

pytestmark = pytest.mark.slurm


def wait_for(path: Path, timeout: float = 600, run: Path | None = None) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if time.time() > deadline:
            detail = run_cli("status", run).stdout if run else ""
            logs = ""
            if run and (run / "logs").is_dir():
                for log in sorted((run / "logs").rglob("*.out"))[-3:]:
                    logs += f"\n--- {log}\n" + log.read_text()[-3000:]
            raise AssertionError(f"{path} did not appear within {timeout} s\n{detail}{logs}")
        time.sleep(1)


def submissions(run: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for event in json.loads((run / "state.json").read_text()):
        if event.get("event") == "submit":
            out.setdefault(event["stage"], []).append(event)
    return out


def _images(run: Path) -> np.ndarray:
    with h5py.File(run / "distilled.h5") as f:
        return f["images"][()]


def test_pipeline_on_slurm_matches_local(tmp_path, tiny_cfg_pretrained, slurm_cluster):
    cfg = tiny_cfg_pretrained
    path = write_yaml(tmp_path / "c.yaml", cfg)
    local = tmp_path / "local"
    assert run_cli("submit", path, "--run-dir", local, "--backend", "local",
                   "--stages", "recover,collect").returncode == 0  # fmt: skip
    run = tmp_path / "slurm"
    started = time.time()
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm")
    assert result.returncode == 0, result.stderr
    assert time.time() - started < 60  # returns at once, does not wait for the jobs
    assert "recover" in result.stdout and "job(s)" in result.stdout
    wait_for(run / "report" / "report.done", run=run)
    assert np.array_equal(_images(run), _images(local))

    subs = submissions(run)
    assert list(subs) == ["recover", "collect", "relabel", "train", "report"]  # no squeeze items
    ids = {
        stage: [a["job_id"] for e in events for a in e["arrays"]] for stage, events in subs.items()
    }
    assert subs["recover"][0]["dependency"] is None
    assert subs["collect"][0]["dependency"] == "afterany:" + ":".join(ids["recover"])
    assert subs["relabel"][0]["dependency"] == "afterok:" + ":".join(ids["collect"])
    assert subs["train"][0]["dependency"] == "afterok:" + ":".join(ids["relabel"])
    rows = slurm_cluster.sacct([j for js in ids.values() for j in js])
    per_stage = {}
    for row in rows:
        per_stage.setdefault(row["JobName"], []).append(row)
    assert len(per_stage["prism-tiny-recover"]) == 3  # one array of 3 slices
    assert len(per_stage["prism-tiny-collect"]) == 1
    assert all(r["State"] == "COMPLETED" for r in rows), rows
    assert (run / "slurm" / "recover.sbatch").is_file()


def test_arrays_split_at_max_array_size(tmp_path, tiny_cfg_pretrained, slurm_cluster):
    assert slurm_cluster.max_array_size == 5
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=12, iterations=3, iteration_step=0)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm",
                     "--stages", "recover,collect")  # fmt: skip
    assert result.returncode == 0, result.stderr
    wait_for(run / "distilled.done", run=run)
    arrays = submissions(run)["recover"][0]["arrays"]
    assert [len(a["items"]) for a in arrays] == [5, 5, 2]
    assert [i for a in arrays for i in a["items"]] == list(range(12))
    rows = slurm_cluster.sacct([a["job_id"] for a in arrays])
    assert len(rows) == 12 and all(r["State"] == "COMPLETED" for r in rows)
    with h5py.File(run / "distilled.h5") as f:
        assert f["ipc_index"][()].tolist() == [i for i in range(12) for _ in range(10)]


def test_cancelled_slice_fails_collect_then_resubmit(tmp_path, tiny_cfg_pretrained, slurm_cluster):
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=4, iterations=30, iteration_step=0)
    cfg["resources"] = {"recover": {"array_parallelism": 1}}  # slice 3 is still pending
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm",
                     "--stages", "recover,collect")  # fmt: skip
    assert result.returncode == 0, result.stderr
    recover = submissions(run)["recover"][0]["arrays"][0]
    subprocess.run(["scancel", f"{recover['job_id']}_3"], check=True)
    cancelled_at = time.time()

    status = None
    while time.time() - cancelled_at < 30:
        status = json.loads(run_cli("status", run, "--json").stdout)
        rec = next(r for r in status if r["stage"] == "recover")
        if 3 in rec.get("failed", []):
            break
        time.sleep(2)
    rec = next(r for r in status if r["stage"] == "recover")
    assert 3 in rec["failed"] and 3 not in rec.get("running", []), rec

    collect = submissions(run)["collect"][0]["arrays"][0]
    rows = slurm_cluster.sacct([collect["job_id"]], timeout=300)
    assert rows and rows[0]["State"] == "FAILED", rows
    log = Path(collect["logs"][0])
    assert "missing or invalid slice(s): 3" in log.read_text()
    assert not (run / "distilled.h5").exists()
    logs = run_cli("logs", run, "collect", 0)
    assert logs.stdout.strip() == str(log)

    done = {s: file_sha256(run / "recover" / f"slice_{s:05d}.h5") for s in range(3)}
    mtimes = {s: (run / "recover" / f"slice_{s:05d}.h5").stat().st_mtime_ns for s in range(3)}
    again = run_cli("resubmit", run, "--failed")
    assert again.returncode == 0, again.stderr
    wait_for(run / "distilled.done", run=run)
    subs = submissions(run)
    assert subs["recover"][-1]["attempt"] == 1 and subs["recover"][-1]["arrays"][0]["items"] == [3]
    new_recover = subs["recover"][-1]["arrays"][0]["job_id"]
    assert subs["collect"][-1]["dependency"] == f"afterany:{new_recover}"
    for s in range(3):
        assert file_sha256(run / "recover" / f"slice_{s:05d}.h5") == done[s]
        assert (run / "recover" / f"slice_{s:05d}.h5").stat().st_mtime_ns == mtimes[s]
    with h5py.File(run / "distilled.h5") as f:
        assert f["ipc_index"][()].tolist() == [s for s in range(4) for _ in range(10)]


PWN = "$(touch {m})"


def test_shell_metacharacters_are_never_executed(tmp_path, tiny_cfg):
    marker = tmp_path / "pwned"
    evil = PWN.format(m=marker)
    bad_name = dict(tiny_cfg, name=evil)
    result = run_cli("plan", write_yaml(tmp_path / "n.yaml", bad_name))
    assert result.returncode == 2 and "name" in result.stderr

    tiny_cfg["resources"] = {
        "default": {
            "partition": evil, "account": f"`touch {marker}`", "qos": f"a;touch {marker}",
            "constraint": f"x|touch {marker}", "sbatch_extra": {"comment": evil},
            "setup": [f"echo {evil} `touch {marker}` > {tmp_path}/setup.txt; touch {marker}"],
        }
    }  # fmt: skip
    tiny_cfg["run_root"] = str(tmp_path / "runs")
    out = tmp_path / "dry"
    result = run_cli("plan", write_yaml(tmp_path / "c.yaml", tiny_cfg), "--out", out)
    assert result.returncode == 0, result.stderr
    scripts = sorted((out / "slurm").glob("*.sbatch"))
    assert scripts
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "srun").write_text('#!/bin/sh\necho "$@" >> "$SRUN_LOG"\n')
    (stub / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="0",
               SRUN_LOG=str(tmp_path / "srun.log"))  # fmt: skip
    for script in scripts:
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=60)
    assert not marker.exists()
    assert (tmp_path / "setup.txt").is_file() is False  # the redirection stayed literal text
    calls = (tmp_path / "srun.log").read_text().splitlines()
    assert len(calls) == len(scripts)
    assert all("prism_hpc.hpc.task" in c and "--array 0 0" in c for c in calls)

    from prism_hpc.config.load import config_from_dict
    from prism_hpc.hpc.backends.slurm import submitit_executor
    from prism_hpc.hpc.launch import plans_for
    from prism_hpc.stages import registry

    cfg = config_from_dict(tiny_cfg)
    plan = plans_for(cfg, registry(), max_array_size=5)[1]
    executor = submitit_executor(cfg, plan.stage.name, plan.resources, tmp_path / "logs", "afterok:1")
    text = executor._make_submission_file_text("python -c pass", "uid")
    body = tmp_path / "submitit.sh"
    body.write_text(text.replace("srun ", "true "))
    subprocess.run(["bash", str(body)], env=env, check=True, capture_output=True, timeout=60)
    assert not marker.exists()
    assert "#SBATCH --kill-on-invalid-dep=yes" in text and "HDF5_USE_FILE_LOCKING=FALSE" in text


def test_usr2_requeues_training_and_resumes(tmp_path, tiny_cfg_pretrained, slurm_cluster):
    cfg = tiny_cfg_pretrained
    cfg["relabel"]["mode"] = "none"
    cfg["students"].update(loss="ce", epochs=40, eval_every=40)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    assert run_cli("submit", path, "--run-dir", run, "--backend", "local",
                   "--stages", "recover,collect").returncode == 0  # fmt: skip
    result = run_cli("submit", "--resume", run, "--backend", "slurm", "--stages", "train")
    assert result.returncode == 0, result.stderr
    record = submissions(run)["train"][0]["arrays"][0]
    ckpt = run / "students" / "resnet18" / "seed0" / "ckpt.pt"
    wait_for(ckpt, timeout=300, run=run)
    time.sleep(3)  # a few more epochs
    subprocess.run(["scancel", "--signal=USR2", record["tasks"][0]], check=True)
    wait_for(run / "students" / "resnet18" / "seed0" / ".done", timeout=600, run=run)
    log = Path(record["logs"][0]).read_text()
    assert "resumed after epoch" in log, log[-3000:]
    metrics = json.loads((run / "students" / "resnet18" / "seed0" / "metrics.json").read_text())
    assert metrics["evals"][-1]["epoch"] == 40  # the epoch count continued to the end
    resumed_after = int(log.split("resumed after epoch")[1].split()[0])
    assert 1 <= resumed_after < 40


# ------------------------------------------------------------------ SLURM_CONF, sbatch errors
INSIDE_A_JOB = {
    # what a submission from inside an allocation inherits; RANK/WORLD_SIZE would make the
    # recover task think it is rank 2 of 3 and skip its work if they leaked into the new job
    "SLURM_JOB_ID": "999999", "SLURM_JOBID": "999999", "SLURM_ARRAY_JOB_ID": "999990",
    "SLURM_ARRAY_TASK_ID": "7", "SLURM_PROCID": "2", "SLURM_NTASKS": "3",
    "SLURM_MEM_PER_NODE": "1", "SLURM_CPUS_PER_TASK": "64", "SLURM_STEP_ID": "0",
    "RANK": "2", "WORLD_SIZE": "3",
}  # fmt: skip


def test_submit_finds_the_cluster_through_slurm_conf_alone(
    tmp_path, tiny_cfg_pretrained, slurm_cluster, monkeypatch
):
    from tests.slurm_cluster import ETC_CONF

    if ETC_CONF.exists():
        pytest.skip(f"{ETC_CONF} is a real file of this machine: SLURM_CONF is not the only way")
    if slurm_cluster.started_here:  # `localcluster.sh up` (no --link-etc) wrote nothing in /etc
        assert not slurm_cluster.removed_etc_link
    assert os.environ["SLURM_CONF"] == slurm_cluster.conf_path
    for name, value in INSIDE_A_JOB.items():
        monkeypatch.setenv(name, value)
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=1, iterations=3, iteration_step=0)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm", "--stages", "recover")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    wait_for(run / "recover" / "slice_00000.done", timeout=120, run=run)
    record = submissions(run)["recover"][0]["arrays"][0]
    rows = slurm_cluster.sacct([record["job_id"]])
    assert rows and rows[0]["State"] == "COMPLETED", rows


def test_failing_sbatch_on_the_cluster_is_one_line(tmp_path, tiny_cfg_pretrained, slurm_cluster):
    cfg = tiny_cfg_pretrained
    cfg["resources"] = {"recover": {"partition": "nope"}}
    path = write_yaml(tmp_path / "c.yaml", cfg)
    result = run_cli("submit", path, "--run-dir", tmp_path / "run", "--backend", "slurm")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    expected = (
        "prism-hpc: error: sbatch failed for stage recover: "
        "sbatch: error: invalid partition specified: nope"
    )
    assert result.stderr.strip().splitlines() == [expected]


# ------------------------------------------------------------------ eval_array.sbatch
def test_rendered_eval_array_runs_with_resources_train(
    tmp_path, tiny_cfg_pretrained, slurm_cluster
):
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=1, iterations=3, iteration_step=0)
    cfg["relabel"]["mode"] = "none"
    cfg["students"].update(loss="ce", epochs=2, eval_every=2, eval_limit=200)
    cfg["resources"] = {"train": {"time_min": 7, "cpus_per_task": 2, "signal": "USR2@45"}}
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm",
                     "--stages", "recover,collect")  # fmt: skip
    assert result.returncode == 0, result.stderr
    script = run / "slurm" / "eval_array.sbatch"
    text = script.read_text()
    assert "#SBATCH --time=7\n" in text and "#SBATCH --signal=B:USR2@45\n" in text
    wait_for(run / "distilled.done", timeout=180, run=run)
    env = dict(os.environ, PRISM_PYTHON=sys.executable)
    out = subprocess.run(["sbatch", "--parsable", str(script)], env=env, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    job = out.stdout.strip().split(";")[0]
    student = run / "students" / "resnet18" / "seed0"
    try:
        wait_for(student / ".done", timeout=300, run=run)
    except AssertionError:
        logs = "".join(p.read_text()[-3000:] for p in (run / "logs" / "train").glob("eval_*"))
        raise AssertionError(f"eval array job {job} did not finish:\n{logs}") from None
    metrics = json.loads((student / "metrics.json").read_text())
    assert metrics["evals"][-1]["epoch"] == 2
    rows = slurm_cluster.sacct([job])
    assert rows and rows[0]["JobName"] == "prism-tiny-eval" and rows[0]["State"] == "COMPLETED"
    asked = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job, "--format=Timelimit,ReqCPUS"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert asked[0] == "00:07:00|2", asked  # resources.train: 7 min, 1 task x 2 CPUs
    assert list((run / "logs" / "train").glob(f"eval_{job}_0.log"))


# ------------------------------------------------------------------ resubmit keeps live work
def _squeue(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T", "--jobs",
                          ",".join(job_ids)], capture_output=True, text=True, check=False).stdout  # fmt: skip
    return dict(line.split("|", 1) for line in out.split() if "|" in line)


def test_resubmit_keeps_live_tasks_and_rewires_collect(
    tmp_path, tiny_cfg_pretrained, slurm_cluster
):
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=4, iterations=3, iteration_step=0)
    cfg["resources"] = {"recover": {"array_parallelism": 1}}  # slices 2 and 3 wait their turn
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    result = run_cli("submit", path, "--run-dir", run, "--backend", "slurm",
                     "--stages", "recover,collect")  # fmt: skip
    assert result.returncode == 0, result.stderr
    recover = submissions(run)["recover"][0]["arrays"][0]["job_id"]
    old_collect = submissions(run)["collect"][0]["arrays"][0]["job_id"]
    subprocess.run(["scontrol", "hold", f"{recover}_2"], check=True)  # alive: pending, held
    subprocess.run(["scancel", f"{recover}_3"], check=True)  # failed: gone without a marker
    try:
        again = run_cli("resubmit", run, "--failed")
        assert again.returncode == 0, again.stderr
        events = json.loads((run / "state.json").read_text())
        resub = next(e for e in events if e["event"] == "resubmit")
        assert resub["resubmitted"]["recover"] == [3]
        assert {"item": 2, "task": f"{recover}_2"} in resub["kept_alive"]["recover"]
        assert resub["cancelled"] == {"collect": [{"item": 0, "task": old_collect}]}
        assert _squeue([recover]).get(f"{recover}_2") == "PENDING"  # same job, still queued
        subs = submissions(run)
        new_recover = subs["recover"][-1]["arrays"][0]["job_id"]
        assert subs["recover"][-1]["arrays"][0]["items"] == [3]
        dependency = subs["collect"][-1]["dependency"]
        assert dependency.startswith(f"afterany:{new_recover}:")
        assert f"{recover}_2" in dependency.split(":")
    finally:
        subprocess.run(["scontrol", "release", f"{recover}_2"], check=False)
    wait_for(run / "distilled.done", timeout=120, run=run)
    new_collect = submissions(run)["collect"][-1]["arrays"][0]["job_id"]
    rows = {
        r["JobID"]: r["State"].split()[0] for r in slurm_cluster.sacct([old_collect, new_collect])
    }
    assert rows == {old_collect: "CANCELLED", new_collect: "COMPLETED"}, rows  # collect ran once
    with h5py.File(run / "distilled.h5") as f:
        assert f["ipc_index"][()].tolist() == [s for s in range(4) for _ in range(10)]
    run_cli("cancel", run)  # the downstream stages resubmit also queued: not needed here
