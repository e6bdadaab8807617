"""install-cloud.sh on a fresh Debian host with systemd: units start, broker auth, re-run, security."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from common import PARAMS, http_ok, run_checks, sh, show, wait_for

SRC = "/src/parkwatch"
UNITS = ("mosquitto.service", "parkwatch-cloud.service", "parkwatch-cloud-materialize.service")


def install_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PARKWATCH_MQTT_PORT": str(PARAMS["mqtt_port"]),
        "PARKWATCH_MQTT_TLS_PORT": str(PARAMS["tls_port"]),
        "PARKWATCH_DASHBOARD_PORT": str(PARAMS["dashboard_port"]),
    }


def diagnostics() -> str:
    journal = sh(
        "journalctl",
        "-u",
        "parkwatch-cloud",
        "-u",
        "parkwatch-cloud-materialize",
        "-u",
        "mosquitto",
        "--no-pager",
        "-n",
        "80",
    )[1]
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


DATA = Path("/var/lib/parkwatch-cloud")
ROOT_JSON = DATA / "tuf-repo/metadata/root.json"
DISK = Path("/media/approver")  # stands in for the approver's removable disk
APPROVER_DIR = DISK / "parkwatch-keys"
VENV_SITE = Path("/opt/parkwatch/cloud-venv/lib")


def key_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.pem")) if folder.is_dir() else []


def installed_mismatches() -> list[str]:
    """Checkout .py files whose installed copy differs (a stale, restored venv would show here)."""
    site = next(VENV_SITE.glob("python3*/site-packages"))
    bad = []
    for f in sorted(Path(SRC).glob("*/**/*.py")):
        rel = f.relative_to(SRC)
        if rel.parts[0] in ("cloud", "shared", "edge"):
            inst = site / rel
            if not inst.is_file() or inst.read_bytes() != f.read_bytes():
                bad.append(str(rel))
    return bad


def body(r: dict[str, Any]) -> None:
    rc, out = sh("bash", f"{SRC}/provisioning/install-cloud.sh", env=install_env())
    r["install_rc"], r["install_out"] = rc, out
    if rc != 0:
        r["journal"] = diagnostics()
        return
    r["installed_matches"] = installed_mismatches()
    r["first_keys"] = key_files(DATA)
    r["first_root"] = ROOT_JSON.exists()
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

    # The operator follows the printed instruction with the approver's disk mounted.
    secret_before = Path("/etc/parkwatch/secrets/mqtt-cloud").read_text()
    DISK.mkdir(parents=True)
    env = {**install_env(), "PARKWATCH_APPROVER_KEYS_DIR": str(APPROVER_DIR)}
    rc, out = sh("bash", f"{SRC}/provisioning/install-cloud.sh", env=env)
    r["approver_rc"], r["approver_out"] = rc, out
    if rc != 0:
        return
    r["approver_config"] = (
        f'approver_keys_dir = "{APPROVER_DIR}"' in Path("/etc/parkwatch/cloud.toml").read_text()
    )
    r["approver_disk_keys"] = key_files(APPROVER_DIR)
    r["server_keys"] = key_files(DATA)
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from cloud.release.keys import load_key\n"
        f"root = json.loads(Path('{ROOT_JSON}').read_text())['signed']\n"
        "trusted = set(root['roles']['targets']['keyids'])\n"
        f"disk = {{load_key(p).keyid for p in Path('{APPROVER_DIR}').glob('approver-*.pem')}}\n"
        "print(bool(disk) and disk <= trusted)\n"
    )
    r["root_trusts_disk_key_out"] = sh("/opt/parkwatch/cloud-venv/bin/python", "-c", probe)[1]
    r["root_trusts_disk_key"] = r["root_trusts_disk_key_out"].strip().endswith("True")
    r["approver_kept_secret"] = Path("/etc/parkwatch/secrets/mqtt-cloud").read_text() == secret_before
    services_up(r, "approver")

    # The disk goes back to the approver; re-running keeps config, keys and credentials.
    DISK.rename("/root/approver-disk-away")
    root_before = ROOT_JSON.read_bytes()
    rc, out = sh("bash", f"{SRC}/provisioning/install-cloud.sh", env=install_env())
    r["rerun_rc"], r["rerun_out"] = rc, out
    r["rerun_kept_secret"] = Path("/etc/parkwatch/secrets/mqtt-cloud").read_text() == secret_before
    r["rerun_kept_root"] = ROOT_JSON.read_bytes() == root_before
    services_up(r, "rerun")


if __name__ == "__main__":
    run_checks("cloud_boot1", body)
