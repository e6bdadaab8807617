"""``/metrics`` as Prometheus itself parses it: names, labels, types and escaping survive.

The exposition is written by ``prometheus_client`` (edge/status/metrics.py); these checks read it
back with the same library's parser, so a sample Prometheus would reject fails here.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge.status.metrics import render_metrics


def _snapshot() -> dict[str, Any]:
    return {
        "healthy": True,
        "uptime_s": 12.5,
        "broker": {"connected": False, "disconnects": 3},
        "outbox": {"backlog": 7, "evicted_total": 0, "write_errors": 1, "last_seq": 41},
        "inference": {
            "classified": 10,
            "errors": 0,
            "fps": 2.0,
            "lost_predictions": 0,
            "skipped_static": 1,
            "latency_ms": {"0.5": 12.0, "0.99": 30.0},
        },
        "model": {"version": "1.2.0"},
        "cameras": [
            {
                "id": 'ga"te\\1',  # quote and backslash must be escaped, not break the line
                "state": "stalled",
                "fps": 2,
                "frames": 5,
                "dropped": 0,
                "reconnects": 2,
                "refused": {"pixels": 1},
                "integrity": {"frames": 3, "black": 1},
            },
            {"id": "dead", "state": "offline", "fps": 0, "frames": 0, "dropped": 0, "reconnects": 9},
        ],
        "host": {"cpu_percent": 3, "temperatures": {"cpu": 51.0}},
    }


def test_metrics_parse_with_their_names_types_and_labels() -> None:
    text = render_metrics(_snapshot())
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    # counters are named without _total in the family, with it on the sample (the text format)
    assert fams["parkwatch_edge_broker_disconnects"].type == "counter"
    assert (
        fams["parkwatch_edge_broker_disconnects"].samples[0].name == "parkwatch_edge_broker_disconnects_total"
    )
    assert fams["parkwatch_edge_broker_disconnects"].samples[0].value == 3
    assert fams["parkwatch_edge_outbox_backlog"].type == "gauge"
    assert fams["parkwatch_edge_broker_connected"].samples[0].value == 0
    states = {
        (s.labels["camera"], s.labels["state"]): s.value for s in fams["parkwatch_edge_camera_state"].samples
    }
    assert states[('ga"te\\1', "stalled")] == 1 and states[('ga"te\\1', "streaming")] == 0
    assert states[("dead", "offline")] == 1
    assert {s.labels["quantile"] for s in fams["parkwatch_edge_latency_ms"].samples} == {"0.5", "0.99"}
    assert fams["parkwatch_edge_model_loaded"].samples[0].labels == {"version": "1.2.0"}
    flags = fams["parkwatch_edge_integrity_flags"].samples
    assert [(s.labels["flag"], s.value) for s in flags] == [("black", 1)]  # "frames" is no flag
    assert fams["parkwatch_edge_temperature_celsius"].samples[0].labels == {"sensor": "cpu"}


def test_each_family_is_one_block_and_absent_figures_are_left_out() -> None:
    s = _snapshot()
    s["host"] = {}
    s["model"] = None
    text = render_metrics(s)
    names = [line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    assert "parkwatch_edge_cpu_percent" not in text
    assert "parkwatch_edge_model_loaded 0.0" in text
