"""MQTT 5.0 outbound Topic Aliases: the broker's aliases on deliveries to a subscriber
whose CONNECT carried a Topic Alias Maximum (3.3.2.3.4, connection/topic_alias_out.rs).

Raw 5.0 sockets read the exact bytes (which alias, whether the topic is empty); paho-mqtt
v5, `mosquitto_sub -V 5` and the package's own client show that real receivers get every
message under its topic. The broker hands out aliases to the first topics it delivers,
up to the smaller of the client's maximum and `outbound_topic_aliases` (10 here, 0 by
default); the rest keep their full names. Ordering waits on received packets, never on
sleeps.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
import test_mqtt5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.mqtt_raw import Packet, RawClient, packet, remaining_length
from test_mqtt5 import MOSQUITTO_SUB, STDBUF, props, publish5, publish5_fields, raw5, subscribe5

# The raw clients a test opens, closed after it (tests/test_mqtt5.py's fixture).
raw_clients = test_mqtt5.raw_clients

TIMEOUT = 5.0
DISCONNECT = b"\xe0\x00"
TOPICS = ["ta/a", "ta/b", "ta/c", "ta/d"]


def tam(n: int) -> bytes:
    """A Topic Alias Maximum property (0x22), for CONNECT."""
    return b"\x22" + n.to_bytes(2, "big")


def expiry(seconds: int) -> bytes:
    """A Session Expiry Interval property (0x11)."""
    return b"\x11" + seconds.to_bytes(4, "big")


def port_of(broker: pyo3mq.Broker) -> int:
    return int(broker.addresses[0][1])


@pytest.fixture
def port(make_broker: Callable[..., pyo3mq.Broker]) -> int:
    """A broker that uses outbound aliases (`outbound_topic_aliases = 10`; the default
    is 0, none)."""
    return port_of(make_broker(outbound_topic_aliases=10))


def subscriber(
    port: int,
    client_id: str,
    raw_clients: list[RawClient],
    *connect_props: bytes,
    qos: int = 0,
    clean: bool = True,
    subscribe: bool = True,
) -> RawClient:
    """A raw 5.0 client with the CONNECT properties `connect_props`, subscribed to
    `ta/#` at `qos`."""
    c, (_, code, _) = raw5(port, client_id, clean=clean, properties=props(*connect_props))
    raw_clients.append(c)
    assert code == 0
    if subscribe:
        c.send(subscribe5(1, ("ta/#", qos)))
        assert c.recv().type == 9
    return c


def publisher(port: int, raw_clients: list[RawClient]) -> RawClient:
    c, (_, code, _) = raw5(port, "ta-pub")
    raw_clients.append(c)
    assert code == 0
    return c


class Receiver:
    """Resolves what one connection receives as a client must: a PUBLISH with a topic and
    an alias sets the mapping, one with an empty topic uses it [MQTT-3.3.2-7]."""

    def __init__(self, c: RawClient, maximum: int) -> None:
        self.c = c
        self.maximum = maximum
        self.aliases: dict[int, str] = {}
        # The packet identifier of the last PUBLISH received (None at QoS 0).
        self.pkid: int | None = None

    def ack(self) -> None:
        """PUBACK for the last (QoS 1) PUBLISH received."""
        assert self.pkid is not None
        self.c.send(packet(0x40, self.pkid.to_bytes(2, "big")))

    def next(self) -> tuple[str, int | None, str, bytes, Packet]:
        """(topic on the wire, alias, resolved topic, payload, packet)."""
        pkt = self.c.recv()
        topic, self.pkid, properties, payload = publish5_fields(pkt)
        alias = properties.get(0x23)
        if alias is not None:
            # [MQTT-3.1.2-26] [MQTT-3.3.2-11] [MQTT-3.3.2-8]
            assert 1 <= alias <= self.maximum, f"alias {alias} above {self.maximum}"
            if topic:
                self.aliases[alias] = topic
            else:
                assert alias in self.aliases, f"alias {alias} used before it was set"
        else:
            assert topic, "an empty topic without an alias"
        resolved = topic if alias is None else topic or self.aliases[alias]
        return topic, alias, resolved, payload, pkt


def size(pkt: Packet) -> int:
    """The whole packet's size: fixed header byte, Remaining Length, body."""
    return 1 + len(remaining_length(len(pkt.body))) + len(pkt.body)


def publish_rounds(pub: RawClient, rounds: int, topics: list[str] = TOPICS) -> list[str]:
    """Publishes (QoS 0) each topic once per round; returns the topics in order."""
    sent = []
    for r in range(rounds):
        for t in topics:
            pub.send(publish5(t, f"{t}#{r}".encode()))
            sent.append(t)
    return sent


# --------------------------------------------------------------------------- raw 5.0


def test_aliases_stay_within_the_client_maximum(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.1.2-26] [MQTT-3.3.2-11] Topic Alias Maximum 2, four topics three times:
    the first two topics get aliases 1 and 2 with their name, later deliveries the alias
    and an empty topic; the other two always go under their full name; no alias is ever
    above 2 or 0 [MQTT-3.3.2-8]."""
    sub = Receiver(subscriber(port, "ta-max2", raw_clients, tam(2)), 2)
    sent = publish_rounds(publisher(port, raw_clients), 3)
    got = [sub.next() for _ in sent]
    assert [(topic, alias) for topic, alias, *_ in got] == [
        ("ta/a", 1), ("ta/b", 2), ("ta/c", None), ("ta/d", None),
        ("", 1), ("", 2), ("ta/c", None), ("ta/d", None),
        ("", 1), ("", 2), ("ta/c", None), ("ta/d", None),
    ]  # fmt: skip
    assert [(resolved, payload) for _, _, resolved, payload, _ in got] == [
        (t, f"{t}#{n // len(TOPICS)}".encode()) for n, t in enumerate(sent)
    ]


@pytest.mark.parametrize(
    "connect_props", [pytest.param((), id="absent"), pytest.param((tam(0),), id="zero")]
)
def test_no_alias_for_a_client_that_allows_none(
    port: int, raw_clients: list[RawClient], connect_props: tuple[bytes, ...]
) -> None:
    """[MQTT-3.1.2-27] A CONNECT without Topic Alias Maximum, or with 0: no PUBLISH
    carries a Topic Alias, every topic is there in full."""
    sub = Receiver(subscriber(port, "ta-none", raw_clients, *connect_props), 0)
    sent = publish_rounds(publisher(port, raw_clients), 3)
    for t in sent:
        topic, alias, _, _, pkt = sub.next()
        assert (topic, alias) == (t, None)
        assert 0x23 not in publish5_fields(pkt)[2]


@pytest.mark.parametrize("setting, used", [(None, []), (0, []), (1, [1])])
def test_outbound_topic_aliases_setting_bounds_what_the_broker_uses(
    make_broker: Callable[..., pyo3mq.Broker],
    raw_clients: list[RawClient],
    setting: int | None,
    used: list[int],
) -> None:
    """`outbound_topic_aliases` caps the aliases below the client's maximum (10): the
    default and 0 send none at all, 1 only alias 1."""
    settings = {} if setting is None else {"outbound_topic_aliases": setting}
    port = port_of(make_broker(**settings))
    sub = Receiver(subscriber(port, "ta-setting", raw_clients, tam(10)), 10)
    sent = publish_rounds(publisher(port, raw_clients), 2)
    got = [sub.next() for _ in sent]
    assert sorted({alias for _, alias, *_ in got if alias is not None}) == used
    assert [resolved for _, _, resolved, *_ in got] == sent


def test_reconnect_starts_a_new_map(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.3.2-7] Aliases belong to the network connection: after a reconnect to the
    same session the first delivery of a topic sets its alias again (topic name plus
    alias), and only later ones use it. The unacknowledged QoS 1 PUBLISH resent on
    reconnect [MQTT-4.4.0-1] carries its full topic and no alias."""
    sub = Receiver(subscriber(port, "ta-re", raw_clients, tam(2), expiry(60), qos=1), 2)
    pub = publisher(port, raw_clients)
    pub.send(publish5("ta/a", b"1", qos=1, pkid=1))
    assert pub.recv().first == 0x40
    topic, alias, _, _, _ = sub.next()
    assert (topic, alias) == ("ta/a", 1)
    sub.ack()
    pub.send(publish5("ta/a", b"2", qos=1, pkid=2))
    assert pub.recv().first == 0x40
    topic, alias, _, _, _ = sub.next()
    assert (topic, alias) == ("", 1)
    unacked = sub.pkid
    sub.c.send(DISCONNECT)
    sub.c.expect_closed()
    # Queued for the offline session once the publisher has its PUBACK.
    pub.send(publish5("ta/a", b"3", qos=1, pkid=3))
    assert pub.recv().first == 0x40

    again = Receiver(subscriber(port, "ta-re", raw_clients, tam(2), expiry(60),
                                qos=1, clean=False, subscribe=False), 2)  # fmt: skip
    topic, alias, _, payload, resent = again.next()
    assert resent.dup and again.pkid == unacked
    assert (topic, alias, payload) == ("ta/a", None, b"2")
    again.ack()
    topic, alias, _, payload, queued = again.next()
    assert not queued.dup
    assert (topic, alias, payload) == ("ta/a", 1, b"3"), "the alias is set anew"
    again.ack()
    pub.send(publish5("ta/a", b"4", qos=1, pkid=4))
    assert pub.recv().first == 0x40
    topic, alias, resolved, payload, _ = again.next()
    assert (topic, alias, resolved, payload) == ("", 1, "ta/a", b"4")


def test_qos_1_and_2_deliveries_carry_aliases(port: int, raw_clients: list[RawClient]) -> None:
    """QoS 1 and QoS 2 deliveries use the alias like QoS 0, and their flows complete:
    PUBACK; PUBREC, PUBREL, PUBCOMP."""
    sub = Receiver(subscriber(port, "ta-qos", raw_clients, tam(2), qos=2), 2)
    pub = publisher(port, raw_clients)
    expected = [("ta/q", 1, 1), ("", 1, 2), ("", 1, 2), ("ta/r", 2, 1), ("", 2, 1)]
    for pkid, (_, _, qos) in enumerate(expected, start=1):
        topic = "ta/q" if pkid <= 3 else "ta/r"
        pub.send(publish5(topic, str(pkid).encode(), qos=qos, pkid=pkid))
        if qos == 1:
            assert pub.recv().first == 0x40
        else:
            assert pub.recv().first == 0x50
            pub.send(packet(0x62, pkid.to_bytes(2, "big")))
            assert pub.recv().first == 0x70
        topic_on_wire, alias, resolved, payload, pkt = sub.next()
        assert (topic_on_wire, alias, pkt.qos) == expected[pkid - 1]
        assert (resolved, payload) == (topic, str(pkid).encode())
        assert sub.pkid is not None
        pid = sub.pkid.to_bytes(2, "big")
        if pkt.qos == 1:
            sub.c.send(packet(0x40, pid))
        else:
            sub.c.send(packet(0x50, pid))
            rel = sub.c.recv()
            assert (rel.first, rel.body[:2]) == (0x62, pid)
            sub.c.send(packet(0x70, pid))


def test_aliased_deliveries_keep_the_message_properties(
    port: int, raw_clients: list[RawClient]
) -> None:
    """The alias goes into this delivery's header beside the publisher's properties,
    which arrive unchanged [MQTT-3.3.2-17] [MQTT-3.3.2-18], the Message Expiry Interval
    counted down in place [MQTT-3.3.2-6]."""
    sub = Receiver(subscriber(port, "ta-props", raw_clients, tam(2)), 2)
    pub = publisher(port, raw_clients)
    user = b"\x26" + b"\x00\x01k" + b"\x00\x01v"
    for n in range(2):
        pub.send(publish5("ta/p", b"x", properties=props(b"\x02" + (600).to_bytes(4, "big"), user)))
        topic, alias, resolved, _, pkt = sub.next()
        assert (topic, alias, resolved) == (("ta/p", "")[n], 1, "ta/p")
        properties = publish5_fields(pkt)[2]
        assert properties.pop(0x02) in (599, 600)
        assert properties == {0x23: 1, 0x26: [("k", "v")]}


def test_maximum_packet_size_counts_the_aliased_size(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.1.2-24] [MQTT-3.1.2-25] The size checked against the client's Maximum
    Packet Size (100) is the size sent: a message that fits only with an empty topic
    and its alias is delivered to the aliasing client and dropped for a client without
    aliases; a PUBLISH that would fit only without the 3 bytes of a new alias goes out
    without one, and the topic's next delivery sets it."""
    long_topic = "ta/" + "x" * 40  # 43 bytes: a plain QoS 0 PUBLISH is 48 + payload
    sub = Receiver(subscriber(port, "ta-mps", raw_clients, tam(2), b"\x27\x00\x00\x00\x64"), 2)
    plain = Receiver(subscriber(port, "ta-mps-plain", raw_clients, b"\x27\x00\x00\x00\x64"), 0)
    pub = publisher(port, raw_clients)
    # 48 + 51 = 99 bytes plain; with the alias set, 102: over the limit.
    pub.send(publish5(long_topic, b"n" * 51))
    for r in (sub, plain):
        topic, alias, _, payload, pkt = r.next()
        assert (topic, alias, len(payload)) == (long_topic, None, 51)
        assert size(pkt) == 99
    pub.send(publish5(long_topic, b"s"))
    topic, alias, _, _, _ = sub.next()
    assert (topic, alias) == (long_topic, 1)
    assert plain.next()[:2] == (long_topic, None)
    # Empty topic plus alias: 8 + 90 = 98 bytes; under its full name 138.
    pub.send(publish5(long_topic, b"b" * 90))
    pub.send(publish5("ta/end", b"marker"))
    topic, alias, resolved, payload, pkt = sub.next()
    assert (topic, alias, resolved, payload) == ("", 1, long_topic, b"b" * 90)
    assert size(pkt) == 98
    # [MQTT-3.1.2-25]: dropped for the client without aliases; the next one arrives.
    assert plain.next()[2:4] == ("ta/end", b"marker")
    assert sub.next()[2:4] == ("ta/end", b"marker")


# --------------------------------------------------------------------------- real peers


class PahoSub:
    """A paho-mqtt v5 subscriber to `ta/#` that records each message's topic, Topic Alias
    (as paho decodes the property) and payload."""

    def __init__(self, port: int, client_id: str, maximum: int | None) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.got: list[tuple[str, int | None, bytes]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            alias = getattr(msg.properties, "TopicAlias", None)
            with self.cond:
                self.got.append((msg.topic, alias, msg.payload))
                self.cond.notify_all()

        self.client.on_message = on_message
        self.client.on_connect = lambda c, *_: c.subscribe("ta/#")
        self.client.on_subscribe = lambda *_: subscribed.set()
        connect_props = Properties(PacketTypes.CONNECT)
        if maximum is not None:
            connect_props.TopicAliasMaximum = maximum
        self.client.connect("127.0.0.1", port, properties=connect_props)
        self.client.loop_start()
        assert subscribed.wait(TIMEOUT)

    def wait(self, n: int) -> list[tuple[str, int | None, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, TIMEOUT), self.got
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("maximum", [2, None])
def test_paho_v5_subscriber_gets_every_topic(
    port: int, raw_clients: list[RawClient], maximum: int | None
) -> None:
    """paho-mqtt 2.x in 5.0 mode with Topic Alias Maximum 2: every message maps to its
    topic through the aliases paho decodes (paho passes the wire's empty topic through
    and leaves the mapping to the application), none above 2; without a maximum paho
    sees no alias and every topic in full [MQTT-3.1.2-27]."""
    sub = PahoSub(port, f"ta-paho-{maximum}", maximum)
    try:
        sent = publish_rounds(publisher(port, raw_clients), 3)
        got = sub.wait(len(sent))
    finally:
        sub.close()
    aliases: dict[int, str] = {}
    resolved = []
    for topic, alias, _ in got:
        if alias is not None:
            assert maximum is not None and 1 <= alias <= maximum
            if topic:
                aliases[alias] = topic
            topic = topic or aliases[alias]
        resolved.append(topic)
    assert resolved == sent
    assert [p for *_, p in got] == [f"{t}#{n // len(TOPICS)}".encode() for n, t in enumerate(sent)]
    used = sorted({alias for _, alias, _ in got if alias is not None})
    assert used == ([1, 2] if maximum else [])


def test_mosquitto_sub_with_topic_alias_maximum(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """`mosquitto_sub -V 5 -D connect topic-alias-maximum 10` against the default broker
    prints every message under its topic. (Why aliases are off by default:
    libmosquitto 2.0.11 announces the maximum but drops the connection with "protocol
    error" at the first PUBLISH with an empty topic and an alias.)"""
    port = port_of(make_broker())
    pub = publisher(port, raw_clients)
    # A retained message tells when mosquitto_sub has subscribed: it prints it first.
    pub.send(packet(0x33, b"\x00\x08ta/ready\x00\x01\x00ready"))
    assert pub.recv().first == 0x40
    sent = ["ta/ready"] + TOPICS * 3
    sub = subprocess.Popen(
        [STDBUF, "-oL", MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-V", "5",
         "-D", "connect", "topic-alias-maximum", "10", "-t", "ta/#", "-C", str(len(sent)),
         "-W", "10", "-F", "%t|%p"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sub.stdout is not None
        assert sub.stdout.readline().strip() == "ta/ready|ready"
        publish_rounds(pub, 3)
        out, err = sub.communicate(timeout=TIMEOUT * 2)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    assert sub.returncode == 0, err
    assert out.splitlines() == [f"{t}|{t}#{n // len(TOPICS)}" for n, t in enumerate(sent[1:])]


async def test_package_client_maps_the_aliases(port: int, raw_clients: list[RawClient]) -> None:
    """pyo3mq.Client(topic_alias_maximum=2) maps the broker's aliases: every message
    under its topic."""
    client = pyo3mq.Client(
        "127.0.0.1",
        port,
        identifier="ta-own",
        protocol=pyo3mq.ProtocolVersion.V5,
        topic_alias_maximum=2,
    )
    await client.connect()
    try:
        await client.subscribe("ta/#")
        sent = await asyncio.to_thread(publish_rounds, publisher(port, raw_clients), 3)
        got = [await asyncio.wait_for(client.messages.__anext__(), TIMEOUT) for _ in sent]
    finally:
        await client.disconnect()
    assert [(m.topic, m.payload) for m in got] == [
        (t, f"{t}#{n // len(TOPICS)}".encode()) for n, t in enumerate(sent)
    ]
