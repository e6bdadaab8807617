"""Approver keys: only a key root trusts may approve, each approver's name is tied to a key, and
`keys init` does not put the approver's key on the server unasked (issue 15, A2).

Real TUF repository, real broker, and a real box (the updater) that must accept what was
approved and never be handed an approval it would refuse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from tuf.api.metadata import Metadata

from cloud.cli import cloud
from cloud.registry import approvals
from cloud.release.channel import ReleaseChannel
from cloud.release.errors import KeyError_, RepositoryError, RolloutError
from cloud.release.keys import generate_key
from cloud.release.repo import TOP
from shared.broker import EmbeddedBroker
from tests.fixtures_models import baseline_package  # noqa: F401
from tests.release_support import (
    Setup,
    cloud_config,
    make_version,
    mqtt_cfg,
    register,
    write_cloud_toml,
)


@pytest.fixture
def setup(tmp_path: Path, broker: EmbeddedBroker, baseline_package: Path) -> Iterator[Setup]:  # noqa: F811
    s = Setup(tmp_path, broker, baseline_package)
    try:
        assert s.updater.check_once() == "current"
        v3 = make_version(s.v1, s.pkgs, "3.0.0")
        register(s.cfg, v3, "3.0.0")
        yield s
    finally:
        s.close()


def ch(s: Setup) -> ReleaseChannel:
    assert s.ch is not None
    return s.ch


def nothing_recorded(s: Setup, audit_before: int, targets_before: int) -> None:
    assert ch(s).registry.get_model("3.0.0").stage == "candidate"
    assert approvals.history(ch(s).registry, "3.0.0") == []
    assert len(ch(s).audit.entries()) == audit_before, "a refused approval left an audit entry"
    assert "3.0.0" not in ch(s).repo.builds(), "a refused approval published the build"
    assert ch(s).repo.role(TOP).signed.version == targets_before


def box_installs_3(s: Setup) -> None:
    ch(s).rollout("3.0.0", "staging", "eng-bob", "canary")
    assert s.updater.check_once() == "active", s.host.states[-1]
    cur = s.host.model_slot.current
    assert cur is not None and cur.version == "3.0.0"


def test_an_approver_key_root_does_not_trust_is_refused_and_records_nothing(setup: Setup) -> None:
    s = setup
    real = ch(s).keys.paths("approver")[0]
    trusted_id = ch(s).keys.load("approver")[0].keyid
    kept = real.with_name("kept.bak")
    os.replace(real, kept)
    stray = generate_key(real)  # e.g. a key made by a second 'keys init' elsewhere
    audit_before = len(ch(s).audit.entries())
    targets_before = ch(s).repo.role(TOP).signed.version
    with pytest.raises(RepositoryError, match="not a key the repository's root trusts") as e:
        ch(s).approve("3.0.0", "staging", "qa-anna", "report ok")
    assert stray.keyid[:16] in str(e.value) and "Nothing was signed or recorded" in str(e.value)
    nothing_recorded(s, audit_before, targets_before)
    with pytest.raises(RolloutError, match="not approved"):
        ch(s).rollout("3.0.0", "staging", "eng-bob", "canary")
    assert s.updater.check_once() == "current"  # the box was never handed an approval it refuses
    # with the key root trusts, the same approval goes through and names the key it used
    os.replace(kept, real)
    d = ch(s).approve("3.0.0", "staging", "qa-anna", "report ok")
    assert d.signed_by == [trusted_id]
    entry = ch(s).audit.entries("model:3.0.0")[-1]
    assert entry.action == "approve" and entry.details["signed_by"] == [trusted_id]
    assert entry.details["key_files"] == [real.name]
    box_installs_3(s)


def test_each_approver_signs_with_their_own_key_and_the_box_follows(setup: Setup) -> None:
    s = setup
    root_before = ch(s).repo.root().signed.version
    out = ch(s).keys_add_approver("Carla (QA)", "ops-maria", "new QA lead")
    assert Path(out.path).name == "approver-carla-qa.pem"
    assert ch(s).repo.root().signed.version == root_before + 1
    assert out.keyid in ch(s).repo.trusted_keyids("targets")
    audit_before = len(ch(s).audit.entries())
    targets_before = ch(s).repo.role(TOP).signed.version
    # once approvers have keys of their own, a name without one cannot approve
    with pytest.raises(KeyError_, match=r"no approver key for 'qa-anna'.*carla-qa"):
        ch(s).approve("3.0.0", "staging", "qa-anna", "report ok")
    nothing_recorded(s, audit_before, targets_before)
    d = ch(s).approve("3.0.0", "staging", "Carla (QA)", "report ok")
    assert d.signed_by == [out.keyid]
    md = Metadata.from_bytes(
        (ch(s).repo.metadata_dir / f"{ch(s).repo.role(TOP).signed.version}.targets.json").read_bytes()
    )
    assert set(md.signatures) == {out.keyid}  # Carla's key alone, not every key in the folder
    assert ch(s).audit.entries("model:3.0.0")[-1].details["signed_by"] == [out.keyid]
    box_installs_3(s)  # the box walked to the new root and trusts Carla's signature


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cloud, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_keys_init_refuses_to_put_the_approver_key_on_the_server(tmp_path: Path) -> None:
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1))
    toml = str(write_cloud_toml(cfg, tmp_path / "cloud.toml"))
    code, _, err = run("keys", "init", "--as", "ops", "--config", toml)
    assert code == 1 and "approver_keys_dir is not set" in err and "Nothing was created" in err
    assert not list(cfg.paths.keys_dir.glob("*.pem")) if cfg.paths.keys_dir.exists() else True
    assert not (cfg.paths.repo_dir / "metadata" / "root.json").exists()
    code, _, err = run("keys", "init", "--as", "ops", "--allow-approver-key-on-server", "--config", toml)
    assert code == 0 and "WARNING: the approver key is on this server" in err
    assert (cfg.paths.keys_dir / "approver-1.pem").exists()


def test_keys_init_makes_one_named_key_per_approver_in_their_folder(tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    cfg = cloud_config(tmp_path / "cloud", mqtt_cfg(1), approver_keys_dir=usb)
    toml = str(write_cloud_toml(cfg, tmp_path / "cloud.toml"))
    code, out, err = run(
        "keys", "init", "--as", "ops", "--approver", "anna", "--approver", "Bob B", "--json", "--config", toml
    )
    assert code == 0, err
    assert "WARNING" not in err
    assert sorted(p.name for p in usb.glob("*.pem")) == ["approver-anna.pem", "approver-bob-b.pem"]
    assert not list(cfg.paths.keys_dir.glob("approver-*"))
    assert json.loads(out)["root_version"] == 1
    code, out, _ = run("keys", "list", "--json", "--config", toml)
    ids = {k["keyid"] for k in json.loads(out)["approver"]}
    assert ReleaseChannel(cfg).repo.trusted_keyids("targets") == ids
