"""install-cloud.sh for real: a fresh Debian host (a booted container, tests/nspawn.py) with systemd.

Here it installs Mosquitto's config and the cloud venv, makes the cloud's broker account, and
starts mosquitto and parkwatch-cloud under systemd, making no release keys while it does not know
where the approver's folder is; the checks (tests/container_checks/cloud_boot1.py) then see the
dashboard answer, the cloud logged in to a broker that refuses anonymous clients, a box's
credentials made, the printed instruction followed (PARKWATCH_APPROVER_KEYS_DIR: the approver key
only on the "disk", trusted by root), a re-run without the disk that keeps every secret, and
after a reboot both services back by themselves.

The container's venv is cached between runs (tests/nspawn.py save_venv/restore_venv, keyed by
the dependency lists): a cold run installs ~5 GB of torch, a warm one only parkwatch itself.

Ports are moved off the defaults (the container shares the host's network, and other tests or
a real broker may hold 1883/8000 there) through the script's PARKWATCH_*_PORT variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.broker import free_port
from tests.nspawn import Container, copy_checkout, fresh_container, restore_venv, save_venv, venv_key

REPO = Path(__file__).resolve().parent.parent
MAX_EXPOSURE = 3.0
VENV = "/opt/parkwatch/cloud-venv"


@pytest.fixture
def booted_rootfs(tmp_path: Path) -> Iterator[Container]:
    with fresh_container(tmp_path) as c:
        yield c


@pytest.mark.slow
@pytest.mark.timeout(2400)  # cold: pip puts ~5 GB of torch into the container (10+ min loaded)
def test_install_cloud_starts_its_units_under_systemd(booted_rootfs: Container) -> None:
    c = booted_rootfs
    copy_checkout(REPO, c.path("/src/parkwatch"))
    # The third-party part of the venv from an earlier run with the same dependency lists: the
    # script then finds the venv and pip only re-installs parkwatch (checked: installed_matches).
    key = venv_key(REPO)
    warm = restore_venv("cloud-venv", key, c.path(VENV))
    ports = {"mqtt_port": free_port(), "tls_port": free_port(), "dashboard_port": free_port()}
    c.install_checks(ports)
    c.enable_oneshot("cloud_boot1", then="reboot")
    rc, log, r = c.boot("cloud_boot1", timeout=1500)
    assert r.get("install_rc") == 0, r.get("install_out", log) + r.get("journal", "")
    if not warm:
        save_venv("cloud-venv", key, c.path(VENV))
    assert r["installed_matches"] == [], f"venv code differs from the checkout: {r['installed_matches']}"
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
    # Not told where the approver's folder is: no keys at all, and the exact command to run.
    assert "release channel NOT set up" in r["install_out"], r["install_out"]
    assert "PARKWATCH_APPROVER_KEYS_DIR=" in r["install_out"], r["install_out"]
    assert r["first_keys"] == [] and not r["first_root"], r["first_keys"]
    assert r["device_add_rc"] == 0, r["device_add_out"]
    # The operator follows it with the approver's disk mounted: online keys on the server, the
    # approver's key only on the disk, and the root trusts that key for approvals.
    assert r["approver_rc"] == 0, r["approver_out"]
    assert r["approver_config"], r["approver_out"]
    assert r["approver_disk_keys"] and all(k.startswith("approver-") for k in r["approver_disk_keys"])
    assert r["server_keys"] and not any(k.startswith("approver") for k in r["server_keys"]), r["server_keys"]
    assert r["root_trusts_disk_key"], r["approver_out"]
    assert r["approver_kept_secret"]
    assert r["approver_healthz"], r.get("approver_journal")
    # Disk unmounted, the script re-run: everything kept, the cloud serves without the disk.
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
