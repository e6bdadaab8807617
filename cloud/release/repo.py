"""The release channel's TUF repository, kept with python-tuf's Metadata API.

Layout under ``repo_dir`` (what the MQTT responder serves, nothing secret)::

    metadata/root.json, N.root.json        root history (edges walk it forward on key rotation)
    metadata/timestamp.json                 short-lived, re-signed by ``cloud serve``
    metadata/N.snapshot.json, N.targets.json, N.pipeline.json, N.rollout.json
    targets/blobs/<sha256>                  package bytes, content-addressed

Three target namespaces (named in shared/protocol/targets.py), each signed by a different key
(see keys.py and docs/release-channel.md): ``builds/V.tar`` (pipeline), ``approved/V.tar`` with the approved
stages (approver, the top-level targets role), ``groups/G/model.tar`` with the version group G
should run (rollout). An edge installs a package only if all three agree on its hash, so
neither a stolen pipeline key nor a stolen online rollout key can ship an unapproved model.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.exceptions import RepositoryError as TufRepositoryError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from cloud.release.config import ReleaseConfig
from cloud.release.errors import RepositoryError
from cloud.release.keys import KeyStore, RoleKey, is_named, untrusted
from shared.atomic import atomic_write_bytes
from shared.protocol.targets import (
    BLOBS_DIR,
    BUILD_PATTERN,
    CUSTOM,
    GROUP_PATTERN,
    METADATA_DIR,
    TARGETS_DIR,
    approved_path,
    build_path,
    group_of,
    group_path,
)

PIPELINE = "pipeline"
ROLLOUT = "rollout"
TOP = "targets"
STAGES = ("staging", "production")
# Which key role signs which metadata role.
SIGNER_ROLE = {
    "root": "root",
    TOP: "approver",
    PIPELINE: "pipeline",
    ROLLOUT: "rollout",
    "snapshot": "snapshot",
    "timestamp": "timestamp",
}
_SERIALIZER = JSONSerializer(compact=False)


def _expiry(seconds: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)


def sha256_of(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


class TufRepository:
    def __init__(self, repo_dir: Path, keys: KeyStore, cfg: ReleaseConfig) -> None:
        self.dir = Path(repo_dir)
        self.keys = keys
        self.cfg = cfg
        self.metadata_dir = self.dir / METADATA_DIR
        self.blobs_dir = self.dir / TARGETS_DIR / BLOBS_DIR

    # ---- reading --------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.metadata_dir / "root.json").exists() and (self.metadata_dir / "timestamp.json").exists()

    def _require(self) -> None:
        if not self.exists():
            raise RepositoryError(f"no TUF repository in {self.dir}; run 'parkwatch cloud keys init' first")

    def _read(self, name: str) -> Metadata[Any]:
        path = self.metadata_dir / name
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as e:
            raise RepositoryError(
                f"{path} is missing; the repository is damaged (restore it from backup)"
            ) from e
        except Exception as e:  # tuf raises several deserialisation errors
            raise RepositoryError(f"{path} is not valid TUF metadata: {e}") from e

    def root(self) -> Metadata[Root]:
        self._require()
        return self._read("root.json")

    def timestamp(self) -> Metadata[Timestamp]:
        self._require()
        return self._read("timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        ts = self.timestamp()
        return self._read(f"{ts.signed.snapshot_meta.version}.snapshot.json")

    def role(self, name: str) -> Metadata[Targets]:
        snap = self.snapshot()
        meta = snap.signed.meta.get(f"{name}.json")
        if meta is None:
            raise RepositoryError(f"snapshot does not list {name}.json; the repository is damaged")
        return self._read(f"{meta.version}.{name}.json")

    def trusted_root_bytes(self) -> bytes:
        """What provisioning installs on a box as ``updater.trusted_root``."""
        self._require()
        return (self.metadata_dir / "root.json").read_bytes()

    def blob_path(self, sha256: str) -> Path:
        return self.blobs_dir / sha256

    def builds(self) -> dict[str, TargetFile]:
        return {
            t.unrecognized_fields[CUSTOM]["version"]: t for t in self.role(PIPELINE).signed.targets.values()
        }

    def approvals(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for t in self.role(TOP).signed.targets.values():
            c = t.unrecognized_fields[CUSTOM]
            out[c["version"]] = list(c["stages"])
        return out

    def groups(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for path, t in self.role(ROLLOUT).signed.targets.items():
            group = group_of(path)
            if group is not None:
                out[group] = t.unrecognized_fields[CUSTOM]["version"]
        return out

    def status(self) -> dict[str, Any]:
        ts = self.timestamp()
        return {
            "repo": str(self.dir),
            "root_version": self.root().signed.version,
            "timestamp_version": ts.signed.version,
            "timestamp_expires": ts.signed.expires.isoformat(),
            "snapshot_version": ts.signed.snapshot_meta.version,
            "builds": sorted(self.builds()),
            "approvals": self.approvals(),
            "groups": self.groups(),
        }

    # ---- writing --------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time: ``cloud serve`` refreshing and a CLI approving share the repo."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def trusted_keyids(self, role: str, root: Root | None = None, top: Targets | None = None) -> set[str]:
        """The key ids a box accepts for ``role``: root's list, or the top-level delegation's."""
        if role in (PIPELINE, ROLLOUT):
            top = top or self.role(TOP).signed
            assert top.delegations is not None and top.delegations.roles is not None
            return set(top.delegations.roles[role].keyids)
        root = root or self.root().signed
        return set(root.roles[role].keyids)

    def check_signers(self, role: str, keys: list[RoleKey]) -> None:
        """Refuse keys root does not trust for ``role``, or fewer than its threshold: a box would
        count their signatures as none ("targets was signed by 0/1 keys") and refuse every update."""
        self._require()
        root = self.root().signed
        top = self.role(TOP).signed if role in (PIPELINE, ROLLOUT) else None
        self._check_signers(role, keys, root, top, strict=True)

    def _check_signers(
        self, role: str, keys: list[RoleKey], root: Root, top: Targets | None, strict: bool
    ) -> list[RoleKey]:
        threshold = self._threshold(root, top, role)
        trusted = self.trusted_keyids(role, root, top)
        bad = untrusted(keys, trusted)
        if bad and strict:
            names = ", ".join(f"{k.path.name} (key id {k.keyid[:16]})" for k in bad)
            raise RepositoryError(
                f"{names} is not a key the repository's root trusts for {role} (it trusts key id(s) "
                f"{', '.join(sorted(i[:16] for i in trusted)) or 'none'}); boxes would refuse "
                "everything it signs. Nothing was signed or recorded. Use the right key file, or have "
                "the root key holder add one: 'parkwatch cloud keys add-approver NAME --reason ...'"
            )
        good = [k for k in keys if k.keyid in trusted]
        if len(good) < threshold:
            extra = f"; not trusted by root: {', '.join(k.path.name for k in bad)}" if bad else ""
            raise RepositoryError(
                f"role {role} needs {threshold} signatures but only {len(good)} "
                f"{SIGNER_ROLE[role]} key(s) are available in {self.keys.folder(SIGNER_ROLE[role])}{extra}"
            )
        return good

    def _signers(
        self, role: str, root: Root, top: Targets | None, keys: list[RoleKey] | None = None
    ) -> list[RoleKey]:
        """Explicit ``keys`` (an approver's own) must all be trusted; from the key folder, only the
        trusted ones are used (a stray file signs nothing a box would count anyway)."""
        strict = keys is not None
        return self._check_signers(role, keys or self.keys.load(SIGNER_ROLE[role]), root, top, strict)

    @staticmethod
    def _sign(md: Metadata[Any], signers: Sequence[Signer]) -> None:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)

    def _write(self, name: str, md: Metadata[Any]) -> None:
        atomic_write_bytes(self.metadata_dir / name, md.to_bytes(_SERIALIZER))

    def _threshold(self, root: Root, targets: Targets | None, role: str) -> int:
        if role in (PIPELINE, ROLLOUT):
            assert targets is not None and targets.delegations and targets.delegations.roles
            return targets.delegations.roles[role].threshold
        return root.roles[role].threshold

    def _sign_role(
        self,
        md: Metadata[Any],
        role: str,
        root: Root,
        top: Targets | None = None,
        keys: list[RoleKey] | None = None,
    ) -> list[RoleKey]:
        signers = self._signers(role, root, top, keys)
        self._sign(md, [k.signer for k in signers])
        return signers

    def init(self) -> dict[str, Any]:
        """Create version 1 of every role. Refuses to touch an existing repository."""
        if (self.metadata_dir / "root.json").exists():
            raise RepositoryError(
                f"{self.dir} already holds a TUF repository; refusing to overwrite it. Keys and "
                "repository are set up already: 'parkwatch cloud keys list' shows the keys, "
                "'parkwatch cloud keys rotate ROLE' replaces one"
            )
        c = self.cfg
        keys = {r: self.keys.load(r) for r in SIGNER_ROLE.values()}
        with self._locked():
            root = Root(expires=_expiry(c.root_expiry_s), consistent_snapshot=True)
            thresholds = {"root": c.root_threshold, TOP: c.targets_threshold, "snapshot": 1, "timestamp": 1}
            for role, threshold in thresholds.items():
                for k in keys[SIGNER_ROLE[role]]:
                    root.add_key(k.public, role)
                root.roles[role].threshold = threshold
            top = Targets(expires=_expiry(c.targets_expiry_s))
            top.delegations = Delegations(keys={}, roles={})
            for name, paths, threshold in (
                (PIPELINE, [BUILD_PATTERN], c.pipeline_threshold),
                (ROLLOUT, [GROUP_PATTERN], c.rollout_threshold),
            ):
                delegated = DelegatedRole(name, [], threshold, terminating=True, paths=paths)
                top.delegations.roles = {**(top.delegations.roles or {}), name: delegated}
                for k in keys[SIGNER_ROLE[name]]:
                    top.add_key(k.public, name)
            mds: dict[str, Metadata[Any]] = {
                "root": Metadata(root),
                TOP: Metadata(top),
                PIPELINE: Metadata(Targets(expires=_expiry(c.pipeline_expiry_s))),
                ROLLOUT: Metadata(Targets(expires=_expiry(c.rollout_expiry_s))),
            }
            for name, md in mds.items():
                self._sign_role(md, name, root, top)
            self._write("1.root.json", mds["root"])
            self._write("root.json", mds["root"])
            for name in (TOP, PIPELINE, ROLLOUT):
                self._write(f"1.{name}.json", mds[name])
            snap = Snapshot(expires=_expiry(c.snapshot_expiry_s))
            snap.meta = {f"{n}.json": MetaFile(1) for n in (TOP, PIPELINE, ROLLOUT)}
            self._publish_snapshot(Metadata(snap), root, first=True)
        return self.status()

    def _publish_snapshot(self, snap: Metadata[Snapshot], root: Root, first: bool = False) -> None:
        if not first:
            snap.signed.version += 1
        snap.signed.expires = _expiry(self.cfg.snapshot_expiry_s)
        self._sign_role(snap, "snapshot", root)
        self._write(f"{snap.signed.version}.snapshot.json", snap)
        self._publish_timestamp(snap.signed.version, root)

    def _publish_timestamp(self, snapshot_version: int, root: Root) -> None:
        ts_path = self.metadata_dir / "timestamp.json"
        if ts_path.exists():
            ts = self._read("timestamp.json")
            ts.signed.version += 1
        else:
            ts = Metadata(Timestamp(expires=_expiry(self.cfg.timestamp_expiry_s)))
        ts.signed.snapshot_meta = MetaFile(snapshot_version)
        ts.signed.expires = _expiry(self.cfg.timestamp_expiry_s)
        self._sign_role(ts, "timestamp", root)
        self._write("timestamp.json", ts)

    def _update_targets(self, role: str, mutate: Any, keys: list[RoleKey] | None = None) -> Metadata[Targets]:
        """Apply ``mutate(targets)`` to a targets role, re-sign it, then snapshot and timestamp."""
        with self._locked():
            self._require()
            root = self.root().signed
            top = self.role(TOP)
            md = top if role == TOP else self.role(role)
            self._signers(role, root, top.signed, keys)  # refuse before changing anything
            mutate(md.signed)
            md.signed.version += 1
            md.signed.expires = _expiry(self._role_expiry(role))
            self._sign_role(md, role, root, top.signed, keys)
            self._write(f"{md.signed.version}.{role}.json", md)
            snap = self.snapshot()
            snap.signed.meta[f"{role}.json"] = MetaFile(md.signed.version)
            self._publish_snapshot(snap, root)
            return md

    def _role_expiry(self, role: str) -> float:
        return {
            TOP: self.cfg.targets_expiry_s,
            PIPELINE: self.cfg.pipeline_expiry_s,
            ROLLOUT: self.cfg.rollout_expiry_s,
        }[role]

    def add_blob(self, file: Path) -> TargetFile:
        sha, size = sha256_of(file)
        dest = self.blob_path(sha)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".tmp")
            shutil.copyfile(file, tmp)
            os.replace(tmp, dest)
        return TargetFile(size, {"sha256": sha}, "blob")

    def add_build(self, version: str, package_file: Path) -> TargetFile:
        """Pipeline key: record a packaged build (same bytes -> same entry; a changed one refused)."""
        blob = self.add_blob(package_file)
        path = build_path(version)
        existing = self.builds().get(version)
        if existing is not None:
            if existing.hashes == blob.hashes:
                return existing
            raise RepositoryError(
                f"build {version} is already published with different bytes; a version is immutable, "
                "build a new version instead"
            )
        tf = TargetFile(blob.length, blob.hashes, path, {CUSTOM: {"version": version}})

        def mutate(t: Targets) -> None:
            t.targets[path] = tf

        self._update_targets(PIPELINE, mutate)
        return tf

    def set_approval(
        self, version: str, stages: list[str], keys: list[RoleKey] | None = None
    ) -> TargetFile | None:
        """Approver key: the stages ``version`` is approved for (empty list withdraws it), signed
        with ``keys`` (one approver's own) or every trusted approver key in the folder."""
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise RepositoryError(f"unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
        build = self.builds().get(version)
        if build is None:
            raise RepositoryError(f"version {version} has no published build; publish it before approving")
        path = approved_path(version)
        tf = TargetFile(
            build.length, build.hashes, path, {CUSTOM: {"version": version, "stages": sorted(set(stages))}}
        )

        def mutate(t: Targets) -> None:
            if stages:
                t.targets[path] = tf
            else:
                t.targets.pop(path, None)

        self._update_targets(TOP, mutate, keys)
        return tf if stages else None

    def set_group(self, group: str, version: str, required_stage: str) -> TargetFile:
        """Rollout key: point ``group`` at ``version``, which must be approved for ``required_stage``."""
        build = self.builds().get(version)
        stages = self.approvals().get(version, [])
        if build is None:
            raise RepositoryError(f"version {version} has no published build")
        if required_stage not in stages:
            raise RepositoryError(
                f"version {version} is not approved for {required_stage} in the signed metadata "
                f"(approved for: {', '.join(stages) or 'nothing'}); run 'parkwatch cloud approve' first"
            )
        path = group_path(group)
        tf = TargetFile(build.length, build.hashes, path, {CUSTOM: {"version": version, "group": group}})

        def mutate(t: Targets) -> None:
            t.targets[path] = tf

        self._update_targets(ROLLOUT, mutate)
        return tf

    def refresh(self, force: bool = False) -> bool:
        """Re-sign snapshot/timestamp once half their lifetime has passed; True if anything changed."""
        with self._locked():
            self._require()
            now = datetime.now(UTC)
            root = self.root().signed
            snap = self.snapshot()
            if force or snap.signed.expires - now < timedelta(seconds=self.cfg.snapshot_expiry_s / 2):
                self._publish_snapshot(snap, root)
                return True
            ts = self.timestamp()
            if force or ts.signed.expires - now < timedelta(seconds=self.cfg.timestamp_expiry_s / 2):
                self._publish_timestamp(ts.signed.snapshot_meta.version, root)
                return True
            return False

    def write_expired_timestamp(self) -> Metadata[Timestamp]:
        """For drills and tests: a correctly signed timestamp that already expired (a freeze)."""
        with self._locked():
            root = self.root().signed
            ts = self.timestamp()
            ts.signed.version += 1
            ts.signed.expires = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
            self._sign_role(ts, "timestamp", root)
            self._write("timestamp.json", ts)
            return ts

    # ---- key rotation ---------------------------------------------------------------------
    def _renew_approver_keys(self, old: list[RoleKey]) -> list[RoleKey]:
        """New approver keys: numbered ones get new numbers, a named one keeps its approver's
        name (the old file moves to ``retired/`` first, its signer stays in memory)."""
        numbered = [k for k in old if not is_named(k.path)]
        new = self.keys.generate("approver", len(numbered)) if numbered else []
        for k in old:
            if is_named(k.path):
                self.keys.retire(k)
                new.append(self.keys.generate_at(k.path))
        return new

    def add_approver(self, name: str) -> RoleKey:
        """A key of approver ``name``'s own (``approver-<name>.pem``) that root trusts for
        approvals; root is re-signed with the root keys, boxes walk to the new root by themselves."""
        path = self.keys.named_path(name)
        if path.exists():
            raise RepositoryError(
                f"{path} exists already; 'parkwatch cloud keys rotate approver' replaces approver keys"
            )
        with self._locked():
            self._require()
            root_md = self.root()
            root = root_md.signed
            root_keys = self._check_signers("root", self.keys.load("root"), root, None, strict=False)
            key = self.keys.generate_at(path)
            root.add_key(key.public, "targets")
            root.version += 1
            self._sign(root_md, [k.signer for k in root_keys])
            self._write(f"{root.version}.root.json", root_md)
            self._write("root.json", root_md)
        return key

    def rotate(self, key_role: str) -> dict[str, Any]:
        """Replace every key of ``key_role`` with a fresh one and re-sign what it signs.

        Root changes are signed by the old and the new root keys, so edges holding the old root
        follow the chain; the replaced key files move to ``retired/``.
        """
        if key_role not in SIGNER_ROLE.values():
            raise RepositoryError(f"unknown key role {key_role!r}")
        old = self.keys.load(key_role)
        with self._locked():
            self._require()
            root_md = self.root()
            root = root_md.signed
            count = len(old)
            if key_role == "approver":
                new = self._renew_approver_keys(old)
            else:
                new = self.keys.generate(key_role, count)
            if key_role in ("root", "approver", "snapshot", "timestamp"):
                md_role = next(r for r, k in SIGNER_ROLE.items() if k == key_role)
                for k in old:
                    root.revoke_key(k.keyid, md_role)
                for k in new:
                    root.add_key(k.public, md_role)
                root.version += 1
                if key_role == "root":  # old and new both sign, so edges can follow the chain
                    signers = [k.signer for k in (*old, *new)]
                else:
                    signers = [k.signer for k in self.keys.load("root")]
                self._sign(root_md, signers)
                self._write(f"{root.version}.root.json", root_md)
                self._write("root.json", root_md)
        for k in old:
            if k.path.exists():  # a named approver key was moved aside already
                self.keys.retire(k)
        if key_role == "approver":
            self._update_targets(TOP, lambda t: None)
        elif key_role in (PIPELINE, ROLLOUT):

            def swap(t: Targets) -> None:
                for k in old:
                    t.revoke_key(k.keyid, key_role)
                for k in new:
                    t.add_key(k.public, key_role)

            self._update_targets(TOP, swap)
            self._update_targets(key_role, lambda t: None)
        else:
            self.refresh(force=True)
        return {
            "role": key_role,
            "retired": [str(k.path) for k in old],
            "new": [str(k.path) for k in new],
            "root_version": self.root().signed.version,
        }


__all__ = ["TufRepository", "TufRepositoryError"]
