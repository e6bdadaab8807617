"""The daemon's one MQTT connection, shared by the publisher, telemetry and the updater.

Why one client: the broker ACL and the last-will are per connection, and a box should show up
as one session. The wrapper adds what paho leaves to the caller:

* ``subscribe(filter, callback)`` is remembered and replayed on every (re)connect, so the
  updater subscribes once and keeps receiving across broker restarts;
* ``publish`` returns paho's ``MQTTMessageInfo`` and reports PUBACKs to listeners by ``mid``
  (``on_ack``), which is what lets the outbox delete a row only after the broker holds it;
  a PUBACK that says the message went nowhere goes to ``on_refused`` listeners instead: reason
  code 16 ("no matching subscribers", a fresh install before the cloud subscribed, or a broker
  restarted without the ingest's session) means the broker threw the message away, so it is
  no more delivered than a refusal (reason code 128 and above);
* the retained ``status`` topic says ``online`` on connect; the last-will says ``offline``;
* the cloud's retained capabilities message (``parkwatch/v1/cloud/capabilities``) is tracked in
  ``cloud_prediction_schemas``, so the publisher sends schema-2 prediction batches (regions, ir)
  only to a cloud that said it accepts them.

paho resends unacknowledged QoS-1 messages itself after a reconnect (same ``mid``), and the
session is persistent (``clean_start`` false), so an in-flight batch is neither lost nor
re-numbered while the process lives; after a restart the outbox resends it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.config import MqttConfig
from shared.mqtt import make_client
from shared.protocol import CloudCapabilities, DeviceStatus, Kind, ProtocolError, Topics, decode, encode

log = logging.getLogger("parkwatch.edge.mqtt")

MessageCallback = Callable[[mqtt.MQTTMessage], None]
SESSION_EXPIRY_S = 7 * 24 * 3600
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK reason code 16: accepted, delivered to nobody


def connect_failure(exc: BaseException | None) -> tuple[str, str]:
    """Pure: the reason a technician reads for a failed TCP/TLS connect, and what to check."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", "is the broker running and listening on that port? firewall?"
    if isinstance(exc, socket.gaierror):
        return "host name not found", "check [mqtt] host and the box's DNS"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out", "check the network path to the broker (firewall, VPN, cable)"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS handshake failed: {exc}", "check [mqtt] tls settings and the CA file"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__, "check the network and [mqtt] host/port"
    return "connection failed", "check the network and [mqtt] host/port"


class MqttLink:
    def __init__(
        self,
        cfg: MqttConfig,
        site: str,
        device: str,
        group: str | None = None,
        software: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.device = device
        self.group = group
        self.software = software
        self.model_version: str | None = None
        self.status_topic = Topics.device(site, device, Kind.STATUS)
        self.client_id = cfg.client_id or f"parkwatch-edge-{site}-{device}"
        self._subs: dict[str, tuple[int, MessageCallback]] = {}
        self._ack_listeners: list[Callable[[int], None]] = []
        self._refused_listeners: list[Callable[[int, int, str], None]] = []
        self._conn_listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.last_error: str | None = None
        self.last_change_ts: float | None = None
        self.failed_attempts = 0
        self._started = False
        # Until the cloud says otherwise it is assumed old: schema 1 is what every cloud accepts.
        self.cloud_prediction_schemas: tuple[int, ...] = (1,)
        self.cloud_telemetry_schemas: tuple[int, ...] = (1,)

        c = make_client(cfg, self.client_id)  # credentials and TLS as on the cloud side
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        if log.isEnabledFor(logging.DEBUG):  # paho logs every failed retry at ERROR otherwise
            c.enable_logger(logging.getLogger("parkwatch.edge.paho"))
        will = DeviceStatus(
            device=device, site=site, state="offline", group=group, software=software, reason="last-will"
        )
        c.will_set(self.status_topic, encode(will), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        self.client = c
        self.subscribe(Topics.CAPABILITIES, self._on_capabilities)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, clean_start=False, properties=props
        )
        self.client.loop_start()
        self._started = True

    def stop(self, reason: str = "shutdown", timeout: float = 5.0) -> None:
        """Say ``offline`` (retained) if connected, then disconnect cleanly (no last-will)."""
        if not self._started:
            return
        if self.connected:
            try:
                info = self.client.publish(
                    self.status_topic, self._status_payload("offline", reason), 1, True
                )
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as e:
                log.warning("could not publish offline status: %s", e)
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False
        self._connected.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- the API the publisher and the updater use ------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic_filter: str, callback: MessageCallback, qos: int = 1) -> None:
        """Route messages matching ``topic_filter`` to ``callback``; replayed after every reconnect."""
        with self._lock:
            self._subs[topic_filter] = (qos, callback)
        self.client.message_callback_add(topic_filter, self._guard(topic_filter, callback))
        if self.connected:
            self.client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subs.pop(topic_filter, None)
        self.client.message_callback_remove(topic_filter)
        if self.connected:
            self.client.unsubscribe(topic_filter)

    def on_ack(self, listener: Callable[[int], None]) -> None:
        """``listener(mid)`` runs on paho's thread when the broker acknowledged message ``mid``."""
        self._ack_listeners.append(listener)

    def on_refused(self, listener: Callable[[int, int, str], None]) -> None:
        """``listener(mid, reason_code, reason_text)`` runs on paho's thread when the broker's PUBACK
        says message ``mid`` was not delivered to anyone (see the module docstring)."""
        self._refused_listeners.append(listener)

    def on_connection_change(self, listener: Callable[[bool], None]) -> None:
        self._conn_listeners.append(listener)

    def publish_status(self) -> None:
        self.publish(self.status_topic, self._status_payload("online", None), 1, True)

    # -- paho callbacks -------------------------------------------------------------------------
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

    def _guard(self, topic_filter: str, cb: MessageCallback) -> Callable[[Any, Any, mqtt.MQTTMessage], None]:
        def wrapped(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                cb(msg)
            except Exception:  # a subscriber's bug must not kill paho's network thread
                log.exception("handler for %s failed on %s", topic_filter, msg.topic)

        return wrapped

    def _fail(self, reason: str, hint: str) -> None:
        self.failed_attempts += 1
        msg = f"cannot reach {self.cfg.host}:{self.cfg.port}: {reason}"
        if msg != self.last_error:  # once per new reason: paho retries every few seconds
            log.warning("%s (%s); retrying, predictions wait in the outbox", msg, hint)
        self.last_error = msg

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception says why
        reason, hint = connect_failure(sys.exc_info()[1])
        self._fail(reason, hint)

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        if rc.is_failure:
            if getattr(rc, "value", None) in (4, 5, 134, 135):  # bad user name or password / not authorised
                self._fail(
                    f"not authorised ({rc})",
                    "check [mqtt] username and password file, and the broker's users",
                )
            else:
                self._fail(f"the broker refused the connection ({rc})", "check [mqtt] and the broker ACL")
            return
        self.connects += 1
        self.failed_attempts = 0
        self.last_error = None
        self.last_change_ts = time.time()
        log.info("connected to %s:%d as %s", self.cfg.host, self.cfg.port, self.client_id)
        client.publish(self.status_topic, self._status_payload("online", None), 1, True)
        with self._lock:
            subs = list(self._subs.items())
        for topic_filter, (qos, _cb) in subs:
            client.subscribe(topic_filter, qos=qos)
        self._connected.set()
        for listener in self._conn_listeners:
            listener(True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self.disconnects += 1
            up_for = time.time() - (self.last_change_ts or 0.0)
            self.last_change_ts = time.time()
            if rc.is_failure:
                self.last_error = f"connection lost: {rc}"
                if up_for < 10 and self.disconnects >= 3:
                    # The broker drops a session when another client logs in with the same id.
                    self.last_error += (
                        f" (dropped again {up_for:.0f} s after connecting: if another box or daemon "
                        f"uses client id {self.client_id!r}, i.e. the same [device] id, the broker "
                        "keeps disconnecting one of them)"
                    )
                log.warning(
                    "%s; paho reconnects with backoff, predictions wait in the outbox", self.last_error
                )
        for listener in self._conn_listeners:
            listener(False)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _props: Any = None) -> None:
        code = int(getattr(rc, "value", 0) or 0)
        if code == NO_MATCHING_SUBSCRIBERS or code >= 0x80:
            # 16 is routine for retained status before the cloud subscribed; a refusal is not
            log.log(
                logging.DEBUG if code < 0x80 else logging.WARNING,
                "broker did not deliver message %d: %s",
                mid,
                rc,
            )
            for refused in self._refused_listeners:
                refused(mid, code, str(rc))
            return
        for listener in self._ack_listeners:
            listener(mid)

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

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        log.debug("unrouted message on %s", msg.topic)
