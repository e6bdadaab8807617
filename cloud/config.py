"""The cloud config tree, loaded from ``/etc/parkwatch/cloud.toml`` (or ``--config``).

Each domain owns its section model in its own package; this module only composes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import Field

from cloud.analysis.config import AnalysisConfig
from cloud.dashboard.config import DashboardConfig
from cloud.data.config import IngestConfig
from cloud.evaluation.config import EvaluationConfig, GateConfig
from cloud.fleet.backends.target import FleetTarget, PgTarget
from cloud.fleet.config import FleetConfig
from cloud.governance.config import GovernanceConfig
from cloud.paths import CloudPaths
from cloud.release.config import ReleaseConfig
from cloud.training.config import TrainConfig
from shared.config import MqttConfig, Section, load_config
from shared.errors import ConfigError

DEFAULT_PATH = Path("/etc/parkwatch/cloud.toml")

INSTALL_ID_FILE = "install-id"
_INSTALL_ID = re.compile(r"^[0-9a-f]{16,64}$")

ClientRole = Literal["ingest", "release", "alerts"]


def install_id(data_dir: Path) -> str:
    """This install's random id (``<data_dir>/install-id``), created once and kept.

    The cloud's MQTT client ids end with it, so nobody can guess them: a client that connects
    with another's id takes its persistent session (and the messages queued for it) over.
    Created with a hard link, so two processes starting at once agree on one id.
    """
    path = Path(data_dir) / INSTALL_ID_FILE
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{INSTALL_ID_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_hex(8) + "\n")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        value = path.read_text().strip()
    if not _INSTALL_ID.match(value):
        raise ValueError(
            f"{path} holds {value[:40]!r}, not an install id (16-64 hex digits); delete it to make a new "
            "one (the cloud's MQTT client ids change: retire the old ingest worker with "
            "'parkwatch cloud inbox --retire OLD_ID')"
        )
    return value


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

    def client_id(self, role: ClientRole) -> str:
        """The MQTT client id of one cloud component: configured, or unguessable per install."""
        configured = {
            "ingest": self.fleet.client_id,
            "release": self.release.client_id,
            "alerts": self.governance.publish_client_id,
        }[role]
        return configured or f"parkwatch-cloud-{role}-{install_id(self.data_dir)}"

    @property
    def paths(self) -> CloudPaths:
        """Every path under ``data_dir`` (with the config's overrides), from one place."""
        return CloudPaths.of(self)

    @property
    def fleet_store(self) -> FleetTarget:
        """The fleet store: PostgreSQL when ``fleet.database_url`` is set, else ``paths.fleet_db``."""
        if self.fleet.database_url:
            return PgTarget(self.fleet.database_url, self.fleet.database_password)
        return self.paths.fleet_db


def load(path: str | Path = DEFAULT_PATH) -> CloudConfig:
    if not Path(path).exists():
        # A newcomer's first command: say how to get a config, not only that there is none.
        raise ConfigError(
            str(path),
            "<file>",
            "no such file; run 'parkwatch cloud init DIR' to write a working config under DIR "
            "(then export PARKWATCH_CONFIG=DIR/cloud.toml), or pass --config PATH",
        )
    return load_config(CloudConfig, path)


def _without_none(d: Any) -> Any:
    """TOML has no null: an unset optional key is left out, which loads back as the same default."""
    if isinstance(d, dict):
        return {k: _without_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_without_none(x) for x in d]
    return d


def to_toml(cfg: CloudConfig) -> str:
    """``cfg`` as a ``cloud.toml`` that loads back to an equal config (secrets stay references)."""
    return tomli_w.dumps(_without_none(cfg.model_dump(mode="json")))
