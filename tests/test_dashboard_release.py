"""Approvals and rollouts from the dashboard go through the release channel's service layer:
the same rules as the CLI, real TUF metadata, the real broker for release notices."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.registry.audit import AuditLog
from cloud.registry.store import Registry
from cloud.release.channel import ReleaseChannel
from shared.broker import EmbeddedBroker
from tests.dashutil import client_for, make_cfg, seed_users, sign_in
from tests.fixtures_models import baseline_package  # noqa: F401  (session fixture)
from tests.release_support import make_version, register


@pytest.fixture
def cfg(tmp_path: Path, broker: EmbeddedBroker, baseline_package: Path):  # type: ignore[no-untyped-def]  # noqa: F811
    c = make_cfg(tmp_path, mqtt={"host": "127.0.0.1", "port": broker.port})
    seed_users(c)
    ch = ReleaseChannel(c)
    ch.keys_init("test-setup", allow_approver_key_on_server=True)
    ch.provision_device("park1", "box1", "staging", tmp_path / "box1.secret", "test-setup")
    for v in ("v1", "v2"):
        register(c, make_version(baseline_package, tmp_path / "pkgs", v), v)
    return c


def test_roles_and_rules_for_approval_and_rollout(cfg) -> None:  # type: ignore[no-untyped-def]
    viewer, engineer, approver = client_for(cfg), client_for(cfg), client_for(cfg)
    tv, te, ta = sign_in(viewer, "viewer"), sign_in(engineer, "engineer"), sign_in(approver, "approver")
    form = {"decision": "approve", "stage": "staging", "reason": "passed QA"}
    assert viewer.post("/models/v1/decide", data={**form, "csrf_token": tv}).status_code == 403
    assert engineer.post("/models/v1/decide", data={**form, "csrf_token": te}).status_code == 403
    # forged form (no token) from a signed-in approver
    assert approver.post("/models/v1/decide", data=form).status_code == 403
    # a token from another session is as good as none
    assert approver.post("/models/v1/decide", data={**form, "csrf_token": te}).status_code == 403
    assert Registry(cfg.paths.registry_db).get_model("v1").stage == "candidate"

    r = approver.post("/models/v1/decide", data={**form, "csrf_token": ta})
    assert r.status_code == 200 and "Approved v1 for staging" in r.text
    assert Registry(cfg.paths.registry_db).get_model("v1").stage == "staging"
    assert ReleaseChannel(cfg).repo.approvals()["v1"] == ["staging"]  # signed into TUF
    last = AuditLog(cfg.paths.registry_db).entries(subject="model:v1")[-1]
    assert (last.actor, last.action, last.details["reason"]) == ("approver", "approve", "passed QA")
    assert "passed QA" in r.text  # stage history on the model page

    # the CLI's rule: production needs a successful staging rollout (unless forced with a reason)
    r = approver.post("/models/v1/decide", data={**form, "stage": "production", "csrf_token": ta})
    assert r.status_code == 400 and "no successful staging rollout" in r.text
    assert (
        approver.post(
            "/models/v1/decide",
            data={"decision": "approve", "stage": "staging", "reason": "", "csrf_token": ta},
        ).text.count("A reason is required")
        == 1
    )

    # rollouts: engineers only; the approver and the viewer are refused
    start = {"version": "v1", "group": "staging"}
    assert approver.post("/rollouts/start", data={**start, "csrf_token": ta}).status_code == 403
    assert viewer.post("/rollouts/start", data={**start, "csrf_token": tv}).status_code == 403
    r = engineer.post("/rollouts/start", data={**start, "version": "v2", "csrf_token": te})
    assert r.status_code == 400 and "not approved for staging" in r.text
    # a typo'd group is refused (nothing signed), and the form offers the known groups instead
    r = engineer.post("/rollouts/start", data={**start, "group": "stagign", "csrf_token": te})
    assert r.status_code == 400 and "has no provisioned device" in r.text and "stagign" in r.text
    page = engineer.get("/rollouts").text
    assert '<select id="r-group" name="group" required><option selected>staging</option></select>' in page
    r = engineer.post("/rollouts/start", data={**start, "csrf_token": te})
    assert r.status_code == 200 and "Rollout of v1 to group staging started" in r.text
    assert 'data-group="staging"' in r.text and "v1" in r.text
    rollout = AuditLog(cfg.paths.registry_db).entries(subject="group:staging")[-1]
    assert (rollout.actor, rollout.action, rollout.details["version"]) == ("engineer", "rollout", "v1")
    r = engineer.post("/rollouts/rollback", data={"group": "staging", "reason": "test", "csrf_token": te})
    assert r.status_code == 400 and "no earlier version" in r.text

    # rejecting: approvers only, reason recorded
    r = approver.post(
        "/models/v2/decide",
        data={"decision": "reject", "stage": "staging", "reason": "blurry", "csrf_token": ta},
    )
    assert r.status_code == 200 and Registry(cfg.paths.registry_db).get_model("v2").stage == "rejected"
    assert AuditLog(cfg.paths.registry_db).verify().ok
