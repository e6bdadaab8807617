"""``DashboardServer``: the component ``parkwatch cloud serve`` runs, uvicorn in a thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from cloud.config import CloudConfig
from cloud.dashboard.app import create_app
from cloud.dashboard.errors import DashboardError
from cloud.dashboard.snapshots import purge_expired

log = logging.getLogger("parkwatch.dashboard")
PURGE_INTERVAL_S = 3600.0


class DashboardServer:
    def __init__(self, cfg: CloudConfig, **deps: object) -> None:
        self.cfg = cfg
        self.deps = deps
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self._services: Any = None
        self._stop = threading.Event()
        self._purger: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.dashboard.host}:{self.port or self.cfg.dashboard.port}/"

    def start(self) -> None:
        if not self.cfg.dashboard.enabled:
            log.info("dashboard disabled in config")
            return
        app = create_app(self.cfg, **self.deps)  # type: ignore[arg-type]
        self._services = app.state.services
        config = uvicorn.Config(
            app,
            host=self.cfg.dashboard.host,
            port=self.cfg.dashboard.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DashboardError(
                    f"dashboard could not listen on {self.cfg.dashboard.host}:{self.cfg.dashboard.port}; "
                    "is the port in use? Change [dashboard] port in the cloud config"
                )
            time.sleep(0.02)
        self._purger = threading.Thread(target=self._purge_loop, name="dashboard-snapshot-purge", daemon=True)
        self._purger.start()
        sockets = [s for srv in (self._server.servers or []) for s in srv.sockets]
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.cfg.dashboard.port
        log.info("dashboard on %s", self.url)

    def _purge_loop(self) -> None:
        while True:
            try:
                purge_expired(self.cfg.paths.snapshots_dir, self.cfg.dashboard.snapshot_keep_days)
            except Exception:  # the sweep must never take the dashboard down
                log.exception("snapshot purge failed")
            if self._stop.wait(PURGE_INTERVAL_S):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._purger is not None:
            self._purger.join(timeout=5)
            self._purger = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
        if self._services is not None:
            self._services.close()
            self._services = None
