"""One ingest worker in its own process, as on its own host: ``python -m tests.ingest_worker_proc
CFG_JSON CLIENT_ID``. Prints ``ready`` once connected and subscribed, runs until SIGTERM (clean
stop) or SIGKILL (a crash, which the tests use)."""

from __future__ import annotations

import signal
import sys
import threading

from cloud.config import CloudConfig
from cloud.fleet.ingest_worker import FleetIngest


def main() -> None:
    cfg = CloudConfig.model_validate_json(sys.argv[1])
    ing = FleetIngest(cfg, client_id=sys.argv[2])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    ing.start()
    try:
        if not ing.wait_connected(30):
            print("no broker", flush=True)
            sys.exit(1)
        print("ready", flush=True)
        done.wait()
    finally:
        ing.stop()


if __name__ == "__main__":
    main()
