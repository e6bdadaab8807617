"""``AlertStore``: alerts with a state (open → acknowledged → resolved) and who moved them.

Alerts live in the fleet database (``cfg.paths.fleet_db``) beside the data they are about. One active
alert per problem key: a condition that persists bumps ``count`` and ``last_seen_ts`` instead
of opening a duplicate; once resolved, a recurrence opens a new alert.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cloud.fleet.backends.target import PgTarget
from cloud.fleet.schema import connect
from cloud.governance.errors import AlertNotFound, AlertStateError, GovernanceError
from cloud.governance.records import AlertEvent, StoredAlert
from cloud.governance.rules import Finding, Severity
from shared.protocol import Alert

STATES = ("open", "acknowledged", "resolved")


def _decode(row: dict[str, Any]) -> StoredAlert:
    return StoredAlert.from_row(row, details=json.loads(row["details"]), actions=json.loads(row["actions"]))


def to_message(row: StoredAlert) -> Alert:
    """The wire form published on ``parkwatch/v1/alerts/{site}``."""
    details = dict(row.details)
    details.update({"key": row.key, "count": row.count, "opened_ts": row.opened_ts})
    if row.actions:
        details["actions"] = row.actions
    return Alert(
        id=row.id,
        site=row.site,
        device=row.device,
        rule=row.rule,
        severity=row.severity,
        state=row.state,
        message=row.message,
        ts=row.updated_ts,
        details=details,
    )


class AlertStore:
    def __init__(self, path: str | Path | PgTarget) -> None:
        # The alert tables come with the fleet schema's migrations on both backends
        # (cloud/fleet/backends/sqlite_ddl.py, pg_ddl.py).
        self.path: Path | PgTarget = path if isinstance(path, PgTarget) else Path(path)
        self.db: Any
        if isinstance(path, PgTarget):
            self.db = connect(path)
        else:
            self.db = connect(Path(path), synchronous="NORMAL")
        self._lock = threading.RLock()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AlertStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[StoredAlert]:
        with self._lock:
            cur = self.db.conn.execute(sql, params)
            cols = [d[0] for d in cur.description]
            return [_decode(dict(zip(cols, r, strict=True))) for r in cur.fetchall()]

    def _event(self, alert_id: str, actor: str, event: str, comment: str | None, ts: float) -> None:
        self.db.conn.execute(
            "INSERT INTO alert_events(alert_id, ts, actor, event, comment) VALUES (?,?,?,?,?)",
            (alert_id, ts, actor, event, comment),
        )

    # reads ---------------------------------------------------------------------------------
    def get(self, alert_id: str) -> StoredAlert:
        rows = self._rows("SELECT * FROM alerts WHERE id=?", (alert_id,))
        if not rows:
            raise AlertNotFound(f"no alert {alert_id!r}; list them with `parkwatch cloud alerts list`")
        return rows[0]

    def list(
        self,
        state: str | None = None,
        site: str | None = None,
        rule: str | None = None,
        device: str | None = None,
        active_only: bool = False,
        limit: int = 200,
    ) -> list[StoredAlert]:
        """Newest first. ``active_only`` = open or acknowledged."""
        where: list[str] = ["1=1"]
        params: list[Any] = []
        if state is not None:
            if state not in STATES:
                raise GovernanceError(f"alert state {state!r} is not one of {', '.join(STATES)}")
            where.append("state=?")
            params.append(state)
        if active_only:
            where.append("state!='resolved'")
        for col, val in (("site", site), ("rule", rule), ("device", device)):
            if val is not None:
                where.append(f"{col}=?")
                params.append(val)
        return self._rows(
            f"SELECT * FROM alerts WHERE {' AND '.join(where)} ORDER BY opened_ts DESC LIMIT ?",
            [*params, limit],
        )

    def events(self, alert_id: str) -> builtins.list[AlertEvent]:
        with self._lock:
            cur = self.db.conn.execute(
                "SELECT ts, actor, event, comment FROM alert_events WHERE alert_id=? ORDER BY id", (alert_id,)
            )
            return [AlertEvent(*r) for r in cur.fetchall()]

    def active_by_key(self, rules: set[str] | None = None) -> dict[str, StoredAlert]:
        rows = self.list(active_only=True, limit=1_000_000)
        return {r.key: r for r in rows if rules is None or r.rule in rules}

    # transitions ---------------------------------------------------------------------------
    def raise_finding(self, f: Finding, severity: Severity, actor: str) -> tuple[StoredAlert, bool]:
        """Open an alert for ``f``, or refresh the active one with the same key; returns (alert, is_new)."""
        now = time.time()
        try:
            with self._lock, self.db.conn:
                row = self.db.conn.execute(
                    "SELECT id FROM alerts WHERE key=? AND state!='resolved' ORDER BY opened_ts DESC LIMIT 1",
                    (f.key,),
                ).fetchone()
                if row:
                    self.db.conn.execute(
                        "UPDATE alerts SET message=?, details=?, last_seen_ts=?, count=count+1 WHERE id=?",
                        (f.message, json.dumps(f.details, default=str), now, row[0]),
                    )
                    return self.get(row[0]), False
                alert_id = uuid.uuid4().hex[:12]
                self.db.conn.execute(
                    "INSERT INTO alerts(id, key, rule, site, device, subject, severity, state, "
                    "message, details, "
                    "opened_ts, updated_ts, last_seen_ts) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        alert_id,
                        f.key,
                        f.rule,
                        f.site,
                        f.device,
                        f.subject,
                        severity,
                        "open",
                        f.message,
                        json.dumps(f.details, default=str),
                        now,
                        now,
                        now,
                    ),
                )
                self._event(alert_id, actor, "open", f.message, now)
                self._to_announce(alert_id, now)
        except sqlite3.Error as e:
            raise GovernanceError(f"cannot store alert in {self.path}: {e}") from e
        return self.get(alert_id), True

    def _move(self, alert_id: str, actor: str, comment: str | None, to: str) -> StoredAlert:
        if not actor.strip():
            raise GovernanceError("say who you are (--actor NAME): every alert change is attributed")
        cur = self.get(alert_id)
        if cur.state == "resolved":
            raise AlertStateError(
                f"alert {alert_id} is already resolved (by {cur.resolved_by}); a recurrence opens a new alert"
            )
        if to == "acknowledged" and cur.state == "acknowledged":
            raise AlertStateError(f"alert {alert_id} was already acknowledged by {cur.acked_by}")
        now = time.time()
        col = "acked" if to == "acknowledged" else "resolved"
        comment_col = "ack_comment" if to == "acknowledged" else "resolve_comment"
        with self._lock, self.db.conn:
            self.db.conn.execute(
                f"UPDATE alerts SET state=?, updated_ts=?, {col}_by=?, {col}_ts=?, {comment_col}=? "
                "WHERE id=?",
                (to, now, actor, now, comment, alert_id),
            )
            self._event(alert_id, actor, "ack" if to == "acknowledged" else "resolve", comment, now)
            self._to_announce(alert_id, now)
        return self.get(alert_id)

    def ack(self, alert_id: str, actor: str, comment: str | None = None) -> StoredAlert:
        return self._move(alert_id, actor, comment, "acknowledged")

    def resolve(self, alert_id: str, actor: str, comment: str | None = None) -> StoredAlert:
        return self._move(alert_id, actor, comment, "resolved")

    def _to_announce(self, alert_id: str, ts: float) -> None:
        """In the state change's own transaction: a crash before the publish cannot lose it."""
        self.db.conn.execute(
            "INSERT OR IGNORE INTO alerts_unpublished(alert_id, since_ts) VALUES (?,?)", (alert_id, ts)
        )

    def published(self, alert_id: str) -> None:
        with self._lock, self.db.conn:
            self.db.conn.execute("DELETE FROM alerts_unpublished WHERE alert_id=?", (alert_id,))

    def unpublished(self) -> builtins.list[str]:
        with self._lock:
            cur = self.db.conn.execute("SELECT alert_id FROM alerts_unpublished ORDER BY since_ts")
            return [str(r[0]) for r in cur]

    def record_action(self, alert_id: str, action: dict[str, Any], actor: str) -> StoredAlert:
        with self._lock, self.db.conn:
            row = self.db.conn.execute("SELECT actions FROM alerts WHERE id=?", (alert_id,)).fetchone()
            actions = [*json.loads(row[0]), action] if row else [action]
            self.db.conn.execute(
                "UPDATE alerts SET actions=? WHERE id=?", (json.dumps(actions, default=str), alert_id)
            )
            self._event(
                alert_id,
                actor,
                f"action:{action.get('action')}",
                json.dumps(action, default=str),
                time.time(),
            )
        return self.get(alert_id)
