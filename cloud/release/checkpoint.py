"""A signed checkpoint of the audit log's head, kept outside the database.

Why: the hash chain catches an edited or removed entry in the middle, but not the *newest*
entries removed: what is left is still a valid chain. So the head (entry count, last id, last
hash) is signed with the release channel's online timestamp key and written to
``<repo_dir>/audit-checkpoint.json``, beside (not inside) the TUF metadata. ``audit verify``
checks the signature against the timestamp key ids in root.json and then that the database
still holds the checkpointed entry with the same hash.

What it cannot see (docs/release-channel.md says so too): entries appended after the newest
checkpoint and then deleted; someone holding the online timestamp key who rewrites both the
database and the checkpoint; an older, validly signed checkpoint put back together with a log cut
to match it.

``compare`` and ``payload`` are pure; reading, writing and signing are the small functions below.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Key, Signature

from cloud.release.keys import RoleKey
from shared.atomic import atomic_write_text

FILE = "audit-checkpoint.json"


@dataclass(frozen=True)
class Head:
    entries: int
    head_id: int
    head_hash: str
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {"entries": self.entries, "head_id": self.head_id, "head_hash": self.head_hash, "ts": self.ts}


@dataclass(frozen=True)
class AnchorCheck:
    ok: bool
    status: str  # ok | missing | bad-signature | mismatch | unreadable
    reason: str
    checkpoint: dict[str, Any] | None = None


def payload(head: Head) -> bytes:
    return json.dumps(head.to_dict(), sort_keys=True, separators=(",", ":")).encode()


def compare(cp: Head, db_last_id: int, db_hash_at: str | None) -> AnchorCheck:
    """Pure: the database's head (last id, and the hash of the entry the checkpoint names)
    against the signed checkpoint."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(cp.ts))
    if db_last_id < cp.head_id:
        gone = cp.head_id - db_last_id
        return AnchorCheck(
            False,
            "mismatch",
            f"the newest {gone} entr{'y is' if gone == 1 else 'ies are'} missing: the checkpoint signed "
            f"at {when} names entry {cp.head_id}, the log ends at entry {db_last_id}",
            cp.to_dict(),
        )
    if db_hash_at != cp.head_hash:
        return AnchorCheck(
            False,
            "mismatch",
            f"entry {cp.head_id} differs from the checkpoint signed at {when} (the log was rewritten)",
            cp.to_dict(),
        )
    return AnchorCheck(
        True, "ok", f"head matches the checkpoint signed at {when} (entry {cp.head_id})", cp.to_dict()
    )


def write(repo_dir: Path, head: Head, key: RoleKey) -> Path:
    sig = key.signer.sign(payload(head))
    path = Path(repo_dir) / FILE
    atomic_write_text(path, json.dumps({"signed": head.to_dict(), "signature": sig.to_dict()}, indent=2))
    return path


def read(repo_dir: Path, trusted: dict[str, Key]) -> Head | AnchorCheck:
    """The checkpoint if its signature verifies with one of ``trusted`` (keyid -> key)."""
    path = Path(repo_dir) / FILE
    try:
        doc = json.loads(path.read_text())
        head = Head(**doc["signed"])
        sig = Signature.from_dict(dict(doc["signature"]))
    except FileNotFoundError:
        return AnchorCheck(
            False,
            "missing",
            f"no signed checkpoint at {path}: deleted newest entries cannot be detected "
            "(cloud serve and every release command write it)",
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        return AnchorCheck(False, "unreadable", f"{path} is not a checkpoint: {e}")
    key = trusted.get(sig.keyid)
    if key is None:
        return AnchorCheck(
            False, "bad-signature", f"{path} is signed by a key root does not trust ({sig.keyid[:16]})"
        )
    try:
        key.verify_signature(sig, payload(head))
    except UnverifiedSignatureError:
        return AnchorCheck(
            False, "bad-signature", f"{path}: the signature does not match its content (edited)"
        )
    return head
