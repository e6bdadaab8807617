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

Approver keys may be numbered (``approver-1.pem``, one key the approvers share) or named after
one approver each (``approver-<name>.pem``, from ``keys init --approver NAME`` or ``keys
add-approver NAME``). Once named keys exist, ``approve --as NAME`` signs with NAME's key only, so
the name in the audit log is tied to a key, and the key id goes into the audit entry.
"""

from __future__ import annotations

import os
import re
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


def approver_slug(name: str) -> str:
    """The part of an approver's key file name that ``--as NAME`` maps to: "Anna (QA)" -> "anna-qa"."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    if not slug or slug.isdigit():
        raise KeyError_(f"approver name {name!r} needs at least one letter (it names the key file)")
    return slug


def role_of(path: Path) -> str:
    return path.name.split("-", 1)[0]


def is_named(path: Path) -> bool:
    """``approver-anna.pem`` (one approver's key) rather than ``approver-1.pem`` (a shared one)."""
    return not path.stem.split("-", 1)[1].isdigit()


def untrusted(keys: list[RoleKey], trusted_keyids: set[str]) -> list[RoleKey]:
    """The keys root does not list for the role: what they sign, a box counts as unsigned."""
    return [k for k in keys if k.keyid not in trusted_keyids]


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
    role = role_of(path)
    return RoleKey(role, path, CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key())))


def load_key(path: Path) -> RoleKey:
    try:
        _check_mode(path)
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise KeyError_(missing_key_hint(role_of(path), path.parent)) from e
    except OSError as e:
        raise KeyError_(f"cannot read signing key {path}: {e.strerror}") from e
    try:
        priv = serialization.load_pem_private_key(data, password=None)
    except ValueError as e:
        raise KeyError_(f"{path} is not a PEM private key: {e}") from e
    if not isinstance(priv, Ed25519PrivateKey):
        raise KeyError_(f"{path} is not an ed25519 key")
    role = role_of(path)
    return RoleKey(role, path, CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key())))


def missing_key_hint(role: str, folder: Path) -> str:
    """What to do about a missing key file. ``keys init`` only helps a new install: on an
    existing repository it refuses, so the hint names what works there."""
    where = "release.approver_keys_dir" if role == "approver" else "release.keys_dir"
    fix = {
        "approver": "a lost approver key is replaced by a new one of your own: 'parkwatch cloud keys "
        "add-approver NAME --reason ...' (needs the root key)",
        "root": "without any root key the repository cannot change its keys: restore root-*.pem from "
        "the offline copies made at setup",
    }.get(role, f"restore {role}-*.pem from your backup")
    return (
        f"no {role} key in {folder}: mount or copy the {role} key files there (or point {where} at "
        f"them). If the TUF repository does not exist yet, 'parkwatch cloud keys init' creates all "
        f"keys; if it does, {fix}"
    )


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
        found = list(folder.glob(f"{role}-*{KEY_SUFFIX}"))
        numbered = sorted((p for p in found if not is_named(p)), key=lambda p: int(p.stem.split("-", 1)[1]))
        named = sorted(p for p in found if is_named(p)) if role == "approver" else []
        return numbered + named

    def named_path(self, name: str) -> Path:
        return self.folder("approver") / f"approver-{approver_slug(name)}{KEY_SUFFIX}"

    def approver_names(self) -> list[str]:
        return [p.stem.split("-", 1)[1] for p in self.paths("approver") if is_named(p)]

    def approver_keys(self, actor: str) -> list[RoleKey]:
        """The key(s) ``actor`` signs approvals with: their own named key; or, on an install
        without named keys, the shared numbered ones. Another approver's key is never used."""
        own = self.named_path(actor)
        if own.exists():
            return [load_key(own)]
        names = self.approver_names()
        if names:
            raise KeyError_(
                f"no approver key for {actor!r} ({own.name}) in {own.parent}; approver keys there "
                f"belong to: {', '.join(names)}. Use --as with your own name, or have the root key "
                f"holder create yours: 'parkwatch cloud keys add-approver \"{actor}\" --reason ...'"
            )
        return self.load("approver")

    def load(self, role: str) -> list[RoleKey]:
        keys = [load_key(p) for p in self.paths(role)]
        if not keys:
            raise KeyError_(missing_key_hint(role, self.folder(role)))
        return keys

    def generate_named(self, name: str) -> RoleKey:
        return generate_key(self.named_path(name))

    def generate_at(self, path: Path) -> RoleKey:
        return generate_key(path)

    def generate(self, role: str, count: int = 1) -> list[RoleKey]:
        existing = self.paths(role)
        start = max((int(p.stem.split("-", 1)[1]) for p in existing if not is_named(p)), default=0) + 1
        return [generate_key(key_path(self.folder(role), role, start + i)) for i in range(count)]

    def retire(self, key: RoleKey) -> Path:
        """Move a replaced key aside (``retired/``) rather than delete it: audits may need it."""
        dest = key.path.parent / "retired" / key.path.name
        if dest.exists():  # a named key rotated before: keep both retired files
            dest = dest.with_name(f"{key.path.stem}.{key.keyid[:12]}{KEY_SUFFIX}")
        dest.parent.mkdir(mode=0o700, exist_ok=True)
        os.replace(key.path, dest)
        return dest
