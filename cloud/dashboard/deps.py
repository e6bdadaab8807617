"""What the dashboard reads and changes, gathered in one object the app factory receives.

Each back end is the other domains' own service layer (registry, approvals, release, fleet
store, alerts, lineage): the dashboard calls it exactly as the CLI does and adds only who the
signed-in user is. Every domain is installed with the cloud extra, so they are imported plainly
and typed; a back end is still *opened* only when a page first needs it (a page that never
touches the fleet store never opens ``fleet.db``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from cloud.config import CloudConfig
from cloud.dashboard.users import UserStore
from cloud.fleet.store import FleetStore
from cloud.governance.alerts import AlertStore
from cloud.governance.notify import AlertPublisher
from cloud.registry.audit import AuditLog
from cloud.registry.store import Registry
from cloud.release.channel import ReleaseChannel

__all__ = ["Services"]

T = TypeVar("T")


@dataclass
class Services:
    """Back ends, created on first use so a page that does not need one never opens it.

    Tests and the benchmark pass ready-made instances; ``parkwatch cloud serve`` passes none and
    everything is opened from the config. What this object opened it closes (``close``); what a
    caller passed in is left to the caller.
    """

    cfg: CloudConfig
    users: UserStore | None = None
    audit: AuditLog | None = None
    registry: Registry | None = None
    fleet: FleetStore | None = None
    alerts: AlertStore | None = None
    release_channel: ReleaseChannel | None = None
    alert_publisher: AlertPublisher | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _owned: set[str] = field(default_factory=set)
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def _lazy(self, attr: str, make: Callable[[], T]) -> T:
        """The back end under ``attr``, or ``make()`` stored there (and owned by this object)."""
        with self._lock:
            value: T | None = getattr(self, attr)
            if value is None:
                value = make()
                setattr(self, attr, value)
                self._owned.add(attr)
            return value

    def get_users(self) -> UserStore:
        return self._lazy("users", lambda: UserStore(self.cfg.paths.dashboard_db))

    def get_audit(self) -> AuditLog:
        # On the registry's own connection (opened for use from any thread), the way the
        # release channel opens it, so approvals and their audit entries share one file handle.
        return self._lazy("audit", lambda: AuditLog(self.get_registry().db))

    def get_registry(self) -> Registry:
        return self._lazy("registry", lambda: Registry(self.cfg.paths.registry_db))

    def get_fleet(self) -> FleetStore:
        return self._lazy("fleet", lambda: FleetStore(self.cfg.fleet_store))

    def get_alerts(self) -> AlertStore:
        return self._lazy("alerts", lambda: AlertStore(self.cfg.fleet_store))

    def get_release_channel(self) -> ReleaseChannel:
        """The release channel the ``approve``/``rollout``/``rollback`` commands use, on this
        object's registry and audit log."""
        return self._lazy(
            "release_channel",
            lambda: ReleaseChannel(self.cfg, registry=self.get_registry(), audit=self.get_audit()),
        )

    def get_alert_publisher(self) -> AlertPublisher:
        """Publishes alert state changes on MQTT, as the CLI does (never blocks a page for long)."""
        return self._lazy(
            "alert_publisher",
            lambda: AlertPublisher(self.cfg.mqtt, f"{self.cfg.client_id('alerts')}-dashboard", timeout_s=3.0),
        )

    def close(self) -> None:
        """Close what this object opened (connections passed in by a caller are left to it)."""
        with self._lock:
            if "alert_publisher" in self._owned and self.alert_publisher is not None:
                self.alert_publisher.close()
                self.alert_publisher = None
                self._owned.discard("alert_publisher")
            if "release_channel" in self._owned and self.release_channel is not None:
                self.release_channel.close()
