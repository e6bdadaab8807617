"""Getting alerts to people and machines: MQTT (``parkwatch/v1/alerts/{site}``) and a webhook.

Both are best effort and never block the state change: the alert is stored first, and a broker
or webhook that is down is logged and reported in the return value, not raised.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from typing import Any

import httpx

from cloud.governance.alerts import to_message
from cloud.governance.records import StoredAlert
from shared.config import MqttConfig
from shared.mqttlink import MqttLink
from shared.protocol import Topics, encode

log = logging.getLogger("parkwatch.cloud.governance")

SIGNATURE_HEADER = "X-Parkwatch-Signature"


class AlertPublisher:
    """One lazily connected MQTT link; ``publish`` waits for the PUBACK (QoS 1)."""

    def __init__(self, cfg: MqttConfig, client_id: str, timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.timeout_s = timeout_s
        self._link: MqttLink | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> MqttLink:
        if self._link is None:
            link = MqttLink(self.cfg, self.client_id, logger=log)
            link.start()
            self._link = link
        return self._link

    def publish(self, alert: StoredAlert) -> bool:
        with self._lock:
            try:
                c = self._ensure()
                if not c.wait_connected(self.timeout_s):
                    log.warning(
                        "alert %s not published: broker %s:%d unreachable",
                        alert.id,
                        self.cfg.host,
                        self.cfg.port,
                    )
                    return False
                info = c.publish(Topics.alerts(alert.site), encode(to_message(alert)), qos=1)
                info.wait_for_publish(self.timeout_s)
                return info.is_published()
            except (OSError, ValueError, RuntimeError) as e:
                log.warning("alert %s not published: %s", alert.id, e)
                return False

    def close(self) -> None:
        with self._lock:
            if self._link is not None:
                self._link.stop()
                self._link = None


def sign(secret: str, body: bytes) -> str:
    """Pure: the webhook signature, ``sha256=<hex HMAC>`` like GitHub's, so receivers can verify."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_webhook(url: str, alert: StoredAlert, secret: str | None, timeout_s: float) -> dict[str, Any]:
    body = json.dumps(to_message(alert).to_wire(), sort_keys=True).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
        return {"ok": r.is_success, "status": r.status_code}
    except httpx.HTTPError as e:
        log.warning("webhook %s failed for alert %s: %s", url, alert.id, e)
        return {"ok": False, "error": str(e)}
