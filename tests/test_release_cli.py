"""The secure-delivery commands end to end through the CLI (no broker: notices are best effort)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cloud.cli import cloud
from shared.broker import free_port
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import cloud_config, make_version, mqtt_cfg, register, write_cloud_toml


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cloud, list(args))
    return res.exit_code, res.output


def test_keys_devices_rollout_rollback_commands(tmp_path: Path, baseline_package: Path) -> None:  # noqa: F811
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(free_port()))  # nothing listens: notices are skipped
    toml = str(write_cloud_toml(cfg, tmp_path / "cloud.toml"))
    code, out = run("keys", "init", "--as", "ops", "--allow-approver-key-on-server", "--config", toml)
    assert code == 0 and "root.json on every box" in out
    code, out = run("keys", "init", "--config", toml)
    assert code == 1 and "refusing to overwrite" in out and "keys rotate ROLE" in out
    code, out = run("keys", "list", "--json", "--config", toml)
    assert code == 0 and set(json.loads(out)) == {
        "root",
        "approver",
        "pipeline",
        "rollout",
        "snapshot",
        "timestamp",
    }
    for v in ("1.0.0", "2.0.0"):
        register(cfg, make_version(baseline_package, tmp_path / "pkgs", v), v)
        assert (
            run("approve", v, "--stage", "staging", "--as", "qa", "--reason", "ok", "--config", toml)[0] == 0
        )
    code, out = run("rollout", "1.0.0", "--config", toml)
    assert code != 0 and "--group is required" in out
    code, out = run("rollout", "3.0.0", "--group", "staging", "--allow-empty-group", "--config", toml)
    assert code == 1 and "no model version" in out
    code, out = run("rollout", "1.0.0", "--group", "production", "--allow-empty-group", "--config", toml)
    assert code == 1 and "not approved for production" in out
    # a typo'd group (no device provisioned in it) is refused, naming the known groups
    code, out = run("rollout", "1.0.0", "--group", "stagign", "--config", toml)
    assert code == 1 and "group 'stagign' has no provisioned device" in out and "staging" in out
    code, out = run("rollout", "1.0.0", "--group", "staging", "--config", toml)
    assert code == 1 and "--allow-empty-group" in out  # no box provisioned yet
    assert run("keys", "status", "--json", "--config", toml)[1].count("stagign") == 0  # nothing signed
    code, out = run(
        "rollout", "1.0.0", "--group", "staging", "--allow-empty-group", "--json", "--config", toml
    )
    assert code == 0 and json.loads(out)["notified"] is False
    assert run("rollout", "2.0.0", "--group", "staging", "--allow-empty-group", "--config", toml)[0] == 0
    code, out = run("rollback", "--group", "staging", "--reason", "bad", "--json", "--config", toml)
    assert code == 0 and json.loads(out)["version"] == "1.0.0"
    code, out = run("keys", "status", "--json", "--config", toml)
    assert code == 0 and json.loads(out)["groups"] == {"staging": "1.0.0"}
    code, out = run("devices", "cloud-account", "--secret-out", str(tmp_path / "c.secret"), "--config", toml)
    assert code == 0
    code, out = run(
        "devices",
        "add",
        "box1",
        "--site",
        "park1",
        "--group",
        "staging",
        "--secret-out",
        str(tmp_path / "b.secret"),
        "--json",
        "--config",
        toml,
    )
    assert code == 0 and Path(json.loads(out)["acl"]).read_text().count("user box1") == 1
    code, out = run(
        "devices", "add", "bad/id", "--site", "park1", "--secret-out", str(tmp_path / "x"), "--config", toml
    )
    assert code == 1 and "must be 1-64 characters" in out
    code, out = run("devices", "list", "--json", "--config", toml)
    assert code == 0 and [d["device"] for d in json.loads(out)] == ["box1"] and "pw_hash" not in out
    code, out = run("rollout", "status", "--config", toml)
    assert code == 0 and "group staging: target 1.0.0" in out and "0/1 active on the target" in out
    code, out = run("audit", "list", "--subject", "group:staging", "--json", "--config", toml)
    assert [e["action"] for e in json.loads(out)] == ["rollback", "rollout", "rollout"]


def test_a_second_rollback_goes_further_back_not_forward(tmp_path: Path, baseline_package: Path) -> None:  # noqa: F811
    from cloud.release.channel import ReleaseChannel

    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(free_port()))
    ch = ReleaseChannel(cfg, notify=lambda *a: True)
    ch.keys_init("ops", allow_approver_key_on_server=True)
    ch.provision_device("park1", "box1", "staging", tmp_path / "box1.secret", "ops")
    for v in ("1.0.0", "2.0.0", "3.0.0"):
        register(cfg, make_version(baseline_package, tmp_path / "pkgs", v), v)
        ch.approve(v, "staging", "qa", "ok")
        ch.rollout(v, "staging", "eng", "next")
    assert ch.rollback("staging", "eng", "3 is bad").version == "2.0.0"
    assert ch.rollback("staging", "eng", "2 is bad too").version == "1.0.0"
    import pytest

    from cloud.release.errors import RolloutError

    with pytest.raises(RolloutError, match="no earlier version"):
        ch.rollback("staging", "eng", "and 1?")
    assert ch.repo.groups() == {"staging": "1.0.0"}


def test_keys_status_is_text_by_default_and_json_on_request(tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(free_port()))
    toml = str(write_cloud_toml(cfg, tmp_path / "cloud.toml"))
    assert run("keys", "init", "--as", "ops", "--allow-approver-key-on-server", "--config", toml)[0] == 0
    code, out = run("keys", "status", "--config", toml)
    assert code == 0 and out.startswith("TUF repository ") and "{" not in out
    assert "  root        version 1" in out and " UTC" in out and "groups      none" in out
    code, out = run("keys", "status", "--json", "--config", toml)
    assert code == 0 and json.loads(out)["root_version"] == 1
