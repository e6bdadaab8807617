"""First boot: install the box with install-edge.sh, then readiness, watchdog, kill -9, security.

The broker is deliberately absent during this boot, so every prediction stays in the outbox and
its survival across a hung daemon, ``kill -9`` and (next boot) a reboot can be counted exactly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from typing import Any

from common import PARAMS, log, main_pid, outbox, run_checks, sh, show, wait_for

UNIT = "parkwatch-edge.service"
SRC = "/src/parkwatch"


def states_until_settled(timeout: float) -> tuple[list[str], bool | None, str]:
    """Start the unit without waiting and record its states until it is active or failed.

    ``healthz_at_active`` tells whether the status page already answered at the first moment
    systemd called the unit active: with Type=notify that moment is READY=1, sent after start-up.
    """
    seen: list[str] = []
    healthz_at_active: bool | None = None
    url = f"http://127.0.0.1:{PARAMS['status_port']}/healthz"
    subprocess.run(["systemctl", "start", "--no-block", UNIT], check=True)
    end = time.monotonic() + timeout
    status = ""
    while time.monotonic() < end:
        s = show(UNIT, "ActiveState", "SubState", "StatusText")
        state = f"{s['ActiveState']}/{s['SubState']}"
        if not seen or seen[-1] != state:
            seen.append(state)
        if s["ActiveState"] == "active":
            from common import http_ok

            healthz_at_active = http_ok(url)
            status = s["StatusText"]
            break
        if s["ActiveState"] == "failed":
            break
        time.sleep(0.05)
    return seen, healthz_at_active, status


def wait_restarted(old_pid: int, restarts_before: int, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, str] | None:
        s = show(UNIT, "ActiveState", "MainPID", "NRestarts")
        ok = s["ActiveState"] == "active" and int(s["MainPID"]) not in (0, old_pid)
        return s if ok and int(s["NRestarts"]) > restarts_before else None

    t0 = time.monotonic()
    s = wait_for("the daemon restarted by systemd", done, timeout)
    return {"new_pid": int(s["MainPID"]), "n_restarts": int(s["NRestarts"]), "seconds": time.monotonic() - t0}


def body(r: dict[str, Any]) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    rc, out = sh(
        "bash", f"{SRC}/provisioning/install-edge.sh", "--model", "/srv/model", "--no-start", env=env
    )
    r["install_rc"], r["install_out"] = rc, out
    if rc != 0:
        return
    r["enabled_after_install"] = sh("systemctl", "is-enabled", UNIT)[1].strip()
    r["user"] = sh("id", "parkwatch")[1].strip()

    # The technician's edit of the config (park-staff.md step 2), and a shorter watchdog so the
    # test waits 15 s instead of the unit's 60 s (the drop-in changes nothing else).
    shutil.copy("/checks/edge.toml", "/etc/parkwatch/edge.toml")
    shutil.chown("/etc/parkwatch/edge.toml", "root", "parkwatch")
    os.chmod("/etc/parkwatch/edge.toml", 0o640)
    os.makedirs(f"/etc/systemd/system/{UNIT}.d", exist_ok=True)
    with open(f"/etc/systemd/system/{UNIT}.d/test-watchdog.conf", "w") as f:
        f.write(f"[Service]\nWatchdogSec={PARAMS['watchdog_s']}\n")
    sh("systemctl", "daemon-reload", check=True)
    rc, out = sh("/opt/parkwatch/venv/bin/parkwatch", "edge", "config", "check", "/etc/parkwatch/edge.toml")
    r["config_check"] = out.strip()

    # 1. Type=notify: active only once READY=1 came (the status page is up by then).
    r["start_states"], r["healthz_at_active"], r["status_text"] = states_until_settled(240)
    s = show(UNIT, "ActiveState", "MainPID", "Type", "WatchdogUSec", "NotifyAccess")
    r["after_start"] = s
    if s["ActiveState"] != "active":
        r["journal"] = sh("journalctl", "-u", UNIT, "--no-pager", "-n", "80")[1]
        return
    pid = int(s["MainPID"])
    r["daemon_user"] = sh("ps", "-o", "user=", "-p", str(pid))[1].strip()
    wait_for("a few predictions in the outbox", lambda: outbox()["count"] >= 5, 120)

    # 2. The watchdog: a hung daemon (SIGSTOP: it can neither classify nor ping) is restarted.
    before = outbox()
    restarts = int(show(UNIT, "NRestarts")["NRestarts"])
    os.kill(pid, 19)  # SIGSTOP
    r["watchdog"] = wait_restarted(pid, restarts, 4 * PARAMS["watchdog_s"] + 60)
    r["watchdog"]["outbox_before"] = before
    r["watchdog"]["journal"] = [
        ln
        for ln in sh("journalctl", "-u", UNIT, "--no-pager", "-o", "cat")[1].splitlines()
        if re.search(r"watchdog", ln, re.I)
    ][-5:]
    wait_for("new predictions after the watchdog restart", lambda: outbox()["max"] > before["max"], 120)
    r["watchdog"]["outbox_after"] = outbox()

    # 3. kill -9: restarted, nothing lost, numbering continues.
    pid = main_pid(UNIT)
    before = outbox()
    restarts = int(show(UNIT, "NRestarts")["NRestarts"])
    os.kill(pid, 9)
    r["kill9"] = wait_restarted(pid, restarts, 120)
    r["kill9"]["outbox_before"] = before
    wait_for("new predictions after kill -9", lambda: outbox()["max"] > before["max"] + 2, 120)
    r["kill9"]["outbox_after"] = outbox()

    # 4. The sandbox as systemd judges it.
    rc, out = sh("systemd-analyze", "security", "--no-pager", UNIT)
    r["security_rc"], r["security"] = rc, out
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", out)
    r["exposure"] = float(m.group(1)) if m else None
    r["exposure_word"] = m.group(2) if m else None

    # 5. Reboot: the host boots the container again (edge_boot2) with the broker up.
    r["outbox_before_reboot"] = outbox()
    log("rebooting")


if __name__ == "__main__":
    run_checks("edge_boot1", body)
