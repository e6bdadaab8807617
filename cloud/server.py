"""What ``parkwatch cloud serve`` runs: the cloud's long-lived components, started in order.

Each component is a class constructed as ``Component(cfg)`` with ``start()`` and ``stop()``;
it owns its own MQTT client and store handles, so one failing does not wedge the others and
each can be tested alone. Components are named by import path so that ``serve`` imports only
what it runs. The materializer is a child process (``parkwatch cloud materialize``, started and
restarted by cloud/children.py); under systemd it runs as a unit of its own instead, and the
cloud unit runs ``serve --skip materializer``.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.server")

# Order matters: storage-facing ingest first so nothing published later is missed (its
# materializer before its receiver, so it is stopped after it and drains its last commit), the
# release channel next, then analysis and the dashboard that read what ingest wrote.
COMPONENTS: dict[str, str] = {
    "materializer": "cloud.fleet.materialize:MaterializerProcess",
    "fleet-ingest": "cloud.fleet.receiver:Receiver",
    "release": "cloud.release.server:ReleaseService",
    "analysis": "cloud.analysis.scheduler:AnalysisScheduler",
    "dashboard": "cloud.dashboard.server:DashboardServer",
}


class Component(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def load_component(path: str) -> type[Component]:
    module_name, attr = path.split(":")
    cls: type[Component] = getattr(importlib.import_module(module_name), attr)
    return cls


class CloudServer:
    def __init__(
        self, cfg: CloudConfig, only: list[str] | None = None, skip: list[str] | None = None
    ) -> None:
        unknown = (set(only or []) | set(skip or [])) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}; choose from {sorted(COMPONENTS)}")
        self.cfg = cfg
        wanted = set(only or COMPONENTS)
        if "fleet-ingest" in wanted:
            wanted.add("materializer")  # a receiver alone would only fill its inbox: --skip says so
        self.names = [n for n in COMPONENTS if n in wanted and n not in (skip or [])]
        self.components: dict[str, Component] = {}
        self._stopped = threading.Event()

    def start(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.names:
                comp = load_component(COMPONENTS[name])(self.cfg)  # type: ignore[call-arg]
                comp.start()
                self.components[name] = comp
                log.info("started %s", name)
        except BaseException:
            self.stop()
            raise

    def banner(self) -> str:
        """What an installer needs to see once it runs: which components, where they connect,
        the dashboard URL, and what is still to do (no repository yet)."""
        c = self.cfg
        lines = [f"parkwatch cloud serve: data in {c.data_dir}"]
        for name in self.names:
            comp = self.components.get(name)
            if name == "materializer":
                what = f"child process applying the inbox of {c.client_id('ingest')} to " + (
                    "PostgreSQL" if c.fleet.database_url else str(c.paths.fleet_db)
                )
            elif name == "fleet-ingest":
                what = (
                    f"broker {c.mqtt.host}:{c.mqtt.port} as {c.client_id('ingest')}, persistent shared "
                    f"subscription $share/{c.fleet.share_group}/... (boxes may send now)"
                )
            elif name == "release":
                what = (
                    f"release channel, repository {c.paths.repo_dir}"
                    if (c.paths.repo_dir / "metadata" / "root.json").exists()
                    else f"release channel: no repository in {c.paths.repo_dir} yet; "
                    "run 'parkwatch cloud keys init'"
                )
            elif name == "analysis":
                what = (
                    f"health every {c.analysis.health_interval_s:g} s, drift and performance every "
                    f"{c.analysis.interval_s / 3600:g} h"
                )
            elif name == "dashboard":
                url = getattr(comp, "url", None)
                what = (
                    f"dashboard at {url}" if c.dashboard.enabled and url else "dashboard disabled in config"
                )
            else:
                what = ""
            lines.append(f"  {name:<13} {what}")
        lines.append("stop with Ctrl-C (or SIGTERM); the log says more with -v")
        return "\n".join(lines)

    def stop(self) -> None:
        for name, comp in reversed(list(self.components.items())):
            try:
                comp.stop()
            except Exception:
                log.exception("stopping %s failed", name)
        self.components.clear()
        self._stopped.set()

    def serve_forever(self, on_started: Callable[[str], None] | None = None) -> None:
        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: shutting down", signum)
            self._stopped.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self.start()
        if on_started is not None:
            on_started(self.banner())
        try:
            self._stopped.wait()
        finally:
            self.stop()

    def __enter__(self) -> CloudServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
