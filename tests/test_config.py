"""Config trees: examples validate; bad files name file, key and problem; secrets never inline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.config import CloudConfig
from edge.config import EdgeConfig
from shared.config import SecretRef, load_config
from shared.errors import ConfigError, SecretError

REPO = Path(__file__).resolve().parent.parent
PARKWATCH = [str(Path(sys.executable).parent / "parkwatch")]


def test_shipped_examples_are_valid() -> None:
    load_config(CloudConfig, REPO / "provisioning" / "cloud.example.toml")
    load_config(EdgeConfig, REPO / "provisioning" / "edge.example.toml")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[device]\nid = "a"\nsite = "b"\n[mqtt]\nprot = 1883\n', "mqtt.prot", "unknown key"),
        ('[device]\nid = "a"\n', "device.site", "required key is missing"),
        ('[device]\nid = "a"\nsite = "b"\n[mqtt]\nport = 70000\n', "mqtt.port", "less than or equal"),
        ('[device]\nid = "a b"\nsite = "b"\n', "device.id", "letters, digits"),
        (
            '[device]\nid = "a"\nsite = "b"\n[[cameras]]\nid = "c"\nkind = "vhs"\nurl = "x"\n',
            "cameras[1].kind",  # positions count from 1, as people count [[cameras]] blocks
            "Input should be",
        ),
        ('[device\nid = "a"', "<syntax>", "invalid TOML"),
        (
            '[device]\nid = "a"\nsite = "b"\n[mqtt]\npassword = "hunter2"\n',
            "mqtt.password",
            "valid dictionary",
        ),
        ('[device]\nid = "a"\nsite = "b"\n[telemetry]\ninterval_s = inf\n', "telemetry.interval_s", "finite"),
    ],
)
def test_bad_edge_config_names_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(EdgeConfig, path)
    assert info.value.key == key
    assert problem in info.value.problem
    assert info.value.path == str(path)


def test_duplicate_camera_ids_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    cam = '[[cameras]]\nid = "c1"\nkind = "folder"\nurl = "/x"\n'
    path.write_text('[device]\nid = "a"\nsite = "b"\n' + cam + cam)
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(EdgeConfig, path)


def test_secret_from_env_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    ref = SecretRef(env="PW_TEST_VAR", file=secret_file)
    monkeypatch.delenv("PW_TEST_VAR", raising=False)
    assert ref.resolve() == "from-file"
    monkeypatch.setenv("PW_TEST_VAR", "from-env")
    assert ref.resolve() == "from-env"
    with pytest.raises(SecretError, match="cannot read secret file"):
        SecretRef(file=tmp_path / "missing").resolve("mqtt.password")
    monkeypatch.delenv("PW_TEST_VAR")
    with pytest.raises(SecretError, match="PW_TEST_VAR is not set"):
        SecretRef(env="PW_TEST_VAR").resolve()
    with pytest.raises(ValueError, match="environment variable"):
        SecretRef()


@pytest.mark.parametrize("side", ["edge", "cloud"])
def test_config_check_cli_exit_codes(tmp_path: Path, side: str) -> None:
    bad = tmp_path / f"{side}.toml"
    bad.write_text(
        "[mqtt]\nhots = 'x'\n" if side == "cloud" else '[device]\nid="a"\nsite="b"\n[mqtt]\nhots=1\n'
    )
    res = subprocess.run([*PARKWATCH, side, "config", "check", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert str(bad) in res.stderr and "mqtt.hots" in res.stderr and "unknown key" in res.stderr
    res = subprocess.run(
        [*PARKWATCH, side, "config", "check", "--json", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert '"key": "mqtt.hots"' in res.stdout
    good = tmp_path / f"{side}.example.toml"
    token = tmp_path / "status-token"  # the example names the token file install-edge.sh creates
    token.write_text("t0ken\n")
    text = (REPO / "provisioning" / f"{side}.example.toml").read_text()
    # the example's placeholders (CHANGE-ME, box-01) are refused until edited: edit them as a user would
    text = text.replace("CHANGE-ME", "s3cret").replace('id = "box-01"', 'id = "box-07"')
    good.write_text(text.replace("/etc/parkwatch/status-token", str(token)))
    res = subprocess.run(
        [*PARKWATCH, side, "config", "check", "--json", str(good)],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    assert res.returncode == 0, res.stderr
    assert '"ok": true' in res.stdout
    # no PATH: $PARKWATCH_CONFIG names the file, as for every other command (issue 15, D20)
    res = subprocess.run(
        [*PARKWATCH, side, "config", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, "PARKWATCH_CONFIG": str(bad)},
    )
    assert res.returncode == 2 and str(bad) in res.stderr and "mqtt.hots" in res.stderr, res.stderr


def test_inference_threads_auto_leaves_a_core_for_the_cameras(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.config import InferenceConfig

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert InferenceConfig().effective_threads == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert InferenceConfig().effective_threads == 1
    assert InferenceConfig(threads=2).effective_threads == 2


def test_edge_check_and_run_refuse_unreadable_secrets_naming_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        '[device]\nid = "a"\nsite = "b"\n[status_page]\ntoken = { file = "/nonexistent/token" }\n'
        f'[model]\ninitial = "{tmp_path / "no-model"}"\n'
    )
    for args in (["edge", "config", "check", str(cfg)], ["edge", "run", "--config", str(cfg)]):
        res = subprocess.run([*PARKWATCH, *args], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert f"config {cfg}: key status_page.token" in res.stderr and "/nonexistent/token" in res.stderr
    cfg.write_text(f'[device]\nid = "a"\nsite = "b"\n[model]\ninitial = "{tmp_path / "no-model"}"\n')
    res = subprocess.run([*PARKWATCH, "edge", "config", "check", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 0
    assert "warning: no [[cameras]]" in res.stdout and "does not exist" in res.stdout
