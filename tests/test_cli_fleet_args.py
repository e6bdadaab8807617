"""The fleet/analysis/alerts commands refuse bad arguments and a missing data folder at the command
line, and print what an operator can read: real TOML files, real SQLite data folders filled through
the real ingest path (inbox → materializer), no broker (every command here runs offline)."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cloud.config import CloudConfig
from cloud.dashboard.web import _when, make_templates
from cloud.fleet.inbox import Inbox, inbox_path
from cloud.fleet.materialize import Materializer
from cloud.fleet.store import FleetStore
from cloud.fleet.writer import CAUSE_LOST
from shared.cli import EXIT_USAGE, main
from shared.protocol import Kind, PredictionBatch, Telemetry, encode
from tests.simdevice import SimDevice
from tests.test_analysis_drift import register_model

EXIT_CONFIG = 2


def write_toml(path: Path, data_dir: Path, extra: str = "") -> Path:
    # Port 9 (discard): nothing here may talk to a broker; a command that tried would fail loudly.
    path.write_text(f'data_dir = "{data_dir}"\n{extra}\n[mqtt]\nhost = "127.0.0.1"\nport = 9\n')
    return path


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder as ingest leaves it: box1 at site 'nobase' runs a model with no registry entry
    (600 predictions, 5 lost in transit, one telemetry sample); box2 at site 'small' runs a
    registered model with a test-set baseline but sent only 20 predictions."""
    root = tmp_path_factory.mktemp("install")
    cfg = CloudConfig(data_dir=root / "cloud")
    register_model(cfg, "m-base")
    rows: list[tuple[str, bytes, float, bool]] = []
    now = time.time()
    box1 = SimDevice("127.0.0.1", 9, site="nobase", device="box1", model_version="m-unregistered", seed=3)
    box2 = SimDevice("127.0.0.1", 9, site="small", device="box2", model_version="m-base", seed=4)

    def batches(dev: SimDevice, n: int) -> None:
        preds = dev.make_predictions(n, ts=now - 600, spacing_s=0.5)
        for i in range(0, n, 100):
            msg = PredictionBatch(device=dev.device, site=dev.site, predictions=preds[i : i + 100])
            rows.append((dev.topic(Kind.PREDICTIONS), encode(msg), now, False))

    batches(box1, 300)
    box1.skip(5)
    batches(box1, 300)
    batches(box2, 20)
    tel = Telemetry(
        device="box1",
        site="nobase",
        cpu_percent=37.0,
        memory_percent=41.0,
        disk_percent=12.0,
        temperatures={"cpu": 55.5},
        uptime_process_s=100.0,
        uptime_system_s=1000.0,
        latency_ms={"p50": 14.0, "p95": 21.5, "p99": 25.0},
        inference_fps=4.0,
        model_version="m-unregistered",
        cameras={"cam1": {"state": "streaming", "fps": 4.0}},
    )
    rows.append((box1.topic(Kind.TELEMETRY), encode(tel), now, False))
    inbox = Inbox(inbox_path(cfg.paths, "w1"))
    inbox.append(rows)
    inbox.close()
    m = Materializer(cfg, "w1")
    try:
        while m.step():
            pass
    finally:
        m.close()
    with FleetStore(cfg.fleet_store) as fs:
        assert fs.prediction_count() == 620
        assert [g.cause for g in fs.gaps("box1")] == [CAUSE_LOST]
    write_toml(root / "cloud.toml", cfg.data_dir)
    return root


def cfg_arg(install: Path) -> list[str]:
    return ["--config", str(install / "cloud.toml")]


def drift_rows(install: Path) -> int:
    with sqlite3.connect(install / "cloud" / "fleet.db") as c:
        return int(c.execute("SELECT count(*) FROM drift").fetchone()[0])


# 1 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["-5", "0", "nan", "inf", "-inf", "1e400"])
def test_analyze_window_must_be_a_positive_finite_number(install: Path, bad: str) -> None:
    before = drift_rows(install)
    res = run("cloud", "analyze", "--no-alerts", f"--window={bad}", *cfg_arg(install))
    assert res.exit_code == EXIT_USAGE, res.output
    assert "--window" in res.output
    assert drift_rows(install) == before  # nothing ran, nothing written
    res = run("cloud", "analyze", "--no-alerts", f"--window={bad}", "--json", *cfg_arg(install))
    assert res.exit_code == EXIT_USAGE and json.loads(res.stdout)["kind"] == "usage"


def test_demo_duration_must_be_positive() -> None:
    res = run("cloud", "demo", "--duration", "-1", "--workdir", "/nonexistent/never-created")
    assert res.exit_code == EXIT_USAGE and "--duration" in res.output
    assert not Path("/nonexistent/never-created").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["alerts", "list", "--limit", "-1"],
        ["alerts", "list", "--limit", "0"],
        ["audit", "list", "--limit", "-1"],
    ],
)
def test_negative_limits_are_usage_errors_not_unlimited(install: Path, args: list[str]) -> None:
    res = run("cloud", *args, *cfg_arg(install))
    assert res.exit_code == EXIT_USAGE, res.output
    assert args[-2] in res.output  # names the option


def test_inbox_refuses_a_negative_dead_letter_count_and_takes_zero(install: Path) -> None:
    res = run("cloud", "inbox", "--dead-letters", "-5", *cfg_arg(install))
    assert res.exit_code == EXIT_USAGE and "--dead-letters" in res.output
    res = run("cloud", "inbox", "--dead-letters", "0", "--json", *cfg_arg(install))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dead_letters"] == []


def test_dashboard_time_filter_shows_out_of_range_timestamps_raw() -> None:
    """-Infinity in the drift table (an old `--window inf`) made /quality answer 500."""
    for ts, raw in ((float("-inf"), "-inf"), (float("nan"), "nan"), (-1e300, "-1e+300"), (1e300, "1e+300")):
        assert raw in str(_when(ts))
    page = make_templates().env.from_string("{{ ts | when }}").render(ts=float("-inf"))
    assert "-inf" in page
    assert '<time datetime="1970-01-01T00:00:00Z">' in str(_when(0.0))  # in range: unchanged


# 2 ------------------------------------------------------------------------------------------------
def test_analyze_summary_says_when_drift_was_not_judged(install: Path) -> None:
    res = run("cloud", "analyze", "--no-alerts", "--window", "86400", *cfg_arg(install))
    assert res.exit_code == 0, res.output
    lines = {ln.split(":")[0].strip(): ln for ln in res.output.splitlines() if " @ " in ln}
    nobase = lines["m-unregistered @ nobase"]
    assert nobase.startswith("  m-unregistered @ nobase: n=600; est. accuracy ")
    assert nobase.endswith("; no baseline (drift not judged)"), nobase
    small = lines["m-base @ small"]
    assert small.endswith("; fewer than 100 predictions (drift not judged)"), small
    assert " ;" not in res.output and not any(ln.endswith(" ok") for ln in lines.values())
    html = (install / "cloud" / "reports" / "analysis-latest.html").read_text()
    assert "no baseline (drift not judged)" in html
    assert re.search(r"too few predictions \(n=\d+\) \(drift not judged\)", html), html


# 3 ------------------------------------------------------------------------------------------------
def test_health_of_one_device_is_text_and_the_listing_has_a_header(install: Path) -> None:
    res = run("cloud", "health", "--device", "box1", *cfg_arg(install))
    assert res.exit_code == 0, res.output
    assert not res.output.lstrip().startswith("{")
    out = res.output
    assert "device box1 at site nobase" in out
    assert "5 prediction(s) missing" in out and f"seq 301-305 (5): {CAUSE_LOST}" in out
    assert "cpu 37 %" in out and "temp 55.5 °C" in out and "latency p95 21.5 ms" in out
    assert "\n  status   unknown" in out and "\n  health   " in out and "\n  seen     last " in out
    res = run("cloud", "health", "--device", "box1", "--json", *cfg_arg(install))
    d = json.loads(res.stdout)
    assert d["latest_telemetry"]["cpu_percent"] == 37.0 and d["gaps"][0]["missing"] == 5

    res = run("cloud", "health", "--check", *cfg_arg(install))
    assert res.exit_code == 0, res.output
    table, applied = res.output.split("\n\n", 1)
    header, *rows = table.splitlines()
    assert header.split()[:4] == ["DEVICE", "SITE", "HEALTH", "LAST"]
    assert [r.split()[0] for r in rows] == ["box1", "box2"]
    # Below the table, how current it is: each materializer's counters, from the fleet store.
    assert applied.startswith("ingest (materialized into the fleet store):"), applied
    assert "w1 " in applied and "620 predictions" in applied, applied


# 4 ------------------------------------------------------------------------------------------------
REPORTING = [
    ["health"],
    ["health", "--device", "box1"],
    ["alerts", "list"],
    ["alerts", "ack", "a1", "--actor", "ana"],
    ["alerts", "resolve", "a1", "--actor", "ana"],
    ["analyze", "--no-alerts"],
    ["lineage", "box1:1"],
    ["lineage", "m-base"],
    ["inbox"],
    ["label", "box1:1", "--as", "cat", "--actor", "ana"],
    ["models", "list"],
    ["models", "show", "m-base"],
    ["datasets", "list"],
    ["datasets", "show", "d1"],
]
REGISTRY_READERS = {
    ("lineage", "m-base"),
    ("models", "list"),
    ("models", "show"),
    ("datasets", "list"),
    ("datasets", "show"),
}


@pytest.mark.parametrize("args", REPORTING, ids=lambda a: " ".join(a[:2]))
def test_reporting_commands_refuse_a_missing_data_dir_and_create_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    typo = tmp_path / "clod"
    toml = write_toml(tmp_path / "cloud.toml", typo)
    res = run("cloud", *args, "--config", str(toml))
    assert res.exit_code == EXIT_CONFIG, res.output
    assert f"config {toml}: key data_dir: {typo} does not exist" in res.output
    assert "parkwatch cloud serve" in res.output
    assert not typo.exists()
    res = run("cloud", *args, "--config", str(toml), "--json")
    assert res.exit_code == EXIT_CONFIG and json.loads(res.stdout)["key"] == "data_dir"

    # The folder is there but nothing has written the database this command reads.
    typo.mkdir()
    res = run("cloud", *args, "--config", str(toml))
    assert res.exit_code == 1, res.output
    db = "registry.db" if tuple(args[:2]) in REGISTRY_READERS else "fleet.db"
    assert f"no {db.split('.')[0]} database {db} in {typo} (data_dir in {toml})" in res.output
    assert list(typo.iterdir()) == []


def test_config_check_warns_that_the_data_dir_does_not_exist_yet(tmp_path: Path) -> None:
    toml = write_toml(tmp_path / "cloud.toml", tmp_path / "not-yet")
    res = run("cloud", "config", "check", str(toml))
    assert res.exit_code == 0, res.output
    assert "warning: data_dir" in res.output and not (tmp_path / "not-yet").exists()


# 5 ------------------------------------------------------------------------------------------------
def test_config_check_reads_every_secret_serve_would_read(tmp_path: Path) -> None:
    hook_file = tmp_path / "hook.secret"
    toml = write_toml(
        tmp_path / "cloud.toml",
        tmp_path / "data",
        '[dashboard]\nsession_secret = { env = "R6_SECRET" }\n'
        '[governance]\nwebhook_url = "http://127.0.0.1:9/hook"\n'
        f'webhook_secret = {{ file = "{hook_file}" }}\n',
    )
    env: dict[str, str | None] = {"R6_SECRET": None}  # unset while the command runs
    res = run("cloud", "config", "check", str(toml), env=env)
    assert res.exit_code == EXIT_CONFIG, res.output
    # Every unreadable secret in one pass, each named by its key and where it was looked for.
    assert f"error: config {toml}: key governance.webhook_secret: cannot read secret file" in res.output
    assert str(hook_file) in res.output
    assert "dashboard.session_secret: environment variable R6_SECRET is not set" in res.output
    res = run("cloud", "config", "check", "--json", str(toml), env=env)
    out = json.loads(res.stdout)
    assert out["ok"] is False and out["key"] == "governance.webhook_secret" and "R6_SECRET" in out["problem"]

    hook_file.write_text("hook-key\n")
    res = run("cloud", "config", "check", str(toml), env={"R6_SECRET": "short"})
    assert res.exit_code == EXIT_CONFIG and "at least 16 characters" in res.output
    res = run("cloud", "config", "check", "--json", str(toml), env={"R6_SECRET": "x" * 32})
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [(s["key"], s["ok"]) for s in out["secrets"]] == [
        ("governance.webhook_secret", True),
        ("dashboard.session_secret", True),
    ]


def test_config_check_only_warns_about_a_secret_nothing_reads(tmp_path: Path) -> None:
    toml = write_toml(
        tmp_path / "cloud.toml",
        tmp_path / "data",
        '[governance]\nwebhook_secret = { env = "PW_UNSET_HOOK" }\n',  # no webhook_url: never read
    )
    res = run("cloud", "config", "check", str(toml), env={"PW_UNSET_HOOK": None})
    assert res.exit_code == 0, res.output
    assert "warning: governance.webhook_secret cannot be read" in res.output


# 6 ------------------------------------------------------------------------------------------------
def test_alerts_list_refuses_an_unknown_rule_naming_the_known_ones(install: Path) -> None:
    res = run("cloud", "alerts", "list", "--rule", "nosuchrule", *cfg_arg(install))
    assert res.exit_code == EXIT_USAGE, res.output
    assert "nosuchrule" in res.output and "device_offline" in res.output and "accuracy_drop" in res.output
    res = run("cloud", "alerts", "list", "--rule", "device_offline", *cfg_arg(install))
    assert res.exit_code == 0 and "no alerts" in res.output


# 7 ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["label", "box1:1", "--as", "cat", "--actor", "   "],
        ["alerts", "ack", "a1", "--actor", " "],
        ["alerts", "resolve", "a1", "--actor", "\t"],
        ["approve", "v1", "--stage", "staging", "--as", "  ", "--reason", "r"],
    ],
    ids=lambda a: a[0] if a[0] != "alerts" else f"alerts-{a[1]}",
)
def test_blank_actors_are_refused(install: Path, args: list[str]) -> None:
    res = run("cloud", *args, *cfg_arg(install))
    assert res.exit_code == EXIT_USAGE, res.output
    assert "must not be blank" in res.output


def test_blank_actor_from_the_environment_is_refused_too(install: Path) -> None:
    res = run("cloud", "label", "box1:1", "--as", "cat", *cfg_arg(install), env={"PARKWATCH_ACTOR": "  "})
    assert res.exit_code == EXIT_USAGE and "must not be blank" in res.output
    with FleetStore(install / "cloud" / "fleet.db") as fs:
        assert fs.feedback() == []
