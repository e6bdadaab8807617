"""One whole ingest worker in one object, for programs that embed one (tests, bench/ingest_fleet.py,
a script of your own): its receiver (:class:`cloud.fleet.receiver.Receiver`) in this process and
its materializer as a child process (:class:`cloud.fleet.materialize.MaterializerProcess`).

``parkwatch cloud serve`` runs the same two as separate parts (``fleet-ingest`` and
``materializer``, cloud/server.py); under systemd the materializer is a unit of its own.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cloud.fleet.materialize import MaterializerProcess
from cloud.fleet.materializer_stats import stats_in
from cloud.fleet.receiver import Receiver
from cloud.fleet.store import FleetStore

if TYPE_CHECKING:
    from cloud.config import CloudConfig


class FleetIngest:
    def __init__(self, cfg: CloudConfig, client_id: str | None = None) -> None:
        self.cfg = cfg
        self.receiver = Receiver(cfg, client_id)
        self.client_id = self.receiver.client_id
        self.materializer = MaterializerProcess(cfg, self.client_id)
        self._store: FleetStore | None = None

    def start(self) -> None:
        self.materializer.start()
        try:
            self.receiver.start()
        except BaseException:
            self.materializer.stop()
            raise

    def stop(self) -> None:
        """The receiver first (its last commit and acknowledgements), then the materializer's drain."""
        try:
            self.receiver.stop()
        finally:
            self.materializer.stop()
            if self._store is not None:
                self._store.close()
                self._store = None

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.receiver.wait_connected(timeout)

    @property
    def connected(self) -> bool:
        return self.receiver.connected

    @property
    def accepted(self) -> int:
        return self.receiver.accepted

    def inbox_backlog(self) -> int:
        return self.receiver.inbox_backlog()

    def stats(self) -> dict[str, Any]:
        """The receiver's figures since it started, and the materializer's from the fleet store
        (``rejected``: the refusals counted there, all workers')."""
        if self._store is None:
            self._store = FleetStore(self.cfg.fleet_store)
        fs = self._store
        out = self.receiver.stats()
        m = stats_in(fs).get(self.client_id)
        beat = fs.query(
            "SELECT heartbeat_ts, write_errors FROM ingest_workers WHERE worker=?", (self.client_id,)
        )
        counters = fs.counters()
        out.update(
            rejected={
                k.split(".", 1)[1]: int(v) for k, v in counters.items() if k.startswith("rejected.") and v
            },
            stored_predictions=m.stored_predictions if m else 0,
            duplicates=m.duplicates if m else 0,
            materialized=m.materialized if m else 0,
            batches=m.batches if m else 0,
            last_write_ts=m.last_batch_ts if m else None,
            lag_s=m.lag_s if m else None,
            write_errors=out["write_errors"] + (int(beat[0]["write_errors"]) if beat else 0),
            materializer_alive=self.materializer.alive,
            materializer_restarts=self.materializer.restarts,
            materializer_heartbeat_age_s=round(time.time() - float(beat[0]["heartbeat_ts"]), 1)
            if beat
            else None,
            last_error=self.materializer.last_error or out["last_error"],
        )
        return out
