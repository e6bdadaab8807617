"""TUF's transport, over MQTT: metadata through ``FetcherInterface``, packages resumably.

TUF itself checks lengths, hashes, signatures and versions; this module only moves bytes. A
missing file becomes ``DownloadHTTPError(..., 404)`` because that is what ends ngclient's root
rotation walk. Package downloads bypass ngclient's one-shot download so an interrupted transfer
continues from the bytes already on disk; the result is verified against the signed
``TargetFile`` afterwards, like ngclient would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import FetcherInterface

from edge.updater.errors import TransportError, UpdateError
from edge.updater.transport import UpdateChannel
from shared.backoff import Backoff
from shared.protocol.targets import METADATA_DIR, TARGETS_DIR

BASE = "mqtt://parkwatch/"
METADATA_URL = f"{BASE}{METADATA_DIR}/"
TARGETS_URL = f"{BASE}{TARGETS_DIR}/"


class MqttFetcher(FetcherInterface):
    def __init__(self, channel: UpdateChannel, chunk_bytes: int, timeout_s: float, retries: int) -> None:
        self.channel = channel
        self.chunk_bytes = chunk_bytes
        self.timeout_s = timeout_s
        self.retries = retries

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(BASE):
            raise DownloadError(f"{url} is not an update-channel URL")
        path = url[len(BASE) :]
        offset = 0
        while True:
            chunk = self._request(path, offset)
            if chunk.status == "not_found":
                raise DownloadHTTPError(f"{path} not found on the update channel", 404)
            if chunk.status != "ok":
                raise DownloadError(f"{path}: responder error: {chunk.error}")
            if chunk.offset != offset:
                raise DownloadError(f"{path}: asked for offset {offset}, got {chunk.offset}")
            if chunk.data:
                yield chunk.data
            offset += len(chunk.data)
            if chunk.total is None or offset >= chunk.total or not chunk.data:
                return

    def _request(self, path: str, offset: int):  # type: ignore[no-untyped-def]
        last: TransportError | None = None
        for _ in range(self.retries):
            try:
                return self.channel.request(path, offset, self.chunk_bytes, self.timeout_s)
            except TransportError as e:
                last = e
                time.sleep(min(1.0, self.timeout_s / 4))
        raise DownloadError(f"update channel unreachable: {last}")


def download_resumable(
    channel: UpdateChannel,
    path: str,
    part: Path,
    max_length: int,
    chunk_bytes: int,
    timeout_s: float,
    deadline_s: float,
    progress: Callable[[int, int | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Append ``path`` to ``part`` from its current size until complete; survives outages.

    Never writes past ``max_length`` (the signed length): a responder that keeps sending is cut
    off, and one that sends too little leaves a short file that verification then refuses.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + deadline_s
    backoff = Backoff(0.5, 10.0)
    with part.open("ab") as fh:
        offset = fh.tell()
        if offset > max_length:
            fh.truncate(0)
            offset = 0
        while offset < max_length:
            try:
                chunk = channel.request(path, offset, min(chunk_bytes, max_length - offset), timeout_s)
            except TransportError as e:
                if time.monotonic() > deadline:
                    raise UpdateError(
                        "downloading", f"gave up after {deadline_s:.0f} s: {e}", transient=True
                    ) from e
                sleep(backoff.next())
                continue
            backoff.reset()
            if chunk.status == "not_found":
                raise UpdateError("downloading", f"{path} is not on the update channel", transient=True)
            if chunk.status != "ok":
                raise UpdateError("downloading", f"responder error: {chunk.error}", transient=True)
            if chunk.offset != offset:
                raise UpdateError(
                    "downloading", f"asked for offset {offset}, got {chunk.offset}", transient=True
                )
            data = chunk.data[: max_length - offset]
            fh.write(data)
            fh.flush()
            offset += len(data)
            if progress:
                progress(offset, chunk.total)
            if not data or (chunk.total is not None and offset >= chunk.total):
                break  # the sender has nothing more: verification decides if that was enough
    return part
