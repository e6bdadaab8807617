"""``DashboardServer``: the component ``parkwatch cloud serve`` runs, uvicorn in a thread."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn

from cloud.config import CloudConfig
from cloud.dashboard.app import create_app
from cloud.dashboard.errors import DashboardError

log = logging.getLogger("parkwatch.dashboard")


class DashboardServer:
    def __init__(self, cfg: CloudConfig, **deps: object) -> None:
        self.cfg = cfg
        self.deps = deps
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.dashboard.host}:{self.port or self.cfg.dashboard.port}/"

    def start(self) -> None:
        if not self.cfg.dashboard.enabled:
            log.info("dashboard disabled in config")
            return
        app = create_app(self.cfg, **self.deps)  # type: ignore[arg-type]
        config = uvicorn.Config(app, host=self.cfg.dashboard.host, port=self.cfg.dashboard.port,
                                log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DashboardError(
                    f"dashboard could not listen on {self.cfg.dashboard.host}:{self.cfg.dashboard.port}; "
                    "is the port in use? Change [dashboard] port in the cloud config")
            time.sleep(0.02)
        sockets = [s for srv in (self._server.servers or []) for s in srv.sockets]
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.cfg.dashboard.port
        log.info("dashboard on %s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None
