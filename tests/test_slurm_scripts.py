"""The SLURM layer without a cluster: submission environment, warning signals in the rendered
scripts, one-line sbatch failures, and resubmission decisions against PATH stubs of the SLURM
client commands (the real-cluster versions are in test_slurm_backend.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, write_yaml
from tests.helpers import with_canary_choice, write_stub

CLI = [sys.executable, "-m", "prism_hpc.cli"]


def _cli(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    return subprocess.run([*CLI, *with_canary_choice(args, False)], capture_output=True,
                          text=True, env=full,
                          timeout=timeout, check=False)  # fmt: skip


# --------------------------------------------------------------------- submission environment
def test_submission_env_keeps_slurm_conf_and_drops_the_callers_job():
    from prism_hpc.hpc.backends.slurm.env import submission_environ

    inside_a_job = {
        "PATH": "/usr/bin", "HOME": "/home/u", "SLURM_CONF": "/opt/slurm/etc/slurm.conf",
        "SLURM_CLUSTERS": "gpu", "SLURM_TIME_FORMAT": "standard",
        "SLURM_JOB_ID": "4242", "SLURM_JOBID": "4242", "SLURM_ARRAY_JOB_ID": "4240",
        "SLURM_ARRAY_TASK_ID": "2", "SLURM_TASK_PID": "77", "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_MEM_PER_NODE": "64000",
        "SLURM_CPUS_PER_TASK": "8", "SLURM_GPUS_PER_TASK": "1", "SLURM_RESTART_COUNT": "1",
        "SLURMD_NODENAME": "n01", "SRUN_DEBUG": "3", "SUBMITIT_EXECUTOR": "slurm",
        "SBATCH_TIMELIMIT": "5", "SBATCH_GRES": "gpu:8", "SBATCH_ACCOUNT": "proj",
        "SBATCH_PARTITION": "gpu", "RANK": "1", "WORLD_SIZE": "4", "MASTER_PORT": "29500",
        "CUDA_VISIBLE_DEVICES": "3",
    }  # fmt: skip
    env = submission_environ(inside_a_job, {"partition": "big", "account": None})
    assert env["SLURM_CONF"] == "/opt/slurm/etc/slurm.conf"
    assert env["SLURM_CLUSTERS"] == "gpu" and env["SLURM_TIME_FORMAT"] == "standard"
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/u"
    for gone in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_TASK_PID", "SLURM_STEP_ID", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_MEM_PER_NODE", "SLURM_CPUS_PER_TASK", "SLURM_GPUS_PER_TASK",
                 "SLURM_RESTART_COUNT", "SLURMD_NODENAME", "SRUN_DEBUG", "SUBMITIT_EXECUTOR",
                 "SBATCH_TIMELIMIT", "SBATCH_GRES", "RANK", "WORLD_SIZE", "MASTER_PORT",
                 "CUDA_VISIBLE_DEVICES"):  # fmt: skip
        assert gone not in env, gone
    # a site default for where jobs go is kept, unless the stage sets it (env beats #SBATCH)
    assert env["SBATCH_ACCOUNT"] == "proj" and "SBATCH_PARTITION" not in env
    # outside a job, the user's own GPU selection is not SLURM's to remove
    login = {"SLURM_CONF": "/c", "CUDA_VISIBLE_DEVICES": "0"}
    assert submission_environ(login) == login


def test_clean_submission_env_restores_the_environment(monkeypatch):
    from prism_hpc.hpc.backends.slurm.env import clean_submission_env

    monkeypatch.setenv("SLURM_CONF", "/x/slurm.conf")
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    with clean_submission_env({}):
        assert os.environ["SLURM_CONF"] == "/x/slurm.conf"
        assert "SLURM_JOB_ID" not in os.environ and "SLURM_ARRAY_TASK_ID" not in os.environ
    assert os.environ["SLURM_JOB_ID"] == "5" and os.environ["SLURM_ARRAY_TASK_ID"] == "1"


# --------------------------------------------------------------------- warning signal
def _plans(cfg_dict: dict):
    from prism_hpc.config.load import config_from_dict
    from prism_hpc.hpc.launch import plans_for
    from prism_hpc.stages import registry

    cfg = config_from_dict(cfg_dict)
    return cfg, {p.stage.name: p for p in plans_for(cfg, registry(), max_array_size=5)}


def test_rendered_scripts_request_the_configured_signal(tmp_path, tiny_cfg):
    tiny_cfg["resources"] = {
        "recover": {"signal": "USR1@120", "time_min": 60},
        "collect": {"time_min": 1},  # default USR2@90, capped at a fifth of the limit
        "train": {"signal": "SIGUSR2@300", "time_min": 600},
    }
    tiny_cfg["run_root"] = str(tmp_path / "runs")
    out = tmp_path / "dry"
    result = _cli("plan", write_yaml(tmp_path / "c.yaml", tiny_cfg), "--out", out)
    assert result.returncode == 0, result.stderr
    text = {p.stem: p.read_text() for p in (out / "slurm").glob("*.sbatch")}
    assert "#SBATCH --signal=B:USR1@120\n" in text["recover"]
    assert "trap prism_requeue USR1\n" in text["recover"]
    assert "#SBATCH --signal=B:USR2@12\n" in text["collect"]
    assert "#SBATCH --signal=B:USR2@300\n" in text["train"]
    assert "#SBATCH --signal=B:USR2@90\n" in text["relabel"]  # the default
    assert all("#SBATCH --open-mode=append" in t for t in text.values())
    assert (out / "logs" / "recover").is_dir()  # sbatch cannot create --output's folder

    from prism_hpc.hpc.backends.slurm import submitit_executor

    cfg, plans = _plans(tiny_cfg)
    for stage, line, sig in (("recover", "USR1@120", "USR1"), ("collect", "USR2@12", "USR2")):
        ex = submitit_executor(cfg, stage, plans[stage].resources, tmp_path / "logs", None)
        sub = ex._make_submission_file_text("python -c pass", "uid")
        assert sub.count("#SBATCH --signal=") == 1 and f"#SBATCH --signal={line}\n" in sub
        assert f"export SUBMITIT_PREEMPT_SIGNAL={sig}\n" in sub
        assert ex.parameters["signal_delay_s"] == int(line.split("@")[1])


def test_bad_signal_is_refused_in_one_line(tmp_path, tiny_cfg):
    tiny_cfg["resources"] = {"train": {"signal": "KILL@5"}}
    result = _cli("plan", write_yaml(tmp_path / "c.yaml", tiny_cfg))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "resources.train.signal" in result.stderr and "USR2@90" in result.stderr


def test_eval_array_sh_requests_the_warning_signal():
    text = (REPO / "slurm" / "eval_array.sh").read_text()
    assert "#SBATCH --signal=B:USR2@90\n" in text
    assert "trap prism_requeue USR2" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "eval_array.sbatch" in text  # points to the rendered one
    assert "prism_hpc.hpc.task" in text


def test_eval_array_sbatch_renders_resources_train(tmp_path, tiny_cfg):
    tiny_cfg["resources"] = {
        "default": {"partition": "cpu"},
        "train": {"partition": "gpu $(x)", "gpus_per_node": 4, "tasks_per_node": 4,
                  "time_min": 600, "signal": "USR1@200", "array_parallelism": 2,
                  "setup": ["module load cuda/12.1"]},
    }  # fmt: skip
    tiny_cfg["students"]["seeds"] = [0, 1, 2]
    out = tmp_path / "dry"
    result = _cli("plan", write_yaml(tmp_path / "c.yaml", tiny_cfg), "--out", out)
    assert result.returncode == 0, result.stderr
    text = (out / "slurm" / "eval_array.sbatch").read_text()
    for line in ("--partition='gpu $(x)'", "--gpus-per-node=4", "--ntasks-per-node=4",
                 "--time=600", "--signal=B:USR1@200", "--array=0-2%2",
                 "--job-name=prism-tiny-eval"):  # fmt: skip
        assert f"#SBATCH {line}\n" in text, line
    assert "\nmodule load cuda/12.1\n" in text
    stub = tmp_path / "bin"
    write_stub(stub, "srun", 'echo "$@" >> "$SRUN_LOG"\n')
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="2",
               SRUN_LOG=str(tmp_path / "srun.log"))  # fmt: skip
    script = str(out / "slurm" / "eval_array.sbatch")
    subprocess.run(["bash", script], env=env, check=True, capture_output=True, timeout=60)
    subprocess.run(["bash", script, "/runs/other run"], env=env, check=True, timeout=60)
    calls = (tmp_path / "srun.log").read_text().splitlines()
    assert calls[0].endswith(f"-m prism_hpc.hpc.task {out} train --array 0 2")
    assert calls[1].endswith("-m prism_hpc.hpc.task /runs/other run train --array 0 2")


def test_rendered_script_requeues_on_the_warning_signal(tmp_path, tiny_cfg):
    out = tmp_path / "dry"
    assert _cli("plan", write_yaml(tmp_path / "c.yaml", tiny_cfg), "--out", out).returncode == 0
    stub = tmp_path / "bin"
    log = tmp_path / "calls.log"
    write_stub(stub, "srun", f'echo "srun $*" >> {log}\nsleep 3\nexit 7\n')
    write_stub(stub, "scontrol", f'echo "scontrol $*" >> {log}\n')
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}", SLURM_ARRAY_TASK_ID="0",
               SLURM_JOB_ID="4711")  # fmt: skip
    proc = subprocess.Popen(["bash", str(out / "slurm" / "train.sbatch")], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 20
    while not (log.exists() and "srun" in log.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR2)
    stdout, _ = proc.communicate(timeout=30)
    assert "USR2 before the time limit" in stdout
    assert "scontrol requeue 4711" in log.read_text()
    assert proc.returncode == 7  # the script still waited for its step

    env["SLURM_RESTART_COUNT"] = "5"  # requeued often enough: let the limit end it
    log.unlink()
    proc = subprocess.Popen(["bash", str(out / "slurm" / "train.sbatch")], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    while not (log.exists() and "srun" in log.read_text()) and time.time() < deadline + 20:
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR2)
    proc.communicate(timeout=30)
    assert "scontrol" not in log.read_text()


# --------------------------------------------------------------------- sbatch failures
def _slurm_stubs(tmp_path: Path, sbatch_body: str) -> dict:
    """PATH with stub sbatch/scontrol (srun is the real one: submitit only looks for it)."""
    stub = tmp_path / "bin"
    write_stub(stub, "sbatch", sbatch_body)
    write_stub(stub, "scontrol", 'echo "MaxArraySize = 1001"\n')
    return dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}")


def test_failing_sbatch_is_one_line_exit_1(tmp_path, tiny_cfg_pretrained):
    env = _slurm_stubs(tmp_path, (
        'echo "sbatch: error: Batch job submission failed: Invalid account or '
        'account/partition combination specified" >&2\n'
        'echo "sbatch: error: second line" >&2\nexit 1\n'
    ))  # fmt: skip
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    result = _cli("submit", path, "--backend", "slurm", "--run-dir", tmp_path / "run", env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    expected = (
        "prism-hpc: error: sbatch failed for stage recover: sbatch: error: Batch job "
        "submission failed: Invalid account or account/partition combination specified"
    )
    assert result.stderr.strip().splitlines() == [expected]


def test_sbatch_failing_midway_names_what_was_submitted(tmp_path, tiny_cfg_pretrained):
    count = tmp_path / "count"
    env = _slurm_stubs(tmp_path, (
        f'n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}\n'
        'if [ $n -ge 2 ]; then echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1; fi\n'
        'echo "Submitted batch job 41"\n'
    ))  # fmt: skip
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    result = _cli("submit", path, "--backend", "slurm", "--run-dir", tmp_path / "run", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "sbatch failed for stage collect: sbatch: error: QOSMaxSubmitJobPerUserLimit" in line
    assert "already submitted: recover (41)" in line and "prism-hpc cancel" in line


# --------------------------------------------------------------------- resubmit decisions
def _fake_cluster(tmp_path: Path, squeue_out: str) -> dict:
    """Stub sbatch (job ids 1, 2, ...; logs each script's dependency), squeue (prints
    `squeue_out` from a file, so the test can change it), scancel (logs its arguments)."""
    count, log = tmp_path / "count", tmp_path / "slurm.log"
    (tmp_path / "squeue.out").write_text(squeue_out)
    env = _slurm_stubs(tmp_path, (
        f'n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}\n'
        f'echo "sbatch $n $(grep -o -e "--job-name=[^ ]*" -e "--dependency=[^ ]*" "$1" | '
        f'tr "\\n" " ")" >> {log}\n'
        'echo "Submitted batch job $n"\n'
    ))  # fmt: skip
    stub = tmp_path / "bin"
    write_stub(stub, "squeue", f'echo "squeue $*" >> {log}\ncat {tmp_path / "squeue.out"}\n')
    write_stub(stub, "scancel", f'echo "scancel $*" >> {log}\n')
    write_stub(stub, "sacct", "exit 1\n")
    return env


def test_resubmit_keeps_live_tasks_and_rewires_stale_dependents(tmp_path, tiny_cfg_pretrained):
    cfg = tiny_cfg_pretrained
    cfg["recover"].update(ipc=4, iterations=3, iteration_step=0)
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    env = _fake_cluster(tmp_path, "")
    result = _cli("submit", path, "--backend", "slurm", "--run-dir", run,
                  "--stages", "recover,collect", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run / "recover").mkdir(exist_ok=True)
    (run / "recover" / "slice_00000.done").write_text("{}")  # item 0 done
    # item 1 running, item 2 pending (array 1), item 3 gone without a marker; collect (job 2)
    # still pending on the recover array
    (tmp_path / "squeue.out").write_text("1_1|RUNNING\n1_2|PENDING\n2|PENDING\n")
    (tmp_path / "slurm.log").write_text("")
    result = _cli("resubmit", run, env=env)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "slurm.log").read_text().splitlines()
    assert sum(c.startswith("squeue") for c in calls) == 1  # one batched query
    assert [c for c in calls if c.startswith("scancel")] == ["scancel 2"]  # only the dependent
    assert calls.index("scancel 2") < next(i for i, c in enumerate(calls) if c.startswith("sbatch"))
    sbatch = {c.split()[1]: c for c in calls if c.startswith("sbatch")}
    assert "--job-name=prism-tiny-recover" in sbatch["3"] and "--dependency" not in sbatch["3"]
    assert "--job-name=prism-tiny-collect" in sbatch["4"]
    assert "--dependency=afterany:3:1_1:1_2" in sbatch["4"]  # new array + the kept tasks
    events = json.loads((run / "state.json").read_text())
    resub = next(e for e in events if e["event"] == "resubmit")
    assert resub["kept_alive"] == {"recover": [{"item": 1, "task": "1_1"},
                                               {"item": 2, "task": "1_2"}]}  # fmt: skip
    assert resub["cancelled"] == {"collect": [{"item": 0, "task": "2"}]}
    assert resub["resubmitted"]["recover"] == [3] and resub["resubmitted"]["collect"] == [0]
    latest = [e for e in events if e["event"] == "submit" and e["attempt"] == 1]
    assert latest[0]["stage"] == "recover" and latest[0]["arrays"][0]["items"] == [3]
    assert "kept 2 live task(s): 1_1 1_2" in result.stdout

    # status and logs follow each item to its latest task, whichever attempt it is in
    status = json.loads(_cli("status", run, "--json", env=env).stdout)
    rec = next(r for r in status if r["stage"] == "recover")
    assert rec["running"] == [1] and 2 in rec["queued"]
    logs = _cli("logs", run, "recover", 1, env=env)
    assert logs.returncode == 0 and "attempt0_array0" in logs.stdout, logs.stderr


def test_resubmit_refuses_without_a_scheduler_answer(tmp_path, tiny_cfg_pretrained):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    run = tmp_path / "run"
    env = _fake_cluster(tmp_path, "")
    assert _cli("submit", path, "--backend", "slurm", "--run-dir", run, "--stages", "recover",
                env=env).returncode == 0  # fmt: skip
    write_stub(
        tmp_path / "bin",
        "squeue",
        'echo "squeue: error: Unable to contact slurm controller" >&2; exit 1\n',
    )
    result = _cli("resubmit", run, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot tell which tasks are still alive" in line and "Unable to contact" in line
    assert "scancel" not in (tmp_path / "slurm.log").read_text()


def test_failing_scancel_is_one_line(tmp_path, tiny_cfg_pretrained):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    run = tmp_path / "run"
    env = _fake_cluster(tmp_path, "")
    assert _cli("submit", path, "--backend", "slurm", "--run-dir", run, "--stages", "recover",
                env=env).returncode == 0  # fmt: skip
    write_stub(tmp_path / "bin", "scancel",
          "echo \"scancel: error: Unable to contact slurm controller\" >&2; exit 1\n")  # fmt: skip
    result = _cli("cancel", run, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "prism-hpc: error: scancel failed: scancel: error: Unable to contact slurm controller"
    ]
