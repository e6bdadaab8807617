"""The audit log as the release channel uses it: every action chained, removal detected."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from cloud.cli import cloud
from cloud.release.channel import ReleaseChannel
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
    conn = sqlite3.connect(cfg.paths.registry_db)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit_log WHERE action = 'cloud-account'")
    conn.commit()
    conn.close()
    res = CliRunner().invoke(cloud, ["audit", "verify", "--json", "--config", toml])
    assert res.exit_code == 1 and '"first_bad_id": 3' in res.output


def test_deleting_the_newest_entries_is_caught_by_the_signed_checkpoint(tmp_path: Path) -> None:
    """What is left after cutting the newest entries is still a valid chain; the checkpoint
    (signed with the online timestamp key, kept in the release repository) is what catches it."""
    import json

    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1))
    ch = ReleaseChannel(cfg, notify=lambda *a: True)
    ch.keys_init("ops", allow_approver_key_on_server=True)
    for i in range(4):
        ch.provision_device("park1", f"box{i}", "staging", tmp_path / f"b{i}.secret", "ops")
    cp = json.loads((cfg.paths.repo_dir / "audit-checkpoint.json").read_text())
    assert cp["signed"]["entries"] == 5 and cp["signed"]["head_id"] == 5
    ch.registry.close()
    toml = str(write_cloud_toml(cfg, tmp_path / "cloud.toml"))
    res = CliRunner().invoke(cloud, ["audit", "verify", "--config", toml])
    assert res.exit_code == 0 and "head matches the checkpoint signed at" in res.output, res.output
    conn = sqlite3.connect(cfg.paths.registry_db)
    conn.execute("DROP TRIGGER audit_no_delete")
    conn.execute("DELETE FROM audit_log WHERE id > 2")
    conn.commit()
    conn.close()
    res = CliRunner().invoke(cloud, ["audit", "verify", "--json", "--config", toml])
    out = json.loads(res.stdout)
    assert res.exit_code == 1 and out["entries"] == 2 and out["reason"] is None  # the chain itself is fine
    assert out["anchor"]["status"] == "mismatch" and "newest 3 entries are missing" in out["anchor"]["reason"]
    # a forged checkpoint (the head moved back to match) does not verify
    path = cfg.paths.repo_dir / "audit-checkpoint.json"
    doc = json.loads(path.read_text())
    doc["signed"].update(entries=2, head_id=2)
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(cloud, ["audit", "verify", "--config", toml])
    assert res.exit_code == 1 and "signature does not match its content" in res.stderr
    path.unlink()
    res = CliRunner().invoke(cloud, ["audit", "verify", "--config", toml])
    assert res.exit_code == 1 and "no signed checkpoint" in res.stderr
