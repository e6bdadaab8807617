"""The audit log as the release channel uses it: every action chained, removal detected."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from cloud.cli import cloud
from cloud.release.service import ReleaseChannel
from tests.release_support import cloud_config, mqtt_cfg, write_cloud_toml


def test_release_actions_are_chained_and_a_removed_entry_is_detected(tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1))
    ch = ReleaseChannel(cfg, notify=lambda *a: True)
    ch.keys_init("ops", allow_approver_key_on_server=True)
    ch.cloud_account(tmp_path / "c.secret", "ops")
    ch.provision_device("park1", "box1", "staging", tmp_path / "b.secret", "ops")
    ch.keys_rotate("timestamp", "ops", "drill")
    entries = ch.audit_entries()
    assert [e.action for e in entries] == ["keys-init", "cloud-account", "device-provision", "keys-rotate"]
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    ch.registry.close()
    toml = str(write_cloud_toml(cfg, tmp_path / "cloud.toml"))
    res = CliRunner().invoke(cloud, ["audit", "verify", "--config", toml])
    assert res.exit_code == 0 and "4 entries" in res.output
    conn = sqlite3.connect(cfg.registry_db)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit_log WHERE action = 'cloud-account'")
    conn.commit()
    conn.close()
    res = CliRunner().invoke(cloud, ["audit", "verify", "--json", "--config", toml])
    assert res.exit_code == 1 and '"first_bad_id": 3' in res.output
