"""The local SLURM cluster (slurm/localcluster.sh) really schedules, accounts and enforces its conf."""

from __future__ import annotations

import subprocess
import time

import pytest

pytestmark = pytest.mark.slurm


def sbatch(*args: str, cwd, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={cwd}", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert res.returncode == 0, f"sbatch {args} failed: {res.stdout}{res.stderr}"
    return res


def job_id(res: subprocess.CompletedProcess) -> str:
    # --parsable prints "jobid" or "jobid;cluster"
    return res.stdout.strip().splitlines()[-1].split(";")[0]


def test_sbatch_wait_completed(slurm_cluster, tmp_path):
    res = sbatch(
        "--wait",
        "-J",
        "prism-hi",
        "-o",
        str(tmp_path / "hi.out"),
        "--wrap",
        "echo hi",
        cwd=tmp_path,
    )
    jid = job_id(res)
    assert (tmp_path / "hi.out").read_text().strip() == "hi"
    rows = slurm_cluster.sacct([jid])
    assert [(r["JobID"], r["JobName"], r["State"], r["ExitCode"]) for r in rows] == [
        (jid, "prism-hi", "COMPLETED", "0:0")
    ]


def test_array_of_three(slurm_cluster, tmp_path):
    res = sbatch(
        "--wait",
        "--array=0-2",
        "-o",
        str(tmp_path / "%A_%a.out"),
        "--wrap",
        "echo task $SLURM_ARRAY_TASK_ID",
        cwd=tmp_path,
    )
    jid = job_id(res)
    rows = slurm_cluster.sacct(jid)
    assert sorted(r["JobID"] for r in rows) == [f"{jid}_{i}" for i in range(3)]
    assert {r["State"] for r in rows} == {"COMPLETED"}
    for i in range(3):
        assert (tmp_path / f"{jid}_{i}.out").read_text().strip() == f"task {i}"


def test_max_array_size_is_enforced(slurm_cluster, tmp_path):
    m = slurm_cluster.max_array_size
    assert m >= 1
    # MaxArraySize=m allows indices 0..m-1 only.
    too_big = sbatch(f"--array=0-{m}", "--wrap", "true", cwd=tmp_path, check=False)
    assert too_big.returncode != 0, f"--array=0-{m} accepted with MaxArraySize={m}"
    assert "array" in too_big.stderr.lower(), too_big.stderr
    if m <= 9:  # the localcluster default is 5
        res = sbatch("--array=0-9", "--wrap", "true", cwd=tmp_path, check=False)
        assert res.returncode != 0
    # ...while the largest legal array is accepted (held, then cancelled: nothing runs).
    ok = sbatch("--hold", f"--array=0-{m - 1}", "-o", "/dev/null", "--wrap", "true", cwd=tmp_path)
    subprocess.run(["scancel", job_id(ok)], check=True, timeout=60)


def test_afterok_on_failed_job_is_cancelled(slurm_cluster, tmp_path):
    # Hold the failing job until the dependant is queued, so the order is deterministic.
    bad = job_id(
        sbatch("--hold", "-J", "prism-fail", "-o", "/dev/null", "--wrap", "exit 3", cwd=tmp_path)
    )
    dep = job_id(
        sbatch(
            f"--dependency=afterok:{bad}",
            "--kill-on-invalid-dep=yes",
            "-J",
            "prism-dep",
            "-o",
            "/dev/null",
            "--wrap",
            "echo never",
            cwd=tmp_path,
        )
    )
    subprocess.run(["scontrol", "release", bad], check=True, timeout=60)
    t0 = time.monotonic()
    rows = {r["JobID"]: r for r in slurm_cluster.sacct([bad, dep], timeout=30)}
    assert rows[bad]["State"] == "FAILED" and rows[bad]["ExitCode"] == "3:0", rows
    assert rows[dep]["State"].startswith("CANCELLED"), rows
    assert time.monotonic() - t0 < 30
