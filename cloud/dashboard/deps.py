"""What the dashboard reads and changes, gathered in one object the app factory receives.

Each back end is the other domains' own service layer (registry, approvals, release, fleet
store, alerts, analysis, lineage): the dashboard calls it exactly as the CLI does and adds only
who the signed-in user is. A back end that is not installed or configured yet is reported on its
page (``ServiceUnavailable``) instead of failing the whole app.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.config import CloudConfig
from cloud.dashboard.errors import ServiceUnavailable
from cloud.dashboard.users import UserStore
from cloud.registry.audit import AuditLog


def users_db_path(cfg: CloudConfig) -> Path:
    return cfg.dashboard.users_db or cfg.data_dir / "dashboard.db"


def optional_module(name: str) -> Any | None:
    """Import a sibling domain's module if it exists yet (it may be written after the dashboard)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            return None
        raise


@dataclass
class Services:
    """Back ends, created on first use so a page that does not need one never opens it.

    Tests and the benchmark pass ready-made instances; ``parkwatch cloud serve`` passes none and
    everything is opened from the config.
    """

    cfg: CloudConfig
    users: UserStore | None = None
    audit: AuditLog | None = None
    registry: Any | None = None
    fleet: Any | None = None
    alerts: Any | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _owned: dict[str, bool] = field(default_factory=dict)
    write_lock: threading.Lock = field(default_factory=threading.Lock)

    def _lazy(self, attr: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            value = getattr(self, attr)
            if value is None:
                value = make()
                setattr(self, attr, value)
            return value

    def get_users(self) -> UserStore:
        u: UserStore = self._lazy("users", lambda: UserStore(users_db_path(self.cfg)))
        return u

    def get_audit(self) -> AuditLog:
        # On the registry's own connection (opened for use from any thread), the way the
        # release channel opens it, so approvals and their audit entries share one file handle.
        a: AuditLog = self._lazy("audit", lambda: AuditLog(self.get_registry().db))
        return a

    def get_registry(self) -> Any:
        def make() -> Any:
            from cloud.registry.store import Registry

            return Registry(self.cfg.registry_db)

        return self._lazy("registry", make)

    def get_fleet(self) -> Any:
        def make() -> Any:
            from cloud.fleet.store import FleetStore

            return FleetStore(self.cfg.fleet_store)

        return self._lazy("fleet", make)

    def get_alerts(self) -> Any:
        def make() -> Any:
            mod = optional_module("cloud.governance.alerts")
            if mod is None or not hasattr(mod, "AlertStore"):
                raise ServiceUnavailable(
                    "alerts are not available: cloud.governance.alerts.AlertStore is not installed yet"
                )
            return mod.AlertStore(self.cfg.fleet_store)

        return self._lazy("alerts", make)

    def get_alert_publisher(self) -> Any:
        """Publishes alert state changes on MQTT, as the CLI does (never blocks a page for long)."""

        def make() -> Any:
            from cloud.governance.notify import AlertPublisher

            return AlertPublisher(self.cfg.mqtt, f"{self.cfg.client_id('alerts')}-dashboard", timeout_s=3.0)

        with self._lock:
            if "alert_publisher" not in self.extras:
                self.extras["alert_publisher"] = make()
            return self.extras["alert_publisher"]

    def close(self) -> None:
        """Close what this object opened (connections passed in by a caller are left to it)."""
        pub = self.extras.pop("alert_publisher", None)
        if pub is not None:
            pub.close()
        ch = self.extras.get("release_channel")
        states = getattr(ch, "_states", None) if ch is not None else None
        if states is not None and self._owned.get("release_channel"):
            states.close()

    def module(self, name: str, what: str) -> Any:
        """A service module by import path, or ServiceUnavailable naming what is missing."""
        if name in self.extras:
            return self.extras[name]
        mod = optional_module(name)
        if mod is None:
            raise ServiceUnavailable(f"{what} is not available: module {name} is not installed yet")
        return mod
