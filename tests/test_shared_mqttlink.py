"""The shared MQTT link (shared/mqttlink.py) against a real Mosquitto: what every process of both
sides relies on (subscriptions replayed, persistent sessions, last-will, PUBACK reason codes)."""

from __future__ import annotations

import queue
import socket
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from shared.broker import EmbeddedBroker, free_port
from shared.config import MqttConfig
from shared.mqttlink import NO_MATCHING_SUBSCRIBERS, MqttLink, Will
from tests.fleetutil import wait_for

TIMEOUT = 20.0


def cfg(port: int) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=port)


@pytest.fixture
def links() -> Iterator[list[MqttLink]]:
    """Every link a test makes is stopped at the end, whatever happened."""
    made: list[MqttLink] = []
    yield made
    for link in made:
        link.stop()


def start(made: list[MqttLink], link: MqttLink) -> MqttLink:
    made.append(link)
    link.start()
    assert link.wait_ready(TIMEOUT), link.last_error
    return link


def collector(link: MqttLink, topic_filter: str) -> queue.Queue[mqtt.MQTTMessage]:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    link.subscribe(topic_filter, got.put)
    return got


def test_subscriptions_come_back_after_a_broker_restart(
    broker: EmbeddedBroker, links: list[MqttLink]
) -> None:
    sub = MqttLink(cfg(broker.port), "link-sub")
    got = collector(sub, "t/#")
    ups: list[bool] = []
    sub.on_connection_change(ups.append)
    start(links, sub)
    pub = start(links, MqttLink(cfg(broker.port), "link-pub"))

    pub.publish("t/1", b"before").wait_for_publish(TIMEOUT)
    assert got.get(timeout=TIMEOUT).payload == b"before"

    broker.restart()  # the broker forgets the non-persistent sessions and their subscriptions
    assert wait_for(lambda: sub.connects >= 2 and sub.ready and pub.connects >= 2, TIMEOUT, "reconnect")
    pub.publish("t/2", b"after").wait_for_publish(TIMEOUT)
    assert got.get(timeout=TIMEOUT).payload == b"after"
    assert ups[:3] == [True, False, True]
    assert sub.disconnects >= 1 and sub.last_error is None


def test_a_persistent_session_keeps_what_was_sent_while_away(
    broker: EmbeddedBroker, links: list[MqttLink]
) -> None:
    def durable() -> MqttLink:
        return MqttLink(cfg(broker.port), "link-durable", clean_start=False, session_expiry_s=600)

    first = durable()
    first.subscribe("q/#", qos=1)
    start(links, first)
    assert not first.session_present
    first.stop()

    pub = start(links, MqttLink(cfg(broker.port), "link-pub"))
    info = pub.publish("q/1", b"queued for the absent one")
    info.wait_for_publish(TIMEOUT)

    again = durable()
    got = collector(again, "q/#")
    start(links, again)
    assert again.session_present
    assert got.get(timeout=TIMEOUT).payload == b"queued for the absent one"


def test_the_last_will_is_sent_on_a_lost_connection_not_on_a_clean_stop(
    broker: EmbeddedBroker, links: list[MqttLink]
) -> None:
    watcher = MqttLink(cfg(broker.port), "link-watcher")
    got = collector(watcher, "will/#")
    start(links, watcher)

    clean = start(
        links, MqttLink(cfg(broker.port), "link-clean", will=Will("will/clean", b"gone", retain=False))
    )
    clean.stop()
    dying = MqttLink(cfg(broker.port), "link-dying", will=Will("will/dying", b"gone", retain=False))
    start(links, dying)
    sock = dying.client.socket()
    assert isinstance(sock, socket.socket)
    sock.shutdown(socket.SHUT_RDWR)  # the connection drops without a DISCONNECT

    msg = got.get(timeout=TIMEOUT)
    # Only the dying link's will: the clean stop came first, so its will would have come first.
    assert (msg.topic, msg.payload) == ("will/dying", b"gone")
    assert wait_for(lambda: dying.connects >= 2 and dying.connected, TIMEOUT, "the dying link to reconnect")


def test_pubacks_and_no_subscriber_refusals_reach_their_listeners(
    broker: EmbeddedBroker, links: list[MqttLink]
) -> None:
    pub = MqttLink(cfg(broker.port), "link-acks")
    acked: queue.Queue[int] = queue.Queue()
    refused: queue.Queue[tuple[int, int, str]] = queue.Queue()
    pub.on_ack(acked.put)
    pub.on_refused(lambda mid, code, text: refused.put((mid, code, text)))
    start(links, pub)

    nobody = pub.publish("nobody/listens", b"x")
    mid, code, _text = refused.get(timeout=TIMEOUT)
    assert (mid, code) == (nobody.mid, NO_MATCHING_SUBSCRIBERS)

    sub = MqttLink(cfg(broker.port), "link-listener")
    sub.subscribe("nobody/#")
    start(links, sub)
    heard = pub.publish("nobody/listens", b"y")
    assert acked.get(timeout=TIMEOUT) == heard.mid
    assert refused.empty()


def test_forget_on_connect_drops_what_an_old_session_subscribed(
    broker: EmbeddedBroker, links: list[MqttLink]
) -> None:
    def durable() -> MqttLink:
        return MqttLink(cfg(broker.port), "link-retiring", clean_start=False, session_expiry_s=600)

    old = durable()
    old.subscribe("r/#")
    start(links, old)
    old.stop()

    retiring = durable()
    retiring.forget_on_connect(["r/#"])
    start(links, retiring)  # ready only once the broker acknowledged the UNSUBSCRIBE
    assert retiring.session_present

    pub = MqttLink(cfg(broker.port), "link-pub")
    refused: queue.Queue[int] = queue.Queue()
    pub.on_refused(lambda mid, code, text: refused.put(code))
    start(links, pub)
    pub.publish("r/1", b"nobody wants this any more")
    assert refused.get(timeout=TIMEOUT) == NO_MATCHING_SUBSCRIBERS


def test_manual_ack_holds_a_message_until_acknowledged(broker: EmbeddedBroker, links: list[MqttLink]) -> None:
    got: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def durable() -> MqttLink:
        link = MqttLink(
            cfg(broker.port),
            "link-manual",
            clean_start=False,
            session_expiry_s=600,
            manual_ack=True,
            on_message=lambda _c, _u, msg: got.put(msg),
        )
        link.subscribe("m/#")
        return link

    first = start(links, durable())
    pub = start(links, MqttLink(cfg(broker.port), "link-pub"))
    pub.publish("m/1", b"not yet safe").wait_for_publish(TIMEOUT)
    assert got.get(timeout=TIMEOUT).payload == b"not yet safe"
    first.stop()  # never acknowledged: the broker must send it again

    second = start(links, durable())
    msg = got.get(timeout=TIMEOUT)
    assert msg.payload == b"not yet safe" and msg.dup
    second.ack(msg.mid, msg.qos)


def test_connect_now_raises_when_no_broker_listens(links: list[MqttLink]) -> None:
    link = MqttLink(cfg(free_port()), "link-nowhere")
    links.append(link)
    with pytest.raises(ConnectionRefusedError):
        link.start(connect_now=True)
    assert not link.connected


def test_a_background_connect_explains_why_it_keeps_failing(links: list[MqttLink]) -> None:
    port = free_port()
    link = MqttLink(cfg(port), "link-waiting")
    links.append(link)
    link.start()
    assert wait_for(lambda: link.last_error is not None, TIMEOUT, "a connect failure")
    assert link.last_error == f"cannot reach 127.0.0.1:{port}: connection refused"
    assert link.failed_attempts >= 1 and not link.connected
