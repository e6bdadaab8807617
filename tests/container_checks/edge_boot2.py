"""Second boot (after a reboot): the service came back by itself, the outbox kept every
prediction and now drains to the host's broker; then uninstall and purge."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common import CHECKS, outbox, run_checks, sh, show, wait_for

UNIT = "parkwatch-edge.service"
SRC = "/src/parkwatch"


def body(r: dict[str, Any]) -> None:
    before = json.loads((CHECKS / "edge_boot1.json").read_text())["outbox_before_reboot"]
    r["outbox_at_boot"] = outbox()
    r["active_after_reboot"] = wait_for(
        "the service active after the reboot",
        lambda: show(UNIT, "ActiveState")["ActiveState"] == "active",
        240,
    )
    # Every row that waited before the reboot is sent (acknowledged by the broker) and leaves.
    wait_for(
        "the pre-reboot backlog delivered",
        lambda: outbox()["count"] == 0 or outbox()["min"] > before["max"],
        240,
    )
    r["outbox_after_drain"] = outbox()

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    rc, out = sh("bash", f"{SRC}/provisioning/uninstall-edge.sh", env=env)
    r["uninstall_rc"], r["uninstall_out"] = rc, out
    r["unit_after_uninstall"] = show(UNIT, "LoadState", "ActiveState")
    r["kept_after_uninstall"] = [
        p for p in ("/etc/parkwatch/edge.toml", "/var/lib/parkwatch/outbox.db") if Path(p).exists()
    ]
    rc, out = sh("bash", f"{SRC}/provisioning/uninstall-edge.sh", "--purge", env=env)
    r["purge_rc"], r["purge_out"] = rc, out
    if rc != 0:
        rc, out = sh("bash", f"{SRC}/provisioning/uninstall-edge.sh", "--purge", "--yes", env=env)
        r["purge_yes_rc"], r["purge_yes_out"] = rc, out
    r["left_after_purge"] = [
        p
        for p in ("/opt/parkwatch", "/etc/parkwatch", "/var/lib/parkwatch", f"/etc/systemd/system/{UNIT}")
        if Path(p).exists()
    ]
    r["user_after_purge"] = sh("id", "parkwatch")[0]
    r["processes_left"] = sh("pgrep", "-u", "parkwatch")[1].strip() if r["user_after_purge"] == 0 else ""


if __name__ == "__main__":
    run_checks("edge_boot2", body)
