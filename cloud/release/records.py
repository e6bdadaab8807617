"""What the release channel's rollout changes return (cloud/release/channel.py): the rollout row
they wrote and what they did beside it. They print (``--json``, the dashboard) as the row's
fields followed by these."""

from __future__ import annotations

import dataclasses
from typing import Any

from cloud.registry.approvals import Decision
from cloud.release.store import DeviceState, Rollout
from shared.records import Record


@dataclasses.dataclass(frozen=True, slots=True)
class RolloutStarted(Rollout):
    """``rollout``: the new rollout row, and whether the group's boxes were told at once
    (False: they find it at their next check)."""

    notified: bool


@dataclasses.dataclass(frozen=True, slots=True)
class RolledBack(Rollout):
    """``rollback``: the rollback's own rollout row, the version it withdrew, and whether the
    boxes were told at once."""

    rolled_back: str
    notified: bool


@dataclasses.dataclass(frozen=True, slots=True)
class BuildPublished(Record):
    """``publish_build``: the build target now in the TUF repository."""

    version: str
    sha256: str
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class Signed(Decision):
    """``approve`` / ``reject``: the stage history row, and the approver key ids that signed it
    into the repository (none for a rejection of a version never approved there)."""

    signed_by: list[str]


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerFiles(Record):
    """The broker's password and ACL files written for the accounts; None until the cloud's own
    account exists (``cloud-account``), and then left out of the printed form, as before."""

    passwd: str | None
    acl: str | None

    def files(self) -> dict[str, Any]:
        return {k: v for k, v in (("passwd", self.passwd), ("acl", self.acl)) if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return self.files()


@dataclasses.dataclass(frozen=True, slots=True)
class Provisioned(BrokerFiles):
    """``devices add``: the box's broker account (its password is in ``secret_file`` only)."""

    site: str
    device: str
    group: str
    username: str
    secret_file: str

    def to_dict(self) -> dict[str, Any]:
        who = {"site": self.site, "device": self.device, "group": self.group, "username": self.username}
        return {**who, "secret_file": self.secret_file, **self.files()}


@dataclasses.dataclass(frozen=True, slots=True)
class CloudAccount(BrokerFiles):
    """``cloud-account``: the cloud's own broker account."""

    username: str
    secret_file: str

    def to_dict(self) -> dict[str, Any]:
        return {"username": self.username, "secret_file": self.secret_file, **self.files()}


@dataclasses.dataclass(frozen=True, slots=True)
class Revoked(BrokerFiles):
    """``devices revoke``: the box's account is gone from the broker files."""

    site: str
    device: str

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "device": self.device, "revoked": True, **self.files()}


@dataclasses.dataclass(frozen=True, slots=True)
class KeyFile(Record):
    """One signing key on disk and the key id the TUF metadata names it by."""

    path: str
    keyid: str


@dataclasses.dataclass(frozen=True, slots=True)
class ApproverAdded(Record):
    """``keys add-approver``: the approver's own key, trusted from root version ``root_version``."""

    approver: str
    keyid: str
    path: str
    root_version: int


@dataclasses.dataclass(frozen=True, slots=True)
class KeysInitialised(Record):
    """``keys init``: what it warned about, the key files it made, where keys live, and the
    repository's state afterwards (the fields of ``TufRepository.status``, printed flat)."""

    warnings: list[str]
    created: list[str]
    keys_dir: str
    approver_keys_dir: str
    trusted_root: str
    repo: str
    root_version: int
    timestamp_version: int
    timestamp_expires: str
    snapshot_version: int
    builds: list[str]
    approvals: dict[str, list[str]]
    groups: dict[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class KeysRotated(Record):
    """``keys rotate``: the role whose keys were replaced, the retired and new key files, and the
    root version that trusts the new ones."""

    role: str
    retired: list[str]
    new: list[str]
    root_version: int


@dataclasses.dataclass(frozen=True, slots=True)
class AuditCheckpoint(Record):
    """The audit log's head as just signed into the release repository."""

    entries: int
    head_id: int
    head_hash: str
    ts: float


@dataclasses.dataclass(frozen=True, slots=True)
class GroupStatus(Record):
    """One group in ``rollout status``: what it should run, how far it got, its latest rollout
    (the row plus ``rolled_back_from``) and each member's latest model state."""

    target_version: str | None
    devices: int
    active: int
    by_version: dict[str, int]
    by_state: dict[str, int]
    failed: list[dict[str, Any]]
    rollout: dict[str, Any] | None
    device_states: list[DeviceState]


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseStatus(Record):
    """``rollout status``: per group, and the repository's state (None before ``keys init``)."""

    groups: dict[str, GroupStatus]
    repository: dict[str, Any] | None
