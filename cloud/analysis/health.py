"""Device health: a state per device (ok, degraded, critical, offline) with the reasons.

``evaluate`` is pure (device row, its recent telemetry, its gaps, the time) so every rule is
tested without a broker; ``check_fleet`` reads the store, writes each device's state back, and
returns the findings for the governor; ``judged`` tells the governor which open alerts the run
was in a position to judge (only those may be resolved as "condition cleared").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloud.analysis.config import AnalysisConfig
from cloud.analysis.stats import robust_z
from cloud.fleet.records import Device, DeviceBrief, Gap, TelemetryRow
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import CAUSE_BEFORE
from cloud.governance.records import StoredAlert
from cloud.governance.rules import RULES, Finding

ANOMALY_METRICS = ("cpu_percent", "temp_max", "latency_p95", "inference_fps", "memory_percent")
# Which side of the median is trouble: a box that suddenly idles is not ill, one that stops
# classifying is. Anomalies on the harmless side are not reported.
LOW_IS_BAD = {"inference_fps"}
# Counters in a camera's integrity dict that are totals, not flags.
NOT_FLAGS = {"frames"}
STATE_ORDER = ("ok", "degraded", "critical", "offline")
# The rules judged from the device's newest telemetry. While the device is offline, or its newest
# telemetry is older than the heartbeat timeout, a check cannot tell whether they still hold: their
# alerts are neither re-raised nor resolved, they stay as they are until fresh telemetry shows the
# condition gone (a box that died of heat must not show its overheating alert as cleared).
TELEMETRY_RULES = frozenset(name for name, rule in RULES.items() if rule.from_telemetry)
# Gap causes that are reported (``parkwatch cloud health --device``, the device page) but are not
# a fault of the box or the pipeline, so they neither degrade health nor raise ``ingest_gap``.
HARMLESS_GAP_CAUSES = frozenset({CAUSE_BEFORE})


@dataclass
class DeviceHealth:
    device: str
    site: str
    state: str
    reasons: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # False when this check could not judge the TELEMETRY_RULES (offline, or no fresh telemetry).
    telemetry_judged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "site": self.site,
            "state": self.state,
            "reasons": self.reasons,
            "alerts": [f.rule for f in self.findings],
        }


def _body(row: TelemetryRow) -> dict[str, Any]:
    return row.body if isinstance(row.body, dict) else {}


def liveness(dev: Device | DeviceBrief, now: float, timeout_s: float) -> tuple[str, str | None]:
    """Pure: ("online"|"offline"|"unknown", why). Online needs a recent message, not just a
    retained "online" status, so a box that lost power without its last-will still turns offline."""
    last = dev.last_seen
    if dev.status == "offline":
        return "offline", dev.status_reason or "reported offline"
    if last is None:
        return "unknown", "no message yet"
    silent = now - float(last)
    if silent > timeout_s:
        return "offline", f"silent for {silent:.0f} s (heartbeat timeout {timeout_s:.0f} s)"
    return "online", None


def evaluate(
    device: Device,
    telemetry: list[TelemetryRow],
    gaps: list[Gap],
    now: float,
    acfg: AnalysisConfig,
    heartbeat_timeout_s: float,
) -> DeviceHealth:
    dev, site = device.device, device.site
    found: list[Finding] = []

    def add(rule: str, message: str, subject: str = "", **details: Any) -> None:
        found.append(Finding(rule, site, message, device=dev, subject=subject, details=details))

    silent_for = now - (device.last_seen or 0)
    live, why = liveness(device, now, heartbeat_timeout_s)
    offline = live != "online"
    if device.status == "offline":
        add(
            "device_offline",
            f"{dev} reported offline ({device.status_reason or 'no reason'})",
            reason=device.status_reason,
            since=device.status_ts,
        )
    elif offline:
        add(
            "device_offline",
            f"{dev} {why}",
            silent_s=round(silent_for, 1),
            last_seen=device.last_seen,
        )
    lost = [g for g in gaps if g.cause not in HARMLESS_GAP_CAUSES]
    if lost:
        missing = sum(g.missing for g in lost)
        add(
            "ingest_gap",
            f"{dev}: {missing} prediction(s) missing in {len(lost)} gap(s)",
            missing=missing,
            gaps=[{"first_seq": g.first_seq, "last_seq": g.last_seq, "cause": g.cause} for g in lost[:20]],
        )
    if device.update_state == "failed":
        # A refused update (a TUF refusal, a failed self-test) leaves the box on its old model:
        # not an outage, but the fleet is not running what was rolled out, and nothing else says so.
        target = device.update_version
        add(
            "update_failed",
            f"{dev}: model update{' to ' + target if target else ''} failed: "
            f"{device.update_reason or 'no reason given'}",
            version=target,
            reason=device.update_reason,
        )
    tel_age = _telemetry_age(telemetry, now)
    stale = tel_age is not None and tel_age > heartbeat_timeout_s
    judged = not offline and tel_age is not None and not stale
    if judged:
        _telemetry_checks(dev, telemetry, acfg, add)
    state = "ok"
    for f in found:
        s = (
            "offline"
            if f.rule == "device_offline"
            else (
                "critical"
                if RULES[f.rule].severity == "critical"
                else "degraded"
                if RULES[f.rule].severity == "warning"
                else "ok"
            )
        )
        if STATE_ORDER.index(s) > STATE_ORDER.index(state):
            state = s
    reasons = [f.message for f in found]
    if not offline and stale:
        # Online (predictions or a status arrive) but no telemetry lately: nothing to judge the box's
        # vitals on. Said, not scored: on a real box the watchdog restarts a dead telemetry loop, so
        # this is the few seconds between a reconnect and its first telemetry.
        reasons.append(
            f"{dev}: no telemetry for {tel_age:.0f} s (heartbeat timeout {heartbeat_timeout_s:.0f} s); "
            "its temperature, CPU, memory, disk and camera alerts stay as they are until it reports"
        )
    return DeviceHealth(dev, site, state, reasons, found, telemetry_judged=judged)


def _telemetry_age(telemetry: list[TelemetryRow], now: float) -> float | None:
    """Seconds since the newest telemetry arrived (the cloud's clock when known, so a box's clock
    does not matter), or None without telemetry."""
    # The latest arrival, not the row with the latest device timestamp: one row stamped by a clock
    # that ran ahead would otherwise stay "newest" and make every later report look stale.
    arrivals = [t.received_ts or t.ts for t in telemetry]
    known = [float(x) for x in arrivals if x is not None]
    return max(0.0, now - max(known)) if known else None


def judged(results: list[DeviceHealth]) -> Callable[[StoredAlert], bool]:
    """The governor's ``covered`` for a health run: which active health alerts this run was in a
    position to judge. Not the telemetry alerts of a device whose telemetry it could not judge
    (offline or stale), so those are neither resolved nor re-raised; everything else (device_offline,
    ingest_gap, ingest_backlog, telemetry alerts of devices judged now) is, as before."""
    blind = {h.device for h in results if not h.telemetry_judged}
    return lambda a: not (a.rule in TELEMETRY_RULES and a.device in blind)


def _metric(row: TelemetryRow, name: str) -> float | None:
    """One of ANOMALY_METRICS by name (they are all numeric columns of a telemetry row)."""
    v = getattr(row, name)
    return None if v is None else float(v)


def _telemetry_checks(dev: str, telemetry: list[TelemetryRow], acfg: AnalysisConfig, add: Any) -> None:
    last = telemetry[-1]
    if last.temp_max is not None and last.temp_max > acfg.max_temperature_c:
        add(
            "overheating",
            f"{dev}: {last.temp_max:.0f} °C > {acfg.max_temperature_c:.0f} °C",
            temperature_c=last.temp_max,
        )
    recent = telemetry[-acfg.saturation_samples :]
    if len(recent) >= acfg.saturation_samples and all(
        (r.cpu_percent or 0) > acfg.max_cpu_percent for r in recent
    ):
        add(
            "cpu_saturation",
            f"{dev}: CPU above {acfg.max_cpu_percent:.0f} % for {len(recent)} samples",
            cpu_percent=last.cpu_percent,
        )
    if last.memory_percent is not None and last.memory_percent > acfg.max_memory_percent:
        add(
            "memory_high",
            f"{dev}: memory {last.memory_percent:.0f} % > {acfg.max_memory_percent:.0f} %",
            memory_percent=last.memory_percent,
        )
    if last.disk_percent is not None and last.disk_percent > acfg.max_disk_percent:
        add(
            "disk_high",
            f"{dev}: disk {last.disk_percent:.0f} % > {acfg.max_disk_percent:.0f} %",
            disk_percent=last.disk_percent,
        )
    body = _body(last)
    # Predictions that never got a sequence number (the outbox could not write them) leave no
    # gap for ingest to find: the box counts them in telemetry (since its start); raise on growth.
    lost = int(body.get("lost_predictions") or 0)
    before = int(_body(telemetry[-2]).get("lost_predictions") or 0) if len(telemetry) > 1 else 0
    if lost > before or (lost and len(telemetry) == 1):
        add(
            "predictions_lost",
            f"{dev}: {lost} prediction(s) lost on the device since its start (the outbox could not "
            "write them: disk full?)",
            lost=lost,
        )
    prev_cams = _body(telemetry[-2]).get("cameras", {}) if len(telemetry) > 1 else {}
    for cam, c in (body.get("cameras") or {}).items():
        state = c.get("state")
        if state in ("offline", "reconnecting", "stalled"):
            add(
                "camera_down",
                f"{dev}/{cam}: camera {state}" + (f" ({c['error']})" if c.get("error") else ""),
                subject=cam,
                camera=cam,
                state=state,
            )
        elif c.get("last_frame_ts") and body.get("ts", 0) - c["last_frame_ts"] > acfg.camera_stall_s:
            add(
                "camera_down",
                f"{dev}/{cam}: no frame for {body['ts'] - c['last_frame_ts']:.0f} s",
                subject=cam,
                camera=cam,
                state="stalled",
            )
        p = prev_cams.get(cam) or {}
        frames = (c.get("frames") or 0) - (p.get("frames") or 0)
        flagged = {k: v - (p.get("integrity") or {}).get(k, 0) for k, v in (c.get("integrity") or {}).items()}
        flagged = {k: v for k, v in flagged.items() if v > 0 and k not in NOT_FLAGS}
        if frames > 0 and sum(flagged.values()) / frames > acfg.integrity_rate_max:
            add(
                "frame_integrity",
                f"{dev}/{cam}: {sum(flagged.values())}/{frames} frames flagged "
                f"({', '.join(sorted(flagged))})",
                subject=cam,
                camera=cam,
                flags=flagged,
                frames=frames,
            )
    history = telemetry[-(acfg.anomaly_history + 1) : -1]
    for m in ANOMALY_METRICS:
        now_v = _metric(last, m)
        if now_v is None or len(history) < 10:
            continue
        z = robust_z([v for r in history if (v := _metric(r, m)) is not None], now_v)
        bad_side = z < 0 if m in LOW_IS_BAD else z > 0
        if abs(z) > acfg.anomaly_z and bad_side:
            add(
                "telemetry_anomaly",
                f"{dev}: {m} = {now_v:.1f} is {z:+.1f} robust SDs from its recent median",
                subject=m,
                metric=m,
                value=now_v,
                z=round(z, 2),
            )


INGEST_SITE = "cloud"  # alerts about the cloud's own ingest carry this site


def ingest_findings(states: list[dict[str, Any]], lag_alert_s: float) -> list[Finding]:
    """An ``ingest_backlog`` finding per worker whose oldest inbox row waited past ``lag_alert_s``."""
    out = []
    for s in states:
        age = s["oldest_age_s"]
        if s.get("error"):
            why = (
                f"the inbox of ingest worker {s['worker']} cannot be read ({s['error']}): what it holds "
                "is not reaching the fleet tables. Check the file and its permissions"
            )
        elif age is not None and age >= lag_alert_s:
            last = s.get("last_batch_age_s")
            applied = (
                f"its materializer last applied a batch {last:.0f} s ago"
                if last is not None
                else "its materializer has not applied a batch yet"
            )
            why = (
                f"{s['backlog']} acknowledged messages wait in the inbox of ingest worker {s['worker']}, "
                f"the oldest for {age:.0f} s, and {applied}: the fleet tables are behind. Check that its "
                "materializer runs ('parkwatch cloud serve', or parkwatch-cloud-materialize.service) and "
                "its log for errors; 'parkwatch cloud inbox' shows the backlog"
            )
        else:
            continue
        out.append(
            Finding("ingest_backlog", INGEST_SITE, why, subject=f"inbox:{s['worker']}", details=dict(s))
        )
    return out


def check_fleet(
    store: FleetStore,
    acfg: AnalysisConfig,
    heartbeat_timeout_s: float,
    now: float,
    gap_grace_s: float = 0.0,
    lag_s: float = 0.0,
) -> list[DeviceHealth]:
    """``lag_s``: how far behind the fleet tables are (ingest backlog); judged from ``now - lag_s``."""
    out = []
    for d in store.devices():
        tel = store.telemetry_rows(d.device, limit=acfg.anomaly_history + 1)
        gaps = [g for g in store.gaps(d.device) if now - g.detected_ts >= gap_grace_s]
        h = evaluate(d, tel, gaps, now - lag_s, acfg, heartbeat_timeout_s)
        store.set_health(d.device, h.state, h.reasons, now)
        out.append(h)
    return out
