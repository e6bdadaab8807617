"""Runs the updater inside the daemon: on every release notice for the box's group, and periodically.

``start_updater(daemon)`` is what edge.daemon.Daemon calls; it returns an object with ``stop()``.
The retained release notice carries no authority - it only says "refresh now"; everything the
box installs is decided by TUF metadata.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from edge.updater.updater import Host, ModelUpdater
from shared.protocol import ProtocolError, ReleaseNotice, Topics, decode

log = logging.getLogger("parkwatch.edge.updater")


class UpdaterService:
    def __init__(self, host: Host, link: Any | None = None) -> None:
        self.host = host
        self.link = link or host.mqtt
        self.updater = ModelUpdater(host, self.link)
        self.group = host.cfg.device.group
        self.release_topic = Topics.release(self.group)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.notices = 0
        self.last_notice: ReleaseNotice | None = None
        self._thread = threading.Thread(target=self._run, name="parkwatch-updater", daemon=True)

    def start(self) -> UpdaterService:
        self.link.subscribe(self.release_topic, self._on_notice, qos=1)
        self._thread.start()
        return self

    def _on_notice(self, msg: Any) -> None:
        try:
            _, notice = decode(msg.topic, msg.payload)
        except ProtocolError as e:
            rejects = getattr(self.host, "rejects", None)  # the daemon's counter, when there is one
            if rejects is not None:
                rejects.reject(e)
            else:
                log.warning("ignoring invalid release notice: %s", e)
            return
        assert isinstance(notice, ReleaseNotice)
        self.notices += 1
        self.last_notice = notice
        self._wake.set()

    def trigger(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        interval = self.host.cfg.updater.check_interval_s
        first = True
        while not self._stop.is_set():
            if not first:
                self._wake.wait(interval)
            first = False
            if self._stop.is_set():
                break
            self._wake.clear()
            if not getattr(self.link, "connected", True):
                wait = getattr(self.link, "wait_connected", None)
                if wait is not None and not wait(min(interval, 30.0)):
                    continue
            try:
                self.updater.check_once()
            except Exception:  # the loop must survive anything
                log.exception("update check crashed")

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        with contextlib.suppress(Exception):
            self.link.unsubscribe(self.release_topic)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.updater.channel.close()


class DisabledUpdater:
    """Returned when updates are off, so the daemon can call ``stop()`` either way."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def trigger(self) -> None:
        return None

    def stop(self, timeout: float = 0.0) -> None:
        return None


def start_updater(daemon: Host) -> UpdaterService | DisabledUpdater:
    """Start the updater for ``daemon`` unless updates are disabled or no trusted root is installed."""
    ucfg = daemon.cfg.updater
    if not ucfg.enabled:
        log.info("updater disabled in config")
        return DisabledUpdater("disabled in config (updater.enabled = false)")
    if ucfg.trusted_root is None:
        log.warning("updater.trusted_root is not set: model updates are off until provisioning installs it")
        return DisabledUpdater("no trusted root installed (updater.trusted_root)")
    return UpdaterService(daemon).start()
