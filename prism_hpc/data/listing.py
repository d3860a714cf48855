"""One listing of an ImageFolder per run (DESIGN §5: the shared filesystem is the scarce resource).

Walking ImageNet's 1.28 M training files takes minutes on NFS/Lustre, and 50 recover tasks plus
every relabel and train task doing it at once is a metadata storm. So `submit` lists the folder
once and writes the result into the run directory (`data_index/<split>.json.gz`: class names,
file names per class in sorted order, the class folders' modification times, a fingerprint);
every task reads that file instead. A task checks the data is still the data that was listed
with one directory read and one `stat` per class folder (adding or removing a file changes its
folder's mtime), and refuses with one line naming the class folder that changed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from prism_hpc.errors import UserError
from prism_hpc.store import layout

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}  # compared lower-case
FORMAT = "prism-data-index-v1"
_CACHE: dict[str, FolderListing] = {}


@dataclass(frozen=True)
class FolderListing:
    """`folder/<class>/<file>`: classes sorted by name (torchvision's order), files sorted."""

    folder: str
    classes: list[str]
    files: list[list[str]]
    mtimes: list[int]
    fingerprint: str
    skipped: int = 0  # hidden entries and non-image files left out (reported once at submit)

    @property
    def counts(self) -> list[int]:
        return [len(f) for f in self.files]

    def paths_and_labels(self) -> tuple[list[Path], list[int]]:
        root = Path(self.folder)
        paths, labels = [], []
        for label, (name, files) in enumerate(zip(self.classes, self.files)):
            paths += [root / name / f for f in files]
            labels += [label] * len(files)
        return paths, labels

    def check_unchanged(self, index_path: Path | str = "the run's data index") -> None:
        """One listdir + one stat per class folder; raises UserError on the first change."""
        root = Path(self.folder)
        try:
            now = sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))
        except OSError as err:
            raise UserError(f"data folder {root}: not readable ({err.strerror})") from None
        if now != self.classes:
            extra = sorted(set(now) - set(self.classes))[:3]
            gone = sorted(set(self.classes) - set(now))[:3]
            raise UserError(
                f"data folder {root} changed since {index_path} was made (class folders added "
                f"{extra}, removed {gone}); restore it or start a new run"
            )
        for name, mtime in zip(self.classes, self.mtimes):
            if os.stat(root / name).st_mtime_ns != mtime:
                raise UserError(
                    f"data folder {root / name} changed since {index_path} was made (files "
                    "added or removed); restore it or start a new run"
                )


def _visible(name: str) -> bool:
    """Hidden entries (`.ipynb_checkpoints`, macOS `._*` AppleDouble files) are not data."""
    return not name.startswith(".")


def _is_image(name: str) -> bool:
    return _visible(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _fingerprint(classes: list[str], files: list[list[str]]) -> str:
    digest = hashlib.sha256()
    for name, names in zip(classes, files):
        digest.update(name.encode() + b"\0" + "\0".join(names).encode() + b"\n")
    return digest.hexdigest()[:16]


def list_folder_cached(folder: Path) -> bool:
    return str(Path(folder).resolve()) in _CACHE


def list_folder(folder: Path) -> FolderListing:
    """Walk `folder` once per process (cached: preflight and the index writer share it)."""
    folder = Path(folder).resolve()
    if str(folder) in _CACHE:
        return _CACHE[str(folder)]
    if not folder.is_dir():
        raise UserError(f"data folder {folder} not found")
    top = list(os.scandir(folder))
    classes = sorted(e.name for e in top if e.is_dir() and _visible(e.name))
    if not classes:
        raise UserError(f"data folder {folder}: no class folders")
    skipped = len(top) - len(classes)
    files, mtimes = [], []
    for name in classes:
        sub = folder / name
        mtimes.append(os.stat(sub).st_mtime_ns)
        entries = [e.name for e in os.scandir(sub)]
        names = sorted(n for n in entries if _is_image(n))
        skipped += len(entries) - len(names)
        files.append(names)
    listing = FolderListing(
        str(folder), classes, files, mtimes, _fingerprint(classes, files), skipped
    )
    _CACHE[str(folder)] = listing
    return listing


def use_run_index(run_dir: Path) -> None:
    """Make this process's listings those of the run's index (a task or `status` then never
    walks the data folder, whichever code asks for it)."""
    for path in layout.data_index_files(run_dir):  # none when the run has no index
        listing = read_listing(path)
        _CACHE.setdefault(listing.folder, listing)


def index_path(run_dir: Path, split: str) -> Path:
    return layout.data_index(run_dir, split)


def write_listing(path: Path, listing: FolderListing) -> None:
    """gzip'd JSON (1.28 M names are ~10 MB), written atomically."""
    from prism_hpc.store.atomic import atomic_path

    data = {"format": FORMAT, **listing.__dict__}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", compresslevel=6) as fh:
        json.dump(data, fh, separators=(",", ":"))


def read_listing(path: Path) -> FolderListing:
    try:
        with gzip.open(path, "rt") as fh:
            data = json.load(fh)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path}: unreadable data index ({err}); remove it to list again") from None
    if data.pop("format", None) != FORMAT:
        raise UserError(f"{path}: not a prism-hpc data index")
    listing = FolderListing(**data)
    if _fingerprint(listing.classes, listing.files) != listing.fingerprint:
        raise UserError(f"{path}: fingerprint does not match its contents (damaged index)")
    return listing
