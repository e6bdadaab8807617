"""Request/response over MQTT 5 for the update channel, on the daemon's one connection.

A request goes to ``dev/{site}/{device}/update/request`` with the MQTT 5 *response topic*
``dev/{site}/{device}/update/response`` and a fresh *correlation data*; the cloud responder
answers there with the same correlation data. The broker ACL lets a device read only its own
response topic, so nobody else sees its downloads. Answers to requests we stopped waiting for
(after a timeout) are dropped by correlation id.
"""

from __future__ import annotations

import base64
import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.updater.errors import TransportError
from shared.protocol import Kind, ProtocolError, Topics, UpdateRequest, UpdateResponse, decode, encode

log = logging.getLogger("parkwatch.edge.updater")


class Link(Protocol):
    """What the channel needs of the daemon's MQTT wrapper (edge.mqttlink.MqttLink)."""

    client: Any

    def subscribe(self, topic_filter: str, callback: Any, qos: int = 1) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...

    @property
    def connected(self) -> bool: ...


@dataclass(frozen=True)
class Chunk:
    path: str
    status: str
    offset: int
    total: int | None
    data: bytes
    error: str | None


class UpdateChannel:
    def __init__(self, link: Link, site: str, device: str) -> None:
        self.link = link
        self.request_topic = Topics.device(site, device, Kind.UPDATE_REQUEST)
        self.response_topic = Topics.device(site, device, Kind.UPDATE_RESPONSE)
        self._pending: dict[bytes, tuple[threading.Event, list[Chunk]]] = {}
        self._lock = threading.Lock()
        self.bytes_received = 0
        self.invalid = 0
        self.requests: deque[tuple[str, int]] = deque(maxlen=10_000)  # (path, offset), for diagnostics
        link.subscribe(self.response_topic, self._on_response, qos=1)

    def close(self) -> None:
        self.link.unsubscribe(self.response_topic)

    def _on_response(self, msg: Any) -> None:
        corr = getattr(msg.properties, "CorrelationData", None) if msg.properties else None
        if not corr:
            self.invalid += 1
            return
        with self._lock:
            waiter = self._pending.get(bytes(corr))
        if waiter is None:
            return  # an answer to a request we gave up on
        try:
            _, resp = decode(msg.topic, msg.payload)
            assert isinstance(resp, UpdateResponse)
            data = base64.b64decode(resp.data, validate=True) if resp.data else b""
        except (ProtocolError, ValueError) as e:
            self.invalid += 1
            log.warning("invalid update response: %s", e)
            chunk = Chunk("", "error", 0, None, b"", f"invalid response: {e}")
        else:
            chunk = Chunk(resp.path, resp.status, resp.offset, resp.total, data, resp.error)
            self.bytes_received += len(data)
        event, box = waiter
        box.append(chunk)
        event.set()

    def request(self, path: str, offset: int, length: int, timeout: float) -> Chunk:
        """One chunk of ``path`` from ``offset``; raises :class:`TransportError` on timeout."""
        corr = uuid.uuid4().bytes
        self.requests.append((path, offset))
        event = threading.Event()
        box: list[Chunk] = []
        with self._lock:
            self._pending[corr] = (event, box)
        try:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.response_topic
            props.CorrelationData = corr
            payload = encode(UpdateRequest(path=path, offset=offset, length=length))
            if not self.link.connected:
                raise TransportError("not connected to the broker")
            info = self.link.client.publish(self.request_topic, payload, qos=1, properties=props)
            if info.rc != 0:
                raise TransportError(f"publish failed with code {info.rc}")
            if not event.wait(timeout):
                raise TransportError(f"no answer for {path} at offset {offset} within {timeout:.0f} s")
            chunk = box[0]
        finally:
            with self._lock:
                self._pending.pop(corr, None)
        if chunk.status == "ok" and chunk.path != path:
            raise TransportError(f"answer names {chunk.path!r}, asked for {path!r}")
        return chunk
