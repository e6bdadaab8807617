"""Unpack a model package tarball without ever writing more than its manifest declares.

Why not ``tarfile.extractall``: its ``data`` filter stops path tricks, but not size. A 0.4 MB
gzip tarball wrote 419 MB before the manifest check could refuse it. Here the manifest is read
first (pass 1, nothing written), then every member is checked against it before a byte is
written (pass 2), and each file is copied with a counter that stops at its declared size. A
tarball that lies is refused early, with the reason, and the partial folder is removed.

The member check is pure (:func:`check_member`) so it can be fuzzed apart from any file.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from pydantic import ValidationError

from shared.modelpkg import MANIFEST_FILE, FileEntry, Manifest, PackageError

#: a manifest lists a few files; 1 MiB is far above any real one
MAX_MANIFEST_BYTES = 1 << 20
#: what one package may declare in total (an FP32 model of a few hundred MB at most)
MAX_PACKAGE_BYTES = 2 << 30
#: members read while looking for the manifest, so a tar of a million tiny entries ends early
MAX_MEMBERS = 10_000
_CHUNK = 1 << 16


class TarRefused(PackageError):
    """The tarball breaks the package rules; ``kind`` names the rule (counted by kind in tests)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _strip(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def check_member(
    name: str, is_file: bool, is_dir: bool, size: int, manifest: Manifest, seen: set[str]
) -> FileEntry | None:
    """The manifest entry a tar member must match (None for a directory); refuses anything else."""
    rel = PurePosixPath(name)
    norm = rel.as_posix()
    if is_dir and norm in ("", "."):
        return None  # the archive's own root
    if rel.is_absolute() or ".." in rel.parts or norm in ("", ".") or "\x00" in name:
        raise TarRefused("unsafe-path", f"tar member {name!r} has an unsafe path")
    if is_dir:
        prefix = norm.rstrip("/") + "/"
        if not any(f.startswith(prefix) for f in manifest.files):
            raise TarRefused("unlisted", f"tar directory {name!r} holds no file the manifest lists")
        return None
    if not is_file:
        raise TarRefused("not-a-file", f"tar member {name!r} is a link or device; packages hold plain files")
    if norm in seen:
        raise TarRefused("duplicate", f"tar member {name!r} appears twice")
    if norm == MANIFEST_FILE:
        if size > MAX_MANIFEST_BYTES:
            raise TarRefused("too-large", f"{MANIFEST_FILE} is {size} bytes (limit {MAX_MANIFEST_BYTES})")
        return FileEntry(sha256="0" * 64, size=size)  # checked by its own parse, not a digest
    entry = manifest.files.get(norm)
    if entry is None:
        raise TarRefused("unlisted", f"tar member {name!r} is not listed in the manifest")
    if size != entry.size:
        raise TarRefused(
            "size-mismatch", f"tar member {name!r} is {size} bytes, the manifest says {entry.size}"
        )
    return entry


def read_manifest_from_tar(tar_path: Path) -> Manifest:
    """Pass 1: find and parse ``manifest.json`` without writing anything."""
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise TarRefused("too-many-members", f"more than {MAX_MEMBERS} tar members")
                if _strip(member.name) != MANIFEST_FILE:
                    continue
                if not member.isfile() or member.size > MAX_MANIFEST_BYTES:
                    raise TarRefused(
                        "too-large", f"{MANIFEST_FILE} is not a file of at most {MAX_MANIFEST_BYTES} bytes"
                    )
                fh = tar.extractfile(member)
                raw = fh.read(MAX_MANIFEST_BYTES + 1) if fh is not None else b""
                try:
                    manifest = Manifest.model_validate_json(raw)
                except ValidationError as e:
                    raise TarRefused("bad-manifest", f"invalid manifest: {e.errors()[0]['msg']}") from e
                total = sum(f.size for f in manifest.files.values())
                if total > MAX_PACKAGE_BYTES:
                    raise TarRefused(
                        "too-large", f"the manifest declares {total} bytes (limit {MAX_PACKAGE_BYTES})"
                    )
                return manifest
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        if isinstance(e, PackageError):
            raise
        raise TarRefused("bad-tar", f"not a readable tarball: {e}") from e
    raise TarRefused("no-manifest", f"the tarball holds no {MANIFEST_FILE}; not a parkwatch model package")


def extract_package(tar_path: Path, dest: Path) -> Manifest:
    """Unpack ``tar_path`` into the new folder ``dest``, bounded by the manifest (removed on refusal)."""
    manifest = read_manifest_from_tar(tar_path)
    dest.mkdir(parents=True)
    try:
        _extract(tar_path, dest, manifest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return manifest


def _extract(tar_path: Path, dest: Path, manifest: Manifest) -> None:
    seen: set[str] = set()
    try:
        with tarfile.open(tar_path, "r:*") as tar:
            for member in tar:
                name = _strip(member.name)
                entry = check_member(name, member.isfile(), member.isdir(), member.size, manifest, seen)
                norm = PurePosixPath(name).as_posix()
                target = dest / norm
                if entry is None:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                seen.add(norm)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise TarRefused("not-a-file", f"tar member {name!r} has no data")
                digest = hashlib.sha256()
                written = 0
                with target.open("xb") as out:
                    while block := src.read(_CHUNK):
                        written += len(block)
                        if written > entry.size:  # a sparse or lying member: stop at once
                            raise TarRefused(
                                "size-mismatch", f"tar member {name!r} holds more than {entry.size} bytes"
                            )
                        digest.update(block)
                        out.write(block)
                if written != entry.size:
                    raise TarRefused(
                        "size-mismatch", f"tar member {name!r} holds {written} bytes, not {entry.size}"
                    )
                if norm != MANIFEST_FILE and digest.hexdigest() != entry.sha256:
                    raise TarRefused("digest-mismatch", f"tar member {name!r} does not match its sha256")
    except (tarfile.TarError, EOFError, ValueError) as e:
        if isinstance(e, PackageError):
            raise
        raise TarRefused("bad-tar", f"not a readable tarball: {e}") from e
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise TarRefused("missing", f"the tarball lacks {', '.join(missing)}")
