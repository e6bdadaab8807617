"""Fleet ingest and the analysis scheduler as ``parkwatch cloud serve`` runs them (CloudServer)."""

from __future__ import annotations

from pathlib import Path

from cloud.fleet.store import FleetStore
from cloud.server import CloudServer
from shared.broker import EmbeddedBroker
from tests.fleetutil import cloud_cfg, wait_for
from tests.simdevice import SimDevice


def test_serve_runs_ingest_and_health_checks(tmp_path: Path, broker: EmbeddedBroker) -> None:
    cfg = cloud_cfg(tmp_path, broker, analysis={"health_interval_s": 0.3})
    srv = CloudServer(cfg, only=["fleet-ingest", "analysis"])
    srv.start()
    dev = SimDevice("127.0.0.1", broker.port, device="box1").connect()
    try:
        assert srv.components["fleet-ingest"].wait_connected(10)  # type: ignore[attr-defined]
        dev.predict(20)
        dev.telemetry(temperatures={"cpu": 95.0})
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 20, what="stored")
        wait_for(lambda: store.device("box1").health == "critical", what="overheating seen by the scheduler")
        reasons = store.device("box1").health_reasons
        assert reasons and "°C" in reasons[0]
    finally:
        dev.disconnect()
        srv.stop()


def test_serve_prints_a_banner_with_components_and_the_dashboard_url(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """`cloud serve` printed nothing: an installer could not tell what runs or where the dashboard is."""
    import os
    import signal
    import subprocess
    import sys

    from shared.broker import free_port

    port = free_port()
    cfg = cloud_cfg(tmp_path, broker)
    toml = tmp_path / "cloud.toml"
    toml.write_text(
        f'data_dir = "{cfg.data_dir}"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[fleet]\nclient_id = "{cfg.fleet.client_id}"\n[dashboard]\nport = {port}\n'
        'session_secret = { env = "PW_SESSION" }\n'
    )
    env = {**os.environ, "PW_SESSION": "s" * 48}
    exe = Path(sys.executable).parent / "parkwatch"
    proc = subprocess.Popen(
        [str(exe), "cloud", "serve", "--config", str(toml)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("stop with Ctrl-C"):
                break
        text = "".join(lines)
        assert "parkwatch cloud serve: data in" in text, text
        for name in ("fleet-ingest", "release", "analysis", "dashboard"):
            assert f"  {name}" in text, text
        assert f"dashboard at http://127.0.0.1:{port}/" in text
        assert "run 'parkwatch cloud keys init'" in text  # no repository yet: says what to do
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_banner_names_the_ingest_client_id_when_none_is_configured(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """`cloud init`'s config sets no fleet.client_id: the banner printed "as None" instead of the
    per-install id the ingest really connects with."""
    cfg = cloud_cfg(tmp_path, broker)
    cfg = cfg.model_copy(update={"fleet": cfg.fleet.model_copy(update={"client_id": None})})
    text = CloudServer(cfg, only=["fleet-ingest"]).banner()
    assert "as None" not in text, text
    assert f"as {cfg.client_id('ingest')}," in text, text
    assert cfg.client_id("ingest").startswith("parkwatch-cloud-ingest-")
