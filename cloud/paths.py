"""Every file and folder the cloud keeps under ``data_dir``, derived in this one place.

Before, each domain joined ``data_dir`` with its own literal (``release.db`` in the release
channel, ``dashboard.db`` in the dashboard, ``snapshots`` in fleet *and* governance, ...), so a
moved file or a new override had to be found in several modules. ``CloudConfig.paths`` builds
one :class:`CloudPaths` from the config; code asks it, never ``data_dir / "..."``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.config import CloudConfig


@dataclass(frozen=True)
class CloudPaths:
    data_dir: Path
    registry_db: Path  # datasets, runs, model versions, approvals, audit log
    fleet_db: Path  # SQLite fleet store (unused when fleet.database_url names PostgreSQL)
    release_db: Path  # rollouts and device states (cloud serve writes, rollout status reads)
    dashboard_db: Path  # dashboard accounts (dashboard.users_db overrides)
    models_dir: Path  # packaged model versions
    datasets_dir: Path  # ingested dataset versions
    keys_dir: Path  # TUF signing keys (release.keys_dir overrides)
    repo_dir: Path  # the TUF repository the responder serves
    reports_dir: Path  # analysis and re-evaluation reports
    snapshots_dir: Path  # snapshot images for labelling (fleet.snapshots_dir overrides)
    inbox_dir: Path  # the ingest workers' durable inboxes
    broker_dir: Path  # generated broker password/ACL files (release.broker_dir overrides)
    tmp_dir: Path  # scratch space for packages being published
    retrain_dir: Path  # one folder per automatic retraining run
    feature_cache_dir: Path  # backbone features (train.feature_cache_dir overrides)

    @classmethod
    def of(cls, cfg: CloudConfig) -> CloudPaths:
        d = cfg.data_dir
        return cls(
            data_dir=d,
            registry_db=d / "registry.db",
            fleet_db=d / "fleet.db",
            release_db=d / "release.db",
            dashboard_db=cfg.dashboard.users_db or d / "dashboard.db",
            models_dir=d / "models",
            datasets_dir=d / "datasets",
            keys_dir=cfg.release.keys_dir or d / "keys",
            repo_dir=d / "tuf-repo",
            reports_dir=d / "reports",
            snapshots_dir=cfg.fleet.snapshots_dir or d / "snapshots",
            inbox_dir=d / "ingest",
            broker_dir=cfg.release.broker_dir or d / "broker",
            tmp_dir=d / "tmp",
            retrain_dir=d / "retrain",
            feature_cache_dir=cfg.train.feature_cache_dir or d / "feature-cache",
        )
