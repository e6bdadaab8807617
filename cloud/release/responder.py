"""Serves the TUF repository over MQTT 5 request/response, in chunks with offsets.

Requests arrive on ``dev/{site}/{device}/update/request``; the answer goes to the request's
MQTT 5 response topic with its correlation data. The response topic must be the requesting
device's own ``update/response`` - the responder never publishes where a request tells it to,
so it cannot be used to spray other topics. Chunks carry ``offset`` and ``total`` so the edge
can resume a transfer from the bytes it already has.

Nothing here is trusted by the edge: TUF verifies every byte after it arrives.
"""

from __future__ import annotations

import base64
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.protocol import Kind, ProtocolError, Topics, UpdateRequest, UpdateResponse, decode, encode
from shared.protocol.counter import RejectCounter

log = logging.getLogger("parkwatch.cloud.release")

_META_NAME = re.compile(r"^(\d+\.)?[A-Za-z0-9_-]+\.json$")
_TARGET_NAME = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9_.-]+$")


def resolve(repo_dir: Path, path: str) -> Path | None:
    """Pure mapping of a request path to a repository file; None for anything else."""
    parts = path.split("/")
    if parts[0] == "metadata" and len(parts) == 2 and _META_NAME.match(parts[1]):
        return repo_dir / "metadata" / parts[1]
    if parts[0] == "targets" and len(parts) >= 2 and ".." not in parts:
        m = _TARGET_NAME.match(parts[-1])
        if m:
            return repo_dir / "targets" / "blobs" / m.group(1)
    return None


def answer(repo_dir: Path, req: UpdateRequest, max_chunk: int) -> UpdateResponse:
    """Read one chunk; 'not_found' for anything that does not exist or is not servable."""
    file = resolve(repo_dir, req.path)
    if file is None:
        return UpdateResponse(path=req.path, status="not_found", offset=req.offset)
    try:
        with file.open("rb") as fh:
            total = fh.seek(0, 2)
            if req.offset > total:
                return UpdateResponse(
                    path=req.path,
                    status="error",
                    offset=req.offset,
                    total=total,
                    error=f"offset {req.offset} is beyond the end ({total})",
                )
            fh.seek(req.offset)
            data = fh.read(min(req.length, max_chunk))
    except FileNotFoundError:
        return UpdateResponse(path=req.path, status="not_found", offset=req.offset)
    except OSError as e:
        return UpdateResponse(path=req.path, status="error", offset=req.offset, error=str(e.strerror))
    return UpdateResponse(
        path=req.path,
        status="ok",
        offset=req.offset,
        total=total,
        data=base64.b64encode(data).decode("ascii"),
    )


class Responder:
    """Attach to a connected paho client (``attach``) and answer update requests."""

    def __init__(self, repo_dir: Path, max_chunk: int, workers: int = 2) -> None:
        self.repo_dir = Path(repo_dir)
        self.max_chunk = max_chunk
        self.rejects = RejectCounter()
        self.rejected = 0
        self.served = 0
        self.bytes_sent = 0
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tuf-responder")
        self._client: Any = None

    def attach(self, client: Any) -> None:
        self._client = client
        client.message_callback_add(Topics.ALL_UPDATE_REQUESTS, self._on_request)

    def subscriptions(self) -> list[str]:
        return [Topics.ALL_UPDATE_REQUESTS]

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _reject(self, why: str) -> None:
        self.rejected += 1
        log.debug("update request dropped: %s", why)

    def _on_request(self, _client: Any, _userdata: Any, msg: Any) -> None:
        try:
            parsed, req = decode(msg.topic, msg.payload)
        except ProtocolError as e:
            self.rejects.reject(e)
            self._reject(str(e))
            return
        assert isinstance(req, UpdateRequest) and parsed.site and parsed.device
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        corr = getattr(props, "CorrelationData", None) if props else None
        expected = Topics.device(parsed.site, parsed.device, Kind.UPDATE_RESPONSE)
        if response_topic != expected or not corr:
            self._reject(f"{msg.topic}: response topic must be {expected} with correlation data")
            return
        self._pool.submit(self._serve, req, expected, bytes(corr))

    def _serve(self, req: UpdateRequest, topic: str, corr: bytes) -> None:
        try:
            resp = answer(self.repo_dir, req, self.max_chunk)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = corr
            self._client.publish(topic, encode(resp), qos=1, properties=props)
            self.served += 1
            self.bytes_sent += len(resp.data) * 3 // 4
        except Exception:  # one bad request must not stop the pool
            log.exception("serving %s failed", req.path)
