"""The release channel's service layer: what the CLI and the dashboard call.

``ReleaseChannel`` covers keys, builds, approvals, rollouts, rollbacks, status and broker
credentials. Each action checks the registry rules, signs with the right key, records the
outcome and appends to the audit log, in that order, so a refused action leaves no trace but
its error.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cloud.config import CloudConfig
from cloud.registry import approvals
from cloud.registry.approvals import Decision
from cloud.registry.audit import AuditEntry, AuditLog
from cloud.registry.store import Registry
from cloud.release import brokerauth, checkpoint
from cloud.release.errors import ProvisioningError, ReleaseError, RolloutError
from cloud.release.keys import ROLES, KeyStore, RoleKey, load_key
from cloud.release.package import shippable_file
from cloud.release.records import (
    ApproverAdded,
    AuditCheckpoint,
    BuildPublished,
    CloudAccount,
    GroupStatus,
    KeyFile,
    KeysInitialised,
    KeysRotated,
    Provisioned,
    ReleaseStatus,
    Revoked,
    RolledBack,
    RolloutStarted,
    Signed,
)
from cloud.release.repo import TufRepository
from cloud.release.store import DeviceStates, Rollout, RolloutTable
from cloud.release.watch import progress
from shared.errors import ParkwatchError
from shared.protocol import ReleaseNotice, Topics, encode
from shared.protocol.topics import check_segment

log = logging.getLogger("parkwatch.cloud.release")


def key_store(cfg: CloudConfig) -> KeyStore:
    return KeyStore(cfg.paths.keys_dir, cfg.release.approver_keys_dir)


def notice_payload(group: str, version: str | None, timestamp_version: int | None) -> bytes:
    return encode(ReleaseNotice(group=group, version=version, timestamp_version=timestamp_version))


def publish_once(cfg: CloudConfig, messages: list[tuple[str, bytes, bool]], timeout: float = 5.0) -> bool:
    """Publish a few messages with a short-lived cloud client; False if the broker is unreachable."""
    from shared.mqttlink import MqttLink

    link = MqttLink(cfg.mqtt, f"parkwatch-cloud-cli-{secrets.token_hex(8)}", logger=log)
    try:
        link.start(connect_now=True)
    except OSError as e:
        log.warning(
            "broker %s:%d unreachable (%s); devices pick the release up at their next check",
            cfg.mqtt.host,
            cfg.mqtt.port,
            e,
        )
        return False
    try:
        infos = [link.publish(t, p, qos=1, retain=r) for t, p, r in messages]
        for info in infos:
            info.wait_for_publish(timeout)
        return all(i.is_published() for i in infos)
    finally:
        link.stop()


F = TypeVar("F", bound=Callable[..., Any])


def _fields(r: Rollout | Decision) -> dict[str, Any]:
    """A stored row's fields, to extend into a result record."""
    return {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}


def _files(files: dict[str, str]) -> dict[str, str | None]:
    """The broker files ``render_broker`` wrote (none before the cloud account exists)."""
    return {"passwd": files.get("passwd"), "acl": files.get("acl")}


def _serialised(f: F) -> F:
    """One SQLite connection serves every caller thread (dashboard, service loop): one at a time."""

    @functools.wraps(f)
    def wrapper(self: ReleaseChannel, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return f(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class ReleaseChannel:
    """Service layer. Construct with a config; registry/audit may be shared with the caller.

    Thread-safe: every public method holds ``lock`` (re-entrant), so the dashboard's worker
    threads and the service loop can share one instance.
    """

    def __init__(
        self,
        cfg: CloudConfig,
        registry: Registry | None = None,
        audit: AuditLog | None = None,
        notify: Any | None = None,
    ) -> None:
        self.cfg = cfg
        self.lock = threading.RLock()
        self.registry = registry or Registry(cfg.paths.registry_db)
        self.audit = audit or AuditLog(self.registry.db)
        self.keys = key_store(cfg)
        self.repo = TufRepository(cfg.paths.repo_dir, self.keys, cfg.release)
        self.rollouts = RolloutTable(self.registry)
        self._states: DeviceStates | None = None
        # notify(group, version, timestamp_version) -> bool; default: a short-lived MQTT client
        self._notify = notify

    @property
    def states(self) -> DeviceStates:
        if self._states is None:
            self._states = DeviceStates(self.cfg.paths.release_db)
        return self._states

    def close(self) -> None:
        """Close ``release.db`` if this channel opened it; the registry and audit log may be the
        caller's (the dashboard shares its own), so they are left open."""
        if self._states is not None:
            self._states.close()
            self._states = None

    def stage_for_group(self, group: str) -> str:
        return "staging" if group in self.cfg.release.staging_groups else "production"

    # ---- keys ---------------------------------------------------------------------------------
    @_serialised
    def keys_init(
        self,
        actor: str,
        *,
        allow_approver_key_on_server: bool = False,
        approvers: list[str] | None = None,
    ) -> KeysInitialised:
        """Create missing keys (as many per role as its threshold) and version 1 of the repository.

        Refuses while ``release.approver_keys_dir`` is unset: the approver's key would then sit on
        the server beside the online keys, and whoever controls the server could approve models.
        ``approvers`` makes one key per named approver (``approver-<name>.pem``) instead of
        numbered shared ones, so ``approve --as NAME`` is tied to NAME's key.
        """
        c = self.cfg.release
        if (self.repo.metadata_dir / "root.json").exists():
            self.repo.init()  # refuses, naming what to do instead; before any key is made
        warnings: list[str] = []
        if c.approver_keys_dir is None:
            if not allow_approver_key_on_server:
                raise ReleaseError(
                    "release.approver_keys_dir is not set, so 'keys init' would put the approver's "
                    f"signing key on this server ({self.keys.keys_dir}) beside the online keys, and "
                    "whoever controls the server could approve models. Set [release] "
                    "approver_keys_dir to a folder only the approver holds (a removable disk, their "
                    "own account) and run it again; for a test or demo install, pass "
                    "--allow-approver-key-on-server. Nothing was created"
                )
            warnings.append(
                f"WARNING: the approver key is on this server ({self.keys.keys_dir}): anyone who "
                "controls the server can approve models. Move it to the approver (set "
                "[release] approver_keys_dir) before this install ships a model"
            )
        names = list(dict.fromkeys(approvers or []))
        if names and len(names) < c.targets_threshold:
            raise ReleaseError(
                f"release.targets_threshold is {c.targets_threshold}: name at least that many approvers "
                f"(--approver NAME, got {len(names)})"
            )
        wanted = {
            "root": c.root_threshold,
            "approver": c.targets_threshold,
            "pipeline": c.pipeline_threshold,
            "rollout": c.rollout_threshold,
            "snapshot": 1,
            "timestamp": 1,
        }
        created: list[str] = []
        for role in ROLES:
            if role == "approver" and names:
                created += [
                    str(self.keys.generate_named(n).path)
                    for n in names
                    if not self.keys.named_path(n).exists()
                ]
                continue
            have = len(self.keys.paths(role))
            if have < wanted[role]:
                created += [str(k.path) for k in self.keys.generate(role, wanted[role] - have)]
        status = self.repo.init()
        self.audit.append(
            actor,
            "keys-init",
            "release:repository",
            {
                "created": created,
                "root_version": status["root_version"],
                "approver_keyids": sorted(self.repo.trusted_keyids("targets")),
                "approver_key_on_server": c.approver_keys_dir is None,
            },
        )
        self.checkpoint_audit(force=True)
        return KeysInitialised.from_row(
            status,
            warnings=warnings,
            created=created,
            keys_dir=str(self.keys.keys_dir),
            approver_keys_dir=str(self.keys.approver_keys_dir),
            trusted_root=str(self.repo.metadata_dir / "root.json"),
        )

    @_serialised
    def keys_add_approver(self, name: str, actor: str, reason: str) -> ApproverAdded:
        """A key of approver ``name``'s own that root trusts (needs the root key files online)."""
        if not reason.strip():
            raise ReleaseError("give a reason (--reason); it is kept in the audit log")
        key = self.repo.add_approver(name)
        root_version = self.repo.root().signed.version
        self.audit.append(
            actor,
            "keys-add-approver",
            f"release:key:approver:{name}",
            {"keyid": key.keyid, "path": str(key.path), "root_version": root_version, "reason": reason},
        )
        self._checkpoint()
        return ApproverAdded(name, key.keyid, str(key.path), root_version)

    @_serialised
    def keys_list(self) -> dict[str, list[KeyFile]]:
        return {role: [KeyFile(str(p), load_key(p).keyid) for p in self.keys.paths(role)] for role in ROLES}

    @_serialised
    def keys_rotate(self, role: str, actor: str, reason: str) -> KeysRotated:
        if not reason.strip():
            raise ReleaseError("give a reason for the rotation (--reason)")
        result = self.repo.rotate(role)
        self.audit.append(actor, "keys-rotate", f"release:key:{role}", {**result, "reason": reason})
        self._checkpoint()
        self._notify_all()
        return KeysRotated.from_row(result)

    # ---- audit anchor -------------------------------------------------------------------------
    @_serialised
    def checkpoint_audit(self, force: bool = False) -> AuditCheckpoint | None:
        """Sign the audit log's head with the online timestamp key into the release repository,
        if it moved since the last checkpoint. None without a repository or a usable key."""
        if not self.repo.exists():
            return None
        entries, last_id, last_hash = self.audit.head()
        path = self.repo.dir / checkpoint.FILE
        if not force and path.exists():
            try:
                if json.loads(path.read_text())["signed"]["head_hash"] == last_hash:
                    return None
            except (OSError, ValueError, KeyError, TypeError):
                pass  # unreadable: write a good one
        trusted = self.repo.trusted_keyids("timestamp")
        keys = [k for k in self.keys.load("timestamp") if k.keyid in trusted]
        if not keys:
            log.error("no timestamp key root trusts: the audit checkpoint is not updated")
            return None
        head = checkpoint.Head(entries, last_id, last_hash, time.time())
        checkpoint.write(self.repo.dir, head, keys[0])
        return AuditCheckpoint.from_row(head.to_dict())

    def _checkpoint(self) -> None:
        """After an action: its audit entry is anchored at once, not at cloud serve's next tick.
        A failure here is logged, never raised: the action itself is done and recorded."""
        try:
            self.checkpoint_audit()
        except ParkwatchError as e:
            log.warning("audit checkpoint not written: %s", e)

    @_serialised
    def verify_audit_anchor(self) -> checkpoint.AnchorCheck:
        """The database's head against the signed checkpoint (see cloud/release/checkpoint.py)."""
        if not self.repo.exists():
            return checkpoint.AnchorCheck(
                False, "missing", f"no release repository in {self.repo.dir}, so no signed checkpoint"
            )
        root = self.repo.root().signed
        trusted = {kid: root.keys[kid] for kid in root.roles["timestamp"].keyids}
        got = checkpoint.read(self.repo.dir, trusted)
        if isinstance(got, checkpoint.AnchorCheck):
            return got
        _, last_id, _ = self.audit.head()
        return checkpoint.compare(got, last_id, self.audit.hash_of(got.head_id))

    # ---- builds and approvals -----------------------------------------------------------------
    @_serialised
    def publish_build(self, version: str, actor: str = "pipeline") -> BuildPublished:
        """Pipeline key: make a registered package available as ``builds/V.tar``."""
        model = self.registry.get_model(version)
        src = (
            Path(model.tarball)
            if model.tarball and Path(model.tarball).is_file()
            else Path(model.package_dir)
        )
        tf = self.repo.add_build(version, shippable_file(src, self.cfg.paths.tmp_dir))
        self.audit.append(
            actor,
            "publish-build",
            f"model:{version}",
            {"sha256": tf.hashes["sha256"], "length": tf.length, "source": str(src)},
        )
        return BuildPublished(version, tf.hashes["sha256"], tf.length)

    def approver_keys(self, actor: str) -> list[RoleKey]:
        """``actor``'s approver key(s), checked against the key ids root trusts for approvals
        before anything is published, signed or recorded."""
        keys = self.keys.approver_keys(actor)
        self.repo.check_signers("targets", keys)
        return keys

    def _signer(self, keys: list[RoleKey]) -> approvals.ApprovalSigner:
        def sign(version: str, stages: list[str]) -> dict[str, Any]:
            if version not in self.repo.builds():
                self.publish_build(version, actor="pipeline")
            self.repo.set_approval(version, stages, keys)
            return {"signed_by": [k.keyid for k in keys], "key_files": [k.path.name for k in keys]}

        return sign

    @_serialised
    def approve(self, version: str, stage: str, actor: str, reason: str, force: bool = False) -> Signed:
        keys = self.approver_keys(actor)
        d = approvals.approve(
            self.registry,
            self.audit,
            version,
            stage,
            actor,
            reason,
            force,
            signer=self._signer(keys),
            require_staging=self.cfg.release.require_staging_before_production,
            gate=self.cfg.gate,
        )
        self._checkpoint()
        return Signed(**_fields(d), signed_by=[k.keyid for k in keys])

    @_serialised
    def reject(self, version: str, actor: str, reason: str) -> Signed:
        groups = [g for g, v in self.repo.groups().items() if v == version] if self.repo.exists() else []
        keys = self.approver_keys(actor) if self.repo.exists() and version in self.repo.approvals() else []
        signer = self._signer(keys) if keys else None
        d = approvals.reject(
            self.registry, self.audit, version, actor, reason, signer=signer, deployed_groups=groups
        )
        self._checkpoint()
        return Signed(**_fields(d), signed_by=[k.keyid for k in keys])

    # ---- rollout and rollback ----------------------------------------------------------------
    @_serialised
    def rollout(
        self, version: str, group: str, actor: str, reason: str = "", *, allow_empty_group: bool = False
    ) -> RolloutStarted:
        stage = self.stage_for_group(group)
        if not allow_empty_group and not self.states.provisioned(group):
            # A typo ('stagign') would otherwise say "devices notified" and wait at 0/0 for ever.
            known = ", ".join(self.known_groups()) or "none yet"
            raise RolloutError(
                f"group {group!r} has no provisioned device (groups with devices or a release: "
                f"{known}). Check the name; to prepare a group before its boxes are added "
                "('parkwatch cloud devices add BOX --group G'), pass --allow-empty-group"
            )
        if stage not in approvals.approved_stages(self.registry, version):
            raise RolloutError(
                f"model {version} is not approved for {stage} (group {group} runs {stage} models): "
                f"run 'parkwatch cloud approve {version} --stage {stage} --as NAME --reason TEXT' first"
            )
        previous = self.repo.groups().get(group)
        if previous == version:
            raise RolloutError(f"group {group} already runs {version}")
        self.repo.set_group(group, version, stage)
        r = self.rollouts.start(version, group, stage, previous, "rollout", actor, reason)
        self.audit.append(
            actor,
            "rollout",
            f"group:{group}",
            {"version": version, "previous": previous, "stage": stage, "reason": reason, "rollout_id": r.id},
        )
        self._checkpoint()
        notified = self._notify_group(group, version)
        return RolloutStarted(**_fields(r), notified=notified)

    @_serialised
    def rollback(self, group: str, actor: str, reason: str, automatic: bool = False) -> RolledBack:
        if not reason.strip():
            raise RolloutError("give a reason for the rollback (--reason)")
        latest = self.rollouts.latest(group)
        if latest is None or latest.previous_version is None:
            raise RolloutError(
                f"group {group} has no earlier version to roll back to: approve another version and "
                f"roll it out instead ('parkwatch cloud rollout VERSION --group {group} --reason ...'); "
                "the boxes keep running their current model until then"
            )
        target = latest.previous_version
        stage = self.stage_for_group(group)
        if stage not in approvals.approved_stages(self.registry, target):
            raise RolloutError(
                f"the earlier version {target} is no longer approved for {stage}; "
                "roll out another approved version instead"
            )
        self.repo.set_group(group, target, stage)
        self.rollouts.set_status(latest.id, "rolled_back", reason)
        # A later rollback goes further back in history (to what ran before ``target`` was rolled
        # out), never forward again to the version just withdrawn.
        r = self.rollouts.start(
            target,
            group,
            stage,
            self._ran_before(group, target),
            "auto-rollback" if automatic else "rollback",
            actor,
            reason,
        )
        self.audit.append(
            actor,
            "auto-rollback" if automatic else "rollback",
            f"group:{group}",
            {"from": latest.version, "to": target, "reason": reason, "rollout_id": r.id},
        )
        self._checkpoint()
        notified = self._notify_group(group, target)
        return RolledBack(**_fields(r), rolled_back=latest.version, notified=notified)

    def rolled_back_from(self, r: Rollout) -> str | None:
        """For a rollback row, the version it withdrew: the group's rollout just before it.
        (``previous_version`` of a rollback names what ran before its target, so that a second
        rollback goes further back; it is not what the rollback replaced.)"""
        if r.kind == "rollout":
            return None
        for older in self.rollouts.history(r.group, limit=1000):  # newest first
            if older.id < r.id:
                return older.version
        return None

    def _ran_before(self, group: str, version: str) -> str | None:
        for r in self.rollouts.history(group, limit=1000):  # newest first
            if r.version == version and r.kind == "rollout":
                return r.previous_version
        return None

    def _notify_group(self, group: str, version: str | None) -> bool:
        ts_version = self.repo.timestamp().signed.version
        if self._notify is not None:
            return bool(self._notify(group, version, ts_version))
        return publish_once(
            self.cfg, [(Topics.release(group), notice_payload(group, version, ts_version), True)]
        )

    def _notify_all(self) -> None:
        for group, version in self.repo.groups().items():
            self._notify_group(group, version)

    # ---- broker credentials -------------------------------------------------------------------
    def broker_dir(self) -> Path:
        return self.cfg.paths.broker_dir

    @_serialised
    def provision_device(
        self, site: str, device: str, group: str, secret_out: Path, actor: str
    ) -> Provisioned:
        """New MQTT credential for a box: password to ``secret_out`` (0600), hash to the broker files."""
        for value, what in ((site, "site"), (device, "device"), (group, "group")):
            try:
                check_segment(value, what)
            except ValueError as e:
                raise ProvisioningError(str(e)) from e
        taken = [d for d in self.states.provisioned() if d.username == device and d.site != site]
        if taken or device == self.cfg.release.cloud_username:
            raise ProvisioningError(f"username {device!r} is already used; device ids must be unique")
        if device.startswith(brokerauth.CLOUD_PREFIX):
            # A box's client id is its username (device-listener.conf): it must never be one of ours.
            raise ProvisioningError(
                f"device id {device!r} starts with {brokerauth.CLOUD_PREFIX!r}, which the cloud's own "
                "MQTT client ids use; choose another id"
            )
        password = brokerauth.new_password()
        brokerauth.write_secret(secret_out, password)
        self.states.add_device(site, device, group, device, brokerauth.hash_password(password))
        files = self.render_broker()
        self.audit.append(actor, "device-provision", f"device:{site}/{device}", {"group": group})
        self._checkpoint()
        return Provisioned(
            **_files(files),
            site=site,
            device=device,
            group=group,
            username=device,
            secret_file=str(secret_out),
        )

    @_serialised
    def cloud_account(self, secret_out: Path, actor: str) -> CloudAccount:
        password = brokerauth.new_password()
        brokerauth.write_secret(secret_out, password)
        user = self.cfg.release.cloud_username
        self.states.set_account(user, brokerauth.hash_password(password))
        self.audit.append(actor, "cloud-account", f"account:{user}", {})
        self._checkpoint()
        files = self.render_broker()
        return CloudAccount(**_files(files), username=user, secret_file=str(secret_out))

    @_serialised
    def revoke_device(self, site: str, device: str, actor: str, reason: str) -> Revoked:
        if not self.states.revoke_device(site, device):
            raise ProvisioningError(f"no provisioned device {site}/{device}")
        files = self.render_broker()
        self.audit.append(actor, "device-revoke", f"device:{site}/{device}", {"reason": reason})
        self._checkpoint()
        return Revoked(**_files(files), site=site, device=device)

    @_serialised
    def render_broker(self) -> dict[str, str]:
        accounts = [
            brokerauth.DeviceAccount(d.site, d.device, d.grp, d.username, d.pw_hash)
            for d in self.states.provisioned()
        ]
        cloud = self.states.account(self.cfg.release.cloud_username)
        if cloud is None:
            return {}
        return brokerauth.write_broker_files(self.broker_dir(), accounts, cloud)

    # ---- status -------------------------------------------------------------------------------
    @_serialised
    def latest_rollout(self, group: str) -> Rollout | None:
        return self.rollouts.latest(group)

    @_serialised
    def audit_entries(self, subject: str | None = None, limit: int | None = None) -> list[AuditEntry]:
        return self.audit.entries(subject, limit)

    @_serialised
    def members(self, group: str) -> list[str]:
        """The group's provisioned devices; what a device claims about its group counts for nothing."""
        return sorted(k for k, g in self.states.membership().items() if g == group)

    @_serialised
    def known_groups(self) -> list[str]:
        """Groups a rollout can sensibly target: those with provisioned devices, those that already
        have a release, and the configured staging groups (the dashboard's select list)."""
        groups = {d.grp for d in self.states.provisioned()}
        if self.repo.exists():
            groups |= set(self.repo.groups())
        return sorted(groups | set(self.cfg.release.staging_groups))

    @_serialised
    def status(self, group: str | None = None) -> ReleaseStatus:
        assignments = self.repo.groups() if self.repo.exists() else {}
        states = {s.key: s for s in self.states.states()}
        groups = sorted({*assignments, *self.states.membership().values()})
        if group is not None:
            groups = [group]
        out: dict[str, GroupStatus] = {}
        for g in groups:
            target = assignments.get(g)
            members = self.members(g)
            latest = self.rollouts.latest(g)
            prog = progress(target or "", members, states, since_ts=latest.started_ts if latest else None)
            rollout = latest.to_dict() if latest else None
            if latest is not None and rollout is not None:
                rollout["rolled_back_from"] = self.rolled_back_from(latest)
            out[g] = GroupStatus(
                target_version=target,
                devices=prog.total,
                active=prog.active,
                by_version=prog.by_version,
                by_state=prog.by_state,
                failed=prog.failed,
                rollout=rollout,
                device_states=[states[k] for k in members if k in states],
            )
        return ReleaseStatus(out, self.repo.status() if self.repo.exists() else None)
