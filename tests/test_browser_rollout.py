"""Approve a model and roll it out from the browser; real edge updaters take it and the rollouts
page, refreshing itself, reaches N/N. Real broker, real ReleaseService, real TUF, real ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud.registry.audit import AuditLog
from cloud.registry.store import Registry
from cloud.release.server import ReleaseService
from edge.updater.runner import UpdaterService
from shared.broker import EmbeddedBroker
from tests.browserutil import chromium, live_dashboard, page_for, shot, sign_in  # noqa: F401
from tests.dashutil import make_cfg, seed_users
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import (
    EdgeHost,
    edge_config,
    initial_model,
    make_version,
    mqtt_cfg,
    register,
    version_of,
    wait_for,
)

pytestmark = pytest.mark.browser
N = 2


def test_approve_then_rollout_reaches_n_of_n(
    chromium: Any,  # noqa: F811
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    cfg = make_cfg(
        tmp_path,
        mqtt={"host": "127.0.0.1", "port": broker.port, "client_id": "release-dash"},
        release={"refresh_check_s": 0.5},
        dashboard={"refresh_s": 1.0},
    )
    seed_users(cfg)
    svc = ReleaseService(cfg)
    svc.start()
    hosts: list[EdgeHost] = []
    updaters: list[UpdaterService] = []
    try:
        assert svc.wait_connected(), "release service did not connect"
        ch = svc.channel
        assert ch is not None
        ch.keys_init("setup", allow_approver_key_on_server=True)
        v1 = make_version(baseline_package, tmp_path / "pkgs", "1.0.0")
        v2 = make_version(baseline_package, tmp_path / "pkgs", "2.0.0")
        register(cfg, v1, "1.0.0")
        register(cfg, v2, "2.0.0")
        ch.approve("1.0.0", "staging", "qa-anna", "first model")
        for i in range(N):  # like a real box: its group comes from provisioning, once
            ch.provision_device("park1", f"box{i}", "staging", tmp_path / f"box{i}.secret", "ops")
        ch.rollout("1.0.0", "staging", "eng-bob", "first model")
        root = tmp_path / "trusted-root.json"
        root.write_bytes(ch.repo.trusted_root_bytes())
        for i in range(N):  # provisioned once above: the group membership the rollout counts
            ecfg = edge_config(tmp_path / f"edge{i}", mqtt_cfg(broker.port), root, f"box{i}", group="staging")
            hosts.append(EdgeHost(ecfg, initial_model(v1)).start())
            updaters.append(UpdaterService(hosts[-1]).start())
        wait_for(lambda: ch.status("staging").groups["staging"].active == N, 60, "boxes on 1.0.0")

        with live_dashboard(cfg) as base:
            with page_for(chromium) as page:
                sign_in(page, base, "approver")
                page.get_by_role("link", name="Models").click()
                page.get_by_role("link", name="2.0.0").click()
                page.get_by_label("Stage to approve for").select_option("staging")
                page.get_by_label("Reason (recorded in the audit log)").fill("passed the bench test set")
                shot(page, "12-approve-form")
                page.get_by_role("button", name="Approve").click()
                page.wait_for_selector("p.flash:has-text('Approved 2.0.0 for staging')")
                assert "passed the bench test set" in page.inner_text("main")  # stage history
            assert Registry(cfg.paths.registry_db).get_model("2.0.0").stage == "staging"

            with page_for(chromium) as page:
                sign_in(page, base, "engineer")
                page.goto(base + "/rollouts")
                ratio = page.locator('tr[data-group="staging"] .ratio')
                assert ratio.inner_text() == f"{N}/{N}"  # 1.0.0 everywhere
                page.get_by_label("Approved version").select_option("2.0.0")
                page.get_by_label("Device group").first.select_option("staging")  # the known groups
                page.get_by_role("button", name="Start rollout").click()
                page.wait_for_selector("p.flash:has-text('Rollout of 2.0.0 to group staging started')")
                # the page refreshes itself; the updaters download, verify, self-test, swap
                page.wait_for_function(
                    "n => { const r = document.querySelector('tr[data-group=\"staging\"]');"
                    " return r && r.innerText.includes('2.0.0')"
                    " && r.querySelector('.ratio').innerText === n }",
                    arg=f"{N}/{N}",
                    timeout=90_000,
                )
                shot(page, "13-rollout-complete")
        assert all(version_of(h.model_slot.current) == "2.0.0" for h in hosts)
        actions = [(e.actor, e.action) for e in AuditLog(cfg.paths.registry_db).entries()]
        assert ("approver", "approve") in actions and ("engineer", "rollout") in actions
    finally:
        for u in updaters:
            u.stop()
        for h in hosts:
            h.stop()
        svc.stop()
