"""pytest plugin: a session-scoped ``slurm_cluster`` fixture backed by a real SLURM cluster.

Resolution order:

1. A cluster that already answers (``$SLURM_CONF`` or ``/etc/slurm/slurm.conf`` present and
   ``sinfo`` responds) is reused and never stopped.
2. Otherwise, as root, ``slurm/localcluster.sh up`` brings up a single-node cluster with
   accounting (installing the Debian packages if needed); it is stopped at session end only
   if this fixture started it (set ``PRISM_SLURM_KEEP=1`` to leave it running).
3. Otherwise the tests are skipped -- or fail, if ``PRISM_REQUIRE_SLURM=1`` (CI).

The fixture sets ``os.environ["SLURM_CONF"]`` for the session (restored afterwards): that is
how every SLURM client in the tests finds the cluster. ``/etc/slurm/slurm.conf`` is not used --
a symlink there that points to our own local cluster (``localcluster.sh up --link-etc``) is
removed -- so the tests exercise sites that locate SLURM only through ``SLURM_CONF``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCALCLUSTER = REPO_ROOT / "slurm" / "localcluster.sh"
ETC_CONF = Path("/etc/slurm/slurm.conf")
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode")
# States after which a job's accounting row no longer changes.
_UNFINISHED = (
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "CONFIGURING",
    "COMPLETING",
    "STAGE_OUT",
    "SIGNALING",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESV_DEL_HOLD",
    "STOPPED",
)


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env
    )


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


@dataclass
class SlurmCluster:
    """Handle on the running cluster, as returned by the ``slurm_cluster`` fixture."""

    conf_path: str
    max_array_size: int
    started_here: bool = False
    env: dict = field(default_factory=dict, repr=False)
    # the fixture found (and removed) /etc/slurm/slurm.conf -> our conf: `up` must not write it
    removed_etc_link: bool = False

    def sacct(
        self,
        job_ids: Iterable[int | str] | int | str,
        timeout: float = 15.0,
        wait_finished: bool = True,
        allocations_only: bool = True,
    ) -> list[dict]:
        """Accounting rows (dicts keyed JobID, JobName, State, ExitCode) of ``job_ids``.

        One ``sacct`` call per attempt for all ids. Rows reach the database 2-4 s after a job
        changes state, so this retries for up to ``timeout`` seconds until every requested id
        has a row and (if ``wait_finished``) no row is in an unfinished state; it then returns
        the last rows it got (possibly incomplete -- the caller asserts). An array job id
        matches its tasks (``123_0``...). ``allocations_only`` adds ``-X`` (no step rows).

        For ~1 s after a fast job ends, slurmdbd can hold a placeholder row for it (JobName
        ``allocation``, empty Partition, but already the final State); Partition is fetched
        too (and dropped from the result) so that such rows count as not yet settled.
        """
        if isinstance(job_ids, (int, str)):
            job_ids = [job_ids]
        ids = [str(j).strip() for j in job_ids]
        if not ids:
            return []
        cmd = [
            "sacct",
            "--parsable2",
            "--noheader",
            "-j",
            ",".join(ids),
            "--format=" + ",".join(SACCT_FIELDS + ("Partition",)),
        ]
        if allocations_only:
            cmd.append("-X")
        deadline = time.monotonic() + timeout
        rows: list[dict] = []
        while True:
            res = _run(cmd, timeout=30, env=self.env)
            if res.returncode == 0:
                full = [
                    dict(zip(SACCT_FIELDS + ("Partition",), line.split("|")))
                    for line in res.stdout.splitlines()
                    if line.strip()
                ]
                rows = [{k: r.get(k, "") for k in SACCT_FIELDS} for r in full]
                if self._complete(ids, full, wait_finished):
                    return rows
            if time.monotonic() >= deadline:
                return rows
            time.sleep(0.5)

    @staticmethod
    def _complete(ids: list[str], rows: list[dict], wait_finished: bool) -> bool:
        for jid in ids:
            mine = [
                r
                for r in rows
                if r["JobID"] == jid or r["JobID"].startswith((jid + "_", jid + "."))
            ]
            if not mine:
                return False
            if wait_finished and any((r["State"].split() or [""])[0] in _UNFINISHED for r in mine):
                return False
            # placeholder allocation row (see sacct's docstring)
            if any("." not in r["JobID"] and not r.get("Partition") for r in mine):
                return False
        return True


def _answers(conf: Path) -> bool:
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        return _run(["sinfo", "-h", "-o", "%a"], timeout=20, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _max_array_size(env: dict) -> int:
    res = _run(["scontrol", "show", "config"], timeout=30, env=env)
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", res.stdout, re.MULTILINE)
    if res.returncode != 0 or not m:
        raise RuntimeError(
            f"cannot read MaxArraySize from scontrol: {_tail(res.stdout + res.stderr)}"
        )
    return int(m.group(1))


def _unavailable(reason: str) -> None:
    if os.environ.get("PRISM_REQUIRE_SLURM") == "1":
        pytest.fail(
            f"SLURM cluster required (PRISM_REQUIRE_SLURM=1) but unavailable: {reason}",
            pytrace=False,
        )
    pytest.skip(f"no SLURM cluster: {reason}")


def _find_running() -> Path | None:
    if not shutil.which("sbatch"):
        return None
    candidates = []
    if os.environ.get("SLURM_CONF"):
        candidates.append(Path(os.environ["SLURM_CONF"]))
    candidates.append(ETC_CONF)
    for conf in candidates:
        if not conf.exists():
            continue
        # Our own (stopped) localcluster: skip sinfo, which takes ~9 s to give up.
        if _is_localcluster_conf(conf) and not _localcluster_running():
            continue
        if _answers(conf):
            return conf
    return None


def _is_localcluster_conf(conf: Path) -> bool:
    state = Path(os.environ.get("PRISM_SLURM_DIR", "/tmp/prism-slurm"))
    try:
        return conf.resolve() == (state / "slurm.conf").resolve()
    except OSError:
        return False


def _localcluster_running() -> bool:
    try:
        return _run(["bash", str(LOCALCLUSTER), "status"], timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _drop_etc_symlink(conf: Path) -> bool:
    """Remove /etc/slurm/slurm.conf when it is a symlink to our local cluster's conf (never a
    real file, never a link to another cluster): the tests must find the cluster through
    SLURM_CONF alone."""
    if not (ETC_CONF.is_symlink() and _is_localcluster_conf(ETC_CONF)):
        return False
    try:
        if ETC_CONF.resolve() == conf.resolve():
            ETC_CONF.unlink()
            return True
    except OSError:
        pass
    return False


def _bring_up() -> tuple[Path, bool]:
    """Run localcluster.sh up; return (conf path, whether this call started it)."""
    if not LOCALCLUSTER.exists():
        _unavailable(f"{LOCALCLUSTER} not found")
    script = ["bash", str(LOCALCLUSTER)]
    try:
        already = _localcluster_running()
        t0 = time.monotonic()
        up = _run(script + ["up"], timeout=900)
    except subprocess.TimeoutExpired as exc:
        _unavailable(f"'localcluster.sh up' timed out: {exc}")
    if up.returncode != 0:
        _unavailable(
            f"'localcluster.sh up' failed (rc {up.returncode}):\n{_tail(up.stdout + up.stderr)}"
        )
    print(f"\n[slurm_cluster] localcluster.sh up took {time.monotonic() - t0:.1f} s")
    env_out = _run(script + ["env"], timeout=30).stdout
    m = re.search(r"SLURM_CONF=(\S+)", env_out)
    if not m:
        _unavailable(f"cannot parse 'localcluster.sh env' output: {env_out!r}")
    return Path(m.group(1).strip("'\"")), not already


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    conf = _find_running()
    started = False
    if conf is None:
        if os.geteuid() != 0:
            _unavailable(
                "no running cluster answers sinfo, and bringing one up "
                "(slurm/localcluster.sh up) needs root"
            )
        conf, started = _bring_up()
        if not _answers(conf):
            _unavailable(f"cluster brought up but sinfo does not answer with SLURM_CONF={conf}")
    removed = False
    if _is_localcluster_conf(conf):
        conf = conf.resolve()  # found through the /etc symlink: name the file itself
        removed = _drop_etc_symlink(conf)

    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    env = dict(os.environ)
    try:
        try:
            max_array = _max_array_size(env)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            _unavailable(str(exc))
        yield SlurmCluster(
            conf_path=str(conf), max_array_size=max_array, started_here=started, env=env,
            removed_etc_link=removed,
        )  # fmt: skip
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        if started and os.environ.get("PRISM_SLURM_KEEP") != "1":
            _run(["bash", str(LOCALCLUSTER), "down"], timeout=120)
