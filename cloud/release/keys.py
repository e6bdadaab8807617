"""Signing keys of the release channel: ed25519, one PEM file per key, mode 0600.

Keys live in a folder of their own (``release.keys_dir``, mode 0700), never in the registry
database or the TUF repository folder, so a backup or a copy of the repository leaks no key.
The approver's keys may live elsewhere (``release.approver_keys_dir``, e.g. a removable disk
or the approver's own account) so the cloud host alone cannot approve a model.

Role names and what each key may sign (docs/release-channel.md explains why):

* ``root``      - the root of trust; offline; signs root.json (who holds which role).
* ``approver``  - the top-level ``targets`` role: which package versions QA approved, per stage.
* ``pipeline``  - delegated role ``pipeline`` (paths ``builds/*``): what the build pipeline made.
* ``rollout``   - delegated role ``rollout`` (paths ``groups/*``): which approved version each
                  device group should run. Online.
* ``snapshot``, ``timestamp`` - online, re-signed by ``cloud serve`` to keep metadata fresh.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from cloud.release.errors import KeyError_
from shared.atomic import atomic_write_bytes

ROLES = ("root", "approver", "pipeline", "rollout", "snapshot", "timestamp")
KEY_SUFFIX = ".pem"


@dataclass(frozen=True)
class RoleKey:
    role: str
    path: Path
    signer: CryptoSigner

    @property
    def public(self) -> SSlibKey:
        return self.signer.public_key

    @property
    def keyid(self) -> str:
        return self.public.keyid


def key_path(folder: Path, role: str, index: int) -> Path:
    return folder / f"{role}-{index}{KEY_SUFFIX}"


def _check_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyError_(
            f"{path} is readable by others (mode {mode:o}); run 'chmod 600 {path}' and check who read it"
        )


def generate_key(path: Path) -> RoleKey:
    """Create one ed25519 key file (0600) in a 0700 folder; never overwrites an existing key."""
    if path.exists():
        raise KeyError_(f"{path} already exists; refusing to overwrite a signing key")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    priv = Ed25519PrivateKey.generate()
    pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write_bytes(path, pem, mode=0o600)
    role = path.name.rsplit("-", 1)[0]
    return RoleKey(role, path, CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key())))


def load_key(path: Path) -> RoleKey:
    try:
        _check_mode(path)
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise KeyError_(
            f"signing key {path} not found; run 'parkwatch cloud keys init' or point "
            "release.keys_dir / release.approver_keys_dir at the key folder"
        ) from e
    except OSError as e:
        raise KeyError_(f"cannot read signing key {path}: {e.strerror}") from e
    try:
        priv = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise KeyError_(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(priv, Ed25519PrivateKey):
        raise KeyError_(f"{path} is not an ed25519 key")
    role = path.name.rsplit("-", 1)[0]
    return RoleKey(role, path, CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key())))


class KeyStore:
    """Finds the key files of each role; the approver's may sit in a folder of their own."""

    def __init__(self, keys_dir: Path, approver_keys_dir: Path | None = None) -> None:
        self.keys_dir = Path(keys_dir)
        self.approver_keys_dir = Path(approver_keys_dir) if approver_keys_dir else self.keys_dir

    def folder(self, role: str) -> Path:
        if role not in ROLES:
            raise KeyError_(f"unknown key role {role!r}; roles are {', '.join(ROLES)}")
        return self.approver_keys_dir if role == "approver" else self.keys_dir

    def paths(self, role: str) -> list[Path]:
        folder = self.folder(role)
        if not folder.is_dir():
            return []
        found = [p for p in folder.glob(f"{role}-*{KEY_SUFFIX}") if p.stem.rsplit("-", 1)[1].isdigit()]
        return sorted(found, key=lambda p: int(p.stem.rsplit("-", 1)[1]))

    def load(self, role: str) -> list[RoleKey]:
        keys = [load_key(p) for p in self.paths(role)]
        if not keys:
            raise KeyError_(
                f"no {role} key in {self.folder(role)}; run 'parkwatch cloud keys init' "
                f"(or mount the {role} key folder)"
            )
        return keys

    def generate(self, role: str, count: int = 1) -> list[RoleKey]:
        existing = self.paths(role)
        start = max((int(p.stem.rsplit("-", 1)[1]) for p in existing), default=0) + 1
        return [generate_key(key_path(self.folder(role), role, start + i)) for i in range(count)]

    def retire(self, key: RoleKey) -> Path:
        """Move a replaced key aside (``retired/``) rather than delete it: audits may need it."""
        dest = key.path.parent / "retired" / key.path.name
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(key.path, dest)
        return dest
