"""The release channel's target names are on the wire: installed boxes ask for exactly these.

Pinned as literals here, so a change to ``shared/protocol/targets.py`` that would strand old
boxes fails a test rather than a fleet.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.protocol import targets

SHA = "a" * 64


def test_target_names_are_pinned() -> None:
    assert targets.build_path("1.2.0") == "builds/1.2.0.tar"
    assert targets.approved_path("1.2.0") == "approved/1.2.0.tar"
    assert targets.group_path("staging") == "groups/staging/model.tar"
    assert targets.group_download_path("staging", SHA) == f"targets/groups/staging/{SHA}.model.tar"
    assert (targets.BUILD_PATTERN, targets.GROUP_PATTERN) == ("builds/*", "groups/*/*")
    assert targets.CUSTOM == "parkwatch"


def test_group_of_reads_back_only_group_entries() -> None:
    assert targets.group_of(targets.group_path("site-7")) == "site-7"
    assert targets.group_of("builds/1.0.0.tar") is None
    assert targets.group_of("groups/staging/other.tar") is None
    assert targets.group_of("groups/a/b/model.tar") is None


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden"])
def test_names_refuse_unsafe_segments(bad: str) -> None:
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        targets.group_path(bad)
    with pytest.raises(ValueError, match="must be 1-64 characters"):
        targets.build_path(bad)


def test_hashed_names_and_metadata_names() -> None:
    assert targets.hashed_sha(f"{SHA}.model.tar") == SHA
    assert targets.hashed_sha("notahash.model.tar") is None
    assert targets.is_metadata_name("3.rollout.json")
    assert targets.is_metadata_name("root.json")
    assert not targets.is_metadata_name("../root.json")


def test_the_edge_and_the_cloud_use_the_same_names() -> None:
    """Both sides import the one module; neither keeps its own copy."""
    import cloud.release.repo as repo
    import edge.updater.policy as policy

    assert not hasattr(policy, "group_path")
    assert not hasattr(repo, "group_path") or repo.group_path is targets.group_path
    assert policy.CUSTOM is targets.CUSTOM


def test_importing_the_names_pulls_in_no_cloud_and_no_torch() -> None:
    code = (
        "import sys, shared.protocol.targets, edge.updater.policy;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('cloud')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
