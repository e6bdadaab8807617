"""The cloud config tree, loaded from ``/etc/parkwatch/cloud.toml`` (or ``--config``).

Each domain owns its section model in its own package; this module only composes them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from cloud.analysis.config import AnalysisConfig
from cloud.dashboard.config import DashboardConfig
from cloud.data.config import IngestConfig
from cloud.evaluation.config import EvaluationConfig, GateConfig
from cloud.fleet.config import FleetConfig
from cloud.governance.config import GovernanceConfig
from cloud.release.config import ReleaseConfig
from cloud.training.config import TrainConfig
from shared.config import MqttConfig, Section, load_config

DEFAULT_PATH = Path("/etc/parkwatch/cloud.toml")


class CloudConfig(Section):
    data_dir: Path = Path("/var/lib/parkwatch-cloud")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    release: ReleaseConfig = Field(default_factory=ReleaseConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    governance: GovernanceConfig = Field(default_factory=GovernanceConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)

    @property
    def registry_db(self) -> Path:
        return self.data_dir / "registry.db"

    @property
    def fleet_db(self) -> Path:
        return self.data_dir / "fleet.db"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def keys_dir(self) -> Path:
        return self.release.keys_dir or self.data_dir / "keys"

    @property
    def repo_dir(self) -> Path:
        return self.data_dir / "tuf-repo"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"


def load(path: str | Path = DEFAULT_PATH) -> CloudConfig:
    return load_config(CloudConfig, path)
