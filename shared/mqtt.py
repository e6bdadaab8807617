"""Build a paho client from an ``[mqtt]`` section (MQTT 5, credentials, TLS) in one place.

Both sides use it so that credentials and TLS are handled the same way everywhere.
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from shared.config import MqttConfig


def make_client(cfg: MqttConfig, client_id: str, manual_ack: bool = False) -> mqtt.Client:
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    c.reconnect_delay_set(min_delay=1, max_delay=30)
    if cfg.username:
        c.username_pw_set(cfg.username, cfg.password.resolve("mqtt.password") if cfg.password else None)
    if cfg.tls is not None:
        c.tls_set(
            ca_certs=str(cfg.tls.ca_file),
            certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
            keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if cfg.tls.insecure_skip_hostname_check:
            c.tls_insecure_set(True)
    return c
