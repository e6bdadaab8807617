"""Turn a registered model package into the one file the release channel ships.

A package is a directory (shared/modelpkg.py); TUF targets are files, so the directory is
packed into a deterministic tar (sorted names, zero times and owners) - the same directory
always gives the same bytes and so the same TUF hash. A ready ``.tar``/``.tar.gz`` is shipped
as it is.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

from cloud.release.errors import ReleaseError
from shared.modelpkg import MANIFEST_FILE, PackageError, verify_package


def pack_directory(src: Path, dest: Path) -> Path:
    """Deterministic tar of ``src`` (already verified against its manifest) at ``dest``."""
    try:
        verify_package(src)
    except PackageError as e:
        raise ReleaseError(f"refusing to release {src}: {e}") from e
    files = sorted(p for p in src.rglob("*") if p.is_file())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            rel = p.relative_to(src).as_posix()
            info = tarfile.TarInfo(rel)
            data = p.read_bytes()
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(buf.getvalue())
    return dest


def shippable_file(package: Path, workdir: Path | None = None) -> Path:
    """The file to add as a TUF target for ``package`` (a directory or a tarball)."""
    package = Path(package)
    if package.is_dir():
        if not (package / MANIFEST_FILE).exists():
            raise ReleaseError(f"{package} has no {MANIFEST_FILE}; it is not a parkwatch model package")
        out_dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="pw-pack-"))
        return pack_directory(package, out_dir / "model.tar")
    if package.is_file() and package.name.endswith((".tar", ".tar.gz", ".tgz")):
        return package
    raise ReleaseError(f"model package {package} not found (expected a package directory or a .tar)")
