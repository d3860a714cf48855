"""A cheap pass over the image files a run will read, before any task starts.

One corrupt JPEG among 50 000 should be named at submit time, not kill array task 37 an hour
into the run. Decoding every file costs minutes; reading its first and last bytes costs one
small read each and catches what breaks real runs: empty or truncated files (a copy or an
extraction cut short), and files that are not the format their name says (an HTML error page
saved as .jpg, a macOS `._` resource fork).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

# magic bytes at the start, and what a complete file ends with (None: no trailer check). The
# format is told by the header, not the name: ImageNet itself has a PNG named .JPEG
# (n02105855_2933.JPEG), which PIL, and so the pipeline, reads without complaint.
_FORMATS: tuple[tuple[str, bytes, bytes | None], ...] = (
    ("jpeg", b"\xff\xd8\xff", b"\xff\xd9"),
    ("png", b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"),
    ("bmp", b"BM", None),
    ("webp", b"RIFF", None),
    ("gif", b"GIF8", None),
)
TAIL_SLACK = 64  # JPEG writers may pad after the end-of-image marker


def image_problem(path: Path) -> str | None:
    """None if the file looks like a complete image, else why not."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            if not head:
                return "empty file"
            found = [(name, tail) for name, magic, tail in _FORMATS if head.startswith(magic)]
            if not found:
                return "not an image (unknown header)"
            name, trailer = found[0]
            if trailer is not None:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - TAIL_SLACK))
                if trailer not in fh.read():
                    return f"truncated {name} (no end-of-image marker)"
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    return None


def unreadable_images(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    return [(Path(p), why) for p in paths if (why := image_problem(p)) is not None]
