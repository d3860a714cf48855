"""The command line as users meet it: exit codes, one-line errors, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_yaml
from tests.helpers import run_cli


def _bad(cfg: dict, mutate) -> dict:
    mutate(cfg)
    return cfg


BAD_INPUTS = {
    "unknown key": (lambda c: c["recover"].update(iters=5), r"unknown key 'recover.iters'"),
    "wrong type": (lambda c: c["recover"].update(ipc="ten"), r"recover.ipc = 'ten': Input should"),
    "unknown model": (
        lambda c: c["teachers"]["resnet18"].update(arch="resnet1800"),
        r"teachers.resnet18.arch = 'resnet1800': unknown model",
    ),
    "missing dataset": (
        lambda c: c["data"].update(root="/nonexistent/fmnist"),
        r"data.root = '/nonexistent/fmnist': train-images-idx3-ubyte.gz not found",
    ),
    "ipc too large": (
        lambda c: c["recover"].update(ipc=6001),
        r"recover.ipc = 6001: needs 6001 images per class, the smallest class .* has 6000",
    ),
    "zero iterations": (
        lambda c: c["recover"].update(iterations=0),
        r"recover.iterations = 0: Input should be greater than or equal to 1",
    ),
    "negative iterations": (
        lambda c: c["recover"].update(iterations=-5),
        r"recover.iterations = -5: Input should be greater than or equal to 1",
    ),
    "infinite lr": (lambda c: c["recover"].update(lr=float("inf")),
                    r"recover.lr = inf: Input should be a finite number"),
    "nan weight": (lambda c: c["recover"].update(r_bn=float("nan")),
                   r"recover.r_bn = nan: Input should be a finite number"),
    "pool member twice": (lambda c: c["recover"].update(bn_pool=["shufflenet", "shufflenet"]),
                          r"recover.bn_pool lists 'shufflenet' twice"),
    "pool repeats always": (lambda c: c["recover"].update(bn_pool=["resnet18"]),
                            r"recover.bn_pool repeats \['resnet18'\] of recover.bn_always"),
    "relabel teacher twice": (lambda c: c["relabel"].update(teachers=["resnet18", "resnet18"]),
                              r"relabel.teachers lists 'resnet18' twice"),
    "student arch twice": (lambda c: c["students"].update(archs=["resnet18", "resnet18"]),
                           r"students.archs lists 'resnet18' twice"),
    "seed twice": (lambda c: c["students"].update(seeds=[0, 0]),
                   r"students.seeds lists 0 twice"),
    "k_max above the pool": (lambda c: c["recover"].update(k_max=2),
                             r"recover.k_max = 2 is larger than recover.bn_pool \(1\)"),
    "class names of the wrong length": (
        lambda c: c["data"].update(class_names=["a", "b", "c"]),
        r"data.class_names has 3 name\(s\), the data has 10 classes",
    ),
    "unknown backend": (lambda c: c.update(backend="bogus"), r"backend = 'bogus': Input should"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_config_exits_2_with_one_line(case, tmp_path, tiny_cfg, fmnist_available):
    mutate, pattern = BAD_INPUTS[case]
    cfg = _bad(tiny_cfg, mutate)
    cfg["run_root"] = str(tmp_path / "runs")
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    result = run_cli("submit", path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert lines[0].startswith(f"prism-hpc: error: {path}: ")
    assert not (tmp_path / "runs").exists()


def test_missing_and_malformed_config(tmp_path):
    result = run_cli("submit", tmp_path / "missing.yaml")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"prism-hpc: error: {tmp_path / 'missing.yaml'}: config file not found"
    )
    bad = tmp_path / "syntax.yaml"
    bad.write_text("name: x\nteachers: [\n")
    result = run_cli("submit", bad)
    assert result.returncode == 2 and "YAML syntax error" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_is_informative():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("submit", "plan", "status", "collect", "report", "export"):
        assert command in result.stdout
    sub = run_cli("submit", "--help")
    assert "--resume" in sub.stdout and "--set" in sub.stdout and "--backend" in sub.stdout


def test_plan_prints_stages_without_running(tmp_path, tiny_cfg):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg)
    result = run_cli("plan", path, "--out", tmp_path / "dry")
    assert result.returncode == 0, result.stderr
    for stage in ("squeeze", "recover", "collect", "relabel", "train", "report"):
        assert stage in result.stdout
    assert (tmp_path / "dry" / "plan.json").is_file()
    assert not (tmp_path / "runs").exists()


def test_second_submit_never_overwrites(tmp_path, tiny_cfg_pretrained):
    cfg = tiny_cfg_pretrained
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("precious: true\n")
    result = run_cli("submit", path, "--run-dir", run)
    assert result.returncode == 2 and "use --resume" in result.stderr
    assert (run / "config.yaml").read_text() == "precious: true\n"


def test_resume_refuses_a_different_config(tmp_path, tiny_cfg_pretrained):
    path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
    run = tmp_path / "run"
    ok = run_cli("submit", path, "--run-dir", run, "--stages", "recover,collect",
                 "--set", "recover.ipc=1")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert (run / "distilled.h5").is_file()
    assert oct(run.stat().st_mode & 0o777) == "0o750"
    result = run_cli("submit", path, "--resume", run, "--set", "recover.ipc=2")
    assert result.returncode == 2
    assert "config differs from the run's config.yaml at recover.ipc (1 != 2)" in result.stderr
    assert Path(run / "provenance.json").is_file()


def _one_line(result, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_duplicated_yaml_keys_and_binary_files_are_refused(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("name: x\nteachers: {a: {arch: resnet18}}\nrecover:\n  lr: 0.1\n  lr: 0.2\n")
    line = _one_line(run_cli("plan", dup))
    assert line == (f"prism-hpc: error: {dup}: line 5 column 3: duplicated key 'lr' "
                    "(first on line 4)")  # fmt: skip
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x80\x04\x95 pickled, not yaml")
    line = _one_line(run_cli("plan", binary))
    assert line == f"prism-hpc: error: {binary}: not a UTF-8 text file (byte 0); expected YAML"


def test_refusals_at_submit_leave_nothing_behind(tmp_path, tiny_cfg_pretrained):
    cfg = dict(tiny_cfg_pretrained, run_root=str(tmp_path / "runs"))
    path = write_yaml(tmp_path / "c.yaml", cfg)
    line = _one_line(run_cli("submit", path, "--stages", "recover,bogus"))
    assert "--stages: unknown stage(s) ['bogus']" in line
    line = _one_line(run_cli("submit", path, "--backend", "bogus"))
    assert "backend 'bogus': expected one of auto, local, slurm, debug" in line
    assert not (tmp_path / "runs").exists()
    under_file = tmp_path / "a-file"
    under_file.write_text("x")
    line = _one_line(run_cli("submit", path, "--run-dir", under_file / "run"))
    assert line == (f"prism-hpc: error: {under_file}: is not a directory (cannot hold run "
                    f"{under_file / 'run'})")  # fmt: skip
    line = _one_line(run_cli("submit", path, "--run-dir", "/proc/prism-hpc-run"))
    assert line.startswith("prism-hpc: error: /proc/prism-hpc-run: cannot create a run directory")


def test_a_killed_run_directory_build_leaves_no_run_and_the_path_stays_usable(tmp_path, tiny_cfg):
    from prism_hpc.config.load import config_from_dict
    from prism_hpc.store.atomic import host_tag
    from prism_hpc.store.rundir import new_run_dir

    cfg = config_from_dict(tiny_cfg)
    target = tmp_path / "runs" / "r1"
    code = (
        "import os, sys\n"
        "from prism_hpc.config.load import config_from_dict\n"
        "from prism_hpc.store.rundir import new_run_dir\n"
        "from tests.conftest import TINY\n"
        f"new_run_dir(config_from_dict(TINY), {str(target)!r}, {{}}, build=lambda rd: os._exit(9))\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert killed.returncode == 9, killed.stderr
    assert not target.exists()  # absent, not half-made
    leftovers = [p.name for p in target.parent.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".r1.tmp-")

    with pytest.raises(RuntimeError):  # a refusal during the build: removed at once
        new_run_dir(cfg, target, {}, build=lambda rd: (_ for _ in ()).throw(RuntimeError("no")))
    assert not target.exists()

    rd = new_run_dir(cfg, target, {"name": "tiny"})  # the same path works; the dead build goes
    assert (rd.root / "config.yaml").is_file() and (rd.root / "provenance.json").is_file()
    assert [p.name for p in target.parent.iterdir()] == ["r1"]
    assert host_tag() in leftovers[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs: big enough for a run's first stages, too small for a checkpoint."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_task_in_one_line_and_the_run_resumes(small_disk, tmp_path,
                                                                    tiny_cfg_pretrained):
    cfg = tiny_cfg_pretrained
    cfg["recover"]["ipc"] = 1
    cfg["students"]["epochs"] = 1
    path = write_yaml(tmp_path / "c.yaml", cfg)
    run = small_disk / "run"
    line = _one_line(run_cli("submit", path, "--run-dir", run, "--backend", "local"), code=1)
    assert "stage train item 0 (resnet18-seed0) failed" in line, line
    assert "No space left on device" in line or "failed writing" in line, line
    assert (run / "distilled.h5").is_file() and (run / "relabel").is_dir()
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)
    resumed = run_cli("submit", "--resume", run, "--backend", "local")
    assert resumed.returncode == 0, resumed.stderr
    assert "[recover] 1/1 already done" in resumed.stdout
    assert "[train] 1/1 done" in resumed.stdout
    assert run_cli("verify", run).returncode == 0


def test_read_only_targets_are_one_line_errors(tmp_path, tiny_cfg_pretrained):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    try:
        path = write_yaml(tmp_path / "c.yaml", tiny_cfg_pretrained)
        line = _one_line(run_cli("submit", path, "--run-dir", mnt / "run"))
        assert line == (f"prism-hpc: error: {mnt / 'run'}: cannot create a run directory here "
                        "(Read-only file system)")  # fmt: skip
        run = tmp_path / "run"
        ok = run_cli("submit", path, "--run-dir", run, "--stages", "recover,collect",
                     "--set", "recover.ipc=1")  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        for args in (("report", run, "--out", mnt / "rep"), ("export", run, mnt / "png")):
            assert "Read-only file system" in _one_line(run_cli(*args))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
