"""Group membership comes from provisioning, never from what a device says about itself.

Against the real release service (its MQTT subscriptions, release.db, the signed TUF rollout
metadata) and a real Mosquitto. Before the fix, ``members(group)`` added every device that
*claimed* the group in its model-state messages: one forged self-test failure from a staging box
rolled production back (audited as an automatic rollback), and a fake member kept a rollout from
ever succeeding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.config import CloudConfig
from cloud.governance.actions import rollback_groups
from cloud.release.server import ReleaseService
from cloud.release.store import read_membership
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, ModelState
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.fleetutil import alert_record
from tests.release_support import cloud_config, make_version, mqtt_cfg, register, wait_for
from tests.simdevice import SimDevice


@pytest.fixture
def production(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> Iterator[tuple[ReleaseService, CloudConfig]]:
    """Production runs 2.0.0 (rolled out over 1.0.0); prod1 is in production, stg1 in staging."""
    cfg = cloud_config(
        tmp_path / "cloud",
        mqtt_cfg(broker.port, client_id="release-membership"),
        require_staging_before_production=False,
        watch_window_s=3600.0,
    )
    svc = ReleaseService(cfg)
    svc.start()
    assert svc.wait_connected()
    ch = svc.channel
    assert ch is not None
    try:
        ch.keys_init("tester", allow_approver_key_on_server=True)  # a test install
        for v in ("1.0.0", "2.0.0"):
            register(cfg, make_version(baseline_package, tmp_path / "pkgs", v), v)
            ch.approve(v, "production", "qa-anna", "tested")
        secrets = tmp_path / "secrets"
        ch.provision_device("park1", "prod1", "production", secrets / "prod1", "ops")
        ch.provision_device("park1", "stg1", "staging", secrets / "stg1", "ops")
        ch.rollout("1.0.0", "production", "eng-bob", "initial")
        ch.rollout("2.0.0", "production", "eng-bob", "new model")
        yield svc, cfg
    finally:
        svc.stop()


def _say(broker: EmbeddedBroker, device: str, claimed_group: str, state: str, reason: str | None) -> None:
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device=device, group=claimed_group)
    dev.connect(status=False)
    try:
        dev.publish(
            Kind.MODEL_STATE,
            ModelState(
                device=device,
                site="park1",
                group=claimed_group,
                state=state,
                version="2.0.0",
                active_version="2.0.0" if state == "active" else "1.0.0",
                reason=reason,
            ),
            retain=True,
        )
        dev.flush()
    finally:
        dev.client.disconnect()
        dev.client.loop_stop()


def _recorded(svc: ReleaseService, device: str, state: str) -> bool:
    assert svc.channel is not None
    with svc.channel.lock:
        rows = svc.channel.states.states()
    return any(r.device == device and r.state == state for r in rows)


def test_forged_self_test_failure_from_a_staging_box_does_not_roll_production_back(
    production: tuple[ReleaseService, CloudConfig], broker: EmbeddedBroker
) -> None:
    svc, _cfg = production
    ch = svc.channel
    assert ch is not None
    _say(broker, "stg1", "production", "failed", "self-testing: forged failure")
    wait_for(lambda: _recorded(svc, "stg1", "failed"), 10, "the forged state recorded")
    with ch.lock:
        svc.tick()
    assert ch.repo.groups()["production"] == "2.0.0"
    assert svc.rollbacks == []
    assert "rollback" not in [e.action for e in ch.audit_entries("group:production")]
    # The same failure from a real production member does roll it back: the rule still works.
    _say(broker, "prod1", "production", "failed", "self-testing: golden sample 3 differs")
    wait_for(lambda: _recorded(svc, "prod1", "failed"), 10, "prod1's failure recorded")
    with ch.lock:
        svc.tick()
    assert ch.repo.groups()["production"] == "1.0.0"
    assert len(svc.rollbacks) == 1


def test_a_fake_member_cannot_block_a_rollout(
    production: tuple[ReleaseService, CloudConfig], broker: EmbeddedBroker
) -> None:
    svc, _cfg = production
    ch = svc.channel
    assert ch is not None
    _say(broker, "fake1", "production", "downloading", None)  # never provisioned
    _say(broker, "stg1", "production", "downloading", None)  # provisioned, but in staging
    _say(broker, "prod1", "production", "active", None)
    wait_for(
        lambda: _recorded(svc, "prod1", "active") and _recorded(svc, "fake1", "downloading"), 10, "states"
    )
    with ch.lock:
        svc.tick()
    r = ch.latest_rollout("production")
    assert r is not None and r.status == "succeeded" and (r.devices_total, r.devices_active) == (1, 1)
    status = ch.status("production").groups["production"]
    assert status.devices == 1 and [d.device for d in status.device_states] == ["prod1"]
    assert ch.members("staging") == ["park1/stg1"]


def test_governance_rollback_reads_the_provisioned_group(
    production: tuple[ReleaseService, CloudConfig], broker: EmbeddedBroker
) -> None:
    _svc, cfg = production
    assert read_membership(cfg.paths) == {"park1/prod1": "production", "park1/stg1": "staging"}
    alert = alert_record(id="a1", site="park1", device="stg1")
    assert rollback_groups(cfg, alert) == ["staging"]  # whatever stg1 claims
    assert rollback_groups(cfg, dataclasses.replace(alert, device="fake1")) == []
