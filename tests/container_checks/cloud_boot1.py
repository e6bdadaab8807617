"""install-cloud.sh on a fresh Debian host with systemd: units start, broker auth, re-run, security."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from common import PARAMS, http_ok, run_checks, sh, show, wait_for

SRC = "/src/parkwatch"
UNITS = ("mosquitto.service", "parkwatch-cloud.service")


def install_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PARKWATCH_MQTT_PORT": str(PARAMS["mqtt_port"]),
        "PARKWATCH_MQTT_TLS_PORT": str(PARAMS["tls_port"]),
        "PARKWATCH_DASHBOARD_PORT": str(PARAMS["dashboard_port"]),
    }


def diagnostics() -> str:
    journal = sh("journalctl", "-u", "parkwatch-cloud", "-u", "mosquitto", "--no-pager", "-n", "80")[1]
    log = Path("/var/log/mosquitto/mosquitto.log")
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    return f"{journal}\n--- mosquitto.log ---\n{tail}"


def services_up(r: dict[str, Any], key: str) -> None:
    url = f"http://127.0.0.1:{PARAMS['dashboard_port']}/healthz"
    try:
        wait_for("the dashboard answering /healthz", lambda: http_ok(url), 180)
        r[f"{key}_healthz"] = True
    except TimeoutError:
        r[f"{key}_healthz"] = False
    r[f"{key}_units"] = {u: show(u, "ActiveState", "SubState", "UnitFileState", "NRestarts") for u in UNITS}
    if not r[f"{key}_healthz"]:
        r[f"{key}_journal"] = diagnostics()


def body(r: dict[str, Any]) -> None:
    rc, out = sh("bash", f"{SRC}/provisioning/install-cloud.sh", env=install_env())
    r["install_rc"], r["install_out"] = rc, out
    if rc != 0:
        r["journal"] = diagnostics()
        return
    services_up(r, "first")

    # The broker runs the shipped tuning and refuses anonymous clients; the cloud logged in.
    log = Path("/var/log/mosquitto/mosquitto.log")
    text = log.read_text(errors="replace") if log.exists() else ""
    r["cloud_logged_in"] = bool(re.search(r"New client connected .* u'parkwatch-cloud'", text))
    r["mosquitto_conf_d"] = sorted(
        p.name for p in Path("/etc/mosquitto/conf.d").iterdir() if p.suffix == ".conf"
    )
    r["mosquitto_loaded"] = re.findall(
        r"Loading config file (\S+)", sh("journalctl", "-u", "mosquitto", "--no-pager", "-o", "cat")[1]
    )
    venv = "/opt/parkwatch/cloud-venv/bin/python"
    probe = (
        "import paho.mqtt.client as m, sys\n"
        "c = m.Client(m.CallbackAPIVersion.VERSION2)\n"
        f"c.connect('127.0.0.1', {PARAMS['mqtt_port']})\n"
        "rc = []\n"
        "c.on_connect = lambda c, u, f, reason, p: (rc.append(str(reason)), c.disconnect())\n"
        "c.loop_forever(timeout=5)\n"
        "print(rc[0] if rc else 'no answer')\n"
    )
    r["anonymous_connect"] = sh(venv, "-c", probe)[1].strip().splitlines()[-1]

    # A box's credentials can be made the documented way.
    pw = ["runuser", "-u", "parkwatch", "--", "/opt/parkwatch/cloud-venv/bin/parkwatch", "cloud"]
    secret = "/var/lib/parkwatch-cloud/box-1.secret"
    add = ["devices", "add", "box-1", "--site", "park-1", "--group", "staging", "--secret-out", secret]
    rc, out = sh(*pw, *add, "--as", "test", "--config", "/etc/parkwatch/cloud.toml")
    r["device_add_rc"], r["device_add_out"] = rc, out
    sh("systemctl", "reload", "mosquitto.service")

    rc, out = sh("systemd-analyze", "security", "--no-pager", "parkwatch-cloud.service")
    r["security"] = out
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\S+)", out)
    r["exposure"] = float(m.group(1)) if m else None

    # Re-running keeps config, keys and credentials and restarts the services.
    secret_before = Path("/etc/parkwatch/secrets/mqtt-cloud").read_text()
    root_before = Path("/var/lib/parkwatch-cloud/tuf-repo/metadata/root.json").read_bytes()
    rc, out = sh("bash", f"{SRC}/provisioning/install-cloud.sh", env=install_env())
    r["rerun_rc"], r["rerun_out"] = rc, out
    r["rerun_kept_secret"] = Path("/etc/parkwatch/secrets/mqtt-cloud").read_text() == secret_before
    r["rerun_kept_root"] = (
        Path("/var/lib/parkwatch-cloud/tuf-repo/metadata/root.json").read_bytes() == root_before
    )
    services_up(r, "rerun")


if __name__ == "__main__":
    run_checks("cloud_boot1", body)
