"""Taking an ingest worker out of service for good (``parkwatch cloud inbox --retire WORKER``).

A stopped worker's persistent session keeps its share of the shared subscription queued in the
broker (for ``fleet.session_expiry_s``), where no other worker and no ``--drain`` can reach it.
Retiring hands that share back: resume the session subscribed to nothing new, take in what the
broker queued for it (the receiver, :mod:`cloud.fleet.receiver`), apply it (the materializer,
:mod:`cloud.fleet.materialize`, here in this process: a one-off command has no receiver to
keep responsive), then end the session with a clean start the broker confirms.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from cloud.fleet.errors import FleetError
from cloud.fleet.materialize import Materializer
from cloud.fleet.receiver import Receiver
from shared.mqttlink import MqttLink

if TYPE_CHECKING:
    from cloud.config import CloudConfig

log = logging.getLogger("parkwatch.cloud.ingest")


def discard_session(cfg: CloudConfig, client_id: str) -> bool:
    """End ``client_id``'s broker session: a clean start throws it away, and an expiry of 0 keeps
    none after. Confirmed by the CONNACK, not assumed from a DISCONNECT that a closing socket may
    not have carried."""
    link = MqttLink(cfg.mqtt, client_id, clean_start=True, session_expiry_s=0, logger=log)
    try:
        link.start(connect_now=True)
    except (OSError, ValueError):
        return False
    try:
        return link.wait_connected(10)
    finally:
        link.stop()


def retire_worker(
    cfg: CloudConfig, worker: str, quiet_s: float = 2.0, timeout_s: float = 600.0
) -> dict[str, Any]:
    """Take in and apply what the broker still holds for ``worker``, then end its session.

    Returns the figures; raises :class:`FleetError` if the broker or the backlog did not settle in
    ``timeout_s`` (the session is then kept, so nothing is lost). The caller makes sure the worker
    does not run (connecting with its client_id would take its session over).
    """
    deadline = time.monotonic() + timeout_s
    # Past the deadline a database that keeps failing gives up (the rows stay in the inbox).
    m = Materializer(cfg, worker, should_stop=lambda: time.monotonic() > deadline, lock_wait_s=5.0)
    rx = Receiver(cfg, client_id=worker, retiring=True)
    stopped = False
    try:
        rx.start()
        if not rx.wait_connected(min(30.0, timeout_s)):
            raise FleetError(
                f"cannot retire {worker}: no connection to the broker at {cfg.mqtt.host}:{cfg.mqtt.port}"
            )
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            applied = m.step()
            if rx.received != last or rx.busy or not rx.connected or applied:
                last, quiet_since = rx.received, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                received = rx.received
                rx.stop()
                stopped = True
                m.drain()  # what the receiver committed while stopping
                if not rx.stopped_clean or not discard_session(cfg, worker):
                    raise FleetError(
                        f"cannot retire {worker}: the broker connection dropped at the last step; its "
                        "session is kept (nothing lost), run it again"
                    )
                return {"worker": worker, "received": received, "session": "ended"}
            if not applied:
                time.sleep(0.1)
        raise FleetError(
            f"cannot retire {worker}: messages still arriving or waiting in its inbox after "
            f"{timeout_s:.0f} s; its session is kept, run it again"
        )
    finally:
        if not stopped:
            rx.stop()
        m.close()
