"""Prometheus exposition of the status snapshot, through ``prometheus_client``.

Why a collector built per request rather than long-lived ``Gauge``/``Counter`` objects: the
daemon already keeps every figure in its status snapshot, so the page only translates one
snapshot into metric families. ``prometheus_client`` owns the text format (escaping, ``_total``
suffixes, one block per family, number formatting) so none of it is hand-written here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STATES = ("streaming", "stalled", "reconnecting", "offline")

#: what ``/metrics`` answers with: the classic text format ``generate_latest`` writes
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class _Out(Collector):
    """Collects samples per metric family: the text format wants each family's lines together,
    even when samples are added camera by camera. Also the registry's collector for one scrape."""

    def __init__(self) -> None:
        self.families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}

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
        labels = labels or {}
        family = self.families.get(full)
        if family is None:
            family = self.families[full] = (
                CounterMetricFamily(full, help_, labels=list(labels))
                if kind == "counter"
                else GaugeMetricFamily(full, help_, labels=list(labels))
            )
        family.add_metric(list(labels.values()), float(value))

    def collect(self) -> Iterable[Metric]:
        return list(self.families.values())


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
    registry = CollectorRegistry(auto_describe=False)
    registry.register(o)
    return generate_latest(registry).decode("utf-8")
