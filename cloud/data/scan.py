"""Walk a data lake (one sub-folder per label) lazily, without following symlink loops.

Yields every candidate file in a stable order (sorted per folder) so the same lake always gives
the same sequence, and reports what cannot be a sample (wrong extension, special files, loops)
as quarantine reasons instead of raising: one bad file must not stop a 100,000-file ingest.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cloud.data.errors import IngestError

LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
RESERVED_LABELS = {"abstain"}


@dataclass(frozen=True)
class Candidate:
    path: Path  # as found (may be a symlink)
    rel: str  # path relative to the lake root, posix
    label: str
    problem: tuple[str, str] | None = None  # (reason, detail) when it cannot be a sample


def check_label(name: str) -> str | None:
    """Pure: why ``name`` cannot be a label, or None. Labels end up in ONNX metadata and MQTT payloads."""
    if name in RESERVED_LABELS:
        return f"'{name}' is reserved (the edge uses it for low-confidence frames)"
    if not LABEL_RE.match(name):
        return (
            "labels must be 1-32 characters of lower-case a-z, 0-9, '_' or '-', starting with a "
            "letter or digit"
        )
    return None


def label_dirs(root: Path, extensions: set[str] | None = None) -> list[Path]:
    """The label folders of ``root``; raises :class:`IngestError` naming every bad one at once."""
    try:
        if not root.is_dir():
            raise IngestError(
                f"{root} is not a folder: give the data-lake folder that holds one "
                "sub-folder per label (e.g. cat/ and dog/)"
            )
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except PermissionError as e:
        raise IngestError(f"cannot list {root}: permission denied") from e
    except OSError as e:
        raise IngestError(f"cannot list {root}: {e.strerror}") from e
    dirs = [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=True)]
    if not dirs:
        raise IngestError(
            f"{root} has no label sub-folders: put the images in one folder per label, "
            f"e.g. {root}/cat/*.jpg and {root}/dog/*.jpg"
        )
    if extensions:
        # An image beside the label folders has no label; dropping it quietly would hide data.
        stray = [e.name for e in entries if e.is_file() and Path(e.name).suffix.lower() in extensions]
        if stray:
            shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
            raise IngestError(
                f"{root} holds image(s) outside any label folder ({shown}): move each into the "
                "folder of its label (e.g. cat/) and run ingest again"
            )
    bad = [(d.name, why) for d in dirs if (why := check_label(d.name))]
    if bad:
        listing = "; ".join(f"{name!r}: {why}" for name, why in bad)
        raise IngestError(
            f"bad label folder name(s) in {root}: {listing}. Rename the folder(s) and run ingest again"
        )
    if len(dirs) < 2:
        raise IngestError(
            f"{root} has only one label folder ({dirs[0].name}); a classifier needs at least "
            "two labels, e.g. cat/ and dog/"
        )
    return dirs


def walk(root: Path, extensions: set[str]) -> Iterator[Candidate]:
    """Yield candidates under each label folder (recursively), flagging loops and non-images."""
    root = root.resolve() if not root.is_symlink() else root
    for folder in label_dirs(root, extensions):
        label = folder.name
        seen: set[tuple[int, int]] = set()
        yield from _walk_dir(root, folder, label, extensions, seen)


def _walk_dir(
    root: Path, folder: Path, label: str, exts: set[str], seen: set[tuple[int, int]]
) -> Iterator[Candidate]:
    try:
        st = folder.stat()
    except OSError as e:
        yield Candidate(folder, _rel(root, folder), label, ("unreadable", _oserr(e)))
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        yield Candidate(
            folder,
            _rel(root, folder),
            label,
            ("symlink-loop", "folder already visited through another path (symlink loop)"),
        )
        return
    seen.add(key)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        yield Candidate(folder, _rel(root, folder), label, ("unreadable", f"cannot list folder: {_oserr(e)}"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files (editor swap files, .DS_Store) are not data
        path = Path(entry.path)
        rel = _rel(root, path)
        try:
            st = path.stat()  # follows symlinks; ELOOP for a symlink cycle, ENOENT when dangling
        except OSError as e:
            reason = "symlink-loop" if e.errno == 40 else "unreadable"
            yield Candidate(path, rel, label, (reason, _oserr(e)))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(root, path, label, exts, seen)
        elif not stat.S_ISREG(st.st_mode):
            yield Candidate(path, rel, label, ("not-a-file", "special file (fifo, socket or device)"))
        elif path.suffix.lower() not in exts:
            yield Candidate(
                path,
                rel,
                label,
                (
                    "not-an-image",
                    f"extension {path.suffix or '(none)'} is not one of {', '.join(sorted(exts))}",
                ),
            )
        else:
            yield Candidate(path, rel, label)


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _oserr(e: OSError) -> str:
    return e.strerror or str(e)
