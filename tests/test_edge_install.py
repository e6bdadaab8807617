"""install-edge.sh / uninstall-edge.sh for real, into a temporary tree on this machine.

systemd is not PID 1 here, so this file checks the unit with ``systemd-analyze verify`` and runs
its ExecStart by hand with a real notify socket (what systemd would do).
tests/test_systemd_edge.py does the rest under a real systemd in a booted Debian container:
enabling and starting the service, the service user, the sandbox, the watchdog and reboots.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edge.outbox import Outbox
from tests.edge_fixtures import make_tiny_package

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "provisioning" / "install-edge.sh"
UNINSTALL = REPO / "provisioning" / "uninstall-edge.sh"


def env_for(tree: Path) -> dict[str, str]:
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")},
        "PARKWATCH_PREFIX": str(tree / "opt/parkwatch"),
        "PARKWATCH_ETC": str(tree / "etc/parkwatch"),
        "PARKWATCH_STATE": str(tree / "var/lib/parkwatch"),
        "PARKWATCH_UNIT_DIR": str(tree / "etc/systemd/system"),
        "PARKWATCH_USER": user,
        "PARKWATCH_CREATE_USER": "0",
        "PARKWATCH_SYSTEMCTL": "0",
        "PARKWATCH_PYTHON": shutil.which("python3") or "python3",
    }


def run(script: Path, env: dict[str, str], *args: str) -> str:
    p = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def purge_all(env: dict[str, str]) -> None:
    """--purge, adding --yes only if the script refuses because predictions are waiting."""
    p = subprocess.run(["bash", str(UNINSTALL), "--purge"], env=env, capture_output=True, text=True)
    if p.returncode != 0:
        assert "were never received by the cloud" in p.stderr, p.stderr
        run(UNINSTALL, env, "--purge", "--yes")


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every run of the script pip-installs the venv: minutes when loaded
def test_install_is_idempotent_runs_as_the_unit_says_and_uninstalls(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    env = env_for(tree)
    pkg = make_tiny_package(tmp_path / "pkg", "inst-1")
    cloud_toml = tmp_path / "cloud.toml"
    # The approver's key lives off the server, as install-cloud.sh and docs/approver.md set it up.
    cloud_toml.write_text(
        f'data_dir = "{tmp_path / "cloud"}"\n[release]\napprover_keys_dir = "{tmp_path / "approver-keys"}"\n'
    )
    keys = subprocess.run(
        [
            str(Path(sys.executable).parent / "parkwatch"),
            "cloud",
            "keys",
            "init",
            "--as",
            "test",
            "--json",
            "--config",
            str(cloud_toml),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    trusted_root = json.loads(keys.stdout)["trusted_root"]
    out = run(INSTALL, env, "--model", str(pkg), "--trusted-root", trusted_root)
    prefix, etc, state = tree / "opt/parkwatch", tree / "etc/parkwatch", tree / "var/lib/parkwatch"
    assert (etc / "root.json").read_bytes() == Path(trusted_root).read_bytes()
    assert f'trusted_root = "{etc}/root.json"' in (etc / "edge.toml").read_text()
    unit = tree / "etc/systemd/system/parkwatch-edge.service"
    assert "model inst-1 loads" in out
    assert (prefix / "venv/bin/parkwatch").exists()
    assert (prefix / "models/initial/model.onnx").exists()
    # the edge venv never gets torch
    probe = subprocess.run([str(prefix / "venv/bin/python"), "-c", "import torch"], capture_output=True)
    assert probe.returncode != 0
    conf = (etc / "edge.toml").read_text()
    assert f'state_dir = "{state}"' in conf and str(etc / "status-token") in conf
    token = (etc / "status-token").read_text().strip()
    assert len(token) >= 24 and oct((etc / "status-token").stat().st_mode & 0o777) == "0o640"
    text = unit.read_text()
    assert not re.search(r"@[A-Z]+@", text)  # every placeholder filled in
    assert f"ExecStart={prefix}/venv/bin/parkwatch edge run --config {etc}/edge.toml" in text
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        f"ReadWritePaths={state}",
    ):
        assert directive in text
    if shutil.which("systemd-analyze"):
        v = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        problems = [ln for ln in (v.stdout + v.stderr).splitlines() if "parkwatch-edge.service" in ln]
        assert not problems, v.stdout + v.stderr

    # Second run: config and token kept (a technician's edits survive an update).
    (etc / "edge.toml").write_text(conf.replace('id = "box-01"', 'id = "box-77"'))
    out2 = run(INSTALL, env)
    assert "kept existing" in out2
    assert 'id = "box-77"' in (etc / "edge.toml").read_text()
    assert (etc / "status-token").read_text().strip() == token

    # Run the unit's ExecStart the way systemd would: notify socket, watchdog, SIGTERM.
    conf = (etc / "edge.toml").read_text()
    conf = conf.replace("port = 8080", "port = 0").replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
    (etc / "edge.toml").write_text(conf)
    exec_start = re.search(r"^ExecStart=(.+)$", text, re.M)
    assert exec_start is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(60)
    log = (tmp_path / "svc.log").open("w")
    proc = subprocess.Popen(
        shlex.split(exec_start.group(1)),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "2000000"},
    )
    try:
        assert sock.recv(1024).startswith(b"READY=1")
        assert sock.recv(1024) == b"WATCHDOG=1"
        m = None
        for _ in range(100):
            m = re.search(r"status page on (http://\S+)", (tmp_path / "svc.log").read_text())
            if m:
                break
            time.sleep(0.1)
        assert m, (tmp_path / "svc.log").read_text()
        api = httpx.get(m.group(1) + "/api/status", headers={"Authorization": f"Bearer {token}"}).json()
        assert api["model"]["version"] == "inst-1" and api["device"] == "box-77"
        assert api["cameras"][0]["id"] == "entrance"
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
        log.close()
    assert (state / "outbox.db").exists()

    # Uninstall keeps config and data; --purge removes them; both are safe to repeat.
    run(UNINSTALL, env)
    assert not (prefix / "venv").exists() and not unit.exists()
    assert (etc / "edge.toml").exists() and (state / "outbox.db").exists()
    run(UNINSTALL, env)
    purge_all(env)
    assert not etc.exists() and not state.exists() and not prefix.exists()
    run(UNINSTALL, env, "--purge")


def test_installer_refuses_bad_input_clearly(tmp_path: Path) -> None:
    env = env_for(tmp_path / "root")
    p = subprocess.run(
        ["bash", str(INSTALL), "--model", str(tmp_path / "missing")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "does not exist" in p.stderr
    p = subprocess.run(
        ["bash", str(INSTALL), "--frobnicate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 1 and "unknown argument" in p.stderr
    not_root = tmp_path / "root.json"
    not_root.write_text('{"signed": {"_type": "targets"}}')
    p = subprocess.run(
        ["bash", str(INSTALL), "--trusted-root", str(not_root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "is not a TUF root.json" in p.stderr
    p = subprocess.run(
        ["bash", str(INSTALL)],
        env={**env, "PARKWATCH_PYTHON": "/nonexistent/python"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1 and "python3-venv" in p.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every run of the script pip-installs the venv: minutes when loaded
def test_a_bad_model_is_refused_in_one_line_and_the_working_model_stays(tmp_path: Path) -> None:
    """Issue 15 A3: re-running the installer with a bad --model used to delete the working model
    first and then die with a traceback, leaving the box without a model at its next start."""
    tree = tmp_path / "root"
    env = env_for(tree)
    good = make_tiny_package(tmp_path / "good", "good-1")
    run(INSTALL, env, "--model", str(good))
    initial = tree / "opt/parkwatch/models/initial"
    before = (initial / "model.onnx").read_bytes()

    tampered = make_tiny_package(tmp_path / "tampered", "bad-2")
    (tampered / "model.onnx").write_bytes((tampered / "model.onnx").read_bytes() + b"\0")
    no_metadata = make_tiny_package(tmp_path / "nometa", "bad-3", with_metadata=False)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an ONNX file\n" * 10)
    cases = {
        "tampered": (tampered, "manifest"),
        "no metadata": (no_metadata, "parkwatch.labels"),
        "garbage": (garbage, "ONNX Runtime cannot load"),
    }
    for what, (bad, reason) in cases.items():
        p = subprocess.run(
            ["bash", str(INSTALL), "--model", str(bad)], env=env, capture_output=True, text=True, timeout=600
        )
        assert p.returncode == 1, (what, p.stdout, p.stderr)
        assert "Traceback" not in p.stdout + p.stderr, (what, p.stderr)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith("install-edge:")]
        assert len(errors) == 1 and "installed model was left as it was" in errors[0], (what, p.stderr)
        assert reason in errors[0], (what, errors[0])
        # the working model is untouched, loads, and no half-copied candidate is left behind
        assert (initial / "model.onnx").read_bytes() == before, what
        assert not list(initial.parent.glob(".incoming*")), what
    check = subprocess.run(
        [
            str(tree / "opt/parkwatch/venv/bin/python"),
            str(REPO / "provisioning/check_model.py"),
            str(initial),
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "model good-1 loads and runs" in check.stdout, check.stderr

    # A good replacement is swapped in whole: the link now names the new copy, the old is gone.
    newer = make_tiny_package(tmp_path / "newer", "good-2")
    out = run(INSTALL, env, "--model", str(newer))
    assert "model good-2 loads and runs" in out
    assert (
        initial.is_symlink() and (initial / "model.onnx").read_bytes() == (newer / "model.onnx").read_bytes()
    )
    assert sorted(p.name for p in initial.parent.iterdir()) == sorted(["initial", initial.resolve().name])
    run(UNINSTALL, env, "--purge", "--yes")
    assert not (tree / "opt/parkwatch").exists()


def fake_installed_box(tree: Path, env: dict[str, str], waiting: int) -> dict[str, Path]:
    """The files install-edge.sh leaves (without the slow venv), plus the secrets a technician
    adds, some outside /etc/parkwatch, and ``waiting`` real outbox rows."""
    etc, state = tree / "etc/parkwatch", tree / "var/lib/parkwatch"
    keys = tree / "srv/keys"
    for d in (etc, state, keys, tree / "opt/parkwatch/venv/bin", tree / "etc/systemd/system"):
        d.mkdir(parents=True, exist_ok=True)
    paths = {
        "token": etc / "status-token",
        "password": etc / "mqtt-password",
        "tls_key": keys / "box.key",
        "tls_cert": keys / "box.crt",
        "ca": keys / "ca.crt",
        "root": etc / "root.json",
        "unit": tree / "etc/systemd/system/parkwatch-edge.service",
        "venv": tree / "opt/parkwatch/venv/bin/python",
    }
    for p in paths.values():
        p.write_text("s3cret\n")
    (etc / "edge.toml").write_text(
        f'state_dir = "{state}"\n[device]\nid = "box-1"\nsite = "bcn"\n'
        f'[mqtt]\nusername = "box-1"\npassword = {{ file = "{paths["password"]}" }}\n'
        f'[mqtt.tls]\nca_file = "{paths["ca"]}"\ncert_file = "{paths["tls_cert"]}"\n'
        f'key_file = "{paths["tls_key"]}"\n'
        f'[status_page]\ntoken = {{ file = "{paths["token"]}" }}\n'
    )
    ob = Outbox(state / "outbox.db")
    ob.append(
        [
            {"ts": 1000.0 + i, "camera": "c1", "label": "cat", "confidence": 0.9, "model_version": "m1"}
            for i in range(waiting)
        ]
    )
    ob.close()
    return paths


def test_purge_counts_unsent_predictions_and_needs_yes_then_removes_every_secret(tmp_path: Path) -> None:
    """Issue 15 C16: --purge deleted unsent predictions without a word and left the MQTT password."""
    tree = tmp_path / "root"
    env = env_for(tree)
    paths = fake_installed_box(tree, env, waiting=37)
    etc, state = tree / "etc/parkwatch", tree / "var/lib/parkwatch"

    p = subprocess.run(["bash", str(UNINSTALL), "--purge"], env=env, capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "37 prediction(s)" in p.stderr and "never received by the cloud" in p.stderr
    assert "--purge --yes" in p.stderr and "Nothing was removed" in p.stderr
    # refused before touching anything: software, unit, config, secrets and rows all still there
    assert all(path.exists() for path in paths.values())
    ob = Outbox(state / "outbox.db")
    assert ob.backlog == 37
    ob.close()

    out = run(UNINSTALL, env, "--purge", "--yes")
    assert "deleting 37 unsent prediction(s)" in out
    for name, path in paths.items():
        if name != "ca":  # the CA certificate is public; it goes only if it sat in /etc/parkwatch
            assert not path.exists(), (name, out)
    assert paths["ca"].exists()
    assert not etc.exists() and not state.exists() and not (tree / "opt/parkwatch").exists()
    run(UNINSTALL, env, "--purge")  # nothing left: no refusal, nothing to ask


def test_purge_of_a_box_with_nothing_waiting_needs_no_yes(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    env = env_for(tree)
    paths = fake_installed_box(tree, env, waiting=0)
    out = run(UNINSTALL, env, "--purge")
    assert "unsent" not in out
    assert not paths["password"].exists() and not paths["tls_key"].exists()
    assert not (tree / "etc/parkwatch").exists()


def test_purge_refuses_an_unreadable_outbox_without_yes(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    env = env_for(tree)
    fake_installed_box(tree, env, waiting=1)
    (tree / "var/lib/parkwatch/outbox.db").write_bytes(b"not a database" * 100)
    p = subprocess.run(["bash", str(UNINSTALL), "--purge"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "cannot be read" in p.stderr, p.stderr
    assert (tree / "etc/parkwatch/edge.toml").exists()
    p = subprocess.run(["bash", str(UNINSTALL), "--yes"], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "--yes only goes with --purge" in p.stderr
