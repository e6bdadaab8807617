"""Where the release channel keeps what devices say and what rollouts did.

* rollouts live in the registry database (``rollouts`` table, see cloud/registry/approvals.py)
  because "a successful staging rollout" is part of the approval rules;
* the latest ``model/state`` of every device and the provisioned devices live in
  ``<data_dir>/release.db`` (WAL), written by ``cloud serve`` and read by ``rollout status``.

A device's group is what provisioning (``devices add``) gave it, stored once in the ``devices``
table beside its credential, and read through :meth:`DeviceStates.membership` (or
:func:`read_membership`) by rollout status, automatic rollback, governance and the dashboard. The
group a device names in its own model-state or status messages is never used for a decision: a
box holding valid credentials could otherwise claim any group (a forged self-test failure from a
staging box would roll production back; a fake member would keep a rollout from succeeding).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from cloud.paths import CloudPaths
from cloud.registry.approvals import ROLLOUTS
from cloud.registry.schema import open_db
from cloud.registry.store import Registry
from cloud.registry.tx import transaction
from shared.protocol import ModelState
from shared.records import Record
from shared.sqlite import Migration, Schema

# release.db's tables, as numbered migrations (shared/sqlite.py). 1: as they shipped before
# numbered migrations, in the form sqlite-utils created them (IF NOT EXISTS: an older release.db is
# adopted unchanged). A change is a new migration at the end; a shipped one is never edited.
RELEASE_V1 = """
CREATE TABLE IF NOT EXISTS "device_models" (
   "site" TEXT,
   "device" TEXT,
   "grp" TEXT,
   "state" TEXT,
   "version" TEXT,
   "active_version" TEXT,
   "previous_version" TEXT,
   "reason" TEXT,
   "progress" REAL,
   "ts" REAL,
   "received_ts" REAL,
   PRIMARY KEY ("site", "device")
);
CREATE TABLE IF NOT EXISTS "devices" (
   "site" TEXT,
   "device" TEXT,
   "grp" TEXT,
   "username" TEXT,
   "pw_hash" TEXT,
   "created_ts" REAL,
   "revoked" INTEGER,
   PRIMARY KEY ("site", "device")
);
CREATE TABLE IF NOT EXISTS "accounts" (
   "username" TEXT PRIMARY KEY,
   "pw_hash" TEXT,
   "created_ts" REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS "idx_devices_username" ON "devices" ("username");
"""
RELEASE_SCHEMA = Schema(
    "release database", (Migration(1, RELEASE_V1, "device model states, provisioned devices, accounts"),)
)


@dataclass(frozen=True, slots=True)
class Rollout(Record):
    id: int
    version: str
    group: str
    stage: str
    previous_version: str | None
    kind: str  # rollout | rollback | auto-rollback
    actor: str
    reason: str
    status: str
    status_reason: str | None
    started_ts: float
    finished_ts: float | None
    devices_total: int
    devices_active: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeviceState(Record):
    """A box's latest ``model/state`` (a ``device_models`` row); it prints as that row did."""

    site: str
    device: str
    grp: str | None
    state: str
    version: str | None
    active_version: str | None
    previous_version: str | None
    reason: str | None
    progress: float | None
    ts: float | None
    received_ts: float | None

    @property
    def key(self) -> str:
        return f"{self.site}/{self.device}"


@dataclass(frozen=True, slots=True)
class ProvisionedDevice(Record):
    """A provisioned, unrevoked box (a ``devices`` row). ``pw_hash`` is its broker password's
    hash: never print it (``devices list`` leaves it out)."""

    site: str
    device: str
    grp: str
    username: str
    pw_hash: str
    created_ts: float
    revoked: int

    def public(self) -> dict[str, Any]:
        """The row as ``devices list`` prints it: everything but the password hash."""
        return {k: v for k, v in self.to_dict().items() if k != "pw_hash"}


def _rollout(r: dict[str, Any]) -> Rollout:
    return Rollout(
        r["id"],
        r["version"],
        r["grp"],
        r["stage"],
        r["previous_version"],
        r["kind"],
        r["actor"],
        r["reason"],
        r["status"],
        r["status_reason"],
        r["started_ts"],
        r["finished_ts"],
        r["devices_total"] or 0,
        r["devices_active"] or 0,
    )


class RolloutTable:
    def __init__(self, registry: Registry) -> None:
        self.db = registry.db  # the rollouts table: cloud/registry/schema.py

    def start(
        self, version: str, group: str, stage: str, previous: str | None, kind: str, actor: str, reason: str
    ) -> Rollout:
        with transaction(self.db) as conn:
            conn.execute(
                f"UPDATE {ROLLOUTS} SET status = 'superseded', finished_ts = ? "
                "WHERE grp = ? AND status = 'in_progress'",
                (time.time(), group),
            )
            cur = conn.execute(
                f"INSERT INTO {ROLLOUTS} (version, grp, stage, previous_version, kind, actor, reason, "
                "status, started_ts, devices_total, devices_active) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'in_progress', ?, 0, 0)",
                (version, group, stage, previous, kind, actor, reason, time.time()),
            )
            rid = int(cur.lastrowid or 0)
        return self.get(rid)

    def get(self, rid: int) -> Rollout:
        return _rollout(next(iter(self.db.table(ROLLOUTS).rows_where("id = ?", [rid]))))

    def latest(self, group: str) -> Rollout | None:
        rows = list(self.db.table(ROLLOUTS).rows_where("grp = ?", [group], order_by="id desc", limit=1))
        return _rollout(rows[0]) if rows else None

    def history(self, group: str | None = None, limit: int = 50) -> list[Rollout]:
        where, args = ("grp = ?", [group]) if group else (None, [])
        rows = self.db.table(ROLLOUTS).rows_where(where, args, order_by="id desc", limit=limit)
        return [_rollout(r) for r in rows]

    def watched(self, since_ts: float) -> list[Rollout]:
        """The newest rollout per group if it started after ``since_ts`` and was not rolled back."""
        out = []
        for r in self.db.execute(
            f"SELECT * FROM {ROLLOUTS} r WHERE id = (SELECT MAX(id) FROM {ROLLOUTS} WHERE grp = r.grp) "
            "AND started_ts >= ? AND status IN ('in_progress', 'succeeded')",
            [since_ts],
        ).fetchall():
            cols = [d[0] for d in self.db.execute(f"SELECT * FROM {ROLLOUTS} LIMIT 0").description]
            out.append(_rollout(dict(zip(cols, r, strict=True))))
        return out

    def set_status(
        self,
        rid: int,
        status: str,
        reason: str | None = None,
        total: int | None = None,
        active: int | None = None,
    ) -> None:
        with transaction(self.db) as conn:
            conn.execute(
                f"UPDATE {ROLLOUTS} SET status = ?, status_reason = COALESCE(?, status_reason), "
                "finished_ts = CASE WHEN ? IN ('in_progress') THEN finished_ts ELSE ? END, "
                "devices_total = COALESCE(?, devices_total), devices_active = COALESCE(?, devices_active) "
                "WHERE id = ?",
                (status, reason, status, time.time(), total, active, rid),
            )

    def set_counts(self, rid: int, total: int, active: int) -> None:
        with transaction(self.db) as conn:
            conn.execute(
                f"UPDATE {ROLLOUTS} SET devices_total = ?, devices_active = ? WHERE id = ?",
                (total, active, rid),
            )


class DeviceStates:
    """Latest model state per device and the provisioned device list (release.db)."""

    def __init__(self, path: Path) -> None:
        self.db: sqlite_utils.Database = open_db(path, RELEASE_SCHEMA)

    def record(self, m: ModelState) -> None:
        """Keep the newest report per device (an older, late-delivered one never overwrites it)."""
        with transaction(self.db) as conn:
            conn.execute(
                "INSERT INTO device_models (site, device, grp, state, version, active_version, "
                "previous_version, reason, progress, ts, received_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(site, device) DO UPDATE SET grp=excluded.grp, state=excluded.state, "
                "version=excluded.version, active_version=excluded.active_version, "
                "previous_version=excluded.previous_version, reason=excluded.reason, "
                "progress=excluded.progress, ts=excluded.ts, received_ts=excluded.received_ts "
                "WHERE excluded.ts >= device_models.ts",
                (
                    m.site,
                    m.device,
                    m.group,
                    m.state,
                    m.version,
                    m.active_version,
                    m.previous_version,
                    m.reason,
                    m.progress,
                    m.ts,
                    time.time(),
                ),
            )

    def states(self, group: str | None = None) -> list[DeviceState]:
        where, args = ("grp = ?", [group]) if group else (None, [])
        rows = self.db.table("device_models").rows_where(where, args, order_by="site, device")
        return [DeviceState.from_row(r) for r in rows]

    def provisioned(self, group: str | None = None) -> list[ProvisionedDevice]:
        where = "revoked = 0" + (" AND grp = ?" if group else "")
        args = [group] if group else []
        rows = self.db.table("devices").rows_where(where, args, order_by="site, device")
        return [ProvisionedDevice.from_row(r) for r in rows]

    def membership(self) -> dict[str, str]:
        """THE device-to-group map: ``"site/device" -> group`` of every provisioned, unrevoked device."""
        return {
            f"{r['site']}/{r['device']}": r["grp"]
            for r in self.db.execute(
                "SELECT site, device, grp FROM devices WHERE revoked = 0 ORDER BY site, device"
            ).fetchall()
            for r in [dict(zip(("site", "device", "grp"), r, strict=True))]
        }

    def add_device(self, site: str, device: str, group: str, username: str, pw_hash: str) -> None:
        self.db.table("devices").upsert(
            {
                "site": site,
                "device": device,
                "grp": group,
                "username": username,
                "pw_hash": pw_hash,
                "created_ts": time.time(),
                "revoked": 0,
            },
            pk=("site", "device"),
        )

    def set_account(self, username: str, pw_hash: str) -> None:
        self.db.table("accounts").upsert(
            {"username": username, "pw_hash": pw_hash, "created_ts": time.time()}, pk="username"
        )

    def account(self, username: str) -> tuple[str, str] | None:
        rows = list(self.db.table("accounts").rows_where("username = ?", [username]))
        return (rows[0]["username"], rows[0]["pw_hash"]) if rows else None

    def revoke_device(self, site: str, device: str) -> bool:
        rows = list(self.db.table("devices").rows_where("site = ? AND device = ?", [site, device]))
        if not rows:
            return False
        self.db.table("devices").update((site, device), {"revoked": 1})
        return True

    def close(self) -> None:
        self.db.close()


def read_membership(paths: CloudPaths) -> dict[str, str]:
    """:meth:`DeviceStates.membership` for a reader outside the release channel (governance, fleet)."""
    states = DeviceStates(paths.release_db)
    try:
        return states.membership()
    finally:
        states.close()
