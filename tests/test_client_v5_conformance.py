"""MQTT 5.0 statements that bind a Client, proven on pyo3mq.Client(protocol=5) against
scripted servers that record what the client writes (the bytes on the wire), for the
rules tests/test_client_v5.py does not show: the layout of CONNECT, the order and the
reason codes of acknowledgements, packet identifiers, resends, Session Present and the
WebSocket subprotocol.

A scripted server swallows its own assertion errors (tests/test_client.py's
`scripted_server`), so each script only records what it saw; the test body asserts."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pyo3mq
import pytest
from pyo3mq import Client, MessageProperties, MqttProtocolError, ProtocolVersion, Will
from support.mqtt_raw import packet
from test_client import read_packet, scripted_server
from test_client_transports import accept_upgrade, frame, raw_server, read_frame
from test_client_v5 import connack5, publish5

V5 = ProtocolVersion.V5
TIMEOUT = 5.0
PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70


def v5(port: int, identifier: str, **kwargs: Any) -> Client:
    return Client("127.0.0.1", port, identifier=identifier, protocol=V5, timeout=TIMEOUT, **kwargs)


def with_session(port: int, identifier: str) -> Client:
    """A client with Clean Start 0, a session that outlives the connection, and
    reconnect."""
    return v5(
        port,
        identifier,
        clean_session=False,
        session_expiry_interval=60,
        reconnect=pyo3mq.Reconnect(initial_delay=0.05),
    )


async def accept(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connections: list[list[tuple[int, bytes]]],
    *,
    session_present: bool,
) -> list[tuple[int, bytes]]:
    """Reads the CONNECT and answers CONNACK 0x00; returns the list (appended to
    `connections`) the script records this connection's packets in."""
    await read_packet(reader)
    seen: list[tuple[int, bytes]] = []
    connections.append(seen)
    writer.write(b"\x20\x03\x01\x00\x00" if session_present else connack5())
    return seen


class Reader:
    """Reads the fields of a packet body in order."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.at = 0

    def take(self, n: int) -> bytes:
        assert self.at + n <= len(self.body), "field runs past the packet"
        out = self.body[self.at : self.at + n]
        self.at += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("!H", self.take(2))[0])

    def binary(self) -> bytes:
        return self.take(self.u16())

    def text(self) -> str:
        # [MQTT-1.5.4-1]: strict UTF-8 (a surrogate or a bad sequence raises).
        raw = self.binary()
        assert b"\x00" not in raw, "[MQTT-1.5.4-2] U+0000 in a UTF-8 string"
        return raw.decode("utf-8", errors="strict")

    def vbi(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def properties(self) -> bytes:
        return self.take(self.vbi())

    def rest(self) -> bytes:
        return self.take(len(self.body) - self.at)


def parse_connect(body: bytes) -> dict[str, Any]:
    """The CONNECT's fields, read in the order of [MQTT-3.1.3-1], the whole body used."""
    r = Reader(body)
    assert (r.text(), r.u8()) == ("MQTT", 5)
    flags = r.u8()
    out: dict[str, Any] = {"flags": flags, "keepalive": r.u16(), "properties": r.properties()}
    out["client_id"] = r.text()
    if flags & 0x04:
        out["will_properties"] = r.properties()
        out["will_topic"] = r.text()
        out["will_payload"] = r.binary()
    if flags & 0x80:
        out["username"] = r.text()
    if flags & 0x40:
        out["password"] = r.binary()
    assert r.at == len(body), f"{len(body) - r.at} bytes left over after the fields"
    return out


def pkid(body: bytes) -> int:
    return int(struct.unpack("!H", body[:2])[0])


async def test_connect_fields_follow_the_flags() -> None:
    """[MQTT-3.1.0-1] [MQTT-3.1.3-1] [MQTT-3.1.3-3] The first packet is CONNECT, its
    payload fields in order (client id first). With a will (QoS 2, retained) and
    credentials: Will Flag with Will Properties, Will Topic and Will Payload
    [MQTT-3.1.2-9], Will QoS 2 (a Will QoS 3 is refused when the client is made)
    [MQTT-3.1.2-12], User Name and Password flags with
    their fields [MQTT-3.1.2-17] [MQTT-3.1.2-19]; the client id, will topic and user name
    are UTF-8 strings under the 1.5.4 rules, non-ASCII text included [MQTT-3.1.3-4]
    [MQTT-3.1.3-11] [MQTT-3.1.3-12]. Without them: Will QoS 0 and Will Retain 0
    [MQTT-3.1.2-11] [MQTT-3.1.2-13], no User Name or Password field [MQTT-3.1.2-16]
    [MQTT-3.1.2-18], and nothing after the client id."""
    seen: list[tuple[int, bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_packet(reader))
        writer.write(connack5())
        await reader.read()

    will = Will(
        "wïll/tópic",
        b"\x00last\xff",
        qos=2,
        retain=True,
        properties=MessageProperties(content_type="text/plain"),
    )
    async with scripted_server(script) as port:
        async with v5(port, "clïent-ü", will=will, username="üser", password="pw\x00d"):
            pass
        async with v5(port, "plain"):
            pass
    assert [first for first, _ in seen] == [0x10, 0x10]
    full = parse_connect(seen[0][1])
    assert full["flags"] & 0x04, "Will Flag"
    assert (full["flags"] >> 3) & 3 == 2, "Will QoS 2"
    assert full["flags"] & 0x20, "Will Retain"
    assert full["flags"] & 0xC0 == 0xC0, "User Name and Password flags"
    assert full["client_id"] == "clïent-ü"
    assert full["will_topic"] == "wïll/tópic"
    assert full["will_payload"] == b"\x00last\xff"
    assert b"\x03\x00\x0atext/plain" in full["will_properties"]
    assert (full["username"], full["password"]) == ("üser", b"pw\x00d")
    with pytest.raises(ValueError, match="qos must be 0, 1 or 2"):
        v5(port, "q3", will=Will("t", b"", qos=3))
    plain = parse_connect(seen[1][1])
    assert plain["flags"] & 0xFC == 0, f"no will, no credentials: flags {plain['flags']:#04x}"
    assert plain["client_id"] == "plain"
    assert set(plain) == {"flags", "keepalive", "properties", "client_id"}


async def test_acks_for_every_publish_in_arrival_order() -> None:
    """[MQTT-4.5.0-2] QoS 1 and 2 PUBLISHes on a topic the client never subscribed to,
    which the application never reads, are still acknowledged; [MQTT-4.6.0-2] PUBACKs go
    out in the order the PUBLISHes came (ids 5, 3, 9) and [MQTT-4.6.0-3] PUBRECs too
    (8, 2, 6), each with a reason code from its table (none, 0x00 or 0x10)
    [MQTT-3.4.2-1] [MQTT-3.5.2-1]; each PUBREL is answered with PUBCOMP."""
    answers: list[tuple[int, bytes]] = []
    done: asyncio.Event = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(connack5())
        for n in (5, 3, 9):
            writer.write(publish5("never/subscribed", b"1", qos=1, pkid=n))
        for n in (8, 2, 6):
            writer.write(publish5("never/subscribed", b"2", qos=2, pkid=n))
        for _ in range(6):
            answers.append(await read_packet(reader))
        for n in (8, 2, 6):
            writer.write(packet(PUBREL, struct.pack("!H", n)))
        for _ in range(3):
            answers.append(await read_packet(reader))
        done.set()
        await reader.read()

    async with scripted_server(script) as port:
        async with v5(port, "acker"):
            await asyncio.wait_for(done.wait(), TIMEOUT)
    acks = [(first, pkid(body)) for first, body in answers]
    assert [a for a in acks if a[0] == PUBACK] == [(PUBACK, 5), (PUBACK, 3), (PUBACK, 9)]
    assert [a for a in acks if a[0] == PUBREC] == [(PUBREC, 8), (PUBREC, 2), (PUBREC, 6)]
    assert acks[6:] == [(PUBCOMP, 8), (PUBCOMP, 2), (PUBCOMP, 6)]
    for first, body in answers[:6]:
        assert len(body) == 2 or body[2] in (0x00, 0x10), (hex(first), body)


async def test_identifiers_and_pubrel_order() -> None:
    """[MQTT-2.2.1-3] A SUBSCRIBE, an UNSUBSCRIBE and three QoS 2 PUBLISHes outstanding
    at once carry five distinct non-zero identifiers; [MQTT-4.6.0-4] PUBRECs sent in the
    order third, first, second get their PUBRELs in that order."""
    got: list[tuple[int, bytes]] = []
    pubrels: list[int] = []
    done: asyncio.Event = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(connack5())
        for _ in range(5):
            got.append(await read_packet(reader))
        ids = [pkid(b[3:]) if f & 0xF0 == 0x30 else pkid(b) for f, b in got]
        by_kind = {f & 0xF0: i for (f, _), i in zip(got, ids, strict=True)}
        publishes = [i for (f, _), i in zip(got, ids, strict=True) if f & 0xF0 == 0x30]
        for n in (publishes[2], publishes[0], publishes[1]):
            writer.write(packet(PUBREC, struct.pack("!H", n)))
        for _ in range(3):
            first, body = await read_packet(reader)
            if first == PUBREL:
                pubrels.append(pkid(body))
                writer.write(packet(PUBCOMP, body[:2]))
        writer.write(packet(0x90, struct.pack("!H", by_kind[0x80]) + b"\x00\x01"))
        writer.write(packet(0xB0, struct.pack("!H", by_kind[0xA0]) + b"\x00\x11"))
        done.set()
        await reader.read()

    async with scripted_server(script) as port:
        async with v5(port, "ids") as c:
            results = await asyncio.wait_for(
                asyncio.gather(
                    c.subscribe("a", qos=1),
                    c.unsubscribe("b"),
                    *(c.publish("p", str(i), qos=2) for i in range(3)),
                ),
                TIMEOUT,
            )
            assert results[:2] == [[1], [0x11]]
    ids = [pkid(b[3:]) if f & 0xF0 == 0x30 else pkid(b) for f, b in got]
    assert sorted(f & 0xF0 for f, _ in got) == [0x30, 0x30, 0x30, 0x80, 0xA0]
    assert 0 not in ids and len(set(ids)) == 5, ids
    publishes = [i for (f, _), i in zip(got, ids, strict=True) if f & 0xF0 == 0x30]
    assert pubrels == [publishes[2], publishes[0], publishes[1]]


async def test_resent_publishes_keep_their_order() -> None:
    """[MQTT-4.6.0-1] Three unacknowledged QoS 1 publishes are resent after a reconnect
    to the session (Session Present 1) with DUP=1, their identifiers and their first
    order."""
    connections: list[list[tuple[int, bytes]]] = []
    resent: asyncio.Event = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = await accept(reader, writer, connections, session_present=bool(connections))
        for _ in range(3):
            seen.append(await read_packet(reader))
        if len(connections) == 1:
            return  # the connection is cut without acknowledgements
        for _, body in seen:
            writer.write(packet(PUBACK, body[3:5]))
        resent.set()
        await reader.read()

    async with scripted_server(script) as port:
        c = with_session(port, "resender")
        await c.connect()
        futures = [c.publish("r", str(i), qos=1) for i in range(3)]
        await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT * 2)
        await asyncio.wait_for(resent.wait(), TIMEOUT)
        await c.disconnect()
    first, again = connections
    assert [f & 0x08 for f, _ in first] == [0, 0, 0]
    assert [f & 0x08 for f, _ in again] == [0x08, 0x08, 0x08], "DUP=1"
    assert [b[3:5] for _, b in again] == [b[3:5] for _, b in first]
    assert [b[-1:] for _, b in again] == [b"0", b"1", b"2"]


async def test_session_present_without_a_session_closes() -> None:
    """[MQTT-3.2.2-4] A client that asked for Clean Start (so has no session) and gets
    Session Present 1 closes the connection: the connect fails with MqttProtocolError and
    the server reads EOF."""
    ended: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(b"\x20\x03\x01\x00\x00")
        ended.set_result(await reader.read())

    async with scripted_server(script) as port:
        with pytest.raises(MqttProtocolError, match="session present"):
            await v5(port, "fresh").connect()
        assert await asyncio.wait_for(ended, TIMEOUT) == b""


async def test_websocket_offers_the_mqtt_subprotocol() -> None:
    """[MQTT-6.0.0-3] Over WebSocket the 5.0 client offers `mqtt` as its subprotocol
    and sends its CONNECT (level 5) in a binary frame."""
    seen: dict[str, Any] = {}
    done: asyncio.Event = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, seen["headers"] = await accept_upgrade(reader, writer, b"mqtt")
        seen["connect"] = await read_frame(reader)
        writer.write(frame(0x2, connack5()))
        await writer.drain()
        await done.wait()
        writer.close()

    async with raw_server(serve) as port:
        client = Client(f"ws://127.0.0.1:{port}/mqtt", protocol=V5, timeout=TIMEOUT)
        await client.connect()
        assert client.connack is not None and client.connack.reason_code == 0
        done.set()
        await client.disconnect()
    assert "mqtt" in [p.strip() for p in seen["headers"]["sec-websocket-protocol"].split(",")]
    opcode, _, data = seen["connect"]
    assert opcode == 0x2 and data[0] == 0x10 and data[2:9] == b"\x00\x04MQTT\x05"


async def test_session_present_0_discards_the_session_state() -> None:
    """[MQTT-3.2.2-5] The client holds session state (a QoS 1 publish unacknowledged, a
    QoS 2 publish past PUBREC awaiting PUBCOMP) and the server answers its reconnect with
    Session Present 0: nothing of the old session is resumed, no PUBREL for the old
    QoS 2 identifier and no DUP=1 resend; the unacknowledged QoS 1 message is published
    again as a new message (DUP=0), and the QoS 2 one counts as delivered (the server
    had it: it sent PUBREC)."""
    connections: list[list[tuple[int, bytes]]] = []
    second: asyncio.Event = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = await accept(reader, writer, connections, session_present=False)
        if len(connections) == 1:
            for _ in range(2):
                seen.append(await read_packet(reader))
            qos2 = next(b for f, b in seen if f & 0x06 == 0x04)
            writer.write(packet(PUBREC, qos2[3:5]))
            seen.append(await read_packet(reader))  # PUBREL
            return  # cut before PUBCOMP and PUBACK
        # Everything the client sends until it has been quiet for 0.5 s.
        while True:
            try:
                first, body = await asyncio.wait_for(read_packet(reader), 0.5)
            except asyncio.TimeoutError:
                break
            seen.append((first, body))
            if first & 0xF6 == 0x32:
                writer.write(packet(PUBACK, body[3:5]))
        second.set()
        await reader.read()

    async with scripted_server(script) as port:
        c = with_session(port, "sp0")
        await c.connect()
        qos1 = c.publish("s", b"one", qos=1)
        qos2 = c.publish("s", b"two", qos=2)
        await asyncio.wait_for(second.wait(), TIMEOUT * 2)
        first, again = connections
        assert [f & 0xF6 for f, _ in first[:2]] == [0x32, 0x34] and first[2][0] == PUBREL
        assert [f for f, _ in again] == [0x32], [hex(f) for f, _ in again]
        assert again[0][1].endswith(b"one")
        await asyncio.wait_for(asyncio.gather(qos1, qos2), TIMEOUT)
        await c.disconnect()


async def test_bad_filters_are_refused_before_sending() -> None:
    """[MQTT-3.8.3-2] [MQTT-3.10.3-2] A SUBSCRIBE or UNSUBSCRIBE without a filter, and
    [MQTT-3.8.3-1] [MQTT-3.10.3-1] a filter that is not a valid UTF-8 string (U+0000, a
    lone surrogate), are refused with ValueError and nothing is sent: the next packet the
    server reads after CONNECT is the valid SUBSCRIBE that follows."""
    after_connect: list[tuple[int, bytes]] = []
    done: asyncio.Event = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(connack5())
        after_connect.append(await read_packet(reader))
        writer.write(packet(0x90, after_connect[0][1][:2] + b"\x00\x00"))
        done.set()
        await reader.read()

    async with scripted_server(script) as port:
        async with v5(port, "filters") as c:
            with pytest.raises(ValueError, match=r"3\.8\.3-2"):
                await c.subscribe([])
            with pytest.raises(ValueError, match=r"3\.10\.3-2"):
                await c.unsubscribe([])
            for bad in ("a\x00b", "a/\ud800"):
                with pytest.raises(ValueError):
                    await c.subscribe(bad)
                with pytest.raises(ValueError):
                    await c.unsubscribe(bad)
            assert await c.subscribe("good/#") == [0]
            await asyncio.wait_for(done.wait(), TIMEOUT)
    first, body = after_connect[0]
    assert first == 0x82 and body.endswith(b"\x00\x06good/#\x00"), body
