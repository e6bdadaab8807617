"""The actions a rule may take besides notifying: roll a group back, start a retraining run.

Both call the owning domain's own service function (the same one its CLI command uses), so an
automatic action obeys every rule a person would: a rollback goes through the release channel's
signed metadata; a retraining run registers a *candidate* that waits for QA approval like any
other and is never promoted here.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from cloud.config import CloudConfig, to_toml
from cloud.governance.errors import ActionUnavailable
from cloud.governance.records import StoredAlert
from cloud.release.channel import ReleaseChannel

log = logging.getLogger("parkwatch.cloud.governance")


def rollback_groups(cfg: CloudConfig, alert: StoredAlert) -> list[str]:
    """Which device groups an alert is about: configured, or the provisioned groups of the alerted
    devices (``devices add``), never the group a device names in its own messages."""
    if cfg.governance.rollback_group:
        return [cfg.governance.rollback_group]
    from cloud.fleet.store import FleetStore
    from cloud.release.store import read_membership

    members = read_membership(cfg.paths)
    with FleetStore(cfg.fleet_store) as fs:
        running = {d.device: d.model_version for d in fs.devices(site=alert.site)}
    model = alert.details.get("model_version")
    groups = set()
    for key, group in members.items():
        site, device = key.split("/", 1)
        if site != alert.site or (alert.device is not None and device != alert.device):
            continue
        if model is not None and running.get(device) != model:
            continue
        groups.add(group)
    return sorted(groups)


def rollback(cfg: CloudConfig, alert: StoredAlert, actor: str) -> dict[str, Any]:
    """Roll the alerted devices' group(s) back to their previous version through the release channel."""
    groups = rollback_groups(cfg, alert)
    if not groups:
        raise ActionUnavailable(
            f"alert {alert.id}: no device group known for site {alert.site}; set "
            "governance.rollback_group, or provision the devices ('parkwatch cloud devices add')"
        )
    channel = ReleaseChannel(cfg)
    reason = f"alert {alert.id} ({alert.rule}): {alert.message}"
    try:
        results = [channel.rollback(g, actor, reason, automatic=True) for g in groups]
    finally:
        channel.close()
    return {"action": "rollback", "groups": groups, "results": [r.to_dict() for r in results]}


def feedback_frames(cfg: CloudConfig, labels: list[str]) -> list[tuple[Path, str]]:
    """Labelled snapshots whose image reached the cloud (``<snapshots_dir>/<id>.*``), as (file, label)."""
    from cloud.fleet.store import FleetStore
    from shared.protocol.bounds import SNAPSHOT_ID

    snap_dir = cfg.paths.snapshots_dir
    out = []
    with FleetStore(cfg.fleet_store) as fs:
        for fb in fs.feedback():
            if fb.label not in labels or not fb.snapshot:
                continue
            # The id came from a device: it names one file, never a pattern or a path (an id
            # like '../registry' used to be globbed here). Ingest stores '<id>.jpg' only.
            if not SNAPSHOT_ID.match(fb.snapshot):
                log.warning(
                    "feedback names snapshot %r, which is not a snapshot id; skipped", fb.snapshot[:80]
                )
                continue
            path = snap_dir / f"{fb.snapshot}.jpg"
            if path.is_file() and path.resolve().parent == snap_dir.resolve():
                out.append((path, fb.label))
    return out


def retrain(cfg: CloudConfig, alert: StoredAlert, actor: str, wait: bool = False) -> dict[str, Any]:
    """Start ``parkwatch cloud train`` on the newest dataset plus the feedback-labelled frames.

    When labelled frames exist, a new dataset version is ingested first: the newest version's
    files and the frames, linked into one lake folder, so the split rule keeps every old file on
    its side. Training runs as its own process (minutes to hours); its log and exit status sit
    in ``<data_dir>/retrain/<stamp>/``.
    """
    from cloud.registry.store import Registry

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{alert.id}"
    work = cfg.paths.retrain_dir / stamp
    with Registry(cfg.paths.registry_db) as reg:
        datasets = reg.list_datasets()
        if not datasets:
            raise ActionUnavailable(
                "retraining needs a dataset version: run `parkwatch cloud ingest LAKE` first"
            )
        base = datasets[0]
        work.mkdir(parents=True, exist_ok=True)  # only once there is something to train
        frames = feedback_frames(cfg, base.labels)
        dataset_id = base.id
        if frames:
            from cloud.data.ingest import ingest

            lake = work / "lake"
            for f in reg.dataset_files(base.id):
                dst = lake / f.label / f"{f.sha256[:16]}{Path(f.path).suffix}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(Path(base.source) / f.path, dst)
            for src, label in frames:
                dst = lake / label / f"feedback-{src.name}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            dataset_id = ingest(
                lake, reg, cfg.paths.datasets_dir, cfg.ingest, show_progress=False
            ).dataset_version
    conf = work / "cloud.toml"
    conf.write_text(to_toml(cfg))
    cmd = [*cfg.governance.retrain_command, "--dataset", dataset_id, "--json", "--config", str(conf)]
    log_path = work / "train.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    result: dict[str, Any] = {
        "action": "retrain",
        "dataset": dataset_id,
        "base_dataset": base.id,
        "feedback_frames": len(frames),
        "command": cmd,
        "pid": proc.pid,
        "log": str(log_path),
        "note": "the new version is registered as a candidate "
        "and waits for approval; nothing is promoted automatically",
    }
    if wait:
        result["returncode"] = proc.wait()
    return result
