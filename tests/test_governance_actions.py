"""Alert actions against the real neighbours: the release channel's rollback and a real training run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from cloud.analysis.job import open_governor
from cloud.config import CloudConfig
from cloud.fleet.feedback import label_prediction
from cloud.fleet.ingest_worker import FleetIngest
from cloud.fleet.store import FleetStore
from cloud.governance.alerts import AlertStore
from cloud.governance.rules import Finding
from cloud.registry.store import Registry
from shared.broker import EmbeddedBroker
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.fleetutil import alert_record, cloud_cfg, wait_for
from tests.release_support import Setup
from tests.simdevice import SimDevice


def test_rollback_action_goes_through_the_release_channel(tmp_path: Path, broker: EmbeddedBroker) -> None:
    cfg = cloud_cfg(tmp_path, broker, governance={"rules": {"accuracy_drop": {"actions": ["rollback"]}}})
    from cloud.release.channel import ReleaseChannel

    # The group comes from provisioning; what the box says about its group is never used.
    ch = ReleaseChannel(cfg)
    ch.provision_device("park1", "box1", "production", tmp_path / "box1.secret", "ops")
    ch.registry.close()
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10), "ingest did not connect"
    dev = SimDevice("127.0.0.1", broker.port, site="park1", device="box1", group="production").connect()
    try:
        dev.predict(5)
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 5, what="stored")
        wait_for(lambda: store.device("box1").model_version == "m1", what="model known from status")
    finally:
        dev.disconnect()
        ing.stop()
    gov = open_governor(cfg, publish=False)
    f = Finding(
        "accuracy_drop",
        "park1",
        "accuracy 80% vs baseline 97%",
        subject="m1",
        details={"model_version": "m1"},
    )
    [a] = gov.apply([f], "drift")["opened"]
    [act] = AlertStore(cfg.fleet_store).get(a.id).actions
    # Nothing was ever rolled out to this group, so the release channel itself refuses, with its reason.
    assert act["action"] == "rollback" and act["ok"] is False
    assert "production" in act["error"] and "roll back" in act["error"]
    entries = [e.action for e in Registry(cfg.paths.registry_db).audit.entries(subject=f"alert:{a.id}")]
    assert entries == ["alert.open", "alert.action.rollback"]


def test_rollback_action_rolls_the_alerted_group_back_and_the_box_follows(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    s = Setup(tmp_path, broker, baseline_package)  # staging runs 1.0.0; 2.0.0 approved; one real updater
    data = s.cfg.model_dump()
    data["fleet"]["client_id"] = f"ingest-{tmp_path.name}"[:60]
    data["governance"] = {"rules": {"accuracy_drop": {"actions": ["rollback"]}}}
    cfg = CloudConfig.model_validate(data)
    ing = FleetIngest(cfg)
    ing.start()
    try:
        assert ing.wait_connected(10)
        s.ch.rollout("2.0.0", "staging", "eng-bob", "new model")
        assert s.updater.check_once() == "active"
        store = FleetStore(cfg.fleet_store)
        # The group is not configured in governance: the action takes box1's provisioned group.
        wait_for(
            lambda: (d := store.devices()) and d[0].model_version == "2.0.0",
            what="box1 known in group staging on 2.0.0",
        )
        site = store.devices()[0].site
        f = Finding(
            "accuracy_drop",
            site,
            "accuracy 71% on operator labels vs 97% on the test set",
            subject="2.0.0",
            details={"model_version": "2.0.0"},
        )
        [a] = open_governor(cfg, publish=False).apply([f], "drift")["opened"]
        [act] = AlertStore(cfg.fleet_store).get(a.id).actions
        assert act["action"] == "rollback" and act["ok"] is True, act
        assert s.ch.repo.groups()["staging"] == "1.0.0"
        r = s.ch.latest_rollout("staging")
        assert r is not None and r.version == "1.0.0"
        assert s.updater.check_once() == "active"  # the real updater installs the rolled-back version
        assert s.host.model_slot.current is not None and s.host.model_slot.current.version == "1.0.0"
        entries = [e.action for e in Registry(cfg.paths.registry_db).audit.entries(subject=f"alert:{a.id}")]
        assert entries == ["alert.open", "alert.action.rollback"]
    finally:
        ing.stop()
        s.close()


def _lake(src: Path, dst: Path, per_label: int, skip: int = 0) -> list[Path]:
    out = []
    for label in ("cat", "dog"):
        (dst / label).mkdir(parents=True, exist_ok=True)
        for p in sorted((src / label).glob("*.jpg"))[skip : skip + per_label]:
            (dst / label / p.name).symlink_to(p)
            out.append(p)
    return out


@pytest.mark.slow
def test_retrain_action_trains_a_candidate_on_the_newest_dataset_plus_labelled_frames(
    tmp_path: Path, broker: EmbeddedBroker, pets_sample: Path
) -> None:
    cfg = cloud_cfg(
        tmp_path,
        broker,
        governance={
            "rules": {"accuracy_drop": {"actions": ["retrain"]}},
            "retrain_command": [
                str(Path(shutil.which("parkwatch") or ".venv/bin/parkwatch").resolve()),
                "cloud",
                "train",
                "--no-progress",
            ],
        },
        train={
            "trials": 1,
            "augment_copies": 0,
            "space": {"lr": [0.01], "weight_decay": [0.0], "epochs": [10], "label_smoothing": [0.0]},
        },
    )
    from cloud.data.ingest import ingest

    _lake(pets_sample, tmp_path / "lake", per_label=25)
    with Registry(cfg.paths.registry_db) as reg:
        base = ingest(
            tmp_path / "lake", reg, cfg.paths.datasets_dir, cfg.ingest, show_progress=False
        ).dataset_version
    # Six snapshots reached the cloud and were labelled by an operator.
    snap_dir = cfg.data_dir / "snapshots"
    snap_dir.mkdir(parents=True)
    ing = FleetIngest(cfg)
    ing.start()
    assert ing.wait_connected(10), "ingest did not connect"
    dev = SimDevice("127.0.0.1", broker.port, device="box1").connect()
    try:
        preds = dev.make_predictions(6)
        extra = {
            "cat": sorted((pets_sample / "cat").glob("*.jpg"))[100:103],
            "dog": sorted((pets_sample / "dog").glob("*.jpg"))[100:103],
        }
        truth = []
        for p, (label, img) in zip(preds, [(lab, f) for lab, fs in extra.items() for f in fs], strict=True):
            p.snapshot = f"box1-snap-{p.seq}"
            shutil.copyfile(img, snap_dir / f"{p.snapshot}.jpg")
            truth.append((p.snapshot, label))
        dev.send(preds)
        dev.flush()
        store = FleetStore(cfg.fleet_store)
        wait_for(lambda: store.prediction_count() == 6, what="stored")
    finally:
        dev.disconnect()
        ing.stop()
    for snap, label in truth:
        label_prediction(store, label, "qa", snapshot=snap)

    gov = open_governor(cfg, publish=False)
    f = Finding("accuracy_drop", "park1", "accuracy 80% vs baseline 97%", subject="m1")
    [a] = gov.apply([f], "drift")["opened"]
    [act] = AlertStore(cfg.fleet_store).get(a.id).actions
    assert act["ok"] is True, act
    assert act["base_dataset"] == base and act["dataset"] != base and act["feedback_frames"] == 6

    def registered() -> list[str]:
        with Registry(cfg.paths.registry_db) as reg:
            return [m.version for m in reg.list_models() if m.dataset_id == act["dataset"]]

    deadline = time.monotonic() + 900
    while not registered() and time.monotonic() < deadline:
        time.sleep(2)
    log = Path(act["log"]).read_text()
    assert registered(), f"no model registered; training log:\n{log[-3000:]}"
    with Registry(cfg.paths.registry_db) as reg:
        m = reg.get_model(registered()[0])
        files = reg.dataset_files(act["dataset"])
        base_files = reg.dataset_files(base)
    assert m.stage == "candidate"  # never promoted automatically
    assert sum("feedback-" in f.path for f in files) == 6 and len(files) == len(base_files) + 6
    # The split rule keeps every old file on its side.
    old_side = {f.sha256: f.split for f in base_files}
    assert all(old_side[f.sha256] == f.split for f in files if f.sha256 in old_side)
    # A second alert inside the cooldown does not start another run.
    [b] = gov.apply([Finding("accuracy_drop", "park2", "again", subject="m1")], "drift")["opened"]
    [act2] = AlertStore(cfg.fleet_store).get(b.id).actions
    assert act2["ok"] is False and "cooldown" in act2["error"]


def test_retrain_without_a_dataset_version_says_what_to_do_and_leaves_nothing(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    from cloud.governance import actions
    from cloud.governance.errors import ActionUnavailable

    cfg = cloud_cfg(tmp_path, broker)
    Registry(cfg.paths.registry_db).close()
    with pytest.raises(ActionUnavailable, match="cloud ingest LAKE"):
        actions.retrain(cfg, alert_record(id="a1"), "parkwatch-analysis")
    assert not (cfg.data_dir / "retrain").exists()


def test_two_analyses_in_one_second_keep_both_reports(tmp_path: Path, broker: EmbeddedBroker) -> None:
    from cloud.analysis.job import run_analysis

    cfg = cloud_cfg(tmp_path, broker)
    now = time.time()
    with FleetStore(cfg.fleet_store) as fs:
        a = run_analysis(cfg, fs, None, now=now)
        b = run_analysis(cfg, fs, None, now=now + 0.2)
    assert a["run_id"] != b["run_id"]
    assert len(list(cfg.paths.reports_dir.glob("analysis-2*.json"))) == 2
