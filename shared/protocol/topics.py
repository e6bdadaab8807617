"""Topic builders and parsers for ``parkwatch/v1/``.

Device topics sit under ``parkwatch/v1/dev/{site}/{device}/`` so one broker ACL pattern
(``%u`` = device) confines a device to its own subtree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from shared.protocol.errors import UnknownTopic

ROOT = "parkwatch/v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Kind(StrEnum):
    STATUS = "status"
    TELEMETRY = "telemetry"
    PREDICTIONS = "predictions"
    MODEL_STATE = "model/state"
    SNAPSHOT = "snapshot"
    UPDATE_REQUEST = "update/request"
    UPDATE_RESPONSE = "update/response"
    RELEASE = "release"
    ALERT = "alert"
    CAPABILITIES = "cloud/capabilities"


_DEVICE_KINDS = {
    k.value: k
    for k in (
        Kind.STATUS,
        Kind.TELEMETRY,
        Kind.PREDICTIONS,
        Kind.MODEL_STATE,
        Kind.SNAPSHOT,
        Kind.UPDATE_REQUEST,
        Kind.UPDATE_RESPONSE,
    )
}


def check_segment(value: str, what: str) -> str:
    """Ids go into topics, file names and ACLs, so only a safe alphabet is allowed."""
    if not _SEGMENT.match(value):
        raise ValueError(
            f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class ParsedTopic:
    kind: Kind
    site: str | None = None
    device: str | None = None
    group: str | None = None


class Topics:
    """Builders. Wildcard subscriptions for the cloud are class attributes."""

    ALL_DEVICES = f"{ROOT}/dev/+/+/#"
    ALL_STATUS = f"{ROOT}/dev/+/+/status"
    ALL_TELEMETRY = f"{ROOT}/dev/+/+/telemetry"
    ALL_PREDICTIONS = f"{ROOT}/dev/+/+/predictions"
    ALL_MODEL_STATE = f"{ROOT}/dev/+/+/model/state"
    ALL_SNAPSHOTS = f"{ROOT}/dev/+/+/snapshot"
    ALL_UPDATE_REQUESTS = f"{ROOT}/dev/+/+/update/request"
    ALL_ALERTS = f"{ROOT}/alerts/+"
    CAPABILITIES = f"{ROOT}/cloud/capabilities"  # retained by the cloud; every device may read it

    @staticmethod
    def device(site: str, device: str, kind: Kind) -> str:
        if kind.value not in _DEVICE_KINDS:
            raise ValueError(f"{kind} is not a device topic")
        check_segment(site, "site")
        check_segment(device, "device")
        return f"{ROOT}/dev/{site}/{device}/{kind.value}"

    @staticmethod
    def release(group: str) -> str:
        return f"{ROOT}/release/{check_segment(group, 'group')}"

    @staticmethod
    def alerts(site: str) -> str:
        return f"{ROOT}/alerts/{check_segment(site, 'site')}"

    @staticmethod
    def shared(group: str, topic_filter: str) -> str:
        """A shared subscription so several ingest workers split one stream."""
        return f"$share/{group}/{topic_filter}"


def parse_topic(topic: str) -> ParsedTopic:
    if not topic.startswith(ROOT + "/"):
        raise UnknownTopic(f"topic {topic!r} is outside {ROOT}/")
    rest = topic[len(ROOT) + 1 :].split("/")
    try:
        if rest[0] == "dev" and len(rest) >= 4:
            site, device = rest[1], rest[2]
            kind = _DEVICE_KINDS.get("/".join(rest[3:]))
            if kind is not None and _SEGMENT.match(site) and _SEGMENT.match(device):
                return ParsedTopic(kind=kind, site=site, device=device)
        elif rest[0] == "release" and len(rest) == 2 and _SEGMENT.match(rest[1]):
            return ParsedTopic(kind=Kind.RELEASE, group=rest[1])
        elif rest[0] == "alerts" and len(rest) == 2 and _SEGMENT.match(rest[1]):
            return ParsedTopic(kind=Kind.ALERT, site=rest[1])
        elif rest == ["cloud", "capabilities"]:
            return ParsedTopic(kind=Kind.CAPABILITIES)
    except IndexError:
        pass
    raise UnknownTopic(f"topic {topic!r} is not a parkwatch v1 topic")
