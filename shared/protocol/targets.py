"""The release channel's TUF target names and the request paths a box fetches them by.

One definition for the cloud that signs the targets (``cloud/release/repo.py``), the cloud that
serves them (``cloud/release/responder.py``) and the box that asks for them
(``edge/updater``). These strings are on the wire: boxes already installed ask for exactly
these names, so they must never change. Pure (no tuf, no I/O), so the edge can import it.

Three target namespaces, each signed by a different key role::

    builds/V.tar          pipeline  (delegated, pattern builds/*)
    approved/V.tar        approver  (the top-level targets role)
    groups/G/model.tar    rollout   (delegated, pattern groups/*/*)

A box downloads a package through TUF's consistent-snapshot name of its group entry,
``targets/groups/G/<sha256>.model.tar``; the responder maps any ``targets/.../<sha256>.NAME``
to the content-addressed blob ``targets/blobs/<sha256>``.
"""

from __future__ import annotations

import re

from shared.protocol.topics import check_segment

CUSTOM = "parkwatch"  # the key our fields sit under in a TargetFile's custom data
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
BLOBS_DIR = "blobs"  # under TARGETS_DIR in the repository, never a signed target name
BUILD_PATTERN = "builds/*"
GROUP_PATTERN = "groups/*/*"
_PACKAGE = "model.tar"

_META_NAME = re.compile(r"^(\d+\.)?[A-Za-z0-9_-]+\.json$")
_HASHED_NAME = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9_.-]+$")


def build_path(version: str) -> str:
    """The pipeline's entry for a packaged build."""
    return f"builds/{check_segment(version, 'version')}.tar"


def approved_path(version: str) -> str:
    """The approvers' entry listing the stages ``version`` is approved for."""
    return f"approved/{check_segment(version, 'version')}.tar"


def group_path(group: str) -> str:
    """The rollout's entry naming the version ``group`` should run."""
    return f"groups/{check_segment(group, 'group')}/{_PACKAGE}"


def group_of(target_path: str) -> str | None:
    """The group a rollout entry's target path names (None: not a group entry)."""
    parts = target_path.split("/")
    if len(parts) == 3 and parts[0] == "groups" and parts[2] == _PACKAGE:
        return parts[1]
    return None


def group_download_path(group: str, sha256: str) -> str:
    """The request path a box of ``group`` downloads its package by."""
    return f"{TARGETS_DIR}/groups/{check_segment(group, 'group')}/{sha256}.{_PACKAGE}"


def is_metadata_name(name: str) -> bool:
    """``root.json``, ``N.snapshot.json``, ...: a file name under ``metadata/`` a box may ask for."""
    return bool(_META_NAME.match(name))


def hashed_sha(name: str) -> str | None:
    """The sha256 prefix of a consistent-snapshot file name ``<sha256>.NAME`` (None: not one)."""
    m = _HASHED_NAME.match(name)
    return m.group(1) if m else None
