"""Serves the TUF repository over MQTT 5 request/response, in chunks with offsets.

Requests arrive on ``dev/{site}/{device}/update/request``; the answer goes to the request's
MQTT 5 response topic with its correlation data. The response topic must be the requesting
device's own ``update/response`` - the responder never publishes where a request tells it to,
so it cannot be used to spray other topics. Chunks carry ``offset`` and ``total`` so the edge
can resume a transfer from the bytes it already has.

Nothing here is trusted by the edge: TUF verifies every byte after it arrives. What the
responder guards is the cloud's side:

* **authorisation** against the device's *provisioned* group (``devices add``, never what the
  device says): any device may read the TUF metadata it needs to verify, but a target only
  through its own group's path and only the blob that group's rollout names (``authorise``);
* **per-device rate limits**: each device has a token bucket (``responder_rate_per_device``,
  ``responder_burst``) that paces its requests, and a bounded queue
  (``responder_queue_per_device``); a request beyond the queue gets an ``error`` answer saying
  why. One 150-byte request may cost a 350 KB answer, so unpaced it was a flood amplifier.

Refusals are counted by kind in ``Responder.refused`` (``forbidden``, ``unknown_device``,
``queue_full``, plus the protocol's reject kinds in ``Responder.rejects``).
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shared.protocol import Kind, ProtocolError, Topics, UpdateRequest, UpdateResponse, decode, encode
from shared.protocol.counter import RejectCounter
from shared.protocol.targets import (
    BLOBS_DIR,
    METADATA_DIR,
    TARGETS_DIR,
    group_download_path,
    group_of,
    hashed_sha,
    is_metadata_name,
)

log = logging.getLogger("parkwatch.cloud.release")


def resolve(repo_dir: Path, path: str) -> Path | None:
    """Pure mapping of a request path to a repository file; None for anything else."""
    parts = path.split("/")
    if parts[0] == METADATA_DIR and len(parts) == 2 and is_metadata_name(parts[1]):
        return repo_dir / METADATA_DIR / parts[1]
    if parts[0] == TARGETS_DIR and len(parts) >= 2 and ".." not in parts:
        sha = hashed_sha(parts[-1])
        if sha:
            return repo_dir / TARGETS_DIR / BLOBS_DIR / sha
    return None


def authorise(path: str, group: str | None, group_sha: str | None) -> str | None:
    """Pure: why a device of provisioned ``group`` may not fetch ``path`` (None: it may).

    ``group_sha`` is the sha256 the group's rollout names (None: nothing rolled out to it)."""
    parts = path.split("/")
    if parts[0] == METADATA_DIR:
        return None  # every device verifies the same metadata chain; TUF needs all of it
    if group is None:
        return "not a provisioned device: 'parkwatch cloud devices add' it first"
    if parts[0] != TARGETS_DIR:
        return None  # resolve() answers not_found for anything else
    sha = hashed_sha(parts[-1])
    if len(parts) != 4 or parts[1] != "groups" or parts[2] != group or sha is None:
        return f"a device of group {group} may fetch only {group_download_path(group, '<sha256>')}"
    if group_sha is None or sha != group_sha:
        return f"not the package group {group}'s rollout names"
    return None


def group_blobs(repo_dir: Path) -> dict[str, str]:
    """``group -> sha256`` of what the signed rollout metadata names, read from the files as
    published (timestamp -> snapshot -> rollout). Empty if there is no repository yet."""
    meta = repo_dir / METADATA_DIR
    try:
        ts = json.loads((meta / "timestamp.json").read_bytes())
        snap_v = ts["signed"]["meta"]["snapshot.json"]["version"]
        snap = json.loads((meta / f"{int(snap_v)}.snapshot.json").read_bytes())
        roll_v = snap["signed"]["meta"]["rollout.json"]["version"]
        roll = json.loads((meta / f"{int(roll_v)}.rollout.json").read_bytes())
        out: dict[str, str] = {}
        for tpath, t in roll["signed"]["targets"].items():
            group = group_of(tpath)
            if group is not None:
                out[group] = str(t["hashes"]["sha256"])
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {}


@dataclass
class _Bucket:
    """A token bucket: ``reserve`` says how long until the next request may be served."""

    rate: float
    burst: int
    tokens: float = 0.0
    stamp: float = 0.0
    queued: int = 0
    last_used: float = field(default=0.0)

    def reserve(self, now: float) -> float:
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        self.last_used = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


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

    CACHE_S = 2.0  # how long the provisioned membership is reused before re-reading

    def __init__(
        self,
        repo_dir: Path,
        max_chunk: int,
        workers: int = 2,
        membership: Callable[[], Mapping[str, str]] | None = None,
        rate_per_device: float = 20.0,
        burst: int = 40,
        queue_per_device: int = 8,
    ) -> None:
        self.repo_dir = Path(repo_dir)
        self.max_chunk = max_chunk
        self.rejects = RejectCounter()
        self.rejected = 0
        self.refused: Counter[str] = Counter()
        self.served = 0
        self.bytes_sent = 0
        self._membership = membership
        self._rate, self._burst, self._queue_max = rate_per_device, burst, queue_per_device
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tuf-responder")
        self._client: Any = None
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._due: list[tuple[float, int, str, UpdateRequest, str, bytes]] = []
        self._seq = itertools.count()
        self._wake = threading.Condition(self._lock)
        self._stopped = False
        self._cache: dict[str, tuple[float, Any]] = {}
        self._timer = threading.Thread(target=self._dispatch, name="tuf-responder-pace", daemon=True)
        self._timer.start()

    def attach(self, client: Any) -> None:
        self._client = client
        client.message_callback_add(Topics.ALL_UPDATE_REQUESTS, self._on_request)

    def subscriptions(self) -> list[str]:
        return [Topics.ALL_UPDATE_REQUESTS]

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._due.clear()
            self._wake.notify_all()
        self._timer.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _reject(self, why: str) -> None:
        self.rejected += 1
        log.debug("update request dropped: %s", why)

    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.CACHE_S:
            return hit[1]
        value = load()
        self._cache[key] = (now, value)
        return value

    def group_of(self, device_key: str) -> str | None:
        """The device's provisioned group. Re-read every ``CACHE_S``, and at once (at most twice a
        second) for a device not in the cached list, so a box provisioned a moment ago is served."""
        if self._membership is None:
            return None
        members: Mapping[str, str] = self._cached("members", self._membership)
        if device_key not in members:
            stamp = self._cache["members"][0]
            if time.monotonic() - stamp > 0.5:
                self._cache.pop("members", None)
                members = self._cached("members", self._membership)
        return members.get(device_key)

    def _blobs(self) -> dict[str, str]:
        """What each group's rollout names, re-read whenever ``timestamp.json`` was replaced (every
        change of the repository re-signs it), so a rollout is served the moment it is published."""
        try:
            st = (self.repo_dir / METADATA_DIR / "timestamp.json").stat()
            key: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        hit = self._cache.get("blobs")
        if hit is not None and hit[1][0] == key:
            return dict(hit[1][1])
        blobs = group_blobs(self.repo_dir)
        self._cache["blobs"] = (time.monotonic(), (key, blobs))
        return blobs

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
        key = f"{parsed.site}/{parsed.device}"
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) > 10_000:  # forget idle devices; a bucket refills in seconds
                    idle = [k for k, b in self._buckets.items() if b.queued == 0 and now - b.last_used > 60]
                    for k in idle:
                        del self._buckets[k]
                bucket = self._buckets[key] = _Bucket(self._rate, self._burst, float(self._burst), now)
            if bucket.queued >= self._queue_max:
                full = True
            else:
                full = False
                bucket.queued += 1
                delay = bucket.reserve(now)
                heapq.heappush(self._due, (now + delay, next(self._seq), key, req, expected, bytes(corr)))
                self._wake.notify()
        if full:
            self._refuse(
                "queue_full",
                req,
                expected,
                bytes(corr),
                f"refused: {self._queue_max} update requests of {key} already wait; "
                "ask for one chunk at a time",
            )

    def _dispatch(self) -> None:
        """Hand each paced request to the pool when its device's bucket allows it."""
        with self._lock:
            while not self._stopped:
                if not self._due:
                    self._wake.wait()
                    continue
                due = self._due[0][0] - time.monotonic()
                if due > 0:
                    self._wake.wait(due)
                    continue
                _, _, key, req, topic, corr = heapq.heappop(self._due)
                self._pool.submit(self._serve, key, req, topic, corr)

    def _refuse(self, kind: str, req: UpdateRequest, topic: str, corr: bytes, why: str) -> None:
        self.refused[kind] += 1
        if self.refused[kind] == 1:
            log.warning("update request refused (%s): %s", kind, why)
        self._publish(
            topic, corr, UpdateResponse(path=req.path, status="error", offset=req.offset, error=why)
        )

    def _publish(self, topic: str, corr: bytes, resp: UpdateResponse) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = corr
        self._client.publish(topic, encode(resp), qos=1, properties=props)

    def _serve(self, key: str, req: UpdateRequest, topic: str, corr: bytes) -> None:
        try:
            group = self.group_of(key)
            blobs = self._blobs()
            why = authorise(req.path, group, blobs.get(group) if group else None)
            if why is not None:
                kind = "unknown_device" if group is None else "forbidden"
                self._refuse(kind, req, topic, corr, f"refused: {key}: {why}")
                return
            resp = answer(self.repo_dir, req, self.max_chunk)
            self._publish(topic, corr, resp)
            self.served += 1
            self.bytes_sent += len(resp.data) * 3 // 4
        except Exception:  # one bad request must not stop the pool
            log.exception("serving %s failed", req.path)
        finally:
            with self._lock:
                bucket = self._buckets.get(key)
                if bucket is not None:
                    bucket.queued -= 1
