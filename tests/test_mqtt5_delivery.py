"""MQTT 5.0 delivery to a 5.0 subscriber: subscription options (No Local, Retain As
Published, Retain Handling), Subscription Identifiers, the Message Expiry Interval and
the client's Maximum Packet Size, with paho-mqtt v5, mosquitto_sub/mosquitto_pub -V
mqttv5, and raw sockets where a peer cannot express the case.

"Nothing arrives" is always checked against a later message that does arrive on the
same connection, so an absence is not a timing guess: the broker delivers a publisher's
messages to a subscriber in order.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

import pyo3mq
import pytest
import test_interop
import test_mqtt5
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from support.mqtt_raw import RawClient, packet, s
from support.mqtt_raw import publish as publish_311
from support.mqtt_raw import subscribe as subscribe_311
from test_interop import MosquittoSub, mosquitto_pub
from test_mqtt5 import (
    TIMEOUT,
    Paho5,
    expect_disconnect,
    props,
    publish5,
    publish5_fields,
    raw5,
    subscribe5,
    vbi,
)

# The fixtures of tests/test_mqtt5.py and tests/test_interop.py, under the same names.
paho5 = test_mqtt5.paho5
raw_clients = test_mqtt5.raw_clients
mosq_sub = test_interop.mosq_sub


def subscribe(
    c: Paho5, topic: str, options: SubscribeOptions, sub_id: int | None = None
) -> list[ReasonCode]:
    """SUBSCRIBE with options (and a Subscription Identifier); the SUBACK's codes."""
    p = None
    if sub_id is not None:
        p = Properties(PacketTypes.SUBSCRIBE)
        p.SubscriptionIdentifier = sub_id
    n = len(c.subacks)
    c.client.subscribe(topic, options=options, properties=p)
    c.wait(lambda: len(c.subacks) > n)
    return c.subacks[n]


def publish(c: Paho5, topic: str, payload: bytes, qos: int = 1, **kwargs: Any) -> None:
    c.client.publish(topic, payload, qos=qos, **kwargs).wait_for_publish(TIMEOUT)


def payloads(c: Paho5) -> list[bytes]:
    return [m.payload for m in c.messages]


def sub_ids(msg: Any) -> list[int]:
    got = msg.properties.json().get("SubscriptionIdentifier", [])
    return sorted(got if isinstance(got, list) else [got])


# --------------------------------------------------------------------------- options


def test_no_local_keeps_a_clients_own_messages_from_it(paho5: Callable[..., Paho5]) -> None:
    """[MQTT-3.8.3-3] With No Local a client's own messages are not delivered back on
    that subscription; another client's are, and so are its own on an overlapping
    subscription without it (once, [MQTT-3.3.4-2])."""
    me = paho5("nl-me")
    other = paho5("nl-other")
    assert [r.value for r in subscribe(me, "nl/a", SubscribeOptions(qos=1, noLocal=True))] == [1]
    subscribe(me, "nl/sync", SubscribeOptions(qos=1))
    publish(me, "nl/a", b"own")
    publish(me, "nl/sync", b"sync-1")
    me.wait(lambda: b"sync-1" in payloads(me))
    assert payloads(me) == [b"sync-1"]
    publish(other, "nl/a", b"theirs")
    me.wait(lambda: b"theirs" in payloads(me))
    subscribe(me, "nl/+", SubscribeOptions(qos=1))
    publish(me, "nl/a", b"own-again")
    me.wait(lambda: b"own-again" in payloads(me))
    assert payloads(me) == [b"sync-1", b"theirs", b"own-again"]


def test_retain_as_published(paho5: Callable[..., Paho5]) -> None:
    """[MQTT-3.3.1-13] Retain As Published keeps the RETAIN flag on a forwarded message;
    [MQTT-3.3.1-12] without it the flag is 0. A retained message sent because of a new
    subscription has RETAIN=1 either way [MQTT-3.3.1-9]."""
    keep = paho5("rap-keep")
    clear = paho5("rap-clear")
    subscribe(keep, "rap/t", SubscribeOptions(qos=1, retainAsPublished=True))
    subscribe(clear, "rap/t", SubscribeOptions(qos=1))
    pub = paho5("rap-pub")
    publish(pub, "rap/t", b"r", retain=True)
    publish(pub, "rap/t", b"n")
    for c in (keep, clear):
        c.wait(lambda c=c: len(c.messages) == 2)
    assert [(m.payload, m.retain) for m in keep.messages] == [(b"r", True), (b"n", False)]
    assert [(m.payload, m.retain) for m in clear.messages] == [(b"r", False), (b"n", False)]
    late = paho5("rap-late")
    subscribe(late, "rap/t", SubscribeOptions(qos=1))
    late.wait(lambda: len(late.messages) == 1)
    assert (late.messages[0].payload, late.messages[0].retain) == (b"r", True)


def test_retain_as_published_on_shared_subscriptions(paho5: Callable[..., Paho5]) -> None:
    """[MQTT-3.3.1-13] A shared subscription's member with Retain As Published gets the
    RETAIN flag as published, one without it RETAIN 0 [MQTT-3.3.1-12]: the options are
    the member's, as for an ordinary subscription (tests/test_cluster_v5.py checks the
    same across nodes)."""
    keep = paho5("srap-keep")
    clear = paho5("srap-clear")
    subscribe(keep, "$share/k/srap/t", SubscribeOptions(qos=1, retainAsPublished=True))
    subscribe(clear, "$share/c/srap/t", SubscribeOptions(qos=1))
    pub = paho5("srap-pub")
    publish(pub, "srap/t", b"r", retain=True)
    publish(pub, "srap/t", b"n")
    publish(pub, "srap/t", b"", retain=True)
    for c in (keep, clear):
        c.wait(lambda c=c: len(c.messages) == 3)
    assert [(m.payload, m.retain) for m in keep.messages] == [
        (b"r", True),
        (b"n", False),
        (b"", True),
    ]
    assert [(m.payload, m.retain) for m in clear.messages] == [
        (b"r", False),
        (b"n", False),
        (b"", False),
    ]


@pytest.mark.parametrize(
    ("handling", "first", "again"),
    [
        (SubscribeOptions.RETAIN_SEND_ON_SUBSCRIBE, 1, 1),
        (SubscribeOptions.RETAIN_SEND_IF_NEW_SUB, 1, 0),
        (SubscribeOptions.RETAIN_DO_NOT_SEND, 0, 0),
    ],
    ids=["0-always", "1-if-new", "2-never"],
)
def test_retain_handling(
    paho5: Callable[..., Paho5], handling: int, first: int, again: int
) -> None:
    """[MQTT-3.3.1-9] Retain Handling 0 sends the retained messages on every SUBSCRIBE;
    [MQTT-3.3.1-10] 1 only when the subscription did not exist; [MQTT-3.3.1-11] 2 never."""
    pub = paho5("rh-pub")
    publish(pub, "rh/t", b"kept", retain=True)
    c = paho5("rh-sub")
    subscribe(c, "rh/sync", SubscribeOptions(qos=1))
    options = SubscribeOptions(qos=1, retainHandling=handling)
    for round_, want in enumerate((first, again)):
        subscribe(c, "rh/t", options)
        # The retained message is queued before the SUBACK: a sync message after it
        # arrives after it.
        marker = b"sync-%d" % round_
        publish(pub, "rh/sync", marker)
        c.wait(lambda marker=marker: marker in payloads(c))
        got = [m for m in c.messages if m.topic == "rh/t"]
        assert len(got) == want, (round_, payloads(c))
        assert all(m.retain for m in got)
        c.messages.clear()


def test_retain_as_published_with_mosquitto_sub(
    mosq_sub: Callable[..., MosquittoSub], port: int
) -> None:
    """[MQTT-3.3.1-13] mosquitto_sub -V mqttv5 --retain-as-published sees RETAIN=1 (%r) on
    a forwarded retained message and 0 on the next one."""
    sub = mosq_sub("-V", "mqttv5", "-t", "rapm/t", "-q", "1", "--retain-as-published",
                   "-F", "MSG|%r|%p")  # fmt: skip
    assert sub.subscribed() == [1]
    mosquitto_pub(port, "-V", "mqttv5", "-q", "1", "-t", "rapm/t", "-m", "r1", "-r")
    mosquitto_pub(port, "-V", "mqttv5", "-q", "1", "-t", "rapm/t", "-m", "n2")
    got = [sub.wait_for(lambda line: line.startswith("MSG|")) for _ in range(2)]
    assert got == ["MSG|1|r1", "MSG|0|n2"]


# --------------------------------------------------------------------------- identifiers


def test_subscription_identifiers_of_every_matching_subscription(
    paho5: Callable[..., Paho5],
) -> None:
    """[MQTT-3.3.4-3] A PUBLISH carries the Subscription Identifier of the matching
    subscription; [MQTT-3.3.4-4] with overlapping ones, one copy carries them all, at
    the highest QoS granted [MQTT-3.3.4-2]; [MQTT-3.8.4-3] a subscription replaced with
    another identifier uses the new one. The CONNACK no longer says identifiers are
    unavailable."""
    c = paho5("sid")
    assert c.connack is not None
    assert "SubscriptionIdentifierAvailable" not in c.connack[2].json()
    assert [r.value for r in subscribe(c, "sid/#", SubscribeOptions(qos=1), 5)] == [1]
    subscribe(c, "sid/+", SubscribeOptions(qos=0), 268_435_455)
    subscribe(c, "sid/a", SubscribeOptions(qos=1))
    pub = paho5("sid-pub")
    publish(pub, "sid/a", b"all")
    publish(pub, "sid/x/y", b"hash-only")
    c.wait(lambda: len(c.messages) == 2)
    first, second = c.messages
    assert (first.payload, first.qos, sub_ids(first)) == (b"all", 1, [5, 268_435_455])
    assert (second.payload, sub_ids(second)) == (b"hash-only", [5])
    # Replaced: the new identifier; and a subscription without one adds none.
    subscribe(c, "sid/#", SubscribeOptions(qos=1), 6)
    publish(pub, "sid/x/y", b"replaced")
    c.wait(lambda: len(c.messages) == 3)
    assert sub_ids(c.messages[2]) == [6]


def test_shared_subscription_identifier(paho5: Callable[..., Paho5]) -> None:
    """[MQTT-3.3.4-3] A member of a shared subscription gets the identifier it gave with
    the group's messages; [MQTT-3.3.1-13] and its Retain As Published."""
    c = paho5("shid")
    options = SubscribeOptions(qos=1, retainAsPublished=True)
    assert [r.value for r in subscribe(c, "$share/g/shid/t", options, 11)] == [1]
    pub = paho5("shid-pub")
    publish(pub, "shid/t", b"one", retain=True)
    c.wait(lambda: len(c.messages) == 1)
    assert (sub_ids(c.messages[0]), c.messages[0].retain) == ([11], True)


def test_subscription_identifier_with_mosquitto(
    mosq_sub: Callable[..., MosquittoSub], port: int
) -> None:
    """[MQTT-3.3.4-3] mosquitto_sub -D subscribe subscription-identifier 17 prints it (%S)
    on the retained message its subscription brought and on a live one; mosquitto_pub's
    message expiry arrives as the remaining interval (%E) [MQTT-3.3.2-6]."""
    mosquitto_pub(port, "-V", "mqttv5", "-q", "1", "-t", "msid/r", "-m", "retained", "-r")
    sub = mosq_sub("-V", "mqttv5", "-t", "msid/#", "-q", "1",
                   "-D", "subscribe", "subscription-identifier", "17",
                   "-F", "MSG|%S|%E|%r|%p")  # fmt: skip
    assert sub.subscribed() == [1]
    mosquitto_pub(port, "-V", "mqttv5", "-q", "1", "-t", "msid/t", "-m", "live",
                  "-D", "publish", "message-expiry-interval", "90")  # fmt: skip
    got = [sub.wait_for(lambda line: line.startswith("MSG|")) for _ in range(2)]
    assert got == ["MSG|17||1|retained", "MSG|17|90|0|live"]


def test_subscription_identifier_0_is_a_protocol_error(
    port: int, raw_clients: list[RawClient]
) -> None:
    """A Subscription Identifier of 0 in SUBSCRIBE is a Protocol Error: DISCONNECT
    0x82 (3.8.2.1.2); a valid one is accepted (no more 0xA1)."""
    c, (_, reason, _) = raw5(port, "sid0")
    raw_clients.append(c)
    assert reason == 0
    c.send(subscribe5(1, ("t", 1), properties=props(b"\x0b" + vbi(300))))
    assert c.recv().body == b"\x00\x01\x00\x01"
    c.send(subscribe5(2, ("t", 1), properties=props(b"\x0b\x00")))
    expect_disconnect(c, 0x82)


def test_v311_publisher_to_v5_subscriber_with_identifier(
    port: int, raw_clients: list[RawClient], broker: pyo3mq.Broker
) -> None:
    """Mixed: a 3.1.1 publisher's message reaches a 5.0 subscriber with its
    Subscription Identifier as the only property, and a 3.1.1 subscriber on the same
    topic as plain 3.1.1 bytes; a retained 3.1.1 message comes with Retain As Published
    kept."""
    v5, _ = raw5(port, "mix-v5")
    raw_clients.append(v5)
    v5.send(subscribe5(1, ("mix/#", 0x08 | 1), properties=props(b"\x0b" + vbi(200))))
    assert v5.recv().body == b"\x00\x01\x00\x01"
    old = RawClient(port)
    raw_clients.append(old)
    old.connect("mix-311")
    old.send(subscribe_311(1, ("mix/#", 0)))
    assert old.recv().body == b"\x00\x01\x00"
    pub = RawClient(port)
    raw_clients.append(pub)
    pub.connect("mix-pub")
    pub.send(publish_311("mix/t", b"hello", qos=1, pkid=3, retain=True))
    assert pub.recv().body == b"\x00\x03"
    got = v5.recv()
    assert got.retain
    topic, pkid, properties, payload = publish5_fields(got)
    assert (topic, properties, payload) == ("mix/t", {0x0B: [200]}, b"hello")
    v5.send(packet(0x40, struct.pack("!H", pkid or 0)))
    plain = old.recv()
    assert (plain.first, plain.body) == (0x30, s("mix/t") + b"hello")


# --------------------------------------------------------------------------- expiry


def test_message_expiry_in_an_offline_queue(paho5: Callable[..., Paho5]) -> None:
    """[MQTT-3.3.2-5] A queued message whose Message Expiry Interval passed while the
    subscriber was offline is not delivered; [MQTT-3.3.2-6] one still alive arrives with
    the interval minus the time it waited."""
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 300
    c = paho5("exp-sub", clean_start=True, properties=session)
    subscribe(c, "exp/#", SubscribeOptions(qos=1))
    c.close()
    pub = paho5("exp-pub")
    for payload, interval in ((b"short", 1), (b"long", 60)):
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval = interval
        publish(pub, "exp/t", payload, properties=p)
    publish(pub, "exp/t", b"forever")
    time.sleep(2.2)
    again = paho5("exp-sub", clean_start=False, properties=session)
    assert again.connack is not None and again.connack[0].session_present
    again.wait(lambda: b"forever" in payloads(again))
    assert payloads(again) == [b"long", b"forever"]
    long_, forever = again.messages
    remaining = long_.properties.MessageExpiryInterval
    assert 55 <= remaining <= 58, remaining
    assert "MessageExpiryInterval" not in forever.properties.json()


def test_retained_message_expires(paho5: Callable[..., Paho5]) -> None:
    """[MQTT-3.3.2-5] A retained message is not sent to a new subscriber once its
    Message Expiry Interval has passed; one still alive is sent with the remaining
    interval [MQTT-3.3.2-6]."""
    pub = paho5("rexp-pub")
    for topic, interval in (("rexp/short", 1), ("rexp/long", 100)):
        p = Properties(PacketTypes.PUBLISH)
        p.MessageExpiryInterval = interval
        publish(pub, topic, b"x", retain=True, properties=p)
    time.sleep(2.2)
    c = paho5("rexp-sub")
    subscribe(c, "rexp/#", SubscribeOptions(qos=1))
    subscribe(c, "rexp-sync", SubscribeOptions(qos=1))
    publish(pub, "rexp-sync", b"sync")
    c.wait(lambda: b"sync" in payloads(c))
    assert [m.topic for m in c.messages] == ["rexp/long", "rexp-sync"]
    assert 90 <= c.messages[0].properties.MessageExpiryInterval <= 98


def test_message_expiry_while_waiting_for_the_window(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.3.2-5] A message waiting behind a full inflight window (max_inflight=1)
    is dropped once it expires; the next one, without an expiry, follows."""
    port = make_broker(max_inflight=1).addresses[0][1]
    sub, _ = raw5(port, "win-sub")
    raw_clients.append(sub)
    sub.send(subscribe5(1, ("win/t", 1)))
    assert sub.recv().body == b"\x00\x01\x00\x01"
    pub, _ = raw5(port, "win-pub")
    raw_clients.append(pub)
    expiry = props(b"\x02" + struct.pack("!I", 1))
    pub.send(publish5("win/t", b"first", qos=1, pkid=1))
    pub.send(publish5("win/t", b"waits", qos=1, pkid=2, properties=expiry))
    pub.send(publish5("win/t", b"last", qos=1, pkid=3))
    first = sub.recv()
    _, pkid, properties, payload = publish5_fields(first)
    assert (payload, properties) == (b"first", {})
    time.sleep(1.5)
    sub.send(packet(0x40, struct.pack("!H", pkid or 0)))
    _, pkid, properties, payload = publish5_fields(sub.recv())
    assert (payload, properties) == (b"last", {})


# --------------------------------------------------------------------------- packet size


def test_client_maximum_packet_size(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.1.2-24] The broker never sends a PUBLISH larger than the client's Maximum
    Packet Size; [MQTT-3.1.2-25] it drops it for that client and carries on as if it had
    been sent: with max_inflight=1, a QoS 1 message too large does not hold the window,
    and the next one arrives. Another client without the limit gets both."""
    port = make_broker(max_inflight=1).addresses[0][1]
    limit = props(b"\x27" + struct.pack("!I", 64), b"\x11" + struct.pack("!I", 60))
    small, _ = raw5(port, "mps-small", clean=False, properties=limit)
    raw_clients.append(small)
    big, _ = raw5(port, "mps-big")
    raw_clients.append(big)
    for c in (small, big):
        c.send(subscribe5(1, ("mps/#", 1)))
        assert c.recv().body == b"\x00\x01\x00\x01"
    pub, _ = raw5(port, "mps-pub")
    raw_clients.append(pub)
    # Fixed header 2, topic 7, packet id 2, empty properties 1: a 52-byte payload makes
    # a 64-byte PUBLISH, 53 a 65-byte one.
    pub.send(publish5("mps/a", b"y" * 53, qos=1, pkid=1))
    pub.send(publish5("mps/a", b"z" * 52, qos=1, pkid=2))
    got = small.recv()
    assert len(got.body) + 2 == 64
    _, pkid, _, payload = publish5_fields(got)
    assert payload == b"z" * 52
    small.send(packet(0x40, struct.pack("!H", pkid or 0)))
    # Not kept for a resend either: the resumed session has nothing before the next one.
    small.send(packet(0xE0, b"\x00"))
    assert small.expect_closed() == b""
    small, (present, _, _) = raw5(port, "mps-small", clean=False, properties=limit)
    raw_clients.append(small)
    assert present == 1
    pub.send(publish5("mps/b", b"after", qos=1, pkid=3))
    assert publish5_fields(small.recv())[3] == b"after"
    for want in (b"y" * 53, b"z" * 52):
        _, pkid, _, payload = publish5_fields(big.recv())
        assert payload == want
        big.send(packet(0x40, struct.pack("!H", pkid or 0)))
