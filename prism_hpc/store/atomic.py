"""Crash-safe file writes: temp file in the same folder, fsync, rename.

A reader sees either the old file or the complete new one, never half of it; a kill leaves at
most a `.NAME.tmp-HOST-PID` file, which the next attempt ignores and `remove_stale_tmp` (run on
every resume) deletes once its writer is known to be dead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prism_hpc.store.integrity import file_sha256, read_json_marker, sealed

__all__ = [
    "atomic_path", "atomic_write_text", "file_sha256", "host_tag", "read_marker",
    "remove_stale_tmp",
    "write_marker",
]  # fmt: skip

# a writer on another node cannot be asked whether it lives: its temp file is stale when it
# has not been touched for this long (no write in this package pauses for a day)
FOREIGN_TMP_AGE_S = 24 * 3600
_TMP = re.compile(r"^\..+\.tmp-(?:(?P<host>[^/]+)-)?(?P<pid>\d+)$")


def host_tag() -> str:
    return socket.gethostname().split(".")[0].replace("-", "_") or "host"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsynced and renamed onto `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{host_tag()}-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_marker(
    path: Path,
    payload: dict[str, Any],
    run_dir: Path | None = None,
    outputs: Iterable[Path] = (),
    inputs: Mapping[str, str | None] | None = None,
    keep_id: str | None = None,
) -> dict[str, Any]:
    """A `.done` marker: JSON, written last, atomically; it vouches for `outputs` (size, mtime,
    checksum) computed from `inputs` (upstream marker ids): see `store.integrity`."""
    payload = sealed(payload, run_dir, outputs, inputs, keep_id)
    atomic_write_text(path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return payload


def read_marker(path: Path) -> dict[str, Any] | None:
    return read_json_marker(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_tmp(root: Path, only: Path | None = None) -> list[Path]:
    """Delete the temp files (and temp folders) of dead writers under `root` (or just `only`)."""
    removed = []
    now = time.time()
    walk = [(str(only.parent), [only.name], [])] if only is not None else os.walk(root)
    for dirpath, dirnames, filenames in walk:
        for name in list(filenames) + list(dirnames):
            m = _TMP.match(name)
            if not m:
                continue
            path = Path(dirpath) / name
            host, pid = m.group("host"), int(m.group("pid"))
            if host in (None, host_tag()):
                stale = not _pid_alive(pid)
            else:
                try:
                    stale = now - path.lstat().st_mtime > FOREIGN_TMP_AGE_S
                except OSError:
                    continue
            if not stale:
                continue
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
    return removed
