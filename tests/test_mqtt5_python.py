"""MQTT 5.0 message properties on the broker's Python side, with real sockets:
`pyo3mq.MessageProperties` on `Message` (in-process subscribers, `on_message`),
`Broker.publish(properties=...)` to paho-mqtt v5, `mosquitto_sub -V mqttv5` and 3.1.1
subscribers, and an `on_message` interceptor that rewrites properties.

Blocking clients run in worker threads (`asyncio.to_thread`): in-process subscriptions
and hooks are fed on the test's event loop.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pyo3mq import Message, MessageProperties, Subscription
from support.mqtt_raw import RawClient
from support.mqtt_raw import publish as publish_311
from support.mqtt_raw import subscribe as subscribe_311
from test_examples import Script, load, start
from test_mqtt5 import (
    MOSQUITTO_SUB,
    STDBUF,
    TIMEOUT,
    Paho5,
    publish5,
    publish5_fields,
    raw5,
    subscribe5,
)

Serve = Callable[..., Awaitable[pyo3mq.Broker]]
MOSQUITTO_RR = "/usr/bin/mosquitto_rr"

FULL = MessageProperties(
    payload_format_indicator=1,
    message_expiry_interval=600,
    content_type="application/json; charset=utf-8",
    response_topic="rr/reply/7",
    correlation_data=b"\x00\xffid-7",
    user_properties=[("k", "1"), ("j", "2"), ("k", "3")],
)


def port_of(broker: pyo3mq.Broker) -> int:
    return broker.addresses[0][1]


def paho_properties(p: MessageProperties) -> Properties:
    """The same properties as paho-mqtt builds them."""
    out = Properties(PacketTypes.PUBLISH)
    if p.payload_format_indicator is not None:
        out.PayloadFormatIndicator = p.payload_format_indicator
    if p.message_expiry_interval is not None:
        out.MessageExpiryInterval = p.message_expiry_interval
    if p.content_type is not None:
        out.ContentType = p.content_type
    if p.response_topic is not None:
        out.ResponseTopic = p.response_topic
    if p.correlation_data is not None:
        out.CorrelationData = p.correlation_data
    if p.user_properties:
        out.UserProperty = p.user_properties
    return out


def seen_by_paho(msg: mqtt.MQTTMessage) -> MessageProperties:
    """What a paho-mqtt v5 subscriber received, as a MessageProperties."""
    p = msg.properties
    assert p is not None
    return MessageProperties(
        payload_format_indicator=getattr(p, "PayloadFormatIndicator", None),
        message_expiry_interval=getattr(p, "MessageExpiryInterval", None),
        content_type=getattr(p, "ContentType", None),
        response_topic=getattr(p, "ResponseTopic", None),
        correlation_data=getattr(p, "CorrelationData", None),
        user_properties=[tuple(kv) for kv in getattr(p, "UserProperty", [])],
    )


@pytest.fixture
async def clients() -> AsyncIterator[list[Any]]:
    """Paho5 and RawClient objects to close after the test (in a worker thread)."""
    made: list[Any] = []
    yield made
    for c in made:
        await asyncio.to_thread(c.close)


async def paho5(clients: list[Any], port: int, client_id: str) -> Paho5:
    c = await asyncio.to_thread(Paho5, port, client_id)
    clients.append(c)
    return c


async def next_msg(sub: Subscription) -> Message:
    return await asyncio.wait_for(sub.__anext__(), TIMEOUT)


# --------------------------------------------------------------------------- the record


def test_message_properties_record() -> None:
    """The record is frozen, compares and hashes by value, keeps user properties in order
    with repeated names, and `replace` makes a checked copy."""
    assert FULL.user_properties == [("k", "1"), ("j", "2"), ("k", "3")]
    assert FULL.correlation_data == b"\x00\xffid-7"
    assert FULL.subscription_identifiers == []
    with pytest.raises(AttributeError):
        FULL.content_type = "text/plain"  # type: ignore[misc]
    copy = FULL.replace(content_type="text/plain", user_properties=[("a", "b")])
    assert (copy.content_type, copy.user_properties) == ("text/plain", [("a", "b")])
    assert copy.response_topic == FULL.response_topic and FULL.content_type != "text/plain"
    assert FULL.replace() == FULL and hash(FULL.replace()) == hash(FULL)
    assert MessageProperties() != FULL and MessageProperties().user_properties == []
    assert "response_topic='rr/reply/7'" in repr(FULL)


@pytest.mark.parametrize(
    ("fields", "error", "says"),
    [
        ({"response_topic": "rr/#"}, ValueError, "MQTT-3.3.2-14"),
        ({"response_topic": "rr/+/x"}, ValueError, "MQTT-3.3.2-14"),
        ({"response_topic": ""}, ValueError, "MQTT-3.3.2-14"),
        ({"content_type": "a\0b"}, ValueError, "MQTT-1.5.4-2"),
        ({"user_properties": [("k\0", "v")]}, ValueError, "MQTT-1.5.4-2"),
        ({"content_type": "x" * 65_536}, ValueError, "65535 bytes"),
        ({"correlation_data": b"x" * 65_536}, ValueError, "65535 bytes"),
        ({"payload_format_indicator": 2}, ValueError, "0 (unspecified bytes) or 1"),
        ({"message_expiry_interval": 2**32}, ValueError, "4294967295"),
        ({"message_expiry_interval": -1}, ValueError, "4294967295"),
        ({"subscription_identifiers": [0]}, ValueError, "1 to 268435455"),
        ({"correlation_data": "text"}, TypeError, "bytes, not str"),
        ({"user_properties": [("k",)]}, TypeError, "(name, value) pairs"),
        ({"user_properties": [("k", 1)]}, TypeError, "must be a str"),
        ({"reason_string": "x"}, TypeError, "no field"),
    ],
)
def test_message_properties_refuse_what_cannot_be_sent(
    fields: dict[str, Any], error: type[Exception], says: str
) -> None:
    """Every value is checked when the record is made, naming the rule: a record that
    exists can always be encoded."""
    with pytest.raises(error, match=re.escape(says)):
        MessageProperties(**fields)
    with pytest.raises(error):
        FULL.replace(**fields)


# --------------------------------------------------------------------------- network -> Python


async def test_paho_v5_properties_reach_in_process_subscriber(
    serve: Serve, clients: list[Any]
) -> None:
    """[MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
    A paho v5 PUBLISH's properties reach an in-process subscriber as published (user
    properties in order, a name repeated), at each QoS; a 3.1.1 publisher's message and a
    5.0 one without properties have `properties=None`."""
    broker = await serve()
    port = port_of(broker)
    sub = broker.subscribe("rr/#", qos=2)
    pub = await paho5(clients, port, "props-pub")
    for qos in (0, 1, 2):
        props = FULL.replace(correlation_data=bytes([qos, 0, 255]))
        info = pub.client.publish(
            "rr/req", b'{"q": %d}' % qos, qos, properties=paho_properties(props)
        )
        await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
        m = await next_msg(sub)
        assert (m.topic, m.payload, m.qos, m.client_id) == (
            "rr/req",
            b'{"q": %d}' % qos,
            qos,
            "props-pub",
        )
        assert m.properties == props
    info = pub.client.publish("rr/bare", b"none", 1)
    await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
    assert (await next_msg(sub))[::5] == ("rr/bare", None)
    old = RawClient(port)
    clients.append(old)
    assert (await asyncio.to_thread(old.connect, "v311-pub")).body == b"\x00\x00"
    await asyncio.to_thread(old.send, publish_311("rr/old", b"3.1.1", qos=1, pkid=3))
    assert (await asyncio.to_thread(old.recv)).body == b"\x00\x03"
    m = await next_msg(sub)
    assert (m.topic, m.payload, m.properties) == ("rr/old", b"3.1.1", None)


# --------------------------------------------------------------------------- Python -> network


async def test_broker_publish_properties_reach_every_kind_of_subscriber(
    serve: Serve, clients: list[Any]
) -> None:
    """`broker.publish(properties=...)`: a paho v5 subscriber, `mosquitto_sub -V mqttv5`
    and an in-process subscriber get the properties unchanged ([MQTT-3.3.2-4]
    [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]); a 3.1.1
    subscriber gets the message without them, as 3.1.1 bytes."""
    mosq_subscribed = asyncio.Event()

    def on_subscribe(event: pyo3mq.SubscribeEvent) -> None:
        if event.client_id == "out-mosq":
            mosq_subscribed.set()

    broker = await serve(on_subscribe=on_subscribe)
    port = port_of(broker)
    inproc = broker.subscribe("out/#", qos=1)
    p5 = await paho5(clients, port, "out-v5")
    assert [r.value for r in await asyncio.to_thread(p5.subscribe, "out/#", 1)] == [1]
    old = RawClient(port)
    clients.append(old)
    assert (await asyncio.to_thread(old.connect, "out-311")).body == b"\x00\x00"
    await asyncio.to_thread(old.send, subscribe_311(1, ("out/#", 0)))
    assert (await asyncio.to_thread(old.recv)).body == b"\x00\x01\x00"
    mosq = await asyncio.create_subprocess_exec(
        STDBUF, "-oL", MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
        "-i", "out-mosq", "-t", "out/#", "-q", "1", "-C", "1", "-W", "10",
        "-F", "%t|%P|%C|%D|%E|%F|%R|%p",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.wait_for(mosq_subscribed.wait(), TIMEOUT)
        await broker.publish("out/x", b'{"v": 1}', qos=1, properties=FULL)
        out, err = await asyncio.wait_for(mosq.communicate(), TIMEOUT * 2)
    finally:
        if mosq.returncode is None:
            mosq.kill()
            await mosq.communicate()
    assert mosq.returncode == 0, err
    # Correlation data is printed raw: bytes, not text.
    assert out.rstrip(b"\n").split(b"|") == [
        b"out/x",
        b"k:1 j:2 k:3",
        b"application/json; charset=utf-8",
        b"\x00\xffid-7",
        b"600",
        b"1",
        b"rr/reply/7",
        b'{"v": 1}',
    ]
    await asyncio.to_thread(p5.wait, lambda: len(p5.messages) == 1)
    got = p5.messages[0]
    assert (got.topic, got.payload, got.qos) == ("out/x", b'{"v": 1}', 1)
    assert seen_by_paho(got) == FULL
    pkt = await asyncio.to_thread(old.recv)
    assert (pkt.first, pkt.publish_fields()) == (0x30, ("out/x", None, b'{"v": 1}'))
    m = await next_msg(inproc)
    assert (m.topic, m.payload, m.client_id, m.properties) == ("out/x", b'{"v": 1}', "", FULL)
    # Without properties: none on the wire, None in process.
    await broker.publish("out/y", b"plain", qos=1)
    await asyncio.to_thread(p5.wait, lambda: len(p5.messages) == 2)
    assert not p5.messages[1].properties.json()
    assert (await next_msg(inproc))[::5] == ("out/y", None)


async def test_broker_publish_properties_raw_bytes(serve: Serve, clients: list[Any]) -> None:
    """The bytes a 5.0 subscriber gets from `broker.publish(properties=...)`: each
    property once, user properties in order, correlation data byte-identical; an empty
    `MessageProperties()` sends an empty property section. A retained message keeps its
    properties for a later subscriber."""
    broker = await serve()
    port = port_of(broker)
    c, (_, reason, _) = await asyncio.to_thread(raw5, port, "raw-sub")
    clients.append(c)
    assert reason == 0
    await asyncio.to_thread(c.send, subscribe5(1, ("raw/#", 0)))
    assert (await asyncio.to_thread(c.recv)).body == b"\x00\x01\x00\x00"
    await broker.publish("raw/a", b"A", properties=FULL)
    topic, _, props, payload = publish5_fields(await asyncio.to_thread(c.recv))
    assert (topic, payload) == ("raw/a", b"A")
    assert props == {
        0x01: 1,
        0x02: 600,
        0x03: b"application/json; charset=utf-8",
        0x08: b"rr/reply/7",
        0x09: b"\x00\xffid-7",
        0x26: [("k", "1"), ("j", "2"), ("k", "3")],
    }
    await broker.publish("raw/b", b"B", properties=MessageProperties())
    assert publish5_fields(await asyncio.to_thread(c.recv))[2:] == ({}, b"B")
    kept = MessageProperties(content_type="text/plain", user_properties=[("r", "1")])
    await broker.publish("raw/kept", b"K", retain=True, properties=kept)
    late, _ = await asyncio.to_thread(raw5, port, "raw-late")
    clients.append(late)
    await asyncio.to_thread(late.send, subscribe5(1, ("raw/kept", 0)))
    assert (await asyncio.to_thread(late.recv)).body == b"\x00\x01\x00\x00"
    pkt = await asyncio.to_thread(late.recv)
    assert pkt.retain
    assert publish5_fields(pkt)[2:] == ({0x03: b"text/plain", 0x26: [("r", "1")]}, b"K")
    sub = broker.subscribe("raw/kept")
    assert (await next_msg(sub)).properties == kept


async def test_broker_publish_refuses_bad_properties(serve: Serve) -> None:
    """A payload that breaks `payload_format_indicator=1` (3.3.2.3.2, the broker's 0x99)
    and subscription identifiers, which only the broker adds per subscriber
    ([MQTT-3.3.4-6] for a publisher), are refused before anything is routed."""
    broker = await serve()
    sub = broker.subscribe("bad/#")
    with pytest.raises(ValueError, match="UTF-8"):
        await broker.publish(
            "bad/a", b"\xff\xfe", properties=MessageProperties(payload_format_indicator=1)
        )
    with pytest.raises(ValueError, match=r"MQTT-3\.3\.4-6"):
        await broker.publish(
            "bad/b", b"x", properties=MessageProperties(subscription_identifiers=[3])
        )
    with pytest.raises(TypeError):
        await broker.publish("bad/c", b"x", properties={"content_type": "x"})  # type: ignore[arg-type]
    # UTF-8 text with the indicator, and bytes without it, go through.
    await broker.publish(
        "bad/ok", "héllo", properties=MessageProperties(payload_format_indicator=1)
    )
    m = await next_msg(sub)
    assert (m.topic, m.payload, m.properties) == (
        "bad/ok",
        "héllo".encode(),
        MessageProperties(payload_format_indicator=1),
    )


# --------------------------------------------------------------------------- on_message


async def test_on_message_rewrites_properties(serve: Serve, clients: list[Any]) -> None:
    """The interceptor sees a 5.0 publisher's properties and what it returns is what
    subscribers get: new properties, none (`properties=None`), the original ones with a
    new payload (`_replace(payload=...)`), or the message untouched; a 3.1.1 publisher's
    message can be given properties on its way to a 5.0 subscriber. A replacement whose
    properties are not a `MessageProperties`, carry subscription identifiers, or say
    UTF-8 (`payload_format_indicator=1`) of a payload that is not, is dropped."""
    seen: list[MessageProperties | None] = []

    def rewrite(m: Message) -> Message | bool:
        seen.append(m.properties)
        if m.topic == "rw/keep":
            return m
        if m.topic == "rw/payload":
            return m._replace(payload=m.payload.upper())
        if m.topic == "rw/strip":
            return m._replace(properties=None)
        if m.topic == "rw/bad":
            return m._replace(properties={"content_type": "x"})  # type: ignore[arg-type]
        if m.topic == "rw/pfi":
            assert m.properties is not None
            return m._replace(
                payload=b"\xff", properties=m.properties.replace(payload_format_indicator=1)
            )
        if m.topic == "rw/subid":
            assert m.properties is not None
            return m._replace(properties=m.properties.replace(subscription_identifiers=[1]))
        base = m.properties or MessageProperties()
        return m._replace(
            properties=base.replace(
                content_type="text/x-rewritten",
                user_properties=[*base.user_properties, ("seen-by", "gateway")],
            )
        )

    broker = await serve(on_message=rewrite)
    port = port_of(broker)
    inproc = broker.subscribe("rw/#", qos=1)
    sub = await paho5(clients, port, "rw-sub")
    assert [r.value for r in await asyncio.to_thread(sub.subscribe, "rw/#", 1)] == [1]
    pub = await paho5(clients, port, "rw-pub")
    sent = MessageProperties(
        content_type="text/plain", correlation_data=b"\x01", user_properties=[("a", "1")]
    )
    # The refused replacements come before "rw/last" on one connection: once that has
    # arrived, they would have too.
    topics = (
        *("rw/change", "rw/keep", "rw/payload", "rw/strip"),
        *("rw/bad", "rw/pfi", "rw/subid", "rw/last"),
    )
    for topic in topics:
        info = pub.client.publish(topic, b"body", 1, properties=paho_properties(sent))
        await asyncio.to_thread(info.wait_for_publish, TIMEOUT)
    old = RawClient(port)
    clients.append(old)
    assert (await asyncio.to_thread(old.connect, "rw-311")).body == b"\x00\x00"
    await asyncio.to_thread(old.send, publish_311("rw/old", b"v311", qos=1, pkid=9))
    assert (await asyncio.to_thread(old.recv)).body == b"\x00\x09"
    await asyncio.to_thread(sub.wait, lambda: len(sub.messages) == 6)
    got = {m.topic: (m.payload, seen_by_paho(m)) for m in sub.messages}
    changed = sent.replace(
        content_type="text/x-rewritten", user_properties=[("a", "1"), ("seen-by", "gateway")]
    )
    assert got == {
        "rw/change": (b"body", changed),
        "rw/keep": (b"body", sent),
        "rw/payload": (b"BODY", sent),
        "rw/strip": (b"body", MessageProperties()),
        "rw/last": (b"body", changed),
        "rw/old": (
            b"v311",
            MessageProperties(
                content_type="text/x-rewritten", user_properties=[("seen-by", "gateway")]
            ),
        ),
    }
    assert seen == [sent] * 8 + [None]
    in_process = [await next_msg(inproc) for _ in range(6)]
    assert {m.topic: m.properties for m in in_process} == {
        "rw/change": changed,
        "rw/keep": sent,
        "rw/payload": sent,
        "rw/strip": None,
        "rw/last": changed,
        "rw/old": got["rw/old"][1],
    }


# --------------------------------------------------------------------------- who and why


class Recorder:
    """An authorizer that allows everything and records whom it was asked about."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, int]] = []

    def authorize_subscribe(self, client: pyo3mq.ClientInfo, filter: str, qos: int) -> bool:
        self.asked.append(("subscribe", client.client_id, client.protocol))
        return True

    def authorize_publish(self, client: pyo3mq.ClientInfo, topic: str) -> bool:
        self.asked.append(("publish", client.client_id, client.protocol))
        return True


async def test_client_info_has_the_protocol_version(serve: Serve, clients: list[Any]) -> None:
    """`ClientInfo.protocol` is 3, 4 or 5 for the authorizer and the connect event; an
    authenticator with a `protocol` keyword parameter is given it too."""
    authorizer = Recorder()
    connected: dict[str, int] = {}
    logins: dict[str, int] = {}

    def authenticate(
        client_id: str, username: str | None, password: bytes | None, *, protocol: int
    ) -> bool:
        logins[client_id] = protocol
        return True

    broker = await serve(
        authenticator=authenticate,
        authorizer=authorizer,
        on_connect=lambda e: connected.__setitem__(e.client.client_id, e.client.protocol),
    )
    port = port_of(broker)
    for client_id, protocol in (("v31", (b"MQIsdp", 3)), ("v311", (b"MQTT", 4))):
        c = RawClient(port)
        clients.append(c)
        assert (
            await asyncio.to_thread(c.connect, client_id, protocol=protocol)
        ).body == b"\x00\x00"
        await asyncio.to_thread(c.send, subscribe_311(1, ("who/" + client_id, 0)))
        assert (await asyncio.to_thread(c.recv)).body == b"\x00\x01\x00"
        await asyncio.to_thread(c.send, publish_311("who/" + client_id, b"x", qos=1, pkid=2))
        assert (await asyncio.to_thread(c.recv)).first == 0x40
    v5, (_, reason, _) = await asyncio.to_thread(raw5, port, "v5")
    clients.append(v5)
    assert reason == 0
    await asyncio.to_thread(v5.send, subscribe5(1, ("who/v5", 0)))
    assert (await asyncio.to_thread(v5.recv)).body == b"\x00\x01\x00\x00"
    await asyncio.to_thread(v5.send, publish5("who/v5", b"x", qos=1, pkid=2))
    assert (await asyncio.to_thread(v5.recv)).first == 0x40
    assert authorizer.asked == [
        (kind, client_id, level)
        for client_id, level in (("v31", 3), ("v311", 4), ("v5", 5))
        for kind in ("subscribe", "publish")
    ]
    assert connected == logins == {"v31": 3, "v311": 4, "v5": 5}


async def test_subscribe_event_has_the_5_0_reason_codes(serve: Serve, clients: list[Any]) -> None:
    """The subscribe event carries the SUBACK's codes as sent: a 5.0 client's refusals are
    reason codes (0x87 Not authorized from the authorizer, 0x8F Topic Filter invalid),
    a 3.1.1 client's are 0x80."""
    events: asyncio.Queue[pyo3mq.SubscribeEvent] = asyncio.Queue()

    class NoSecrets(Recorder):
        def authorize_subscribe(self, client: pyo3mq.ClientInfo, filter: str, qos: int) -> bool:
            return not filter.startswith("secret/")

    broker = await serve(authorizer=NoSecrets(), on_subscribe=events.put_nowait)
    port = port_of(broker)
    v5, _ = await asyncio.to_thread(raw5, port, "sub-v5")
    clients.append(v5)
    await asyncio.to_thread(v5.send, subscribe5(1, ("ok/#", 1), ("secret/x", 1), ("bad/#/x", 1)))
    assert (await asyncio.to_thread(v5.recv)).body == b"\x00\x01\x00\x01\x87\x8f"
    e = await asyncio.wait_for(events.get(), TIMEOUT)
    assert (e.client_id, e.filters) == (
        "sub-v5",
        [("ok/#", 1), ("secret/x", 0x87), ("bad/#/x", 0x8F)],
    )
    old = RawClient(port)
    clients.append(old)
    await asyncio.to_thread(old.connect, "sub-311")
    await asyncio.to_thread(old.send, subscribe_311(1, ("ok/#", 1), ("secret/x", 1)))
    assert (await asyncio.to_thread(old.recv)).body == b"\x00\x01\x01\x80"
    e = await asyncio.wait_for(events.get(), TIMEOUT)
    assert (e.client_id, e.filters) == ("sub-311", [("ok/#", 1), ("secret/x", 0x80)])


async def test_disconnect_event_has_the_5_0_reason_code(serve: Serve, clients: list[Any]) -> None:
    """The disconnect event carries the reason code of the 5.0 DISCONNECT that ended the
    connection, whichever side sent it: the client's 0x00 and 0x04 (disconnect with
    will), the broker's 0x8E (session taken over) and 0x82 (a broken rule); None for a
    3.1.1 DISCONNECT and for a 5.0 client that just closed its socket."""
    events: asyncio.Queue[pyo3mq.DisconnectEvent] = asyncio.Queue()
    broker = await serve(on_disconnect=events.put_nowait)
    port = port_of(broker)

    async def gone() -> tuple[str, str, int | None]:
        e = await asyncio.wait_for(events.get(), TIMEOUT)
        return e.client_id, e.reason, e.reason_code

    c, _ = await asyncio.to_thread(raw5, port, "normal")
    clients.append(c)
    await asyncio.to_thread(c.send, b"\xe0\x00")
    assert await gone() == ("normal", "clean", 0x00)
    c, _ = await asyncio.to_thread(raw5, port, "with-will")
    clients.append(c)
    await asyncio.to_thread(c.send, b"\xe0\x01\x04")
    assert await gone() == ("with-will", "clean", 0x04)
    c, _ = await asyncio.to_thread(raw5, port, "taken")
    clients.append(c)
    c2, _ = await asyncio.to_thread(raw5, port, "taken")
    clients.append(c2)
    assert await gone() == ("taken", "takeover", 0x8E)
    await asyncio.to_thread(c2.send, subscribe5(1, ("bad/#", 0x04 | 0x30)))  # retain handling 3
    assert await gone() == ("taken", "error", 0x82)
    c, _ = await asyncio.to_thread(raw5, port, "vanished")
    await asyncio.to_thread(c.close)
    assert await gone() == ("vanished", "error", None)
    old = RawClient(port)
    clients.append(old)
    await asyncio.to_thread(old.connect, "v311")
    await asyncio.to_thread(old.send, b"\xe0\x00")
    assert await gone() == ("v311", "clean", None)


# --------------------------------------------------------------------------- the example

request_response = load("request_response")


async def request(pub: Paho5, topic: str, payload: bytes, props: MessageProperties) -> None:
    info = pub.client.publish(topic, payload, 1, properties=paho_properties(props))
    await asyncio.to_thread(info.wait_for_publish, TIMEOUT)


async def test_request_response_example(clients: list[Any]) -> None:
    """examples/request_response.py: a paho v5 requester gets each answer on its
    Response Topic with its Correlation Data and user properties back (content type and
    payload format set by the service); errors come back as an `error` user property;
    a 3.1.1 request, which has no Response Topic, is not answered. An in-process
    requester (broker.publish + subscribe) is answered the same way."""
    running = await start(request_response.run, "127.0.0.1", 0)
    responder = running.started
    broker = responder.broker
    port = port_of(broker)
    me = await paho5(clients, port, "requester")
    assert [r.value for r in await asyncio.to_thread(me.subscribe, "replies/me", 1)] == [1]
    asked = MessageProperties(response_topic="replies/me", user_properties=[("trace", "t1")])
    await request(me, "service/sum", b"[1, 2, 3.5]", asked.replace(correlation_data=b"\x00a"))
    await request(me, "service/upper", "héllo".encode(), asked.replace(correlation_data=b"b"))
    await request(me, "service/nope", b"x", asked.replace(correlation_data=b"c"))
    await request(me, "service/sum", b"[true]", asked.replace(correlation_data=b"d"))
    await asyncio.to_thread(me.wait, lambda: len(me.messages) == 4)
    answers = {
        seen_by_paho(m).correlation_data: (m.topic, m.payload, seen_by_paho(m)) for m in me.messages
    }
    json_answer = MessageProperties(
        content_type="application/json",
        payload_format_indicator=1,
        user_properties=[("trace", "t1")],
    )
    text_answer = json_answer.replace(content_type="text/plain")

    def error(why: str) -> MessageProperties:
        return MessageProperties(user_properties=[("trace", "t1"), ("error", why)])

    assert answers == {
        b"\x00a": (
            "replies/me",
            b'{"result": 6.5}',
            json_answer.replace(correlation_data=b"\x00a"),
        ),
        b"b": ("replies/me", "HÉLLO".encode(), text_answer.replace(correlation_data=b"b")),
        b"c": (
            "replies/me",
            b"",
            error("no service 'nope'; there are sum, upper").replace(correlation_data=b"c"),
        ),
        b"d": (
            "replies/me",
            b"",
            error("sum takes a JSON array of numbers").replace(correlation_data=b"d"),
        ),
    }
    old = RawClient(port)
    clients.append(old)
    assert (await asyncio.to_thread(old.connect, "v311-requester")).body == b"\x00\x00"
    await asyncio.to_thread(old.send, publish_311("service/sum", b"[1]", qos=1, pkid=1))
    assert (await asyncio.to_thread(old.recv)).body == b"\x00\x01"
    # In process: the broker's own publish carries the Response Topic.
    replies = broker.subscribe("replies/inproc", qos=1)
    await broker.publish(
        "service/sum",
        b"[40, 2]",
        qos=1,
        properties=MessageProperties(response_topic="replies/inproc", correlation_data=b"42"),
    )
    m = await next_msg(replies)
    assert (m.topic, m.payload, m.properties) == (
        "replies/inproc",
        b'{"result": 42}',
        MessageProperties(
            content_type="application/json", payload_format_indicator=1, correlation_data=b"42"
        ),
    )
    assert (responder.answered, responder.ignored) == (5, 1)
    await running.stop()


def test_request_response_script_with_mosquitto_rr(script: Callable[..., Script]) -> None:
    """`python examples/request_response.py --port 0` answers `mosquitto_rr -V 5` (which
    sends a Response Topic and waits for the answer on it) and exits 0 on SIGTERM."""
    s = script("request_response", "--port", "0")
    port = s.port()
    for topic, message, answer in (
        ("service/sum", "[1, 2, 3.5]", '{"result": 6.5}'),
        ("service/upper", "mqtt five", "MQTT FIVE"),
    ):
        rr = subprocess.run(
            [MOSQUITTO_RR, "-V", "5", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
             "-t", topic, "-e", "replies/rr", "-m", message, "-W", "10"],
            capture_output=True, text=True, timeout=TIMEOUT * 3, check=False,
        )  # fmt: skip
        assert (rr.returncode, rr.stdout.strip()) == (0, answer), rr.stderr
    assert s.terminate() == 0


@pytest.fixture
def script() -> Iterator[Callable[..., Script]]:
    started: list[Script] = []

    def factory(name: str, *args: str) -> Script:
        started.append(Script(name, *args))
        return started[-1]

    yield factory
    for s in started:
        s.close()
