"""Attacks on the release channel, each refused with a clear reason while the box keeps classifying.

The attacker controls what the cloud side serves (the repository files behind the responder),
which is what a compromised server or a man in the middle could do. Real broker, real TUF.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from cloud.release.repo import PIPELINE, ROLLOUT, TOP
from shared.broker import EmbeddedBroker
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import Classifier, Setup, version_of, wait_for


@pytest.fixture
def setup(tmp_path: Path, broker: EmbeddedBroker, baseline_package: Path) -> Iterator[Setup]:  # noqa: F811
    s = Setup(tmp_path, broker, baseline_package)
    try:
        assert s.updater.check_once() == "current"
        yield s
    finally:
        s.close()


def refused(s: Setup, *words: str) -> str:
    """Run a check while classifying; assert it failed, mentions ``words``, and nothing changed."""
    with Classifier(s.host.model_slot, s.v1 / "golden" / "01-cat.jpg") as clf:
        assert s.updater.check_once() == "failed"
        count = clf.count
        wait_for(lambda: clf.count > count + 2, 10, "classification after the refusal")
    assert not clf.errors and clf.versions == {"1.0.0"}
    assert version_of(s.host.model_slot.current) == "1.0.0"
    last = s.host.states[-1]
    assert last.state == "failed" and last.active_version == "1.0.0"
    reason = last.reason or ""
    for w in words:
        assert w in reason, f"{w!r} not in {reason!r}"
    return reason


def blob(s: Setup, version: str) -> Path:
    sha = s.ch.repo.builds()[version].hashes["sha256"]
    return s.ch.repo.blob_path(sha)


def latest(s: Setup, role: str) -> Path:
    v = s.ch.repo.snapshot().signed.meta[f"{role}.json"].version
    return s.ch.repo.metadata_dir / f"{v}.{role}.json"


def test_tampered_target_is_refused(setup: Setup) -> None:
    setup.ch.rollout("2.0.0", "staging", "eng", "new")
    b = blob(setup, "2.0.0")
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 0xFF
    b.write_bytes(bytes(data))
    refused(setup, "hash or length mismatch", "tampered")
    assert not list((setup.ecfg.state_dir / "updater" / "cache").glob("*.part"))  # bad bytes not kept


def test_truncated_transfer_is_refused(setup: Setup) -> None:
    setup.ch.rollout("2.0.0", "staging", "eng", "new")
    b = blob(setup, "2.0.0")
    b.write_bytes(b.read_bytes()[: b.stat().st_size // 3])
    refused(setup, "length", "truncated")


def test_target_signed_by_the_wrong_key_is_refused(setup: Setup) -> None:
    setup.ch.rollout("2.0.0", "staging", "eng", "new")
    path = latest(setup, ROLLOUT)
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures.clear()
    md.sign(CryptoSigner.generate_ed25519())  # an attacker's key, not the rollout key
    path.write_bytes(md.to_bytes())
    refused(setup, "untrusted signature")


def test_approval_signed_with_the_pipeline_key_is_refused(setup: Setup) -> None:
    """The pipeline key cannot stand in for the approver's: a separate key, and TUF knows it."""
    setup.ch.repo.set_approval("2.0.0", ["staging"])  # a new approver-signed version the box must fetch
    setup.ch.rollout("2.0.0", "staging", "eng", "new")
    path = latest(setup, TOP)
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures.clear()
    md.sign(setup.ch.keys.load(PIPELINE)[0].signer)
    path.write_bytes(md.to_bytes())
    refused(setup, "untrusted signature", "targets")


def test_replayed_older_metadata_is_refused(setup: Setup) -> None:
    old = (setup.ch.repo.metadata_dir / "timestamp.json").read_bytes()
    setup.ch.repo.refresh(force=True)
    assert setup.updater.check_once() == "current"  # the box now trusts the newer timestamp
    setup.ch.rollout("2.0.0", "staging", "eng", "new")
    (setup.ch.repo.metadata_dir / "timestamp.json").write_bytes(old)  # replay
    refused(setup, "rollback or mix-and-match", "timestamp")


def test_expired_timestamp_is_refused(setup: Setup) -> None:
    setup.ch.rollout("2.0.0", "staging", "eng", "new")
    # A freeze: fresh metadata is held back and a correctly signed but expired view is served.
    # The service's own freshness loop would re-sign at once, so it is paused (responder still runs).
    setup.svc._stop.set()
    setup.svc._wake.set()
    assert setup.svc._thread is not None
    setup.svc._thread.join(10)
    setup.ch.repo.write_expired_timestamp()
    refused(setup, "expired metadata", "freeze")
    # once the repository is fresh again the update goes through
    setup.ch.repo.refresh(force=True)
    assert setup.updater.check_once() == "active"
    assert version_of(setup.host.model_slot.current) == "2.0.0"


def test_mix_and_match_snapshot_is_refused(setup: Setup) -> None:
    old_snapshot = setup.ch.repo.snapshot()
    setup.ch.rollout("2.0.0", "staging", "eng", "new")
    current = setup.ch.repo.timestamp().signed.snapshot_meta.version
    # serve the old (validly signed) snapshot where the timestamp names the new one
    (setup.ch.repo.metadata_dir / f"{current}.snapshot.json").write_bytes(old_snapshot.to_bytes())
    refused(setup, "rollback or mix-and-match", "snapshot")


def test_unapproved_version_is_refused_even_with_valid_rollout_key(setup: Setup) -> None:
    """A stolen online rollout key alone cannot ship a build that QA never approved."""
    from tests.release_support import make_version, register

    v3 = make_version(setup.v1, setup.pkgs, "3.0.0")
    register(setup.cfg, v3, "3.0.0")
    setup.ch.publish_build("3.0.0")
    from shared.protocol.targets import group_path

    build = setup.ch.repo.builds()["3.0.0"]
    from tuf.api.metadata import TargetFile

    def point(t):  # type: ignore[no-untyped-def]
        t.targets[group_path("staging")] = TargetFile(
            build.length,
            build.hashes,
            group_path("staging"),
            {"parkwatch": {"version": "3.0.0", "group": "staging"}},
        )

    setup.ch.repo._update_targets(ROLLOUT, point)
    refused(setup, "no approver signature")
    shutil.rmtree(setup.pkgs / "3.0.0")
