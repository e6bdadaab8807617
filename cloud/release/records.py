"""What the release channel's rollout changes return (cloud/release/channel.py): the rollout row
they wrote and what they did beside it. They print (``--json``, the dashboard) as the row's
fields followed by these."""

from __future__ import annotations

import dataclasses
from typing import Any

from cloud.registry.approvals import Decision
from cloud.release.store import Rollout
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
