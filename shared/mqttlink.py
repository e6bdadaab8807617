"""One MQTT connection with what paho leaves to the caller: every process of both sides uses it.

The edge daemon (``edge.mqttlink``), the cloud's fleet ingest, release service, alert publisher
and the CLI's one-shot publishes each used to write their own paho lifecycle; this is the one
they share (like Frigate's ``Communicator``). It adds:

* MQTT 5 with credentials and TLS from the ``[mqtt]`` section (:func:`shared.mqtt.make_client`),
  and paho's reconnect with back-off (1 s doubling to 30 s) running on its network thread;
* the session each caller needs: a persistent one (``clean_start`` false plus a session expiry,
  the edge and the ingest, so the broker queues while they are away), a throw-away one, or a
  clean start that ends an old session; a last-will where the caller gives one;
* ``subscribe(filter, callback)`` is remembered and replayed in one SUBSCRIBE on every
  (re)connect; ``forget_on_connect`` replays an UNSUBSCRIBE instead (a retiring ingest worker).
  ``wait_ready`` waits for those acknowledgements, i.e. until nothing published from then on
  can be missed; ``wait_connected`` only for the CONNACK;
* ``publish`` returns paho's ``MQTTMessageInfo`` and reports PUBACKs to listeners by ``mid``
  (``on_ack``); a PUBACK that says the message went nowhere goes to ``on_refused`` listeners:
  reason code 16 ("no matching subscribers") means the broker threw the message away, so it is
  no more delivered than a refusal (reason code 128 and above);
* connect failures explained once per new reason in ``last_error`` (what a technician checks),
  including a client id that another process also uses (the broker keeps dropping one);
* ``stop`` ends cleanly: a DISCONNECT, so no last-will is sent; subclasses say goodbye first.

paho resends unacknowledged QoS-1 messages itself after a reconnect (same ``mid``), so with a
persistent session an in-flight message is neither lost nor re-numbered while the process lives.
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.config import MqttConfig
from shared.mqtt import make_client

_log = logging.getLogger("parkwatch.mqtt")

MessageCallback = Callable[[mqtt.MQTTMessage], None]
PahoMessageHandler = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK reason code 16: accepted, delivered to nobody
_AUTH_CODES = (4, 5, 134, 135)  # bad user name or password / not authorised (MQTT 3 and 5)


class Will(NamedTuple):
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


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
    """One paho client and its lifecycle; see the module docstring for what it adds.

    ``waiting`` finishes the log lines about a lost or refused connection with what the caller
    does meanwhile ("predictions wait in the outbox"); ``on_message`` takes every message no
    ``subscribe`` callback routes, with paho's own signature and no wrapper (the ingest's hot path).
    """

    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        *,
        clean_start: mqtt.CleanStartOption = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        session_expiry_s: int | None = None,
        receive_maximum: int | None = None,
        manual_ack: bool = False,
        will: Will | None = None,
        max_inflight: int | None = None,
        max_queued: int | None = None,
        on_message: PahoMessageHandler | None = None,
        waiting: str = "",
        logger: logging.Logger = _log,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.waiting = waiting
        self.log = logger
        self._subs: dict[str, tuple[int, MessageCallback | None]] = {}
        self._forget: list[str] = []
        self._pending: set[int] = set()  # mids of the (un)subscribe replayed at the last connect
        self._ack_listeners: list[Callable[[int], None]] = []
        self._refused_listeners: list[Callable[[int, int, str], None]] = []
        self._conn_listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._ready = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.last_error: str | None = None
        self.last_change_ts: float | None = None
        self.failed_attempts = 0
        self.session_present = False
        self._started = False

        c = make_client(cfg, client_id, manual_ack=manual_ack)
        if max_inflight is not None:
            c.max_inflight_messages_set(max_inflight)
        if max_queued is not None:
            c.max_queued_messages_set(max_queued)
        if logger.isEnabledFor(logging.DEBUG):  # paho logs every failed retry at ERROR otherwise
            c.enable_logger(logging.getLogger(f"{logger.name}.paho"))
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_subscribe
        c.on_message = on_message or self._on_unrouted
        self.client = c

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, connect_now: bool = False) -> None:
        """Connect in the background (paho retries until the broker answers), or with
        ``connect_now`` try once here first and raise ``OSError`` if the broker is unreachable."""
        props: Properties | None = None
        if self.session_expiry_s is not None or self.receive_maximum is not None:
            props = Properties(PacketTypes.CONNECT)
            if self.session_expiry_s is not None:
                props.SessionExpiryInterval = self.session_expiry_s
            if self.receive_maximum is not None:
                props.ReceiveMaximum = self.receive_maximum
        connect = self.client.connect if connect_now else self.client.connect_async
        connect(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive,
            clean_start=self.clean_start,
            properties=props,
        )
        self.client.loop_start()
        self._started = True

    def stop(self, reason: str = "shutdown", timeout: float = 5.0) -> None:
        """Say goodbye (subclasses), then DISCONNECT, so the broker sends no last-will."""
        if not self._started:
            return
        if self.connected:
            self._before_stop(reason, timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self._started = False
        self._connected.clear()
        self._ready.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Until connected and the broker acknowledged the replayed (un)subscriptions."""
        return self._ready.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    # -- messages -------------------------------------------------------------------------------
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def subscribe(self, topic_filter: str, callback: MessageCallback | None = None, qos: int = 1) -> None:
        """Subscribe now if connected and again after every reconnect; ``callback`` (if given)
        gets the matching messages, any other message goes to ``on_message``."""
        with self._lock:
            self._subs[topic_filter] = (qos, callback)
        if callback is not None:
            self.client.message_callback_add(topic_filter, self._guard(topic_filter, callback))
        if self.connected:
            self.client.subscribe(topic_filter, qos=qos)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._subs.pop(topic_filter, None)
        self.client.message_callback_remove(topic_filter)
        if self.connected:
            self.client.unsubscribe(topic_filter)

    def forget_on_connect(self, topic_filters: list[str]) -> None:
        """Unsubscribe these at every connect: a persistent session may still hold them from an
        earlier run, and what the broker routes to it is then not wanted any more."""
        with self._lock:
            self._forget = list(topic_filters)

    def ack(self, mid: int, qos: int) -> None:
        """With ``manual_ack``: acknowledge a received message once it is safe."""
        self.client.ack(mid, qos)

    def on_ack(self, listener: Callable[[int], None]) -> None:
        """``listener(mid)`` runs on paho's thread when the broker acknowledged message ``mid``."""
        self._ack_listeners.append(listener)

    def on_refused(self, listener: Callable[[int, int, str], None]) -> None:
        """``listener(mid, reason_code, reason_text)`` runs on paho's thread when the broker's PUBACK
        says message ``mid`` was not delivered to anyone (see the module docstring)."""
        self._refused_listeners.append(listener)

    def on_connection_change(self, listener: Callable[[bool], None]) -> None:
        """``listener(True)`` after each CONNACK (subscriptions already sent), ``listener(False)``
        after each disconnect; on paho's thread."""
        self._conn_listeners.append(listener)

    # -- hooks for subclasses ----------------------------------------------------------------
    def _announce(self, client: mqtt.Client) -> None:
        """Runs first on every connect (the edge publishes its retained ``online`` status)."""

    def _before_stop(self, reason: str, timeout: float) -> None:
        """Runs before a clean disconnect while still connected (the edge says ``offline``)."""

    # -- paho callbacks (paho's network thread) ------------------------------------------------
    def _guard(self, topic_filter: str, cb: MessageCallback) -> Callable[[Any, Any, mqtt.MQTTMessage], None]:
        def wrapped(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                cb(msg)
            except Exception:  # a subscriber's bug must not kill paho's network thread
                self.log.exception("handler for %s failed on %s", topic_filter, msg.topic)

        return wrapped

    def _fail(self, reason: str, hint: str) -> None:
        self.failed_attempts += 1
        msg = f"cannot reach {self.cfg.host}:{self.cfg.port}: {reason}"
        if msg != self.last_error:  # once per new reason: paho retries every few seconds
            self.log.warning("%s (%s); retrying%s", msg, hint, f", {self.waiting}" if self.waiting else "")
        self.last_error = msg

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception says why
        reason, hint = connect_failure(sys.exc_info()[1])
        self._fail(reason, hint)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, rc: Any, _props: Any = None) -> None:
        if rc.is_failure:
            if getattr(rc, "value", None) in _AUTH_CODES:
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
        self.session_present = bool(getattr(flags, "session_present", False))
        self.log.info(
            "connected to %s:%d as %s (session present: %s)",
            self.cfg.host,
            self.cfg.port,
            self.client_id,
            self.session_present,
        )
        self._announce(client)
        with self._lock:
            subs = [(f, qos) for f, (qos, _cb) in self._subs.items()]
            forget = list(self._forget)
            self._pending.clear()
            mids = [
                client.subscribe(subs)[1] if subs else None,
                client.unsubscribe(forget)[1] if forget else None,
            ]
            self._pending.update(mid for mid in mids if mid is not None)
            if not self._pending:
                self._ready.set()
        self._connected.set()
        for listener in self._conn_listeners:
            listener(True)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, rcs: Any, _props: Any = None) -> None:
        bad = [rc for rc in rcs if getattr(rc, "is_failure", False)]
        if bad:
            self.last_error = (
                f"the broker refused a subscription of {self.client_id}: {bad}; "
                "check the broker ACL for this account"
            )
            self.log.error("%s", self.last_error)
        with self._lock:
            self._pending.discard(mid)
            if not self._pending and self._connected.is_set():
                self._ready.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._ready.clear()
        if was:
            self.disconnects += 1
            up_for = time.time() - (self.last_change_ts or 0.0)
            self.last_change_ts = time.time()
            if rc.is_failure:
                self.last_error = f"connection lost: {rc}"
                if up_for < 10 and self.disconnects >= 3:
                    # The broker drops a session when another client logs in with the same id.
                    self.last_error += (
                        f" (dropped again {up_for:.0f} s after connecting: if another process "
                        f"uses client id {self.client_id!r}, e.g. a second box with the same [device] id, "
                        "the broker keeps disconnecting one of them)"
                    )
                self.log.warning(
                    "%s; paho reconnects with backoff%s",
                    self.last_error,
                    f", {self.waiting}" if self.waiting else "",
                )
        for listener in self._conn_listeners:
            listener(False)

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _props: Any = None) -> None:
        code = int(getattr(rc, "value", 0) or 0)
        if code == NO_MATCHING_SUBSCRIBERS or code >= 0x80:
            # 16 is routine for retained messages before anyone subscribed; a refusal is not
            self.log.log(
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

    def _on_unrouted(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.log.debug("unrouted message on %s", msg.topic)
