"""Approval rules, stage history, TUF signatures and the audit log, through the service layer and CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import cloud
from cloud.registry import approvals
from cloud.registry.errors import StageError
from cloud.release.channel import ReleaseChannel
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import cloud_config, make_version, mqtt_cfg, register, write_cloud_toml


@pytest.fixture
def ch(tmp_path: Path, baseline_package: Path) -> ReleaseChannel:  # noqa: F811
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1))
    channel = ReleaseChannel(cfg, notify=lambda *a: True)
    channel.keys_init("ops", allow_approver_key_on_server=True)
    channel.provision_device("park1", "box1", "staging", tmp_path / "box1.secret", "ops")
    for v in ("1.0.0", "2.0.0"):
        register(cfg, make_version(baseline_package, tmp_path / "pkgs", v), v)
    register(cfg, make_version(baseline_package, tmp_path / "pkgs", "0.9.0"), "0.9.0", gate_passed=False)
    return channel


def test_rules_history_signatures_and_audit(ch: ReleaseChannel) -> None:
    with pytest.raises(approvals.ApprovalError, match="reason"):
        ch.approve("1.0.0", "staging", "qa-anna", " ")
    with pytest.raises(StageError, match="promotion gate"):
        ch.approve("0.9.0", "staging", "qa-anna", "looks fine")
    ch.approve("1.0.0", "staging", "qa-anna", "staging test")
    assert ch.repo.approvals() == {"1.0.0": ["staging"]}
    with pytest.raises(approvals.ApprovalError, match="no successful staging rollout"):
        ch.approve("1.0.0", "production", "qa-anna", "ship it")
    # a staging rollout that reached every device unlocks production
    ch.rollout("1.0.0", "staging", "eng", "try")
    with pytest.raises(Exception, match="not approved for production"):
        ch.rollout("1.0.0", "production", "eng", "too early", allow_empty_group=True)
    r = ch.rollouts.latest("staging")
    assert r is not None
    ch.rollouts.set_status(r.id, "succeeded", "1/1 active")
    d = ch.approve("1.0.0", "production", "qa-anna", "staging fine for a week")
    assert d.forced is False and d.to_stage == "production"
    assert ch.repo.approvals()["1.0.0"] == ["production", "staging"]
    # forcing needs --force and is recorded as forced
    ch.approve("2.0.0", "staging", "qa-anna", "staging test")
    d = ch.approve("2.0.0", "production", "qa-anna", "hotfix for a broken camera", force=True)
    assert d.forced is True
    hist = approvals.history(ch.registry, "2.0.0")
    assert [(h.from_stage, h.to_stage, h.forced) for h in hist] == [
        ("candidate", "staging", False),
        ("staging", "production", True),
    ]
    # a version a group runs cannot be rejected; another can, and its signature is withdrawn
    with pytest.raises(approvals.ApprovalError, match="first move them"):
        ch.reject("1.0.0", "qa-anna", "bad")
    ch.reject("2.0.0", "qa-anna", "bias found in review")
    assert "2.0.0" not in ch.repo.approvals()
    assert ch.registry.get_model("2.0.0").stage == "rejected"
    actions = [e.action for e in ch.audit.entries()]
    assert actions.count("approve") == 4 and "reject" in actions and "rollout" in actions
    forced = [e for e in ch.audit.entries() if e.details.get("forced")]
    assert forced and forced[0].details["reason"] == "hotfix for a broken camera"
    assert ch.audit.verify().ok


def test_cli_approve_and_audit_verify_detects_tampering(ch: ReleaseChannel, tmp_path: Path) -> None:
    toml = write_cloud_toml(ch.cfg, tmp_path / "cloud.toml")
    run = CliRunner()
    res = run.invoke(
        cloud,
        [
            "approve",
            "1.0.0",
            "--stage",
            "staging",
            "--as",
            "qa-anna",
            "--reason",
            "ok",
            "--json",
            "--config",
            str(toml),
        ],
    )
    assert res.exit_code == 0, res.output
    res = run.invoke(
        cloud,
        [
            "approve",
            "1.0.0",
            "--stage",
            "production",
            "--as",
            "qa-anna",
            "--reason",
            "ok",
            "--config",
            str(toml),
        ],
    )
    assert res.exit_code == 1 and "staging rollout" in res.output
    res = run.invoke(cloud, ["audit", "verify", "--json", "--config", str(toml)])
    assert res.exit_code == 0, res.output
    res = run.invoke(cloud, ["audit", "list", "--json", "--config", str(toml)])
    assert res.exit_code == 0 and "approve" in res.output
    # someone edits history behind the log's back
    conn = sqlite3.connect(ch.cfg.paths.registry_db)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE action = 'approve'")
    conn.commit()
    conn.close()
    res = run.invoke(cloud, ["audit", "verify", "--json", "--config", str(toml)])
    assert res.exit_code == 1 and "edited" in res.output


def test_keys_are_private_files_outside_db_and_repo(ch: ReleaseChannel) -> None:
    keys_dir = ch.keys.keys_dir
    assert oct(keys_dir.stat().st_mode & 0o777) == "0o700"
    files = list(keys_dir.glob("*.pem"))
    assert {f.name.rsplit("-", 1)[0] for f in files} == {
        "root",
        "approver",
        "pipeline",
        "rollout",
        "snapshot",
        "timestamp",
    }
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    assert not any(ch.repo.dir in f.parents for f in files)
    assert not list(ch.repo.dir.rglob("*.pem"))
    # the approver key is not the pipeline key
    assert ch.keys.load("approver")[0].keyid != ch.keys.load("pipeline")[0].keyid
    # a key readable by others is refused
    f = ch.keys.paths("rollout")[0]
    f.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        ch.keys.load("rollout")


def test_approval_rechecks_the_gate_of_the_serving_config(ch: ReleaseChannel, tmp_path: Path) -> None:
    """The trainer's own [gate] was loose (ECE 0.062 passed there); the serving config decides."""
    from tests.release_support import PASSING_METRICS

    pkg = Path(ch.registry.get_model("1.0.0").package_dir)
    loose = {**PASSING_METRICS, "ece": 0.062}
    register(ch.cfg, pkg, "1.5.0", gate_passed=True, metrics=loose)
    register(ch.cfg, pkg, "1.6.0", gate_passed=True, metrics={})
    before = len(ch.audit.entries())
    with pytest.raises(
        approvals.ApprovalError, match=r"ECE 0\.0620 > 0\.05.*serving config|serving config.*ECE"
    ):
        ch.approve("1.5.0", "staging", "qa-anna", "looks fine")
    with pytest.raises(approvals.ApprovalError, match="evaluate the model first"):
        ch.approve("1.6.0", "staging", "qa-anna", "looks fine")
    assert ch.registry.get_model("1.5.0").stage == "candidate"
    assert len(ch.audit.entries()) == before and "1.5.0" not in ch.repo.approvals()
    d = ch.approve("1.0.0", "staging", "qa-anna", "report ok")
    entry = ch.audit.entries("model:1.0.0")[-1]
    assert d.to_stage == "staging" and entry.details["gate_at_approval"]["max_ece"] == 0.05
