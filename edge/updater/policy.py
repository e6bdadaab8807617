"""Pure decisions of the updater: which signed target to install, and why TUF said no.

An edge installs version V for its group only if three differently keyed roles agree:
``groups/G/model.tar`` (rollout key) names V, ``approved/V.tar`` (approver key) lists the stage
this box needs, and ``builds/V.tar`` (pipeline key) exists - all with the same length and hash.
The names themselves live in ``shared/protocol/targets.py``, shared with the cloud that signs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuf.api import exceptions as tufx

from edge.updater.errors import UpdateError
from shared.protocol.targets import CUSTOM
from shared.protocol.topics import check_segment


def required_stage(group: str, override: str | None) -> str:
    if override:
        return override
    return "staging" if group == "staging" else "production"


@dataclass(frozen=True)
class Choice:
    version: str
    sha256: str
    length: int
    target: Any  # tuf TargetFile of the group entry


def version_of(group_info: Any) -> str:
    try:
        version = group_info.unrecognized_fields[CUSTOM]["version"]
        return check_segment(str(version), "version")
    except (KeyError, TypeError, ValueError) as e:
        raise UpdateError("verifying", f"group entry has no valid version: {e}") from e


def choose(group_info: Any, approved_info: Any, build_info: Any, stage: str) -> Choice:
    """Raise :class:`UpdateError` unless rollout, approver and pipeline agree."""
    version = version_of(group_info)
    if approved_info is None:
        raise UpdateError("verifying", f"version {version} carries no approver signature; not installing")
    stages = approved_info.unrecognized_fields.get(CUSTOM, {}).get("stages", [])
    if stage not in stages:
        raise UpdateError(
            "verifying",
            f"version {version} is approved for {', '.join(stages) or 'nothing'}, this box needs {stage}",
        )
    if build_info is None:
        raise UpdateError("verifying", f"version {version} was not signed by the build pipeline")
    for name, info in (("approved", approved_info), ("build", build_info)):
        if info.length != group_info.length or info.hashes != group_info.hashes:
            raise UpdateError(
                "verifying",
                f"rollout entry for {version} does not match the {name} entry (different package bytes)",
            )
    sha = group_info.hashes.get("sha256")
    if not sha:
        raise UpdateError("verifying", "target has no sha256 hash")
    return Choice(version, sha, group_info.length, group_info)


def explain(exc: BaseException) -> tuple[str, bool]:
    """A short reason for ``failed: REASON`` and whether retrying later may help."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, tufx.UnsignedMetadataError):
        return f"untrusted signature, metadata refused: {msg}", False
    if isinstance(exc, tufx.ExpiredMetadataError):
        return f"expired metadata refused (freeze attack or stale repository): {msg}", True
    if isinstance(exc, tufx.BadVersionNumberError | tufx.EqualVersionNumberError):
        return f"metadata version refused (rollback or mix-and-match): {msg}", True
    if isinstance(exc, tufx.LengthOrHashMismatchError):
        return f"hash or length mismatch (tampered or truncated): {msg}", True
    if isinstance(exc, tufx.DownloadError):
        return f"update channel: {msg}", True
    if isinstance(exc, tufx.RepositoryError):
        return f"metadata refused: {msg}", True
    return f"{type(exc).__name__}: {msg}", True
