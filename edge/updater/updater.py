"""The update state machine: refresh TUF, pick the group's target, download, verify, self-test, swap.

Every step before the swap works on copies (a staging folder, a second ONNX Runtime session),
so any failure leaves the running model untouched; the swap itself is one assignment in the
model slot, between two inferences. States go out retained on ``model/state``:
``downloading`` → ``verifying`` → ``self-testing`` → ``active``, or ``failed`` with a reason.
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from tuf.api.exceptions import LengthOrHashMismatchError
from tuf.ngclient import Updater

from edge.config import EdgeConfig
from edge.updater import policy
from edge.updater.errors import UpdateError
from edge.updater.fetcher import METADATA_URL, TARGETS_URL, MqttFetcher, download_resumable
from edge.updater.selftest import load_candidate, run_self_test
from edge.updater.transport import UpdateChannel
from shared.atomic import atomic_write_json
from shared.modelpkg import PackageError, verify_package
from shared.pkgtar import extract_package
from shared.protocol import ModelState, targets

log = logging.getLogger("parkwatch.edge.updater")


class Host(Protocol):
    """What the updater needs of the daemon (edge.daemon.Daemon provides it)."""

    cfg: EdgeConfig
    model_slot: Any
    mqtt: Any

    def report_model_state(self, state: ModelState) -> None: ...


def updater_dir(cfg: EdgeConfig) -> Path:
    return cfg.state_dir / "updater"


def active_package(cfg: EdgeConfig) -> Path | None:
    """The package folder the updater last activated; the daemon loads it at boot if present."""
    try:
        state = json.loads((updater_dir(cfg) / "state.json").read_text())
        path = Path(state["active"]["dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path.is_dir() else None


class ModelUpdater:
    def __init__(self, host: Host, link: Any | None = None) -> None:
        self.host = host
        self.cfg = host.cfg
        self.ucfg = host.cfg.updater
        self.device = host.cfg.device
        root = updater_dir(self.cfg)
        self.tuf_dir = root / "tuf"
        self.cache_dir = root / "cache"
        self.models_dir = root / "models"
        self.state_file = root / "state.json"
        for d in (self.tuf_dir, self.cache_dir, self.models_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.channel = UpdateChannel(link or host.mqtt, self.device.site, self.device.id)
        self.fetcher = MqttFetcher(
            self.channel, self.ucfg.chunk_bytes, self.ucfg.request_timeout_s, self.ucfg.request_retries
        )
        self.stage = policy.required_stage(self.device.group, self.ucfg.required_stage)
        self._lock = threading.Lock()
        self.state = self._load_state()
        self.last_state: ModelState | None = None
        self.checks = 0
        self._target_version: str | None = None

    # ---- persistent state -------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass
        return {"active": None, "previous": None, "failed": {}}

    def _save_state(self) -> None:
        atomic_write_json(self.state_file, self.state)

    @property
    def active_version(self) -> str | None:
        current = getattr(self.host.model_slot, "current", None)
        if current is not None:
            return str(current.version)
        active = self.state.get("active")
        return active["version"] if active else None

    @property
    def previous_version(self) -> str | None:
        prev = getattr(self.host.model_slot, "previous", None)
        return str(prev.version) if prev is not None else None

    # ---- reporting ----------------------------------------------------------------------------
    def report(
        self, state: str, version: str | None, reason: str | None = None, progress: float | None = None
    ) -> None:
        msg = ModelState(
            device=self.device.id,
            site=self.device.site,
            group=self.device.group,
            state=state,
            version=version,
            active_version=self.active_version,
            previous_version=self.previous_version,
            reason=reason,
            progress=progress,
        )
        self.last_state = msg
        try:
            self.host.report_model_state(msg)
        except Exception:  # reporting must never break an update
            log.exception("could not report model state %s", state)

    # ---- the check --------------------------------------------------------------------------
    def _tuf(self) -> Updater:
        bootstrap: bytes | None = None
        if not (self.tuf_dir / "root.json").exists():
            if self.ucfg.trusted_root is None:
                raise UpdateError("verifying", "no trusted root installed (updater.trusted_root)")
            try:
                bootstrap = Path(self.ucfg.trusted_root).read_bytes()
            except OSError as e:
                raise UpdateError(
                    "verifying",
                    f"cannot read trusted root {self.ucfg.trusted_root}: "
                    f"{e.strerror}; reinstall it with provisioning",
                ) from e
        return Updater(
            str(self.tuf_dir),
            METADATA_URL,
            str(self.cache_dir),
            TARGETS_URL,
            fetcher=self.fetcher,
            bootstrap=bootstrap,
        )

    def check_once(self) -> str:
        """One full check; returns the final state name ('active', 'failed', 'idle', 'current')."""
        with self._lock:
            self.checks += 1
            try:
                return self._check()
            except UpdateError as e:
                log.warning("update failed at %s: %s", e.stage, e.reason)
                self.report("failed", self._target_version, f"{e.stage}: {e.reason}")
                return "failed"
            except Exception as e:  # TUF refusals and anything unexpected
                reason, _transient = policy.explain(e)
                log.warning("update refused: %s", reason)
                self.report("failed", self._target_version, reason)
                return "failed"
            finally:
                self._target_version = None

    def _check(self) -> str:
        self._target_version = None
        tuf = self._tuf()
        tuf.refresh()
        group_info = tuf.get_targetinfo(targets.group_path(self.device.group))
        if group_info is None:
            if self.last_state is None:
                self.report("idle", None, f"no release for group {self.device.group} yet")
            return "idle"
        version = policy.version_of(group_info)
        self._target_version = version
        if version == self.active_version:
            if (
                self.last_state is None
                or self.last_state.state != "active"
                or self.last_state.version != version
            ):
                self.report("active", version)
            return "current"
        choice = policy.choose(
            group_info,
            tuf.get_targetinfo(targets.approved_path(version)),
            tuf.get_targetinfo(targets.build_path(version)),
            self.stage,
        )
        failed = self.state.get("failed", {}).get(choice.sha256)
        if failed and self.last_state is not None and self.last_state.state == "failed":
            return "failed"  # this exact package already failed here; wait for a new release
        try:
            pkg_dir = self._install(choice)
            self._activate(choice, pkg_dir)
        except UpdateError as e:
            if not e.transient:
                failed_map = self.state.setdefault("failed", {})
                failed_map[choice.sha256] = f"{e.stage}: {e.reason}"
                for old in list(failed_map)[:-20]:  # remember the last 20 bad packages only
                    failed_map.pop(old)
                self._save_state()
            raise
        return "active"

    def _install(self, choice: policy.Choice) -> Path:
        target = self.cache_dir / f"{choice.sha256}.tar"
        part = self.cache_dir / f"{choice.sha256}.part"
        if not target.exists():
            self.report("downloading", choice.version, progress=self._progress(part, choice.length))
            last = [time.monotonic()]

            def progress(done: int, _total: int | None) -> None:
                if time.monotonic() - last[0] > 1.0:
                    last[0] = time.monotonic()
                    self.report("downloading", choice.version, progress=min(done / choice.length, 1.0))

            download_resumable(
                self.channel,
                targets.group_download_path(self.device.group, choice.sha256),
                part,
                choice.length,
                self.ucfg.chunk_bytes,
                self.ucfg.request_timeout_s,
                self.ucfg.download_deadline_s,
                progress,
            )
            self.report("verifying", choice.version)
            try:
                with part.open("rb") as fh:
                    choice.target.verify_length_and_hashes(fh)
            except LengthOrHashMismatchError as e:
                part.unlink(missing_ok=True)  # never resume onto bytes that proved wrong
                raise UpdateError(
                    "verifying", f"hash or length mismatch (tampered or truncated): {e}", transient=True
                ) from e
            part.replace(target)
        else:
            self.report("verifying", choice.version)
            try:
                with target.open("rb") as fh:
                    choice.target.verify_length_and_hashes(fh)
            except LengthOrHashMismatchError as e:
                target.unlink(missing_ok=True)
                raise UpdateError("verifying", f"cached package changed on disk: {e}", transient=True) from e
        return self._unpack(target, choice.version)

    @staticmethod
    def _progress(part: Path, length: int) -> float:
        try:
            return min(part.stat().st_size / length, 1.0) if length else 0.0
        except FileNotFoundError:
            return 0.0

    def _unpack(self, tar_path: Path, version: str) -> Path:
        dest = self.models_dir / version
        tmp = self.models_dir / f".{version}.unpacking"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            extract_package(tar_path, tmp)  # bounded by the manifest's sizes, refused early
            manifest = verify_package(tmp)
        except (tarfile.TarError, OSError, PackageError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UpdateError("verifying", f"package content refused: {e}") from e
        if manifest.model_version != version:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UpdateError("verifying", f"manifest says {manifest.model_version}, release says {version}")
        if dest.exists() and dest.resolve() != self._active_dir():
            shutil.rmtree(dest)
        if not dest.exists():
            tmp.replace(dest)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def _active_dir(self) -> Path | None:
        active = self.state.get("active")
        return Path(active["dir"]).resolve() if active else None

    def _activate(self, choice: policy.Choice, pkg_dir: Path) -> None:
        self.report("self-testing", choice.version)
        candidate = load_candidate(pkg_dir, self.cfg.inference, choice.version)
        result = run_self_test(candidate, pkg_dir, self.ucfg.self_test_tolerance, self.ucfg.warmup_runs)
        log.info(
            "self-test of %s passed: %d samples, max diff %.2e, warm-up %.1f ms",
            choice.version,
            result.samples,
            result.max_diff,
            result.warmup_ms,
        )
        self.host.model_slot.swap(candidate)
        self.state["previous"] = self.state.get("active")
        self.state["active"] = {
            "version": choice.version,
            "dir": str(pkg_dir),
            "sha256": choice.sha256,
            "ts": time.time(),
        }
        self.state.get("failed", {}).pop(choice.sha256, None)
        self._save_state()
        self.report("active", choice.version)
        self._prune()

    def _prune(self) -> None:
        keep = {Path(s["dir"]).name for s in (self.state.get("active"), self.state.get("previous")) if s}
        keep_sha = {s.get("sha256") for s in (self.state.get("active"), self.state.get("previous")) if s}
        for d in self.models_dir.iterdir():
            if d.is_dir() and d.name not in keep and not d.name.startswith("."):
                shutil.rmtree(d, ignore_errors=True)
        for f in self.cache_dir.glob("*.tar"):
            if f.stem not in keep_sha:
                f.unlink(missing_ok=True)
