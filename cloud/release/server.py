"""``cloud serve``'s release component.

``ReleaseService`` is the long-lived component: it answers update requests over MQTT, keeps
snapshot/timestamp fresh, keeps retained release notices in step with the signed rollout
metadata, records every device's model/state, and rolls a group back on its own when the
watch rules in watch.py say so. The operations it and the CLI and dashboard share live in
``ReleaseChannel`` (channel.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import paho.mqtt.client as mqtt

from cloud.config import CloudConfig
from cloud.release.channel import (
    ReleaseChannel,
    notice_payload,
)
from cloud.release.errors import ReleaseError
from cloud.release.records import RolledBack
from cloud.release.responder import Responder
from cloud.release.store import read_membership
from cloud.release.watch import HealthSample, judge, progress
from shared.mqttlink import MqttLink
from shared.protocol import ModelState, ProtocolError, Telemetry, Topics, decode

log = logging.getLogger("parkwatch.cloud.release")

__all__ = ["ReleaseService"]


class ReleaseService:
    """``cloud serve`` component: responder, freshness, notices, device states, auto-rollback."""

    def __init__(self, cfg: CloudConfig) -> None:
        self.cfg = cfg
        self.link: MqttLink | None = None
        self.channel: ReleaseChannel | None = None
        rel = cfg.release
        self.responder = Responder(
            cfg.paths.repo_dir,
            rel.chunk_bytes,
            rel.responder_workers,
            membership=lambda: read_membership(cfg.paths),  # provisioned groups, never claimed
            rate_per_device=rel.responder_rate_per_device,
            burst=rel.responder_burst,
            queue_per_device=rel.responder_queue_per_device,
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: dict[str, tuple[str | None, int]] = {}
        self._health: dict[str, deque[HealthSample]] = {}
        self.rollbacks: list[RolledBack] = []
        self.errors = 0

    def start(self) -> None:
        self.channel = ReleaseChannel(self.cfg, notify=self._notify)
        if not self.channel.repo.exists():
            log.warning(
                "no TUF repository in %s yet: run 'parkwatch cloud keys init'; serving nothing until then",
                self.cfg.paths.repo_dir,
            )
        link = MqttLink(self.cfg.mqtt, self.cfg.client_id("release"), max_inflight=200, logger=log)
        self.responder.attach(link.client)
        for topic in self.responder.subscriptions():
            link.subscribe(topic)  # routed by the responder's own callback
        link.subscribe(Topics.ALL_MODEL_STATE, self._on_state)
        link.subscribe(Topics.ALL_TELEMETRY, self._on_telemetry)
        link.on_connection_change(self._on_connection)
        self.link = link
        link.start()
        self._thread = threading.Thread(target=self._run, name="release-service", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """Until connected and subscribed: no update request or device state is missed after."""
        return self.link is not None and self.link.wait_ready(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(10)
        self.responder.stop()
        if self.link is not None:
            self.link.stop()
        if self.channel is not None:
            self.channel.registry.close()
            if self.channel._states is not None:
                self.channel._states.close()

    # ---- MQTT ---------------------------------------------------------------------------------
    def _on_connection(self, up: bool) -> None:
        if up:
            self._published.clear()  # re-assert retained notices after a broker restart
            self._wake.set()

    def _notify(self, group: str, version: str | None, ts_version: int) -> bool:
        if self.link is None or not self.link.connected:
            return False
        self.link.publish(
            Topics.release(group), notice_payload(group, version, ts_version), qos=1, retain=True
        )
        self._published[group] = (version, ts_version)
        return True

    def _on_state(self, msg: mqtt.MQTTMessage) -> None:
        try:
            _, m = decode(msg.topic, msg.payload)
        except ProtocolError as e:
            log.debug("bad model state: %s", e)
            return
        assert isinstance(m, ModelState)
        assert self.channel is not None
        with self.channel.lock:
            self.channel.states.record(m)
        self._wake.set()

    def _on_telemetry(self, msg: mqtt.MQTTMessage) -> None:
        try:
            _, t = decode(msg.topic, msg.payload)
        except ProtocolError:
            return
        assert isinstance(t, Telemetry)
        if self.responder.group_of(f"{t.site}/{t.device}") is None:
            return  # only provisioned devices are judged; keeps this map bounded by the fleet
        sample = HealthSample(
            f"{t.site}/{t.device}",
            t.ts,
            t.model_version,
            t.inference_errors,
            t.latency_ms.get("p99"),
            t.abstain_rate,
        )
        self._health.setdefault(sample.device, deque(maxlen=500)).append(sample)

    # ---- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cfg.release.refresh_check_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                assert self.channel is not None
                with self.channel.lock:
                    self.tick()
            except Exception:
                self.errors += 1
                log.exception("release service tick failed")

    def tick(self, now: float | None = None) -> None:
        """Refresh expiring metadata, sync notices, judge rollouts. Public for tests and drills."""
        ch = self.channel
        assert ch is not None
        if not ch.repo.exists():
            return
        ch.repo.refresh()
        ch.checkpoint_audit()  # entries from other writers (alerts, dashboard users) too
        ts_version = ch.repo.timestamp().signed.version
        for group, version in ch.repo.groups().items():
            if self._published.get(group, (None, -1))[0] != version:
                self._notify(group, version, ts_version)
        self._judge(now or time.time())

    def _judge(self, now: float) -> None:
        ch = self.channel
        assert ch is not None
        states = {s.key: s for s in ch.states.states()}
        for group in ch.repo.groups():
            r = ch.rollouts.latest(group)
            if r is None or r.status not in ("in_progress", "succeeded"):
                continue
            members = ch.members(group)
            prog = progress(r.version, members, states, since_ts=r.started_ts)
            samples = [s for m in members for s in self._health.get(m, ())]
            verdict = judge(r.version, r.started_ts, now, prog, samples, self.cfg.release)
            if (prog.total, prog.active) != (r.devices_total, r.devices_active):
                ch.rollouts.set_counts(r.id, prog.total, prog.active)
            if verdict.action == "succeeded" and r.status == "in_progress":
                ch.rollouts.set_status(
                    r.id, "succeeded", f"{prog.active}/{prog.total} active", prog.total, prog.active
                )
                back = r.kind != "rollout"
                ch.audit.append(
                    "release-service",
                    "rollback-succeeded" if back else "rollout-succeeded",
                    f"group:{group}",
                    {
                        "version": r.version,
                        "kind": r.kind,
                        "devices": prog.total,
                        "rollout_id": r.id,
                        **({"rolled_back_from": ch.rolled_back_from(r)} if back else {}),
                    },
                )
            elif verdict.action == "rollback" and self.cfg.release.auto_rollback:
                if r.previous_version is None:
                    ch.rollouts.set_status(r.id, "failed", verdict.reason)
                    ch.audit.append(
                        "release-service",
                        "rollout-failed",
                        f"group:{group}",
                        {"version": r.version, "reason": verdict.reason},
                    )
                    continue
                log.warning("rolling group %s back from %s: %s", group, r.version, verdict.reason)
                try:
                    self.rollbacks.append(
                        ch.rollback(group, "auto-rollback", verdict.reason or "", automatic=True)
                    )
                except ReleaseError as e:
                    ch.rollouts.set_status(r.id, "failed", f"{verdict.reason}; rollback impossible: {e}")
                    log.error("automatic rollback of %s failed: %s", group, e)
