"""``AnalysisScheduler``: the ``parkwatch cloud serve`` component that checks device health often
(``analysis.health_interval_s``, so a silent device turns offline within the heartbeat timeout
plus one interval) and runs the full analysis every ``analysis.interval_s`` (daily by default).

One failing run is logged and retried next period; it never stops the scheduler.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from cloud.analysis.job import open_governor, run_analysis, run_health
from cloud.fleet.store import FleetStore

if TYPE_CHECKING:
    from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.analysis")


class AnalysisScheduler:
    def __init__(self, cfg: CloudConfig, publish: bool = True) -> None:
        self.cfg = cfg
        self.publish = publish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.health_runs = 0
        self.analysis_runs = 0
        self.last_report: dict[str, Any] | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="analysis-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def _loop(self) -> None:
        fleet = FleetStore(self.cfg.fleet_store)
        gov = open_governor(self.cfg, publish=self.publish)
        a = self.cfg.analysis
        next_health = time.monotonic()
        next_analysis = time.monotonic() + a.interval_s
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                try:
                    if now >= next_analysis:
                        next_analysis = now + a.interval_s
                        self.last_report = run_analysis(self.cfg, fleet, gov)
                        self.analysis_runs += 1
                        next_health = now + a.health_interval_s  # the analysis ran health too
                    elif now >= next_health:
                        next_health = now + a.health_interval_s
                        run_health(self.cfg, fleet, gov)
                        self.health_runs += 1
                except Exception as e:  # keep scheduling; the next period retries
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.exception("analysis run failed")
                self._stop.wait(max(0.05, min(next_health, next_analysis) - time.monotonic()))
        finally:
            fleet.close()
            gov.alerts.close()
            if gov.publisher is not None:
                gov.publisher.close()
