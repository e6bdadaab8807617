"""Health rules on their own (pure ``evaluate``); the broker path is in test_analysis_drift.py."""

from __future__ import annotations

from typing import Any

from cloud.analysis.config import AnalysisConfig
from cloud.analysis.health import DeviceHealth
from cloud.analysis.health import evaluate as evaluate_records
from cloud.fleet.records import Device
from tests.fleetutil import device_record, gap_record, telemetry_record

NOW = 1_800_000_000.0
ACFG = AnalysisConfig()


def dev(**kw: Any) -> Device:
    return device_record(**{"device": "b1", "site": "p", "status": "online", "last_seen": NOW - 5, **kw})


def evaluate(
    d: Device,
    t: list[dict[str, Any]],
    gaps: list[dict[str, Any]],
    now: float,
    acfg: AnalysisConfig,
    hb: float,
) -> DeviceHealth:
    """The pure rules over records, from telemetry and gap rows written as dicts for brevity."""
    return evaluate_records(
        d, [telemetry_record(r) for r in t], [gap_record(**g) for g in gaps], now, acfg, hb
    )


def tel(n: int = 20, **last: Any) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        cams = {
            "cam1": {
                "state": "streaming",
                "frames": 100 * i,
                "integrity": {"frozen": 0},
                "last_frame_ts": NOW - (n - i) * 10,
            }
        }
        rows.append(
            {
                "ts": NOW - (n - i) * 10,
                "cpu_percent": 30.0 + (i % 3),
                "temp_max": 50.0 + (i % 2),
                "memory_percent": 40.0,
                "disk_percent": 30.0,
                "latency_p95": 20.0 + (i % 2) * 0.5,
                "inference_fps": 5.0,
                "body": {"ts": NOW - (n - i) * 10, "cameras": cams},
            }
        )
    body_last = last.pop("body", None)
    rows[-1].update(last)
    if body_last:
        rows[-1]["body"] = body_last
    return rows


def rules(h: Any) -> list[str]:
    return sorted(f.rule for f in h.findings)


def test_a_quiet_device_is_ok() -> None:
    h = evaluate(dev(), tel(), [], NOW, ACFG, 60)
    assert h.state == "ok" and h.reasons == []


def test_overheating_is_critical_and_cpu_needs_consecutive_samples() -> None:
    t = tel(temp_max=85.0)
    assert evaluate(dev(), t, [], NOW, ACFG, 60).state == "critical"
    t = tel()
    t[-1]["cpu_percent"] = 99.0
    t[-2]["cpu_percent"] = 99.0
    assert "cpu_saturation" not in rules(evaluate(dev(), t, [], NOW, ACFG, 60))
    t[-3]["cpu_percent"] = 99.0
    assert "cpu_saturation" in rules(evaluate(dev(), t, [], NOW, ACFG, 60))


def test_camera_stalled_and_frames_flagged() -> None:
    t = tel()
    prev = t[-2]["body"]["cameras"]["cam1"]
    t[-1]["body"] = {
        "ts": NOW,
        "cameras": {
            "cam1": {
                "state": "streaming",
                "frames": prev["frames"] + 100,
                "integrity": {"frozen": 40, "covered": 5},
                "last_frame_ts": NOW - 120,
            }
        },
    }
    h = evaluate(dev(), t, [], NOW, ACFG, 60)
    assert rules(h) == ["camera_down", "frame_integrity"]
    assert h.state == "degraded" and any("45/100 frames flagged" in r for r in h.reasons)


def test_robust_z_flags_a_latency_jump_but_not_noise() -> None:
    assert "telemetry_anomaly" not in rules(evaluate(dev(), tel(latency_p95=21.0), [], NOW, ACFG, 60))
    h = evaluate(dev(), tel(latency_p95=80.0), [], NOW, ACFG, 60)
    [f] = h.findings
    assert f.rule == "telemetry_anomaly" and f.subject == "latency_p95" and f.details["z"] > ACFG.anomaly_z


def test_offline_by_last_will_or_silence_and_gaps_are_reported() -> None:
    h = evaluate(dev(status="offline", status_reason="last-will"), tel(temp_max=99.0), [], NOW, ACFG, 60)
    assert h.state == "offline" and rules(h) == ["device_offline"]  # stale telemetry is not judged
    h = evaluate(dev(last_seen=NOW - 61), tel(), [], NOW, ACFG, 60)
    assert h.state == "offline" and "silent for 61 s" in h.reasons[0]
    gaps = [{"first_seq": 5, "last_seq": 9, "missing": 5, "cause": "lost in transit"}]
    h = evaluate(dev(), tel(), gaps, NOW, ACFG, 60)
    assert h.state == "degraded" and rules(h) == ["ingest_gap"] and "5 prediction(s) missing" in h.reasons[0]


def test_frame_totals_are_not_flags_and_an_idle_box_is_not_an_anomaly() -> None:
    t = tel()
    for i, row in enumerate(t):  # what the edge really sends: the frame total sits beside the flags
        row["body"]["cameras"]["cam1"]["integrity"] = {"frames": 100 * i}
    assert rules(evaluate(dev(), t, [], NOW, ACFG, 60)) == []
    assert rules(evaluate(dev(), tel(cpu_percent=0.5), [], NOW, ACFG, 60)) == []
    assert rules(evaluate(dev(), tel(inference_fps=0.1), [], NOW, ACFG, 60)) == ["telemetry_anomaly"]


def test_predictions_lost_on_the_box_reach_health_when_the_count_grows() -> None:
    """They never got a sequence number, so no gap shows them; the box's own count does."""
    t = tel()
    t[-2]["body"]["lost_predictions"] = 4
    t[-1]["body"] = {**t[-1]["body"], "lost_predictions": 9}
    h = evaluate(dev(), t, [], NOW, ACFG, 60)
    assert rules(h) == ["predictions_lost"]
    assert any("9 prediction(s) lost on the device" in r for r in h.reasons)
    t[-1]["body"]["lost_predictions"] = 4  # nothing new since the previous sample: no alert
    assert rules(evaluate(dev(), t, [], NOW, ACFG, 60)) == []
