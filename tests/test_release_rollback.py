"""Automatic rollback: on self-test failures reported by real updaters, and on health thresholds."""

from __future__ import annotations

from pathlib import Path

from cloud.release.config import ReleaseConfig
from cloud.release.watch import HealthSample, Progress, judge
from shared.broker import EmbeddedBroker
from shared.protocol import Kind, Telemetry, Topics, encode
from shared.records import jsonable
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import Setup, make_version, register, version_of, wait_for


def test_self_test_failure_rolls_the_group_back(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    s = Setup(tmp_path, broker, baseline_package)
    try:
        assert s.updater.check_once() == "current"
        bad = make_version(baseline_package, s.pkgs, "3.0.0", break_golden=True)
        register(s.cfg, bad, "3.0.0")
        s.ch.approve("3.0.0", "staging", "qa-anna", "try it")
        s.ch.rollout("3.0.0", "staging", "eng", "new")
        assert s.updater.check_once() == "failed"
        last = s.host.states[-1]
        assert last.reason and last.reason.startswith("self-testing") and "golden sample" in last.reason
        assert version_of(s.host.model_slot.current) == "1.0.0"
        # the service sees the retained failure and rolls the group back on its own
        wait_for(
            lambda: any(e.action == "auto-rollback" for e in s.ch.audit_entries()),
            20,
            "automatic rollback in the audit log",
        )
        assert s.ch.repo.groups()["staging"] == "1.0.0"
        r = s.ch.latest_rollout("staging")
        assert r is not None and r.kind == "auto-rollback" and r.version == "1.0.0"
        assert s.updater.check_once() == "current"
    finally:
        s.close()


def test_latency_breach_after_deploy_rolls_the_group_back(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    s = Setup(tmp_path, broker, baseline_package)
    try:
        s.svc.cfg.release.max_latency_p99_ms = 300.0
        assert s.updater.check_once() == "current"
        topic = Topics.device("park1", "box1", Kind.TELEMETRY)

        def telemetry(version: str, p99: float) -> None:
            t = Telemetry(
                device="box1",
                site="park1",
                cpu_percent=20,
                memory_percent=30,
                disk_percent=40,
                uptime_process_s=100,
                uptime_system_s=1000,
                latency_ms={"p50": p99 / 3, "p99": p99},
                model_version=version,
                abstain_rate=0.05,
            )
            s.host.mqtt.publish(topic, encode(t)).wait_for_publish(5)

        telemetry("1.0.0", 40.0)
        s.ch.rollout("2.0.0", "staging", "eng", "new")
        assert s.updater.check_once() == "active"
        telemetry("2.0.0", 45.0)  # healthy: nothing happens
        wait_for(
            lambda: getattr(s.ch.latest_rollout("staging"), "status", None) == "succeeded",
            20,
            "rollout succeeded",
        )
        telemetry("2.0.0", 900.0)  # the new model is far too slow on this box
        wait_for(
            lambda: any(e.action == "auto-rollback" for e in s.ch.audit_entries()),
            20,
            "automatic rollback on latency",
        )
        r = s.ch.latest_rollout("staging")
        assert r is not None and r.version == "1.0.0" and "latency" in r.reason
        assert s.updater.check_once() == "active"
        assert version_of(s.host.model_slot.current) == "1.0.0"
    finally:
        s.close()


def _cfg() -> ReleaseConfig:
    return ReleaseConfig(
        watch_window_s=600, max_latency_p99_ms=200, max_abstain_rate_jump=0.2, max_inference_errors=5
    )


def _s(dev: str, ts: float, ver: str, errors: int = 0, p99: float = 50, abstain: float = 0.1) -> HealthSample:
    return HealthSample(dev, ts, ver, errors, p99, abstain)


def test_health_rules() -> None:
    cfg, ok = _cfg(), Progress(2, 1)
    base = [_s("a", 90, "v1"), _s("b", 90, "v1")]
    assert judge("v2", 100, 150, ok, [*base, _s("a", 110, "v2"), _s("a", 140, "v2")], cfg).action == "none"
    v = judge("v2", 100, 150, ok, [*base, _s("a", 110, "v2", errors=1), _s("a", 140, "v2", errors=9)], cfg)
    assert v.action == "rollback" and "inference errors" in (v.reason or "")
    v = judge("v2", 100, 150, ok, [*base, _s("a", 110, "v2", p99=900), _s("b", 111, "v2", p99=800)], cfg)
    assert v.action == "rollback" and "latency" in (v.reason or "")
    v = judge(
        "v2", 100, 150, ok, [*base, _s("a", 110, "v2", abstain=0.5), _s("b", 111, "v2", abstain=0.45)], cfg
    )
    assert v.action == "rollback" and "abstain" in (v.reason or "")
    # outside the watch window nothing is rolled back automatically
    late = judge("v2", 100, 100 + 601, ok, [*base, _s("a", 110, "v2", p99=900)], cfg)
    assert late.action == "none"
    assert judge("v2", 100, 150, Progress(2, 2), base, cfg).action == "succeeded"
    failed = Progress(2, 1, failed=[{"device": "b", "reason": "self-testing: golden sample"}])
    assert judge("v2", 100, 150, failed, base, cfg).action == "rollback"


def test_a_refused_release_is_counted_shown_and_rolled_back_as_a_rollback(
    tmp_path: Path,
    broker: EmbeddedBroker,
    baseline_package: Path,  # noqa: F811
) -> None:
    """A TUF refusal happens before the box knows the version: its failed state names none.
    It must still count against the rollout, show with its reason, and roll the group back;
    the rollback must then be reported as a rollback from 2.0.0, not as a rollout."""
    from tuf.api.metadata import Metadata

    from cloud.cli.release import _status_text
    from cloud.release.repo import PIPELINE, TOP

    s = Setup(tmp_path, broker, baseline_package)
    try:
        ch = s.ch
        assert ch is not None and s.updater.check_once() == "current"
        ch.repo.set_approval("2.0.0", ["staging"])  # a new targets version the box must fetch
        ch.rollout("2.0.0", "staging", "eng", "new")
        v = ch.repo.snapshot().signed.meta[f"{TOP}.json"].version
        path = ch.repo.metadata_dir / f"{v}.{TOP}.json"
        md = Metadata.from_bytes(path.read_bytes())
        md.signatures.clear()
        md.sign(ch.keys.load(PIPELINE)[0].signer)  # not a key root trusts for targets
        path.write_bytes(md.to_bytes())
        assert s.updater.check_once() == "failed"
        last = s.host.states[-1]
        assert last.version is None and "untrusted signature" in (last.reason or "")
        wait_for(
            lambda: any(e.action == "auto-rollback" for e in ch.audit_entries()),
            20,
            "automatic rollback after a refusal that names no version",
        )
        withdrawn = ch.rollouts.history("staging")[1]
        assert withdrawn.version == "2.0.0" and withdrawn.status == "rolled_back"
        assert "untrusted signature" in (withdrawn.status_reason or "")
        g = ch.status("staging").groups["staging"]
        assert g.rollout is not None
        assert g.rollout["kind"] == "auto-rollback" and g.rollout["rolled_back_from"] == "2.0.0"
        text = _status_text(jsonable(ch.status("staging")))
        assert "auto-rollback 2.0.0 -> 1.0.0 by" in text and "untrusted signature" in text
        # the repository is repaired (targets re-signed with the approver key): the box settles
        # on 1.0.0 and the rollback is reported as a rollback
        ch.repo._update_targets(TOP, lambda t: None)
        assert s.updater.check_once() == "current"
        wait_for(
            lambda: any(e.action == "rollback-succeeded" for e in ch.audit_entries()),
            20,
            "the rollback reported as succeeded",
        )
        e = next(e for e in ch.audit_entries() if e.action == "rollback-succeeded")
        assert e.details["rolled_back_from"] == "2.0.0" and e.details["version"] == "1.0.0"
        assert not any(
            e.action == "rollout-succeeded" and e.details["version"] == "1.0.0"
            for e in ch.audit_entries()[-3:]
        )
    finally:
        s.close()
