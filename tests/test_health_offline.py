"""Health alerts a check cannot judge stay as they are; harmless gaps are reported, not alerted.

* A box that dies (last-will, or silent past the heartbeat timeout) while an overheating or
  telemetry-anomaly alert is open must not get that alert resolved as "condition cleared": nothing
  reports its temperature any more. Fresh telemetry showing the condition gone resolves it.
* Gaps whose cause is "before first contact" are listed with the device but neither degrade its
  health nor raise ``ingest_gap``; predictions lost in transit still do.

Simulated devices → real broker → ingest → ``run_health`` with a real governor on real SQLite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.analysis.config import AnalysisConfig
from cloud.analysis.health import TELEMETRY_RULES, judged
from cloud.analysis.job import open_governor, run_health
from cloud.config import CloudConfig
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import CAUSE_BEFORE, CAUSE_LOST
from cloud.governance.alerts import AlertStore
from cloud.governance.engine import Governor
from cloud.governance.records import StoredAlert
from cloud.governance.rules import RULES
from shared.broker import EmbeddedBroker
from shared.cli import main
from tests.fleetutil import alert_record, cloud_cfg, wait_for
from tests.simdevice import SimDevice
from tests.test_analysis_health import NOW, dev, evaluate, tel
from tests.test_governance_alerts import _write_cfg

HEARTBEAT_S = 60.0  # the default; silence is simulated by judging at a later ``now``


@pytest.fixture
def env(tmp_path: Path, broker: EmbeddedBroker) -> Iterator[tuple[CloudConfig, FleetStore, Governor]]:
    cfg = cloud_cfg(tmp_path, broker, fleet={"heartbeat_timeout_s": HEARTBEAT_S, "gap_grace_s": 0.0})
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10), "ingest did not connect"
    store = FleetStore(cfg.fleet_store)
    gov = open_governor(cfg, publish=False)
    try:
        yield cfg, store, gov
    finally:
        ing.stop()
        store.close()
        gov.alerts.close()


def alerts(cfg: CloudConfig, device: str) -> dict[str, StoredAlert]:
    """Newest alert per rule (and subject) of ``device``."""
    with AlertStore(cfg.fleet_store) as st:
        out: dict[str, StoredAlert] = {}
        for a in reversed(st.list(device=device)):  # oldest first, so the newest wins
            out[a.rule + (f":{a.subject}" if a.subject else "")] = a
        return out


def telemetry_count(store: FleetStore, device: str) -> int:
    return int(store.query("SELECT count(*) AS n FROM telemetry WHERE device=?", (device,))[0]["n"])


# -- defect A: an offline box's telemetry alerts are not "cleared" ---------------------------------


def test_overheating_alert_stays_open_while_the_box_is_dead_and_clears_on_cool_telemetry(
    env: tuple[CloudConfig, FleetStore, Governor], broker: EmbeddedBroker
) -> None:
    cfg, store, gov = env
    box = SimDevice("127.0.0.1", broker.port, device="hot1").connect()
    box.telemetry(temperatures={"cpu": 97.0})
    box.flush()
    wait_for(lambda: store.latest_telemetry("hot1"), what="hot telemetry stored")
    [h] = run_health(cfg, store, gov)
    assert h.state == "critical"
    hot = alerts(cfg, "hot1")["overheating"]
    assert hot.state == "open"

    box.kill()  # dies without a goodbye: the broker publishes its last-will
    wait_for(lambda: store.device("hot1").status == "offline", what="last-will stored")
    [h] = run_health(cfg, store, gov)
    assert h.state == "offline" and not h.telemetry_judged
    now = alerts(cfg, "hot1")
    assert now["device_offline"].state == "open"
    # The bug: this was resolved "condition cleared" although nothing reports a temperature.
    assert now["overheating"].id == hot.id and now["overheating"].state == "open"
    assert now["overheating"].count == 1  # not re-raised from the stale reading either

    # Back, cool: the next check sees the condition gone and resolves it.
    back = SimDevice("127.0.0.1", broker.port, device="hot1").connect()
    try:
        back.telemetry()  # ~50 °C
        back.flush()
        wait_for(
            lambda: store.device("hot1").status == "online" and telemetry_count(store, "hot1") == 2,
            what="online again with fresh telemetry",
        )
        [h] = run_health(cfg, store, gov)
        assert h.state == "ok" and h.telemetry_judged
        now = alerts(cfg, "hot1")
        assert now["overheating"].state == "resolved"
        assert now["overheating"].resolved_by == "parkwatch-analysis"
        assert now["overheating"].resolve_comment == "condition cleared"
        assert now["device_offline"].state == "resolved"
    finally:
        back.disconnect()


def test_silent_box_keeps_its_anomaly_and_acknowledged_alerts_until_it_reports_again(
    env: tuple[CloudConfig, FleetStore, Governor], broker: EmbeddedBroker
) -> None:
    cfg, store, gov = env
    box = SimDevice("127.0.0.1", broker.port, device="quiet1", seed=5).connect()
    try:
        for _ in range(12):  # history for the robust z-score
            box.telemetry()
        box.telemetry(temperatures={"cpu": 97.0})
        box.flush()
        wait_for(lambda: telemetry_count(store, "quiet1") == 13, what="telemetry stored")
        run_health(cfg, store, gov)
        first = alerts(cfg, "quiet1")
        assert first["overheating"].state == "open"
        assert first["telemetry_anomaly:temp_max"].state == "open"
        gov.alerts.ack(first["overheating"].id, "ops", "on my way")

        # Still connected, but says nothing past the heartbeat timeout (judged from a later now).
        [h] = run_health(cfg, store, gov, now=time.time() + HEARTBEAT_S + 5)
        assert h.state == "offline" and "silent for" in h.reasons[0]
        later = alerts(cfg, "quiet1")
        assert later["device_offline"].state == "open"
        assert later["overheating"].state == "acknowledged"  # kept as the operator left it
        assert later["telemetry_anomaly:temp_max"].state == "open"
        assert later["telemetry_anomaly:temp_max"].count == 1

        box.telemetry()  # reports again, back to normal
        box.flush()
        wait_for(lambda: telemetry_count(store, "quiet1") == 14, what="fresh telemetry stored")
        run_health(cfg, store, gov)
        final = alerts(cfg, "quiet1")
        assert {k: a.state for k, a in final.items()} == {
            "overheating": "resolved",
            "telemetry_anomaly:temp_max": "resolved",
            "device_offline": "resolved",
        }
    finally:
        box.disconnect()


def test_stale_telemetry_on_an_online_box_is_not_judged_but_said() -> None:
    acfg = AnalysisConfig()
    t = tel(temp_max=97.0)
    for r in t:
        r["received_ts"] = NOW - 600 + r["ts"] - t[-1]["ts"]  # the newest arrived 10 minutes ago
    h = evaluate(dev(), t, [], NOW, acfg, HEARTBEAT_S)  # online: a status/prediction 5 s ago
    assert h.findings == [] and not h.telemetry_judged and h.state == "ok"
    assert "no telemetry for 600 s" in h.reasons[0]
    # The same reading, freshly received, is judged.
    t[-1]["received_ts"] = NOW - 2
    h = evaluate(dev(), t, [], NOW, acfg, HEARTBEAT_S)
    assert h.telemetry_judged and [f.rule for f in h.findings] == ["overheating", "telemetry_anomaly"]
    # A row stamped by a clock that ran ahead sorts last but arrived long ago: the age is the
    # latest arrival's, so reports arriving now are judged.
    t[-1]["received_ts"] = NOW - 900
    t[-1]["ts"] = NOW + 86_400
    t[-2]["received_ts"] = NOW - 2
    assert evaluate(dev(), t, [], NOW, acfg, HEARTBEAT_S).telemetry_judged


def test_the_covered_predicate_spares_only_telemetry_alerts_of_unjudged_devices() -> None:
    acfg = AnalysisConfig()
    dead = evaluate(dev(device="dead", status="offline"), tel(), [], NOW, acfg, HEARTBEAT_S)
    alive = evaluate(dev(device="alive"), tel(), [], NOW, acfg, HEARTBEAT_S)
    covered = judged([dead, alive])

    def a(rule: str, device: str | None) -> StoredAlert:
        return alert_record(rule=rule, device=device)

    for rule in TELEMETRY_RULES:
        assert not covered(a(rule, "dead")) and covered(a(rule, "alive"))
    assert covered(a("device_offline", "dead")) and covered(a("ingest_gap", "dead"))
    assert covered(a("ingest_backlog", None))
    # Every health rule is classified: a new telemetry rule must be added to TELEMETRY_RULES.
    health_rules = {n for n, r in RULES.items() if r.scope == "health"}
    assert health_rules >= TELEMETRY_RULES
    assert health_rules - TELEMETRY_RULES == {
        "device_offline",
        "ingest_gap",
        "ingest_backlog",
        "update_failed",
    }


# -- defect B: gaps before first contact are reported, not alerted --------------------------------


def test_gaps_before_first_contact_are_listed_but_do_not_degrade_or_alert(
    env: tuple[CloudConfig, FleetStore, Governor], broker: EmbeddedBroker, tmp_path: Path
) -> None:
    cfg, store, gov = env
    late = SimDevice("127.0.0.1", broker.port, device="late1", seed=1).connect()
    lossy = SimDevice("127.0.0.1", broker.port, device="lossy1", seed=2).connect()
    try:
        late.skip(40)  # ran 40 predictions before the cloud ever heard of it
        late.predict(10)
        lossy.predict(10)
        lossy.skip(5)  # lost on the way after first contact
        lossy.predict(10)
        for d in (late, lossy):
            d.telemetry()
            d.flush()
        wait_for(lambda: store.prediction_count() == 30, what="predictions stored")
        wait_for(lambda: telemetry_count(store, "lossy1") == 1, what="telemetry stored")
        assert [(g.first_seq, g.last_seq, g.cause) for g in store.gaps("late1")] == [(1, 40, CAUSE_BEFORE)]
        assert [(g.first_seq, g.last_seq, g.cause) for g in store.gaps("lossy1")] == [(11, 15, CAUSE_LOST)]
        states = {h.device: h for h in run_health(cfg, store, gov)}
        assert states["late1"].state == "ok" and states["late1"].findings == []
        assert states["lossy1"].state == "degraded"
        assert [f.rule for f in states["lossy1"].findings] == ["ingest_gap"]
        assert "ingest_gap" not in alerts(cfg, "late1")
        assert alerts(cfg, "lossy1")["ingest_gap"].state == "open"

        # Still visible where the docs send the operator.
        env_vars = {"PARKWATCH_CONFIG": str(_write_cfg(tmp_path, cfg))}
        r = CliRunner().invoke(main, ["cloud", "health", "--device", "late1", "--json"], env=env_vars)
        assert r.exit_code == 0, r.output
        d = json.loads(r.output)
        assert d["health"] == "ok"
        assert [(g["missing"], g["cause"]) for g in d["gaps"]] == [(40, CAUSE_BEFORE)]
    finally:
        late.disconnect()
        lossy.disconnect()


def test_only_harmful_gaps_count_in_the_ingest_gap_finding() -> None:
    acfg = AnalysisConfig()
    before = {"first_seq": 1, "last_seq": 40, "missing": 40, "cause": CAUSE_BEFORE}
    lost = {"first_seq": 60, "last_seq": 64, "missing": 5, "cause": CAUSE_LOST}
    h = evaluate(dev(), tel(), [before], NOW, acfg, HEARTBEAT_S)
    assert h.state == "ok" and h.findings == [] and h.reasons == []
    h = evaluate(dev(), tel(), [before, lost], NOW, acfg, HEARTBEAT_S)
    [f] = h.findings
    assert h.state == "degraded" and f.rule == "ingest_gap"
    assert f.details["missing"] == 5 and [g["cause"] for g in f.details["gaps"]] == [CAUSE_LOST]
    assert "5 prediction(s) missing in 1 gap(s)" in h.reasons[0]


def test_a_refused_model_update_degrades_health_with_its_reason() -> None:
    """`health` said ok while the box refused every update: a failed update is a reason now."""
    acfg = AnalysisConfig()
    refused = dev(
        update_state="failed", update_version=None, update_reason="untrusted signature, metadata refused"
    )
    h = evaluate(refused, tel(), [], NOW, acfg, HEARTBEAT_S)
    assert h.state == "degraded" and [f.rule for f in h.findings] == ["update_failed"]
    assert "model update failed: untrusted signature" in h.reasons[0]
    assert evaluate(dev(update_state="active"), tel(), [], NOW, acfg, HEARTBEAT_S).state == "ok"
