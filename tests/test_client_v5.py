"""pyo3mq.Client speaking MQTT 5.0 (`protocol=5`) against two real 5.0 brokers
(pyo3mq's and Debian's mosquitto), mosquitto configured with limits its CONNACK
announces, and scripted servers for what neither broker sends on demand (topic aliases
towards a client, a small Receive Maximum without acknowledgements, reason codes)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import pyo3mq
import pytest
from pyo3mq import (
    Client,
    ClientMessage,
    MessageProperties,
    MqttDisconnectError,
    MqttNotAuthorizedError,
    MqttProtocolError,
    MqttPublishError,
    MqttSubscribeError,
    ProtocolVersion,
    Will,
)
from support.mqtt_raw import packet, s
from test_client import (
    mosquitto_with_password,  # noqa: F401  (a fixture, used by name)
    proxy_to,
    read_packet,
    scripted_server,
)

V5 = ProtocolVersion.V5


@pytest.fixture(params=["pyo3mq", "mosquitto"])
def server(
    request: pytest.FixtureRequest,
    make_broker: Callable[..., pyo3mq.Broker],
    mosquitto: Callable[..., int],
) -> int:
    """The port of a fresh 5.0 broker: pyo3mq's or mosquitto."""
    if request.param == "pyo3mq":
        return make_broker(max_queued_messages=1_000_000).addresses[0][1]
    return mosquitto("allow_anonymous true", "max_queued_messages 0")


@pytest.fixture
def acl_server(
    request: pytest.FixtureRequest,
    make_broker: Callable[..., pyo3mq.Broker],
    mosquitto: Callable[..., int],
    tmp_path: Path,
) -> Callable[[str], int]:
    """`acl_server("pyo3mq")`: a broker whose ACL lets anyone read and write `open/#`
    only."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\n")

    def start(kind: str) -> int:
        if kind == "pyo3mq":
            return make_broker(acl_file=str(acl)).addresses[0][1]
        return mosquitto("allow_anonymous true", f"acl_file {acl}")

    return start


def v5(port: int, identifier: str = "", **kwargs: object) -> Client:
    return Client("127.0.0.1", port, identifier=identifier, protocol=V5, **kwargs)  # type: ignore[arg-type]


async def next_message(client: Client, timeout: float = 5.0) -> ClientMessage:
    return await asyncio.wait_for(client.messages.__anext__(), timeout)


async def no_message(client: Client, wait: float = 0.3) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await next_message(client, wait)


# --------------------------------------------------------------------------------------
# Against both brokers
# --------------------------------------------------------------------------------------


async def test_properties_round_trip(server: int) -> None:
    """[MQTT-3.3.2-19] [MQTT-3.3.2-20] Every message property the client sends arrives
    with the message (user properties in order, repeated names kept); the CONNACK is
    readable and the 3.1.1-only paths are not used."""
    props = MessageProperties(
        payload_format_indicator=1,
        message_expiry_interval=3600,
        content_type="application/json",
        response_topic="reply/here",
        correlation_data=b"\x00\x01corr",
        user_properties=[("k", "1"), ("a", "2"), ("k", "3")],
    )
    async with v5(server, "props-sub") as sub, v5(server, "props-pub") as pub:
        assert sub.connack is not None and sub.connack.reason_code == 0
        assert await sub.subscribe("data/#", qos=1) == [1]
        await pub.publish("data/x", b'{"v": 1}', qos=1, properties=props)
        await pub.publish("data/y", b"plain", qos=0)
        got = await next_message(sub)
        assert (got.topic, got.payload, got.qos) == ("data/x", b'{"v": 1}', 1)
        p = got.properties
        assert p is not None
        assert p.payload_format_indicator == 1
        assert p.content_type == "application/json"
        assert p.response_topic == "reply/here"
        assert p.correlation_data == b"\x00\x01corr"
        assert p.user_properties == [("k", "1"), ("a", "2"), ("k", "3")]
        # The server sends what remains of the interval [MQTT-3.3.2-6].
        assert p.message_expiry_interval is not None
        assert 3590 <= p.message_expiry_interval <= 3600
        plain = await next_message(sub)
        assert plain.payload == b"plain"
        assert plain.properties is None or plain.properties.content_type is None


async def test_request_response(server: int) -> None:
    """A requester publishes with a response topic and correlation data; the responder
    answers on that topic with the same correlation data, which the requester matches."""
    async with v5(server, "responder") as responder, v5(server, "requester") as requester:
        await responder.subscribe("svc/echo", qos=1)
        await requester.subscribe("reply/requester", qos=1)

        async def serve_one() -> None:
            request = await next_message(responder)
            assert request.properties is not None
            reply_to = request.properties.response_topic
            assert reply_to is not None
            await responder.publish(
                reply_to,
                request.payload.upper(),
                qos=1,
                properties=MessageProperties(correlation_data=request.properties.correlation_data),
            )

        serving = asyncio.ensure_future(serve_one())
        for n in (1, 2):
            await requester.publish(
                "svc/echo",
                f"ping {n}",
                qos=1,
                properties=MessageProperties(
                    response_topic="reply/requester", correlation_data=f"id-{n}".encode()
                ),
            )
            if n == 1:
                await serving
                reply = await next_message(requester)
                assert reply.payload == b"PING 1"
                assert reply.properties is not None
                assert reply.properties.correlation_data == b"id-1"
                serving = asyncio.ensure_future(serve_one())
        await serving
        reply = await next_message(requester)
        assert reply.properties is not None and reply.properties.correlation_data == b"id-2"


async def test_session_expiry_resumes_the_session(server: int) -> None:
    """[MQTT-3.1.2-4] [MQTT-3.1.2-5] With a Session Expiry Interval and Clean Start 0
    the session survives the connection: the next connection is Session Present and gets
    the QoS 1 message published meanwhile. Without one (0) the session ends with the
    connection."""
    async with v5(server, "sess", clean_session=False, session_expiry_interval=60) as c:
        assert not c.session_present
        await c.subscribe("sess/t", qos=1)
    async with v5(server, "sess-pub") as pub:
        await pub.publish("sess/t", b"while away", qos=1)
    async with v5(server, "sess", clean_session=False, session_expiry_interval=60) as c:
        assert c.session_present
        assert (await next_message(c)).payload == b"while away"

    async with v5(server, "gone", clean_session=False) as c:
        await c.subscribe("gone/t", qos=1)
    async with v5(server, "gone", clean_session=False) as c:
        assert not c.session_present, "[MQTT-3.1.2-23] expiry 0: the session ended"


async def test_will_carries_its_properties(server: int) -> None:
    """[MQTT-3.1.3-9] A 5.0 will's properties travel with it when the connection dies
    without DISCONNECT."""
    async with v5(server, "will-watch") as watcher:
        await watcher.subscribe("will/#", qos=1)
        async with proxy_to(server) as proxy:
            will = Will(
                "will/gone",
                b"bye",
                qos=1,
                properties=MessageProperties(
                    content_type="text/plain", user_properties=[("why", "cut")]
                ),
            )
            client = v5(proxy.port, "will-5", will=will)
            await client.connect()
            proxy.cut()
            got = await next_message(watcher)
            assert (got.topic, got.payload) == ("will/gone", b"bye")
            assert got.properties is not None
            assert got.properties.content_type == "text/plain"
            assert got.properties.user_properties == [("why", "cut")]
    with pytest.raises(ValueError, match="protocol=5"):
        Client("127.0.0.1", 1, will=will)


async def test_assigned_client_identifier(server: int) -> None:
    """[MQTT-3.2.2-16] An empty client id gets one from the server, exposed as
    `connack.assigned_client_identifier`."""
    async with v5(server) as c:
        assert c.connack is not None
        assigned = c.connack.assigned_client_identifier
        assert assigned


async def test_suback_failure_codes(acl_server: Callable[[str], int]) -> None:
    """[MQTT-3.9.3-2] A filter the ACL forbids is refused in its SUBACK slot with 0x87:
    MqttSubscribeError carries every code (rc the failure), the other filter is granted
    and works. (mosquitto 2.0 grants every subscription and filters on delivery.)"""
    async with v5(acl_server("pyo3mq"), "acl-sub") as c:
        with pytest.raises(MqttSubscribeError) as info:
            await c.subscribe([("open/a", 1), ("closed/b", 1)])
        assert info.value.return_codes == [1, 0x87]
        assert info.value.rc == 0x87
        assert "closed/b" in str(info.value)
        await c.publish("open/a", b"granted", qos=1)
        assert (await next_message(c)).payload == b"granted"


@pytest.mark.parametrize("kind", ["pyo3mq", "mosquitto"])
async def test_puback_and_unsuback_reason_codes(
    kind: str, acl_server: Callable[[str], int]
) -> None:
    """[MQTT-3.4.2-1] [MQTT-3.11.3-2] A QoS 1 publish the ACL forbids fails with
    MqttPublishError 0x87 and the connection stays; UNSUBACK reason codes come back per
    filter (0x11 for a filter never subscribed)."""
    async with v5(acl_server(kind), f"acl-{kind}") as c:
        await c.subscribe("open/a", qos=1)
        with pytest.raises(MqttPublishError) as refused:
            await c.publish("closed/x", b"no", qos=1)
        assert refused.value.reason_code == 0x87
        assert refused.value.rc == 0x87
        await c.publish("open/a", b"yes", qos=1)
        assert (await next_message(c)).payload == b"yes"
        assert await c.unsubscribe(["open/a", "open/never"]) == [0x00, 0x11]
        assert c.is_connected


async def test_takeover_is_a_disconnect_with_0x8e(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    """A second connection with the same id takes the session over: the first client
    gets DISCONNECT 0x8E, raised as MqttDisconnectError with its reason code; reconnect
    does not fight back (it would take the session back). (mosquitto 2.0 closes the
    first connection without a DISCONNECT.)"""
    server = make_broker().addresses[0][1]
    first = v5(server, "twin", reconnect=pyo3mq.Reconnect(initial_delay=0.05))
    await first.connect()
    async with v5(server, "twin"):
        with pytest.raises(MqttDisconnectError) as info:
            await next_message(first)
        assert info.value.reason_code == 0x8E
        assert info.value.rc == 0x8E
        assert "0x8e" in str(info.value).lower()
        assert first.state is pyo3mq.ConnectionState.CLOSED


async def test_shared_subscriptions_are_ordinary_filters(server: int) -> None:
    """A `$share/GROUP/FILTER` subscription from 5.0 clients: each message goes to one
    member of the group."""
    async with (
        v5(server, "m1") as m1,
        v5(server, "m2") as m2,
        v5(server, "shared-pub") as pub,
    ):
        # [MQTT-3.8.3-4] No Local on a shared subscription is refused before sending.
        with pytest.raises(ValueError, match=r"3\.8\.3-4"):
            await m1.subscribe("$share/g/work/#", qos=1, no_local=True)
        assert m1.is_connected
        assert await m1.subscribe("$share/g/work/#", qos=1) == [1]
        assert await m2.subscribe("$share/g/work/#", qos=1) == [1]
        for i in range(10):
            await pub.publish(f"work/{i}", str(i), qos=1)
        got: list[bytes] = []
        for member in (m1, m2):
            while True:
                try:
                    got.append((await next_message(member, 0.5)).payload)
                except asyncio.TimeoutError:
                    break
        assert sorted(got, key=int) == [str(i).encode() for i in range(10)]


async def test_no_local_and_retain_handling(mosquitto: Callable[..., int]) -> None:
    """[MQTT-3.8.3-3] No Local: the client does not get its own messages on that
    subscription. Retain Handling 2: no retained message at subscribe; 0: it comes.
    Retain As Published keeps the RETAIN flag of a forwarded message."""
    port = mosquitto("allow_anonymous true")
    async with v5(port, "opts") as c, v5(port, "opts-other") as other:
        await c.subscribe("nl/t", qos=1, no_local=True)
        await c.publish("nl/t", b"mine", qos=1)
        await other.publish("nl/t", b"theirs", qos=1)
        assert (await next_message(c)).payload == b"theirs"
        await no_message(c)

        await other.publish("ret/t", b"kept", qos=1, retain=True)
        await c.subscribe("ret/t", qos=1, retain_handling=2)
        await no_message(c)
        await c.subscribe("ret/#", qos=1, retain_as_published=True)
        first = await next_message(c)
        assert (first.payload, first.retain) == (b"kept", True)
        await other.publish("ret/t", b"live", qos=1, retain=True)
        live = [await next_message(c), await next_message(c)]
        assert {(m.payload, m.retain) for m in live} >= {(b"live", True)}, live
        await other.publish("ret/t", b"", qos=1, retain=True)


async def test_subscription_identifiers(mosquitto: Callable[..., int]) -> None:
    """[MQTT-3.3.4-3] A message matching a subscription with an identifier carries it."""
    port = mosquitto("allow_anonymous true")
    async with v5(port, "ids") as c:
        await c.subscribe("ids/+", qos=1, subscription_identifier=42)
        await c.publish("ids/x", b"1", qos=1)
        got = await next_message(c)
        assert got.properties is not None
        assert got.properties.subscription_identifiers == [42]


# --------------------------------------------------------------------------------------
# The CONNACK's limits (mosquitto configured to announce them)
# --------------------------------------------------------------------------------------


async def test_connack_limits_are_honoured(mosquitto: Callable[..., int]) -> None:
    """[MQTT-3.2.2-11] [MQTT-3.2.2-14] [MQTT-3.2.2-15] [MQTT-3.2.2-21] The client reads
    Maximum QoS, Retain Available, Maximum Packet Size, Receive Maximum and Server Keep
    Alive from the CONNACK; a publish they forbid raises MqttPublishError without being
    sent (the connection stays up), and the rest go through."""
    port = mosquitto(
        "allow_anonymous true",
        "max_qos 1",
        "retain_available false",
        "max_packet_size 200",
        "max_inflight_messages 3",
        "max_keepalive 30",
    )
    async with v5(port, "limited", keepalive=120) as c:
        info = c.connack
        assert info is not None
        assert info.maximum_qos == 1
        assert not info.retain_available
        assert info.maximum_packet_size == 200
        assert info.receive_maximum == 3
        assert info.server_keep_alive == 30
        await c.subscribe("lim/#", qos=1)
        with pytest.raises(MqttPublishError) as qos:
            c.publish("lim/a", b"x", qos=2)
        assert qos.value.reason_code == 0x9B
        with pytest.raises(MqttPublishError) as retain:
            c.publish("lim/a", b"x", retain=True)
        assert retain.value.reason_code == 0x9A
        with pytest.raises(MqttPublishError) as large:
            c.publish("lim/a", b"x" * 300, qos=1)
        assert large.value.reason_code == 0x95
        await asyncio.gather(*(c.publish("lim/a", str(i), qos=1) for i in range(10)))
        for i in range(10):
            assert (await next_message(c)).payload == str(i).encode()
        assert c.is_connected


async def test_outgoing_topic_aliases(mosquitto: Callable[..., int]) -> None:
    """[MQTT-3.3.2-9] The client sends topic aliases up to the server's Topic Alias
    Maximum (mosquitto announces 10); the server maps them back, so the subscriber sees
    every topic in full."""
    port = mosquitto("allow_anonymous true", "max_topic_alias 2")
    async with v5(port, "alias-sub") as sub, v5(port, "alias-pub", outgoing_topic_aliases=5) as pub:
        assert pub.connack is not None and pub.connack.topic_alias_maximum == 2
        await sub.subscribe("al/#", qos=1)
        topics = ["al/a", "al/b", "al/a", "al/c", "al/b", "al/c", "al/a"]
        for i, topic in enumerate(topics):
            await pub.publish(topic, str(i), qos=1)
        for i, topic in enumerate(topics):
            got = await next_message(sub)
            assert (got.topic, got.payload) == (topic, str(i).encode())
        assert pub.is_connected


async def test_refused_connect_raises_the_reason_code(request: pytest.FixtureRequest) -> None:
    """[MQTT-3.2.2-8] A CONNACK reason code of 0x80 or more raises the typed exception
    of the code (0x87 Not authorized, 0x86 Bad user name or password), carrying it."""
    # test_client.py's fixture: mosquitto knowing only alice/secret.
    port: int = request.getfixturevalue("mosquitto_with_password")
    with pytest.raises(pyo3mq.MqttConnectRefusedError) as info:
        await v5(port, "nobody").connect()
    assert info.value.reason_code in (0x86, 0x87)
    assert info.value.return_code == info.value.reason_code
    async with v5(port, "alice", username="alice", password="secret") as c:
        assert c.is_connected


# --------------------------------------------------------------------------------------
# Scripted servers: what the brokers do not send on demand
# --------------------------------------------------------------------------------------


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    assert len(body) < 128
    return bytes([len(body)]) + body


def connack5(*items: bytes, reason: int = 0) -> bytes:
    return packet(0x20, b"\x00" + bytes([reason]) + props(*items))


def publish5(topic: str, payload: bytes, *items: bytes, qos: int = 0, pkid: int = 1) -> bytes:
    body = s(topic) + (struct.pack("!H", pkid) if qos else b"") + props(*items) + payload
    return packet(0x30 | (qos << 1), body)


def alias(n: int) -> bytes:
    return b"\x23" + struct.pack("!H", n)


async def read_connect5(reader: asyncio.StreamReader) -> bytes:
    first, body = await read_packet(reader)
    assert first == 0x10 and body[2:6] == b"MQTT" and body[6] == 5, body
    return body


async def test_received_topic_aliases_are_mapped() -> None:
    """[MQTT-3.3.2-10] [MQTT-3.3.2-7] The client announces its Topic Alias Maximum; a
    PUBLISH that sets an alias and later ones that use it (empty topic) arrive with the
    full topic. An alias above the maximum gets DISCONNECT 0x94 before the close."""
    closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_connect5(reader)
        assert b"\x22\x00\x03" in body, "Topic Alias Maximum 3 in CONNECT"
        writer.write(connack5())
        first, _ = await read_packet(reader)  # SUBSCRIBE
        assert first == 0x82
        writer.write(packet(0x90, b"\x00\x01\x00\x00"))
        writer.write(publish5("long/topic/name", b"1", alias(3)))
        writer.write(publish5("", b"2", alias(3)))
        writer.write(publish5("other", b"3", alias(1)))
        writer.write(publish5("", b"4", alias(3)))
        writer.write(publish5("", b"5", alias(1)))
        writer.write(publish5("bad", b"6", alias(4)))
        await writer.drain()
        first, body = await read_packet(reader)
        closed.set_result(bytes([first]) + body)
        # [MQTT-3.14.4-1] nothing follows the DISCONNECT: the connection ends.
        assert await reader.read() == b""

    async with scripted_server(script) as port:
        c = v5(port, "aliases", topic_alias_maximum=3)
        await c.connect()
        await c.subscribe("#")
        got = [await next_message(c) for _ in range(5)]
        assert [(m.topic, m.payload) for m in got] == [
            ("long/topic/name", b"1"),
            ("long/topic/name", b"2"),
            ("other", b"3"),
            ("long/topic/name", b"4"),
            ("other", b"5"),
        ]
        with pytest.raises(MqttProtocolError):
            await next_message(c)
        assert await asyncio.wait_for(closed, 5) == b"\xe0\x94", "DISCONNECT 0x94"


async def test_receive_maximum_caps_the_inflight_window() -> None:
    """[MQTT-3.3.4-7] [MQTT-4.9.0-2] [MQTT-3.3.4-8] With Receive Maximum 2 in the
    CONNACK, the client has at most two QoS 1 publishes unacknowledged, whatever its own
    max_inflight, while other packets (a SUBSCRIBE) still go; each PUBACK lets one more
    publish go, and one refused with 0x97 fails its publish and frees its slot."""
    seen: list[int] = []
    more: asyncio.Event = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_connect5(reader)
        writer.write(connack5(b"\x21\x00\x02"))
        for _ in range(2):
            first, body = await read_packet(reader)
            assert first & 0xF0 == 0x30
            seen.append(struct.unpack("!H", body[3:5])[0])
        more.set()
        # The full window holds back publishes only: the SUBSCRIBE made now goes out.
        first, body = await read_packet(reader)
        assert first == 0x82, hex(first)
        writer.write(packet(0x90, body[:2] + b"\x00\x00"))
        # Nothing more may come before an acknowledgement.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(read_packet(reader), 0.3)
        writer.write(packet(0x40, struct.pack("!H", seen[0]) + b"\x97"))  # quota exceeded
        writer.write(packet(0x40, struct.pack("!H", seen[1])))
        for _ in range(2):
            first, body = await read_packet(reader)
            pkid = struct.unpack("!H", body[3:5])[0]
            writer.write(packet(0x40, struct.pack("!H", pkid)))
        await reader.read()

    async with scripted_server(script) as port:
        c = v5(port, "window", max_inflight=20)
        await c.connect()
        assert c.connack is not None and c.connack.receive_maximum == 2
        futures = [c.publish("w", str(i), qos=1) for i in range(4)]
        await asyncio.wait_for(more.wait(), 5)
        assert await c.subscribe("other") == [0]
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)
        assert isinstance(results[0], MqttPublishError) and results[0].reason_code == 0x97
        assert results[1:] == [None, None, None]
        await c.disconnect()


async def test_refused_pubrec_ends_the_qos2_exchange() -> None:
    """[MQTT-3.5.2-1] [MQTT-4.9.0-2] A PUBREC with 0x80 or more fails the QoS 2 publish
    with MqttPublishError (reason code and string) and no PUBREL follows; a successful
    PUBREC gets PUBREL and the PUBCOMP completes the publish."""
    after_refusal: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_connect5(reader)
        writer.write(connack5())
        first, body = await read_packet(reader)
        assert first & 0xF6 == 0x34, hex(first)  # PUBLISH QoS 2
        refused = struct.unpack("!H", body[3:5])[0]
        reason_string = b"\x1f" + s("over quota")
        writer.write(packet(0x50, struct.pack("!H", refused) + b"\x97" + props(reason_string)))
        first, body = await read_packet(reader)
        after_refusal.set_result(first)
        pkid = struct.unpack("!H", body[3:5])[0]
        writer.write(packet(0x50, struct.pack("!H", pkid)))
        first, body = await read_packet(reader)
        assert (first, body) == (0x62, struct.pack("!H", pkid)), "PUBREL"
        writer.write(packet(0x70, body))
        await reader.read()

    async with scripted_server(script) as port:
        async with v5(port, "qos2") as c:
            with pytest.raises(MqttPublishError) as info:
                await c.publish("q", b"1", qos=2)
            assert (info.value.reason_code, info.value.reason_string) == (0x97, "over quota")
            await c.publish("q", b"2", qos=2)
            assert await after_refusal & 0xF0 == 0x30, "the next packet is a PUBLISH, no PUBREL"


async def test_server_disconnect_reason_and_string() -> None:
    """[MQTT-3.14.2-1] A server DISCONNECT's reason code and reason string reach the
    user as MqttDisconnectError; shutting down (0x8B) is retried by `reconnect`."""
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_connect5(reader)
        writer.write(connack5())
        if connections == 1:
            reason_string = b"\x1f" + s("maintenance")
            writer.write(packet(0xE0, b"\x8b" + props(reason_string)))
        await reader.read()

    async with scripted_server(script) as port:
        changes: list[pyo3mq.StateChange] = []
        c = v5(
            port,
            "shutdown",
            reconnect=pyo3mq.Reconnect(initial_delay=0.05),
            on_state_change=changes.append,
        )
        await c.connect()
        await asyncio.wait_for(c.wait_for_state(pyo3mq.ConnectionState.RECONNECTING), 5)
        await asyncio.wait_for(c.wait_for_state(pyo3mq.ConnectionState.CONNECTED), 5)
        lost = next(ch.error for ch in changes if ch.state is pyo3mq.ConnectionState.RECONNECTING)
        assert isinstance(lost, MqttDisconnectError)
        assert lost.reason_code == 0x8B
        assert lost.reason_string == "maintenance"
        await c.disconnect()


async def test_server_keep_alive_replaces_the_clients() -> None:
    """[MQTT-3.2.2-21] The CONNACK's Server Keep Alive (1 s) is the keepalive the client
    uses, not its own 60 s: a PINGREQ comes long before its own would."""
    pinged: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_connect5(reader)
        writer.write(connack5(b"\x13\x00\x01"))
        started = asyncio.get_running_loop().time()
        first, _ = await read_packet(reader)
        assert first == 0xC0
        pinged.set_result(asyncio.get_running_loop().time() - started)
        writer.write(b"\xd0\x00")
        await reader.read()

    async with scripted_server(script) as port:
        async with v5(port, "ka", keepalive=60) as c:
            assert c.connack is not None and c.connack.server_keep_alive == 1
            # With its own 60 s it would ping after about 45 s.
            assert await asyncio.wait_for(pinged, 15) < 15


async def test_connack_refusal_with_reason_string() -> None:
    """[MQTT-3.2.2-8] CONNACK 0x87 with a reason string: MqttNotAuthorizedError carrying
    both; not retried."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_connect5(reader)
        writer.write(connack5(b"\x1f" + s("no entry"), reason=0x87))
        await reader.read()

    async with scripted_server(script) as port:
        c = v5(port, "refused", reconnect=True)
        with pytest.raises(MqttNotAuthorizedError) as info:
            await c.connect()
        assert (info.value.reason_code, info.value.reason_string) == (0x87, "no entry")
        assert "no entry" in str(info.value)


async def test_v5_settings_need_protocol_5() -> None:
    """MQTT 5.0 settings on a 3.1.1 client are refused at construction."""
    with pytest.raises(ValueError, match="protocol=5"):
        Client("127.0.0.1", 1883, session_expiry_interval=10)
    # [MQTT-3.3.4-6] a publisher never sends a Subscription Identifier.
    with pytest.raises(ValueError, match=r"3\.3\.4-6"):
        v5(1883).publish("t", b"x", properties=MessageProperties(subscription_identifiers=[1]))
    c = Client("127.0.0.1", 1883)
    assert c.connack is None


def test_sync_client_speaks_5_0(server: int) -> None:
    """SyncClient(protocol=5) shares the core: subscribe (the 5.0 SUBSCRIBE form),
    publish and receive work, and the session expiry setting is accepted."""
    with (
        pyo3mq.SyncClient(
            "127.0.0.1", server, identifier="sync5", protocol=V5, session_expiry_interval=5
        ) as c,
    ):
        assert c.subscribe("sync5/t", qos=1) == [1]
        c.publish("sync5/t", b"hello", qos=1).wait_for_publish(5)
        got = next(iter(c.messages(timeout=5)))
        assert (got.topic, got.payload) == ("sync5/t", b"hello")


async def test_aiomqtt_style_paho_options_and_properties(mosquitto: Callable[..., int]) -> None:
    """aiomqtt passes paho-mqtt's `SubscribeOptions` and `Properties`: they are read into
    the subscription options, the Subscription Identifier and the message properties."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    port = mosquitto("allow_anonymous true")
    async with v5(port, "paho-style") as c, v5(port, "paho-other") as other:
        sub_props = Properties(PacketTypes.SUBSCRIBE)
        sub_props.SubscriptionIdentifier = 9
        await c.subscribe("ps/t", 0, SubscribeOptions(qos=1, noLocal=True), sub_props)
        pub_props = Properties(PacketTypes.PUBLISH)
        pub_props.ContentType = "text/plain"
        pub_props.UserProperty = ("k", "v")
        await c.publish("ps/t", b"own", 1, False, pub_props)
        await other.publish("ps/t", b"other", 1, False, pub_props)
        got = await next_message(c)
        assert (got.payload, got.qos) == (b"other", 1)
        assert got.properties is not None
        assert got.properties.content_type == "text/plain"
        assert got.properties.user_properties == [("k", "v")]
        assert got.properties.subscription_identifiers == [9]
        await no_message(c)


async def test_will_delay_interval(server: int) -> None:
    """`Will(..., delay_interval=)`: the server holds the will for that long after the
    connection dies; a connection to the same session within the delay cancels it, and
    without one it is published once the delay has passed."""
    async with v5(server, "delay-watch") as watcher:
        await watcher.subscribe("delay/#", qos=1)
        async with proxy_to(server) as proxy:
            held = Will("delay/held", b"cancelled", qos=1, delay_interval=3600)
            kept = dict(clean_session=False, session_expiry_interval=60)
            client = v5(proxy.port, "delay-held", will=held, **kept)
            await client.connect()
            proxy.cut()
            await no_message(watcher, 0.5)
            # Back within the delay: the will is never sent.
            async with v5(server, "delay-held", **kept) as back:
                assert back.session_present
            late = Will("delay/late", b"bye", qos=1, delay_interval=1)
            client = v5(proxy.port, "delay-late", will=late, **kept)
            await client.connect()
            proxy.cut()
            await no_message(watcher, 0.3)
            got = await next_message(watcher, 10)
            assert (got.topic, got.payload) == ("delay/late", b"bye")
            await no_message(watcher, 0.5)
    with pytest.raises(ValueError, match="protocol=5"):
        Client("127.0.0.1", 1, will=late)


async def test_connect_carries_will_delay_and_request_problem_information() -> None:
    """The CONNECT on the wire: Request Problem Information 0 (property 0x17) when
    `request_problem_information=False`, the Will Delay Interval (0x18) among the will
    properties, and nothing of either by default."""
    connects: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connects.append(await read_connect5(reader))
        writer.write(connack5())
        await read_packet(reader)  # DISCONNECT

    async with scripted_server(script) as port:
        will = Will("w/t", b"x", delay_interval=5)
        async with v5(port, "rpi", request_problem_information=False, will=will):
            pass
        async with v5(port, "plain"):
            pass
    with_both, plain = connects
    # CONNECT properties right after the keepalive: length 2, then 0x17 0x00.
    assert with_both[10:13] == b"\x02\x17\x00", "[MQTT-3.1.2-29] asks for no problem info"
    assert b"\x05\x18\x00\x00\x00\x05" + s("w/t") in with_both, "Will Delay Interval 5"
    assert plain[10:11] == b"\x00" and b"\x17" not in plain[10:11]
    with pytest.raises(ValueError, match="will delay_interval must be between 0"):
        Client("127.0.0.1", 1, protocol=V5, will=Will("t", delay_interval=-1))


def test_sync_client_ports_a_paho_v5_program(server: int) -> None:
    """A paho-mqtt v5 program's calls, unchanged, on SyncClient: `publish(topic,
    payload, qos, retain, properties)` with paho's `Properties`, `subscribe(topic, qos,
    options, properties)` with `SubscribeOptions` (no local) and a Subscription
    Identifier, and `unsubscribe(topic, properties)` returning the reason codes."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions

    kwargs = dict(protocol=pyo3mq.MQTTv5)
    with (
        pyo3mq.SyncClient("127.0.0.1", server, identifier="paho-port", **kwargs) as c,  # type: ignore[arg-type]
        pyo3mq.SyncClient("127.0.0.1", server, identifier="paho-peer", **kwargs) as other,  # type: ignore[arg-type]
    ):
        sub_props = Properties(PacketTypes.SUBSCRIBE)
        sub_props.SubscriptionIdentifier = 4
        assert c.subscribe("pp/t", 0, SubscribeOptions(qos=1, noLocal=True), sub_props) == [1]
        pub_props = Properties(PacketTypes.PUBLISH)
        pub_props.ContentType = "text/plain"
        pub_props.UserProperty = ("k", "v")
        c.publish("pp/t", b"own", 1, False, pub_props).wait_for_publish(5)
        other.publish("pp/t", b"peer", 1, False, pub_props).wait_for_publish(5)
        got = next(iter(c.messages(timeout=5)))
        assert (got.payload, got.qos) == (b"peer", 1), "no local: not its own message"
        assert got.properties is not None
        assert got.properties.content_type == "text/plain"
        assert got.properties.user_properties == [("k", "v")]
        assert got.properties.subscription_identifiers == [4]
        assert list(c.messages(timeout=0.3)) == []
        assert c.unsubscribe("pp/t", Properties(PacketTypes.UNSUBSCRIBE)) == [0]
        assert c.unsubscribe("pp/none") == [0x11]
    plain = pyo3mq.SyncClient("127.0.0.1", server)
    with pytest.raises(ValueError, match=r"MQTT 5\.0"):
        plain.subscribe("t", 0, SubscribeOptions(qos=1, noLocal=True))
