"""``Governor``: findings in, alerts and actions out, everything in the audit log.

The service functions at the bottom (``ack_alert``, ``resolve_alert``) are what the CLI and the
dashboard call, so a person's acknowledgement is audited and published exactly like the
system's own transitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cloud.governance import actions
from cloud.governance.alerts import AlertStore
from cloud.governance.errors import ActionUnavailable, AlertNotFound
from cloud.governance.notify import AlertPublisher, post_webhook
from cloud.governance.records import StoredAlert
from cloud.governance.rules import RULES, Finding, Scope
from shared.errors import ParkwatchError

if TYPE_CHECKING:
    from cloud.config import CloudConfig
    from cloud.registry.audit import AuditLog

log = logging.getLogger("parkwatch.cloud.governance")

SYSTEM_ACTOR = "parkwatch-analysis"


def _audit(
    audit: AuditLog | None, actor: str, action: str, alert: StoredAlert, extra: dict[str, Any]
) -> None:
    if audit is None:
        return
    audit.append(
        actor,
        action,
        f"alert:{alert.id}",
        {
            "rule": alert.rule,
            "site": alert.site,
            "device": alert.device,
            "severity": alert.severity,
            "state": alert.state,
            **extra,
        },
    )


def publish_alert(store: AlertStore, publisher: AlertPublisher | None, alert: StoredAlert) -> bool:
    """Publish the alert's current state. The state change marked it to announce; only a publish
    the broker took clears the mark, so the next governor run (``Governor.apply``) retries the
    rest and no state change stays unannounced."""
    if publisher is None:
        return False
    ok = publisher.publish(alert)
    if ok:
        store.published(alert.id)  # the state change marked it to announce
    return ok


def _change(
    store: AlertStore,
    change: Callable[[str, str, str | None], StoredAlert],
    action: str,
    alert_id: str,
    actor: str,
    comment: str | None,
    audit: AuditLog | None,
    publisher: AlertPublisher | None,
) -> StoredAlert:
    a = change(alert_id, actor, comment)
    _audit(audit, actor, action, a, {"comment": comment})
    publish_alert(store, publisher, a)
    return a


def ack_alert(
    store: AlertStore,
    alert_id: str,
    actor: str,
    comment: str | None = None,
    audit: AuditLog | None = None,
    publisher: AlertPublisher | None = None,
) -> StoredAlert:
    return _change(store, store.ack, "alert.acknowledge", alert_id, actor, comment, audit, publisher)


def resolve_alert(
    store: AlertStore,
    alert_id: str,
    actor: str,
    comment: str | None = None,
    audit: AuditLog | None = None,
    publisher: AlertPublisher | None = None,
) -> StoredAlert:
    return _change(store, store.resolve, "alert.resolve", alert_id, actor, comment, audit, publisher)


class Governor:
    def __init__(
        self,
        cfg: CloudConfig,
        alerts: AlertStore,
        audit: AuditLog | None = None,
        publisher: AlertPublisher | None = None,
        actor: str = SYSTEM_ACTOR,
    ) -> None:
        self.cfg = cfg
        self.gcfg = cfg.governance
        self.alerts = alerts
        self.audit = audit
        self.publisher = publisher
        self.actor = actor

    def apply(
        self,
        findings: list[Finding],
        scope: Scope,
        covered: Callable[[StoredAlert], bool] = lambda a: True,
    ) -> dict[str, list[StoredAlert]]:
        """Raise/refresh alerts for ``findings``; resolve active ``scope`` alerts that ``covered`` says
        were re-examined and are no longer found."""
        out: dict[str, list[StoredAlert]] = {"opened": [], "refreshed": [], "resolved": []}
        self._publish_pending()
        seen = set()
        for f in findings:
            rc = self.gcfg.rule(f.rule)
            if not rc.enabled:
                continue
            seen.add(f.key)
            severity = rc.severity or RULES[f.rule].severity
            alert, new = self.alerts.raise_finding(f, severity, self.actor)
            if not new:
                out["refreshed"].append(alert)
                continue
            _audit(self.audit, self.actor, "alert.open", alert, {"message": alert.message})
            self._publish(alert)
            for action in rc.actions:
                alert = self._act(alert, action)
            out["opened"].append(alert)
        scope_rules = {name for name, r in RULES.items() if r.scope == scope}
        for key, alert in self.alerts.active_by_key(scope_rules).items():
            if key not in seen and covered(alert):
                a = self.alerts.resolve(alert.id, self.actor, "condition cleared")
                _audit(self.audit, self.actor, "alert.resolve", a, {"comment": "condition cleared"})
                self._publish(a)
                out["resolved"].append(a)
        return out

    def _publish(self, alert: StoredAlert) -> None:
        publish_alert(self.alerts, self.publisher, alert)

    def _publish_pending(self) -> None:
        """State changes the broker could not take earlier (here or from the CLI), latest state each."""
        if self.publisher is None:
            return
        for alert_id in self.alerts.unpublished():
            try:
                alert = self.alerts.get(alert_id)  # the latest state; publishing it again is harmless
            except AlertNotFound:
                self.alerts.published(alert_id)  # gone since: nothing left to say
                continue
            if not publish_alert(self.alerts, self.publisher, alert):
                return  # still unreachable: try again next run

    def _act(self, alert: StoredAlert, action: str) -> StoredAlert:
        started = time.time()
        result: dict[str, Any]
        try:
            if action == "notify":
                if not self.gcfg.webhook_url:
                    return alert  # MQTT publication already happened; nothing more to do
                secret = (
                    self.gcfg.webhook_secret.resolve("governance.webhook_secret")
                    if self.gcfg.webhook_secret
                    else None
                )
                result = {
                    "action": "notify",
                    "webhook": post_webhook(
                        self.gcfg.webhook_url, alert, secret, self.gcfg.webhook_timeout_s
                    ),
                }
                result["ok"] = result["webhook"]["ok"]
            elif action == "rollback":
                result = {**actions.rollback(self.cfg, alert, self.actor), "ok": True}
            elif action == "retrain":
                last = self._last_retrain_ts()
                if last is not None and started - last < self.gcfg.retrain_cooldown_s:
                    raise ActionUnavailable(
                        f"a retraining run started {int(started - last)} s ago; the cooldown "
                        f"is {int(self.gcfg.retrain_cooldown_s)} s (governance.retrain_cooldown_s)"
                    )
                result = {**actions.retrain(self.cfg, alert, self.actor), "ok": True}
            else:
                raise ActionUnavailable(f"unknown action {action!r}")
        except ParkwatchError as e:
            result = {"action": action, "ok": False, "error": str(e)}
            log.warning("alert %s: action %s failed: %s", alert.id, action, e)
        except Exception as e:  # an action's back end failing must not stop the analysis
            log.exception("alert %s: action %s crashed", alert.id, action)
            result = {"action": action, "ok": False, "error": f"{type(e).__name__}: {e}"}
        result["ts"] = started
        _audit(self.audit, self.actor, f"alert.action.{action}", alert, {"result": result})
        return self.alerts.record_action(alert.id, result, self.actor)

    def _last_retrain_ts(self) -> float | None:
        row = self.alerts.db.conn.execute(
            "SELECT max(ts) FROM alert_events WHERE event='action:retrain' AND comment LIKE '%\"ok\": true%'"
        ).fetchone()
        return row[0] if row and row[0] is not None else None
