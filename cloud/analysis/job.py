"""The analysis job: health, drift, performance, report, alerts. Run by the scheduler and by
``parkwatch cloud analyze``; both call :func:`run_analysis` with explicit stores."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from cloud.analysis import drift, drift_baseline, health, report
from cloud.fleet.inbox import inbox_states
from cloud.fleet.materializer_stats import stats_in
from cloud.fleet.store import FleetStore
from cloud.fleet.workers import remote_inbox_states
from cloud.governance.alerts import AlertStore
from cloud.governance.engine import Governor
from cloud.governance.notify import AlertPublisher
from cloud.governance.records import StoredAlert

if TYPE_CHECKING:
    from cloud.config import CloudConfig


def open_governor(cfg: CloudConfig, publish: bool = True, actor: str = "parkwatch-analysis") -> Governor:
    """A governor wired to the fleet's alert store, the registry's audit log and the broker."""
    from cloud.registry.audit import AuditLog

    publisher = AlertPublisher(cfg.mqtt, cfg.client_id("alerts")) if publish else None
    return Governor(cfg, AlertStore(cfg.fleet_store), AuditLog(cfg.paths.registry_db), publisher, actor=actor)


def run_health(
    cfg: CloudConfig, fleet: FleetStore, governor: Governor | None, now: float | None = None
) -> list[health.DeviceHealth]:
    now = time.time() if now is None else now
    inboxes = inbox_states(cfg.paths, now)
    # Workers on other hosts (a shared PostgreSQL fleet store): their heartbeat rows.
    inboxes += remote_inbox_states(fleet, {str(s["worker"]) for s in inboxes}, cfg.fleet.worker_stale_s, now)
    # When each worker's materializer last applied a batch: its counters in the fleet store.
    applied = stats_in(fleet, now)
    for s in inboxes:
        m = applied.get(str(s["worker"]))
        s["last_batch_age_s"] = m.last_batch_age_s if m else None
    # The fleet tables are current only up to the oldest message still waiting in an inbox; judge
    # silence from there, or an ingest backlog would read as a fleet of offline boxes. Only up to
    # the backlog alert's limit: past it, ingest_backlog is open and explains any offline alerts,
    # and a forgotten inbox must not hide real outages for ever.
    lag = max((float(s["oldest_age_s"]) for s in inboxes if s.get("oldest_age_s") is not None), default=0.0)
    lag = min(lag, cfg.fleet.inbox_lag_alert_s)
    results = health.check_fleet(
        fleet, cfg.analysis, cfg.fleet.heartbeat_timeout_s, now, cfg.fleet.gap_grace_s, lag
    )
    if governor is not None:
        findings = [f for h in results for f in h.findings]
        findings += health.ingest_findings(inboxes, cfg.fleet.inbox_lag_alert_s)
        # Only the alerts this run could judge may be resolved: an offline box's overheating alert
        # is not "cleared" because nothing reports its temperature any more.
        governor.apply(findings, "health", covered=health.judged(results))
    return results


def accuracy_over_time(fleet: FleetStore, bucket_s: float = 86400) -> dict[str, list[dict[str, Any]]]:
    buckets: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for f in fleet.feedback():
        if f.predicted == "abstain":
            continue
        b = buckets[f.model_version][int(f.pred_ts // bucket_s)]
        b[0] += int(f.predicted == f.label)
        b[1] += 1
    return {
        mv: [{"ts": k * bucket_s, "accuracy": ok / n, "n": n} for k, (ok, n) in sorted(bs.items())]
        for mv, bs in buckets.items()
    }


def outcome_totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Cats and dogs (``pets``), ``none`` and ``abstain`` over the site-level cohorts, each apart."""
    pets: dict[str, int] = {}
    none = abstain = 0
    for r in rows:
        c = (r.get("details") or {}).get("counts")
        if r["device"] or not c:
            continue
        for k, v in c["pets"].items():
            pets[k] = pets.get(k, 0) + int(v)
        none += int(c.get("none", 0))
        abstain += int(c.get("abstain", 0))
    return {"pets": dict(sorted(pets.items())), "none": none, "abstain": abstain}


def run_analysis(
    cfg: CloudConfig,
    fleet: FleetStore,
    governor: Governor | None,
    now: float | None = None,
    baseline_of: Callable[[str], drift_baseline.Baseline | None] | None = None,
    write_report: bool = True,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    # Milliseconds: two runs within one second (on demand beside the schedule) keep both reports.
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}Z"
    resolve = baseline_of or cache(
        lambda v: drift_baseline.resolve(cfg.paths.registry_db, v, cfg.analysis.abstain_threshold)
    )
    health_results = run_health(cfg, fleet, governor, now)
    rows, findings, covered = drift.analyze(fleet, cfg.analysis, now, run_id, resolve)
    fleet.add_drift(rows)
    alerts: dict[str, list[StoredAlert]] = {"opened": [], "refreshed": [], "resolved": []}
    if governor is not None:
        alerts = governor.apply(findings, "drift", covered=lambda a: (a.site, a.subject) in covered)
    rep: dict[str, Any] = {
        "run_id": run_id,
        "ts": now,
        "window_s": cfg.analysis.window_s,
        "totals": {
            "predictions": sum(r["n"] for r in rows if not r["device"]),
            "devices": len(health_results),
            **outcome_totals(rows),
        },
        "health": [h.to_dict() for h in health_results],
        "drift": rows,
        "findings": [
            {"rule": f.rule, "site": f.site, "device": f.device, "subject": f.subject, "message": f.message}
            for f in findings
        ],
        "alerts": {
            k: [
                {
                    "id": a.id,
                    "rule": a.rule,
                    "severity": a.severity,
                    "message": a.message,
                    "state": a.state,
                    "actions": a.actions,
                }
                for a in v
            ]
            for k, v in alerts.items()
        },
        "accuracy_over_time": accuracy_over_time(fleet),
        "thresholds": cfg.analysis.model_dump(),
    }
    if write_report:
        report.write(rep, cfg.paths.reports_dir)
    return rep
