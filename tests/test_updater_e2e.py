"""The edge updater against the real broker, the real ReleaseService and real TUF metadata."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from cloud.release.repo import ROLLOUT
from edge.updater.updater import active_package
from shared.broker import EmbeddedBroker
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import Classifier, Setup, version_of, wait_for


@pytest.fixture
def setup(tmp_path: Path, broker: EmbeddedBroker, baseline_package: Path) -> Iterator[Setup]:  # noqa: F811
    s = Setup(tmp_path, broker, baseline_package)
    try:
        yield s
    finally:
        s.close()


def test_good_model_is_verified_self_tested_and_swapped_while_classifying(setup: Setup) -> None:
    assert setup.updater.check_once() == "current"  # group points at 1.0.0, which runs already
    with Classifier(setup.host.model_slot, setup.v1 / "golden" / "00-cat.jpg") as clf:
        setup.ch.rollout("2.0.0", "staging", "eng-bob", "new model")
        before = clf.count
        assert setup.updater.check_once() == "active"
        during = clf.count
        wait_for(lambda: clf.count > during + 3, 10, "classification after the swap")
    assert during > before  # frames kept being classified while the update ran
    assert not clf.errors
    assert clf.versions == {"1.0.0", "2.0.0"}
    slot = setup.host.model_slot
    assert version_of(slot.current) == "2.0.0" and version_of(slot.previous) == "1.0.0"
    names = [s.state for s in setup.host.states]
    assert names[-4:] == ["downloading", "verifying", "self-testing", "active"]
    assert active_package(setup.ecfg) == setup.ecfg.state_dir / "updater" / "models" / "2.0.0"
    # the cloud saw the retained state
    wait_for(lambda: setup.ch.status("staging").groups["staging"].active == 1, 10, "cloud status")


def test_rollback_reinstalls_the_previous_version(setup: Setup) -> None:
    setup.ch.rollout("2.0.0", "staging", "eng-bob", "new model")
    assert setup.updater.check_once() == "active"
    result = setup.ch.rollback("staging", "eng-bob", "customer complaint")
    assert result.version == "1.0.0" and result.rolled_back == "2.0.0"
    assert setup.updater.check_once() == "active"
    assert version_of(setup.host.model_slot.current) == "1.0.0"
    assert version_of(setup.host.model_slot.previous) == "2.0.0"


def test_boxes_follow_key_rotation_and_refuse_the_retired_key(setup: Setup) -> None:
    assert setup.updater.check_once() == "current"
    old_rollout = setup.ch.keys.load("rollout")[0]
    for role in ("root", "timestamp", "rollout", "approver"):
        setup.ch.keys_rotate(role, "sec-officer", "yearly rotation")
    assert setup.ch.repo.root().signed.version == 4  # root, timestamp and approver changed root.json
    setup.ch.rollout("2.0.0", "staging", "eng-bob", "after rotation")
    assert setup.updater.check_once() == "active"  # the box walked 1 -> 4.root.json by itself
    assert version_of(setup.host.model_slot.current) == "2.0.0"
    # the retired rollout key is worthless now: metadata signed with it is refused
    setup.ch.rollback("staging", "eng-bob", "test")
    snap = setup.ch.repo.snapshot().signed.meta[f"{ROLLOUT}.json"].version
    path = setup.ch.repo.metadata_dir / f"{snap}.{ROLLOUT}.json"
    md = Metadata.from_bytes(path.read_bytes())
    md.signatures.clear()
    md.sign(old_rollout.signer)
    path.write_bytes(md.to_bytes())
    assert setup.updater.check_once() == "failed"
    assert "untrusted signature" in (setup.host.states[-1].reason or "")
    assert version_of(setup.host.model_slot.current) == "2.0.0"
    assert (setup.ch.keys.keys_dir / "retired" / old_rollout.path.name).exists()


def test_the_pipelines_own_tarball_is_shipped_as_is(setup: Setup, baseline_package: Path) -> None:  # noqa: F811
    from cloud.registry.models import ModelRecord
    from cloud.registry.store import Registry
    from shared.modelpkg import read_manifest
    from tests.release_support import PASSING_METRICS

    version = read_manifest(baseline_package).model_version
    tarball = baseline_package.parent / f"{baseline_package.name}.tar.gz"
    assert tarball.is_file(), "the build pipeline writes <package>.tar.gz beside the folder"
    with Registry(setup.cfg.paths.registry_db) as reg:
        reg.register_model(
            ModelRecord(
                version=version,
                gate_passed=True,
                metrics=PASSING_METRICS,
                package_dir=str(baseline_package),
                tarball=str(tarball),
                tarball_sha256="",
            )
        )
    setup.ch.approve(version, "staging", "qa-anna", "baseline")
    import hashlib

    assert (
        setup.ch.repo.builds()[version].hashes["sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    )
    setup.ch.rollout(version, "staging", "eng-bob", "baseline as shipped")
    assert setup.updater.check_once() == "active"
    assert version_of(setup.host.model_slot.current) == version
