"""install-cloud.sh for real: a fresh Debian host (a booted container, tests/nspawn.py) with systemd.

The script had never been run. Here it installs Mosquitto's config and the cloud venv, makes
the keys and the cloud's broker account, and starts mosquitto and parkwatch-cloud under
systemd; the checks (tests/container_checks/cloud_boot1.py) then see the dashboard answer, the
cloud logged in to a broker that refuses anonymous clients, a box's credentials made, a re-run
that keeps every secret, and after a reboot both services back by themselves.

Ports are moved off the defaults (the container shares the host's network, and other tests or
a real broker may hold 1883/8000 there) through the script's PARKWATCH_*_PORT variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.broker import free_port
from tests.nspawn import Container, copy_checkout, fresh_container

REPO = Path(__file__).resolve().parent.parent
MAX_EXPOSURE = 3.0


@pytest.fixture
def booted_rootfs(tmp_path: Path) -> Iterator[Container]:
    with fresh_container(tmp_path) as c:
        yield c


@pytest.mark.slow
@pytest.mark.timeout(2400)  # pip puts ~5 GB of torch into the container: 8-9 min on a loaded machine
def test_install_cloud_starts_its_units_under_systemd(booted_rootfs: Container) -> None:
    c = booted_rootfs
    copy_checkout(REPO, c.path("/src/parkwatch"))
    ports = {"mqtt_port": free_port(), "tls_port": free_port(), "dashboard_port": free_port()}
    c.install_checks(ports)
    c.enable_oneshot("cloud_boot1", then="reboot")
    rc, log, r = c.boot("cloud_boot1", timeout=1500)
    assert r.get("install_rc") == 0, r.get("install_out", log) + r.get("journal", "")
    assert "error" not in r and rc == 0, log
    assert r["first_healthz"], r.get("first_journal")
    for unit, s in r["first_units"].items():
        assert s["ActiveState"] == "active" and s["UnitFileState"] == "enabled", (unit, s)
    # Mosquitto reads the tuning (queues sized so nothing is dropped silently) beside the site file.
    assert r["mosquitto_conf_d"] == ["parkwatch-tuning.conf", "parkwatch.conf"]
    assert "/etc/mosquitto/conf.d/parkwatch-tuning.conf" in r["mosquitto_loaded"], r["mosquitto_loaded"]
    assert r["cloud_logged_in"], "the cloud never logged in to the broker with its account"
    assert "Not authorized" in r["anonymous_connect"], r["anonymous_connect"]
    assert "TLS listener" in r["install_out"]  # no certificates yet: said, not a broker that fails
    assert r["device_add_rc"] == 0, r["device_add_out"]
    assert r["rerun_rc"] == 0 and "kept existing" in r["rerun_out"], r["rerun_out"]
    assert r["rerun_kept_secret"] and r["rerun_kept_root"]
    assert r["rerun_healthz"], r.get("rerun_journal")
    print(f"systemd-analyze security parkwatch-cloud.service: {r['exposure']}")
    assert r["exposure"] is not None and r["exposure"] <= MAX_EXPOSURE, r["security"]

    c.enable_oneshot("cloud_boot2", then="poweroff")
    rc, log, r2 = c.boot("cloud_boot2", timeout=600)
    assert "error" not in r2 and rc == 0, log
    assert r2["boot_healthz"], r2.get("boot_journal")
    for unit, s in r2["boot_units"].items():
        assert s["ActiveState"] == "active", (unit, s)
