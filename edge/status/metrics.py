"""Prometheus text exposition of the status snapshot (hand-written: no client library needed)."""

from __future__ import annotations

from typing import Any

STATES = ("streaming", "stalled", "reconnecting", "offline")


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(d: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in d.items()) + "}" if d else ""


class _Out:
    """Collects samples per metric family: the text format wants each family's lines together,
    even when samples are added camera by camera."""

    def __init__(self) -> None:
        self.families: dict[str, list[str]] = {}

    def add(
        self,
        name: str,
        kind: str,
        help_: str,
        value: float | int | None,
        labels: dict[str, str] | None = None,
    ) -> None:
        if value is None:
            return
        full = f"parkwatch_edge_{name}"
        lines = self.families.setdefault(full, [f"# HELP {full} {help_}", f"# TYPE {full} {kind}"])
        lines.append(f"{full}{_labels(labels or {})} {float(value):g}")

    @property
    def lines(self) -> list[str]:
        return [line for family in self.families.values() for line in family]


def render_metrics(s: dict[str, Any]) -> str:
    o = _Out()
    o.add("up", "gauge", "1 when the inference loop runs", 1 if s.get("healthy") else 0)
    o.add("uptime_seconds", "gauge", "seconds since the daemon started", s.get("uptime_s"))
    o.add(
        "broker_connected",
        "gauge",
        "1 when connected to the MQTT broker",
        1 if s["broker"]["connected"] else 0,
    )
    o.add("broker_disconnects_total", "counter", "connections lost", s["broker"]["disconnects"])
    ob = s["outbox"]
    o.add("outbox_backlog", "gauge", "predictions waiting for a broker acknowledgement", ob["backlog"])
    o.add("outbox_evicted_total", "counter", "predictions evicted by the outbox bound", ob["evicted_total"])
    o.add("outbox_write_errors_total", "counter", "failed outbox writes (disk full, ...)", ob["write_errors"])
    o.add("outbox_last_seq", "gauge", "last sequence number issued", ob["last_seq"])
    inf = s["inference"]
    o.add("classifications_total", "counter", "frames classified", inf["classified"])
    o.add("inference_errors_total", "counter", "failed inference steps", inf["errors"])
    o.add("inference_fps", "gauge", "classifications per second (10 s window)", inf["fps"])
    o.add(
        "lost_predictions_total",
        "counter",
        "predictions lost: the outbox could not be written, or one could not be built",
        inf["lost_predictions"],
    )
    o.add("skipped_static_total", "counter", "frames skipped by motion gating", inf["skipped_static"])
    o.add("regions_total", "counter", "regions (model inputs) classified", inf.get("regions_run"))
    o.add("pet_regions_total", "counter", "regions reported as holding a pet", inf.get("pet_regions"))
    o.add("abstain_rate", "gauge", "share of classified frames that abstained", inf.get("abstain_rate"))
    o.add("none_rate", "gauge", "share of classified frames sure to hold no pet", inf.get("none_rate"))
    for q, v in (inf.get("latency_ms") or {}).items():
        o.add("latency_ms", "gauge", "frame-to-result latency percentiles", v, {"quantile": q})
    model = s.get("model")
    o.add(
        "model_loaded",
        "gauge",
        "1 when a model is active",
        1 if model else 0,
        {"version": model["version"]} if model else {},
    )
    for cam in s.get("cameras", []):
        lab = {"camera": cam["id"]}
        for st in STATES:
            o.add(
                "camera_state",
                "gauge",
                "1 for the camera's current state",
                1 if cam["state"] == st else 0,
                {**lab, "state": st},
            )
        o.add("camera_fps", "gauge", "frames per second read from the source", cam["fps"], lab)
        o.add("camera_frames_total", "counter", "frames read from the source", cam["frames"], lab)
        o.add(
            "camera_dropped_total",
            "counter",
            "stale frames replaced before classification",
            cam["dropped"],
            lab,
        )
        o.add("camera_reconnects_total", "counter", "reconnections after a failure", cam["reconnects"], lab)
        for kind, n in (cam.get("refused") or {}).items():
            o.add(
                "camera_refused_frames_total",
                "counter",
                "frames refused before decoding (too many pixels, bad shape, ...)",
                n,
                {**lab, "kind": kind},
            )
        for flag, n in (cam.get("integrity") or {}).items():
            if flag != "frames":
                o.add(
                    "integrity_flags_total",
                    "counter",
                    "frames flagged by integrity checks",
                    n,
                    {**lab, "flag": flag},
                )
    host = s.get("host") or {}
    o.add("cpu_percent", "gauge", "host CPU use", host.get("cpu_percent"))
    o.add("memory_percent", "gauge", "host memory use", host.get("memory_percent"))
    o.add("disk_free_mb", "gauge", "free disk under the state folder", host.get("disk_free_mb"))
    o.add("process_rss_mb", "gauge", "daemon resident memory", host.get("process_rss_mb"))
    for sensor, c in (host.get("temperatures") or {}).items():
        o.add("temperature_celsius", "gauge", "temperature sensors", c, {"sensor": sensor})
    return "\n".join(o.lines) + "\n"
