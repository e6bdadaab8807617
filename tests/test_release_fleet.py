"""A good model reaches 20 edge updaters over an access-controlled broker; status shows 20/20.

Real updater code (``start_updater`` with each box's own MQTT connection and credentials), the
real ReleaseService with the cloud account, Mosquitto with the generated password file and ACL,
and ``parkwatch cloud rollout status --json`` through the CLI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.release.channel import ReleaseChannel
from cloud.release.server import ReleaseService
from edge.updater.runner import UpdaterService, start_updater
from shared.broker import EmbeddedBroker
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import (
    EdgeHost,
    cloud_config,
    edge_config,
    initial_model,
    make_version,
    mqtt_cfg,
    register,
    version_of,
    wait_for,
    write_cloud_toml,
)

N = 20


@pytest.mark.slow
def test_good_model_reaches_20_updaters_and_status_shows_20_of_20(
    tmp_path: Path,
    baseline_package: Path,  # noqa: F811
) -> None:
    secrets = tmp_path / "secrets"
    port_cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1))  # provisioning needs no broker
    prov = ReleaseChannel(port_cfg)
    prov.cloud_account(secrets / "cloud.secret", "ops")
    for i in range(N):
        prov.provision_device("park1", f"box{i:02d}", "staging", secrets / f"box{i:02d}.secret", "ops")
    files = prov.render_broker()
    prov.registry.close()
    broker = EmbeddedBroker(
        tmp_path / "broker",
        allow_anonymous=False,
        extra_conf=f"password_file {files['passwd']}\nacl_file {files['acl']}\n",
    )
    broker.start()
    hosts: list[EdgeHost] = []
    services: list[UpdaterService] = []
    svc = None
    try:
        cfg = cloud_config(
            tmp_path / "cloud",
            mqtt_cfg(broker.port, "parkwatch-cloud", secrets / "cloud.secret", "release-svc"),
            chunk_bytes=1024 * 1024,
        )
        svc = ReleaseService(cfg)
        svc.start()
        assert svc.wait_connected(), "the cloud account was refused by the broker"
        ch = svc.channel
        assert ch is not None
        ch.keys_init("ops", allow_approver_key_on_server=True)
        v1 = make_version(baseline_package, tmp_path / "pkgs", "1.0.0")
        v2 = make_version(baseline_package, tmp_path / "pkgs", "2.0.0")
        for v, p in (("1.0.0", v1), ("2.0.0", v2)):
            register(cfg, p, v)
            ch.approve(v, "staging", "qa-anna", "ok for staging")
        ch.rollout("1.0.0", "staging", "eng", "baseline")
        root = tmp_path / "root.json"
        root.write_bytes(ch.repo.trusted_root_bytes())
        running = initial_model(v1)
        for i in range(N):
            name = f"box{i:02d}"
            ecfg = edge_config(
                tmp_path / "edge" / name,
                mqtt_cfg(broker.port, name, secrets / f"{name}.secret"),
                root,
                name,
                chunk_bytes=1024 * 1024,
                request_timeout_s=20.0,
            )
            host = EdgeHost(ecfg, running).start()
            hosts.append(host)
            up = start_updater(host)
            assert isinstance(up, UpdaterService)
            services.append(up)
        wait_for(
            lambda: all(h.states and h.states[-1].state == "active" for h in hosts),
            60,
            "every box to confirm 1.0.0",
        )

        t0 = time.monotonic()
        ch.rollout("2.0.0", "staging", "eng", "better model")
        wait_for(
            lambda: all(version_of(h.model_slot.current) == "2.0.0" for h in hosts),
            600,
            "2.0.0 active on all 20 boxes",
        )
        elapsed = time.monotonic() - t0
        assert all(version_of(h.model_slot.previous) == "1.0.0" for h in hosts)

        toml = write_cloud_toml(cfg, tmp_path / "cloud.toml")

        def status() -> dict:
            res = CliRunner().invoke(cloud, ["rollout", "status", "--json", "--config", str(toml)])
            assert res.exit_code == 0, res.output
            return json.loads(res.output)["groups"]["staging"]

        st = wait_for(lambda: (s := status())["active"] == N and s, 30, "rollout status 20/20")
        assert st["devices"] == N and st["target_version"] == "2.0.0"
        assert st["by_version"] == {"2.0.0": N}
        wait_for(
            lambda: getattr(ch.latest_rollout("staging"), "status", None) == "succeeded",
            30,
            "rollout marked succeeded",
        )
        human = CliRunner().invoke(cloud, ["rollout", "status", "--config", str(toml)])
        assert "20/20 active" in human.output
        print(f"\n20 boxes updated in {elapsed:.1f} s")
    finally:
        for s in services:
            s.stop()
        for h in hosts:
            h.stop()
        if svc is not None:
            svc.stop()
        broker.stop()
