"""The daemon's one MQTT connection, shared by the publisher, telemetry and the updater.

Why one client: the broker ACL and the last-will are per connection, and a box should show up
as one session. The lifecycle (MQTT 5, TLS and credentials, reconnect with back-off,
subscriptions replayed on every reconnect, PUBACKs and refusals by ``mid``, connect failures
explained) is the shared :class:`shared.mqttlink.MqttLink`, the same the cloud's processes use.
What only a box needs is added here:

* a persistent session (``clean_start`` false, a week's expiry) under ``parkwatch-edge-{site}-{device}``;
* the retained ``status`` topic says ``online`` on connect, and ``offline`` on a clean stop; the
  last-will says ``offline`` when the box vanishes;
* the cloud's retained capabilities message (``parkwatch/v1/cloud/capabilities``) is tracked in
  ``cloud_prediction_schemas``, so the publisher sends schema-2 prediction batches (regions, ir)
  only to a cloud that said it accepts them.

paho resends unacknowledged QoS-1 messages itself after a reconnect (same ``mid``), and the
session is persistent, so an in-flight batch is neither lost nor re-numbered while the process
lives; after a restart the outbox resends it.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt

from shared import mqttlink as base
from shared.config import MqttConfig
from shared.mqttlink import NO_MATCHING_SUBSCRIBERS, MessageCallback, Will, connect_failure
from shared.protocol import CloudCapabilities, DeviceStatus, Kind, ProtocolError, Topics, decode, encode

__all__ = ["NO_MATCHING_SUBSCRIBERS", "SESSION_EXPIRY_S", "MessageCallback", "MqttLink", "connect_failure"]

log = logging.getLogger("parkwatch.edge.mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600


class MqttLink(base.MqttLink):
    """The shared link plus the box's status, last-will and the cloud's capabilities."""

    def __init__(
        self,
        cfg: MqttConfig,
        site: str,
        device: str,
        group: str | None = None,
        software: str | None = None,
    ) -> None:
        self.site = site
        self.device = device
        self.group = group
        self.software = software
        self.model_version: str | None = None
        self.status_topic = Topics.device(site, device, Kind.STATUS)
        # Until the cloud says otherwise it is assumed old: schema 1 is what every cloud accepts.
        self.cloud_prediction_schemas: tuple[int, ...] = (1,)
        self.cloud_telemetry_schemas: tuple[int, ...] = (1,)
        will = DeviceStatus(
            device=device, site=site, state="offline", group=group, software=software, reason="last-will"
        )
        super().__init__(
            cfg,
            cfg.client_id or f"parkwatch-edge-{site}-{device}",
            clean_start=False,
            session_expiry_s=SESSION_EXPIRY_S,
            will=Will(self.status_topic, encode(will), qos=1, retain=True),
            max_inflight=100,
            max_queued=0,
            waiting="predictions wait in the outbox",
            logger=log,
        )
        self.subscribe(Topics.CAPABILITIES, self._on_capabilities)

    def publish_status(self) -> None:
        self.publish(self.status_topic, self._status_payload("online", None), 1, True)

    def _status_payload(self, state: str, reason: str | None) -> bytes:
        return encode(
            DeviceStatus(
                device=self.device,
                site=self.site,
                state=state,
                group=self.group,
                software=self.software,
                model_version=self.model_version,
                reason=reason,
            )
        )

    def _announce(self, client: mqtt.Client) -> None:
        client.publish(self.status_topic, self._status_payload("online", None), 1, True)

    def _before_stop(self, reason: str, timeout: float) -> None:
        """Say ``offline`` (retained) before the clean disconnect, which sends no last-will."""
        try:
            info = self.client.publish(self.status_topic, self._status_payload("offline", reason), 1, True)
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as e:
            log.warning("could not publish offline status: %s", e)

    def _on_capabilities(self, msg: mqtt.MQTTMessage) -> None:
        """A cleared (empty) or unreadable message means: assume an old cloud again."""
        schemas: tuple[int, ...] = (1,)
        telemetry: tuple[int, ...] = (1,)
        if msg.payload:
            try:
                _, caps = decode(msg.topic, msg.payload)
            except ProtocolError as e:
                log.warning("ignoring the cloud's capabilities message: %s", e)
            else:
                assert isinstance(caps, CloudCapabilities)
                schemas = tuple(sorted(set(caps.predictions)))
                telemetry = tuple(sorted(set(caps.telemetry)))
        if schemas != self.cloud_prediction_schemas:
            log.info("the cloud accepts prediction schemas %s", list(schemas))
        self.cloud_prediction_schemas = schemas
        self.cloud_telemetry_schemas = telemetry
