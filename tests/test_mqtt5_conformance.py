"""MQTT 5.0 statements that repeat 3.1.1 rules, proven for 5.0 clients.

The broker enforces topic validation, the UTF-8 rules, packet identifiers, the QoS
flows, retained messages, wills, keep alive and session state on the same code path for
3.1.1 and 5.0; these tests show each rule holds on a 5.0 connection, with raw 5.0 bytes
written by hand (`test_mqtt5`'s helpers, independent of the broker's codec). Each test
names the statements it proves; `docs/conformance_v5.md` maps them here.
"""

from __future__ import annotations

import struct
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyo3mq
import pytest
from support.mqtt_raw import Packet, RawClient, packet, s
from test_mqtt5 import (
    connack5,
    expect_disconnect,
    props,
    publish5_fields,
    read_props,
    subscribe5,
    unsubscribe5,
)
from test_transports import WsClient

PINGREQ = b"\xc0\x00"
PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70
EXPIRY_60 = props(b"\x11\x00\x00\x00\x3c")


def connect5(
    client_id: str | bytes = "",
    *,
    clean: bool = True,
    keepalive: int = 60,
    properties: bytes = b"\x00",
    will: tuple[str, bytes] | None = None,
    will_properties: bytes = b"\x00",
    will_qos: int = 0,
    will_retain: bool = False,
    password: bytes | None = None,
    name: bytes = b"MQTT",
    level: int = 5,
) -> bytes:
    """A 5.0 CONNECT with every field a test here needs (will QoS and retain, password
    without a user name, another protocol name or level)."""
    flags = 0x02 if clean else 0x00
    payload = s(client_id)
    if will is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
        payload += will_properties + s(will[0]) + s(will[1])
    if password is not None:
        flags |= 0x40
        payload += s(password)
    body = s(name) + bytes([level, flags]) + struct.pack("!H", keepalive) + properties + payload
    return packet(0x10, body)


def publish5(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    qos: int = 0,
    pkid: int = 1,
    retain: bool = False,
    dup: bool = False,
    properties: bytes = b"\x00",
) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = s(topic) + (struct.pack("!H", pkid) if qos else b"") + properties + payload
    return packet(first, body)


def ack5(kind: int, pkid: int, reason: int | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP: the short form, or with a reason code."""
    body = struct.pack("!H", pkid) + (b"" if reason is None else bytes([reason]))
    return packet(kind, body)


def ack_fields(pkt: Packet) -> tuple[int, int, dict[int, Any]]:
    """(packet id, reason code, properties) of an acknowledgement; the short form means
    reason 0x00 and no properties."""
    (pkid,) = struct.unpack("!H", pkt.body[:2])
    if len(pkt.body) == 2:
        return pkid, 0, {}
    if len(pkt.body) == 3:
        return pkid, pkt.body[2], {}
    properties, rest = read_props(pkt.body[3:])
    assert rest == b""
    return pkid, pkt.body[2], properties


def is_quiet(c: RawClient) -> bool:
    """True when nothing is waiting for `c`: a PINGREQ's PINGRESP is the next packet."""
    c.send(PINGREQ)
    return c.recv().first == 0xD0


def size(pkt: Packet) -> int:
    """The packet's size on the wire: fixed header, length bytes, body."""
    n, length_bytes = len(pkt.body), 1
    while n >= 128:
        n //= 128
        length_bytes += 1
    return 1 + length_bytes + len(pkt.body)


class Net:
    """Raw 5.0 connections to one or more brokers, closed after the test."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.made: list[RawClient] = []

    def raw(self, port: int | None = None) -> RawClient:
        c = RawClient(port or self.port)
        self.made.append(c)
        return c

    def connect(
        self, client_id: str | bytes = "", *, port: int | None = None, **kwargs: Any
    ) -> tuple[RawClient, tuple[int, int, dict[int, Any]]]:
        c = self.raw(port)
        c.send(connect5(client_id, **kwargs))
        return c, connack5(c.recv())

    def client(self, client_id: str, *, port: int | None = None, **kwargs: Any) -> RawClient:
        """A connected client (CONNACK 0x00 checked)."""
        c, (_, reason, _) = self.connect(client_id, port=port, **kwargs)
        assert reason == 0
        return c

    def subscriber(
        self, client_id: str, *filters: tuple[str, int], port: int | None = None, **kwargs: Any
    ) -> RawClient:
        c = self.client(client_id, port=port, **kwargs)
        assert subscribe(c, 1, *filters) == [opts & 3 for _, opts in filters]
        return c


@pytest.fixture
def net(port: int) -> Iterator[Net]:
    n = Net(port)
    yield n
    for c in n.made:
        c.close()


def subscribe(c: RawClient, pkid: int, *filters: tuple[str, int]) -> list[int]:
    """Sends SUBSCRIBE and returns the SUBACK's reason codes (the SUBACK comes first:
    retained messages follow it)."""
    c.send(subscribe5(pkid, *filters))
    suback = c.recv()
    assert suback.type == 9, f"expected SUBACK, got {suback.first:#x}"
    assert suback.body[:2] == struct.pack("!H", pkid)
    _, codes = read_props(suback.body[2:])
    return list(codes)


def pkid_of(pkt: Packet) -> int:
    """The packet identifier of a QoS 1 or 2 PUBLISH."""
    pkid = publish5_fields(pkt)[1]
    assert pkid is not None, "a QoS 0 PUBLISH has no packet identifier"
    return pkid


def received(c: RawClient) -> tuple[str, bytes, Packet]:
    """The next PUBLISH: (topic, payload, the packet)."""
    pkt = c.recv()
    topic, _, _, payload = publish5_fields(pkt)
    return topic, payload, pkt


def acl_broker(make_broker: Callable[..., pyo3mq.Broker], tmp_path: Path, **more: Any) -> int:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\n")
    return int(make_broker(acl_file=str(acl), **more).addresses[0][1])


# --------------------------------------------------------------------------- data representation


def test_bom_is_kept_in_topics(net: Net) -> None:
    """[MQTT-1.5.4-3] EF BB BF is the character U+FEFF: a filter starting with it matches
    only topics starting with it, and the delivered topic keeps it."""
    sub = net.subscriber("bom-sub", ("\ufefft", 0))
    pub = net.client("bom-pub")
    pub.send(publish5("t", b"plain"))
    pub.send(publish5("\ufefft", b"bom"))
    pkt = sub.recv()
    assert pkt.body[:5] == b"\x00\x04\xef\xbb\xbf"
    assert publish5_fields(pkt)[0] == "\ufefft"
    assert publish5_fields(pkt)[3] == b"bom"
    assert is_quiet(sub)


@pytest.mark.parametrize(
    "bad, reason",
    [
        # [MQTT-3.3.2-1] [MQTT-1.5.4-1] a topic name that is not UTF-8 -> Malformed
        pytest.param(publish5(b"a/\xed\xa0\x80"), 0x81, id="surrogate-in-topic"),
        pytest.param(publish5(b"a/\xc3"), 0x81, id="truncated-utf8-topic"),
        # [MQTT-4.7.3-2] [MQTT-1.5.4-2] U+0000 in a topic name -> Malformed
        pytest.param(publish5(b"a\x00b"), 0x81, id="nul-in-topic"),
        # [MQTT-3.3.2-13] Response Topic that is not UTF-8 -> Malformed
        pytest.param(
            publish5("t", properties=props(b"\x08" + s(b"r/\xed\xa0\x80"))),
            0x81,
            id="bad-utf8-response-topic",
        ),
        # [MQTT-4.7.3-1] an empty topic name without a Topic Alias -> Protocol Error
        pytest.param(publish5(""), 0x82, id="empty-topic"),
        # [MQTT-4.7.0-1] a wildcard in a topic name
        pytest.param(publish5("a/#"), 0x82, id="hash-in-topic"),
        # [MQTT-3.8.1-1] SUBSCRIBE flags 0000 instead of 0010 -> Malformed
        pytest.param(packet(0x80, b"\x00\x01\x00" + s("t") + b"\x00"), 0x81, id="subscribe-flags"),
        # [MQTT-3.10.1-1] UNSUBSCRIBE flags 0000 instead of 0010 -> Malformed
        pytest.param(packet(0xA0, b"\x00\x01\x00" + s("t")), 0x81, id="unsubscribe-flags"),
        # [MQTT-3.8.3-1] (server side) a filter that is not UTF-8 -> Malformed
        # [MQTT-3.10.3-1] (server side) an UNSUBSCRIBE filter that is not UTF-8 -> Malformed
        pytest.param(
            packet(0xA2, b"\x00\x01\x00" + s(b"\xed\xa0\x80")),
            0x81,
            id="unsubscribe-bad-utf8",
        ),
        # [MQTT-3.10.3-2] (server side) an UNSUBSCRIBE without a filter -> Protocol Error
        pytest.param(packet(0xA2, b"\x00\x01\x00"), 0x82, id="empty-unsubscribe"),
        pytest.param(
            packet(0x82, b"\x00\x01\x00" + s(b"\xed\xa0\x80") + b"\x00"),
            0x81,
            id="subscribe-bad-utf8",
        ),
    ],
)
def test_malformed_5_0_packets_are_refused(net: Net, bad: bytes, reason: int) -> None:
    """A 5.0 packet breaking a representation rule gets DISCONNECT with the rule's code,
    then the close; nothing reaches a subscriber to `#`."""
    watcher = net.subscriber("mal-watch", ("#", 0))
    c = net.client("mal")
    c.send(bad)
    expect_disconnect(c, reason)
    assert is_quiet(watcher)


# --------------------------------------------------------------------------- CONNECT, CONNACK


def connect_body(flags: int, payload: bytes) -> bytes:
    """A 5.0 CONNECT with these Connect Flags and payload bytes, as given."""
    return packet(0x10, s("MQTT") + bytes([5, flags]) + b"\x00\x3c\x00" + payload)


@pytest.mark.parametrize(
    "bad",
    [
        # [MQTT-3.1.2-11] Will QoS 1 without a will
        pytest.param(connect_body(0x0A, s("c")), id="will-qos-without-will"),
        # [MQTT-3.1.2-12] Will QoS 3
        pytest.param(connect_body(0x1E, s("c") + b"\x00" + s("w") + s("x")), id="will-qos-3"),
        # [MQTT-3.1.2-13] Will Retain without a will
        pytest.param(connect_body(0x22, s("c")), id="will-retain-without-will"),
        # [MQTT-3.1.2-9] Will Flag, but the payload ends after the client id
        pytest.param(connect_body(0x06, s("c")), id="will-fields-missing"),
        # [MQTT-3.1.2-16] no User Name Flag, but bytes left after the client id
        pytest.param(connect_body(0x02, s("c") + s("extra")), id="leftover-payload"),
        # [MQTT-3.1.2-17] User Name Flag, no user name
        pytest.param(connect_body(0x82, s("c")), id="user-name-missing"),
        # [MQTT-3.1.2-19] Password Flag, no password
        pytest.param(connect_body(0x42, s("c")), id="password-missing"),
        # [MQTT-3.1.3-3] no payload at all
        pytest.param(connect_body(0x02, b""), id="no-client-id"),
        # [MQTT-3.1.3-4] a client id that is not UTF-8
        pytest.param(connect_body(0x02, s(b"\xc3\x28")), id="client-id-not-utf8"),
        # [MQTT-3.1.3-11] a will topic that is not UTF-8
        pytest.param(
            connect_body(0x06, s("c") + b"\x00" + s(b"w\xed\xa0\x80") + s("x")),
            id="will-topic-not-utf8",
        ),
        # [MQTT-3.1.3-12] a user name that is not UTF-8
        pytest.param(connect_body(0x82, s("c") + s(b"\xc3\x28")), id="user-name-not-utf8"),
    ],
)
def test_connect_breaking_a_format_rule_is_refused(net: Net, bad: bytes) -> None:
    """(server side of Client rules, [MQTT-3.1.4-1]) A CONNECT that breaks a format rule
    never gets a successful CONNACK: at most a CONNACK of 0x80 or above, then the close."""
    c = net.raw()
    c.send(bad)
    rest = c.expect_closed()
    if rest:
        assert rest[0] == 0x20 and rest[3] >= 0x80, rest.hex()


def test_first_packet_must_be_connect(net: Net) -> None:
    """(server side of [MQTT-3.1.0-1]) A SUBSCRIBE as the first packet: no CONNACK, the
    close."""
    c = net.raw()
    c.send(subscribe5(1, ("t", 0)))
    assert c.expect_closed() == b""


@pytest.mark.parametrize(
    "name, level",
    [pytest.param(b"MQTX", 5, id="name-MQTX"), pytest.param(b"MQTT", 6, id="level-6")],
)
def test_unknown_protocol_name_or_level_is_refused(net: Net, name: bytes, level: int) -> None:
    """[MQTT-3.1.2-1] [MQTT-3.1.2-2] Another protocol name, or a level the broker does not
    serve: never a successful CONNACK; at most a refusal CONNACK, then the close."""
    c = net.raw()
    c.send(connect5("proto", name=name, level=level))
    rest = c.expect_closed()
    # 0x84 in the 5.0 form, or the refusal every older client understands (3.1.1's
    # 0x01, what Mosquitto sends for a level it does not know).
    assert rest in (b"", b"\x20\x03\x00\x84\x00", b"\x20\x02\x00\x01"), rest.hex()


def test_connack_is_first_once_and_has_clean_flags(net: Net) -> None:
    """[MQTT-3.2.0-1] [MQTT-3.2.0-2] [MQTT-3.2.2-1] CONNECT and SUBSCRIBE sent back to back
    with a retained message waiting: the first packet is CONNACK (flags byte 0x00, then
    0x01 for a resumed session), then SUBACK, then the retained message; a second CONNECT
    gets no second CONNACK."""
    pub = net.client("first-pub")
    pub.send(publish5("first/t", b"kept", qos=1, retain=True))
    assert pub.recv().first == PUBACK
    for expected_flags in (0x00, 0x01):
        c = net.raw()
        c.send(connect5("first", clean=False, properties=EXPIRY_60) + subscribe5(1, ("first/t", 1)))
        connack = c.recv()
        assert connack.first == 0x20
        assert connack.body[0] == expected_flags
        # The retained message may come before the SUBACK, as 3.8.4 allows.
        rest = {p.type: p for p in (c.recv(), c.recv())}
        assert sorted(rest) == [3, 9]
        assert publish5_fields(rest[3])[0::3] == ("first/t", b"kept")
        c.send(ack5(PUBACK, publish5_fields(rest[3])[1] or 0))
        c.send(connect5("first", clean=False, properties=EXPIRY_60))
        expect_disconnect(c, 0x82)


def test_connack_properties_of_a_full_server(net: Net) -> None:
    """[MQTT-3.2.2-9] [MQTT-3.1.2-28] [MQTT-3.2.2-12] The broker supports QoS 2 and
    retained messages: its CONNACK carries no Maximum QoS (0x24) or Retain Available
    (0x25), a SUBSCRIBE at QoS 2 is granted 2, a will at QoS 2 with Retain is accepted.
    It does not offer Response Information: with Request Response Information 1 or 0 the
    CONNACK has no 0x1A."""
    for request in (b"\x00", props(b"\x19\x01"), props(b"\x19\x00")):
        c, (_, reason, properties) = net.connect(
            "full", properties=request, will=("full/will", b"w"), will_qos=2, will_retain=True
        )
        assert reason == 0
        assert not {0x24, 0x25, 0x1A} & set(properties), properties
        assert subscribe(c, 1, ("full/t", 2)) == [2]
        c.send(b"\xe0\x00")
        assert c.expect_closed() == b""


def test_no_reason_string_or_user_property_without_problem_information(
    make_broker: Callable[..., pyo3mq.Broker], tmp_path: Path, net: Net
) -> None:
    """[MQTT-3.1.2-29] Request Problem Information 0: a refused SUBSCRIBE (0x87) and a
    refused QoS 1 and QoS 2 PUBLISH (0x87) come without Reason String or User Property."""
    port = acl_broker(make_broker, tmp_path)
    c = net.client("noproblem", port=port, properties=props(b"\x17\x00"))
    c.send(subscribe5(1, ("closed/t", 1)))
    suback = c.recv()
    properties, codes = read_props(suback.body[2:])
    assert (codes, properties) == (b"\x87", {})
    c.send(publish5("closed/t", b"x", qos=1, pkid=2))
    assert ack_fields(c.recv()) == (2, 0x87, {})
    c.send(publish5("closed/t", b"x", qos=2, pkid=3))
    assert ack_fields(c.recv()) == (3, 0x87, {})


def test_packets_fit_the_clients_maximum_packet_size(
    make_broker: Callable[..., pyo3mq.Broker], tmp_path: Path, net: Net
) -> None:
    """[MQTT-3.2.2-19] [MQTT-3.2.2-20] [MQTT-3.4.2-2] [MQTT-3.4.2-3] [MQTT-3.5.2-2]
    [MQTT-3.5.2-3] [MQTT-3.6.2-2] [MQTT-3.6.2-3] [MQTT-3.7.2-2] [MQTT-3.7.2-3]
    [MQTT-3.9.2-1] [MQTT-3.9.2-2] [MQTT-3.11.2-1] [MQTT-3.11.2-2] [MQTT-3.14.2-3]
    [MQTT-3.14.2-4] A client with Maximum Packet Size 32: every CONNACK (refusal
    included), PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK and DISCONNECT the broker
    sends it, error codes included, fits in 32 bytes and carries no Reason String (0x1F)
    or User Property (0x26) that would not."""
    port = acl_broker(make_broker, tmp_path, max_client_id_len=23)
    small = props(b"\x27\x00\x00\x00\x20")
    seen: list[Packet] = []

    def got(c: RawClient) -> Packet:
        pkt = c.recv()
        seen.append(pkt)
        return pkt

    refused = net.raw(port)
    refused.send(connect5("x" * 24, properties=small))
    connack = got(refused)
    assert connack5(connack)[:2] == (0, 0x85)
    assert refused.expect_closed() == b""
    c = net.raw(port)
    c.send(connect5("small", properties=small))
    assert connack5(got(c))[1] == 0
    c.send(subscribe5(1, ("closed/t", 1), ("open/t", 2)))
    assert got(c).body[-2:] == b"\x87\x02"
    c.send(publish5("closed/t", b"x", qos=1, pkid=2))
    assert ack_fields(got(c))[:2] == (2, 0x87)
    c.send(publish5("closed/t", b"x", qos=2, pkid=3))
    assert ack_fields(got(c))[:2] == (3, 0x87)
    c.send(publish5("open/t", b"x", qos=2, pkid=4))
    assert ack_fields(got(c))[:2] == (4, 0)  # PUBREC
    c.send(ack5(PUBREL, 4))
    # PUBCOMP, and the message through the client's own subscription, in either order.
    both = {p.type: p for p in (got(c), got(c))}
    assert sorted(both) == [3, 7]
    delivery = both[3]
    c.send(ack5(PUBREC, pkid_of(delivery)))
    assert got(c).first == PUBREL
    c.send(ack5(PUBREL, 0x0999))
    assert ack_fields(got(c))[0] == 0x0999  # PUBCOMP for an unknown id
    c.send(unsubscribe5(5, "never"))
    assert got(c).body[-1:] == b"\x11"
    c.send(publish5("a/+"))
    disconnect = got(c)
    assert (disconnect.first, disconnect.body[:1]) == (0xE0, b"\x82")
    for pkt in seen:
        assert size(pkt) <= 32, pkt
        if pkt.type in (4, 5, 6, 7) and len(pkt.body) > 3:
            section = read_props(pkt.body[3:])[0]
        elif pkt.type in (9, 11):
            section = read_props(pkt.body[2:])[0]
        elif pkt.type == 2:
            section = connack5(pkt)[2]
        elif pkt.type == 14 and len(pkt.body) > 1:
            section = read_props(pkt.body[1:])[0]
        else:
            section = {}
        assert not {0x1F, 0x26} & set(section), pkt


def test_pubrel_for_an_unknown_id_is_completed(net: Net) -> None:
    """[MQTT-3.7.2-1] PUBREL for an identifier the broker does not hold: PUBCOMP with that
    identifier and a code from the PUBCOMP table (0x00, or 0x92 Packet Identifier not
    found)."""
    c = net.client("unknown-rel")
    c.send(ack5(PUBREL, 0x0999))
    pkt = c.recv()
    assert pkt.first == PUBCOMP
    pkid, reason, _ = ack_fields(pkt)
    assert (pkid, reason in (0x00, 0x92)) == (0x0999, True)


def test_server_keep_alive_absent_means_the_clients(net: Net) -> None:
    """[MQTT-3.2.2-22] The CONNACK has no Server Keep Alive (0x13), so the client's Keep
    Alive of 2 s applies: the close (DISCONNECT 0x8D) comes at 1.5 x 2 s, not before 2.5 s
    (a behavioural bound)."""
    started = time.monotonic()
    c, (_, reason, properties) = net.connect("ka", keepalive=2)
    assert reason == 0 and 0x13 not in properties
    expect_disconnect(c, 0x8D)
    assert time.monotonic() - started >= 2.5


# --------------------------------------------------------------------------- client identifiers


def test_client_identifiers_key_their_sessions(net: Net) -> None:
    """[MQTT-3.1.3-5] [MQTT-3.1.3-2] Identifiers of 1 to 23 of 0-9a-zA-Z are accepted;
    each identifier has its own session: another id finds none, the same id resumes
    it."""
    for client_id in ("a", "0123456789abcdefghijklm", "Z" * 23):
        c, (present, reason, _) = net.connect(client_id, clean=False, properties=EXPIRY_60)
        assert (present, reason) == (0, 0)
        assert subscribe(c, 1, (f"key/{client_id}", 1)) == [1]
        c.send(b"\xe0\x00")
        c.expect_closed()
    _, (present, _, _) = net.connect("b", clean=False, properties=EXPIRY_60)
    assert present == 0
    c, (present, _, _) = net.connect("a", clean=False, properties=EXPIRY_60)
    assert present == 1
    pub = net.client("key-pub")
    pub.send(publish5("key/a", b"to a", qos=1))
    assert pub.recv().first == PUBACK
    topic, payload, _ = received(c)
    assert (topic, payload) == ("key/a", b"to a")


def test_rejected_client_identifier_gets_0x85(
    make_broker: Callable[..., pyo3mq.Broker], net: Net
) -> None:
    """[MQTT-3.1.3-8] An identifier longer than `max_client_id_len`: CONNACK 0x85 Client
    Identifier not valid, Session Present 0, then the close."""
    port = make_broker(max_client_id_len=23).addresses[0][1]
    c = net.raw(port)
    c.send(connect5("y" * 24))
    assert connack5(c.recv())[:2] == (0, 0x85)
    assert c.expect_closed() == b""


def test_refused_connect_ignores_what_follows(
    make_broker: Callable[..., pyo3mq.Broker], net: Net
) -> None:
    """[MQTT-3.1.4-2] [MQTT-3.1.4-6] A wrong password: CONNACK 0x86 then the close; a
    retained PUBLISH pipelined behind the CONNECT is ignored (a later subscriber gets no
    retained message). The right password is accepted."""
    port = make_broker(authenticator=lambda _c, _u, p: p == b"right").addresses[0][1]
    c = net.raw(port)
    c.send(connect5("pw", password=b"wrong") + publish5("pw/t", b"sneaky", retain=True))
    assert connack5(c.recv())[:2] == (0, 0x86)
    assert c.expect_closed() == b""
    later = net.client("pw-later", port=port, password=b"right")
    assert subscribe(later, 1, ("pw/#", 0)) == [0]
    assert is_quiet(later)


# --------------------------------------------------------------------------- wills


@pytest.mark.parametrize("retain", [False, True], ids=["will-retain-0", "will-retain-1"])
def test_will_on_network_failure(net: Net, retain: bool) -> None:
    """[MQTT-3.1.2-7] [MQTT-3.1.2-14] [MQTT-3.1.2-15] [MQTT-3.1.3-10] A will (delay 0) is
    stored with the session and published when the connection drops without DISCONNECT,
    with its User Properties in order; Will Retain 0 is an ordinary message (a later
    subscriber gets nothing), Will Retain 1 a retained one (a later subscriber gets it
    with RETAIN=1)."""
    topic = f"will/{int(retain)}"
    watcher = net.subscriber(f"will-watch-{int(retain)}", (topic, 0))
    user = b"".join(b"\x26" + s(k) + s(v) for k, v in (("k", "1"), ("j", "2"), ("k", "3")))
    dying = net.client(
        f"dying-{int(retain)}",
        will=(topic, b"bye"),
        will_properties=props(user),
        will_retain=retain,
    )
    dying.close()
    got_topic, payload, pkt = received(watcher)
    assert (got_topic, payload) == (topic, b"bye")
    assert publish5_fields(pkt)[2][0x26] == [("k", "1"), ("j", "2"), ("k", "3")]
    assert not pkt.retain  # a live delivery (Retain As Published 0)
    later = net.client(f"will-later-{int(retain)}")
    assert subscribe(later, 1, (topic, 0)) == [0]
    if retain:
        got_topic, payload, pkt = received(later)
        assert (got_topic, payload, pkt.retain) == (topic, b"bye", True)
    assert is_quiet(later)


def test_wildcard_will_topic_is_refused(net: Net) -> None:
    """[MQTT-4.7.0-1] A will topic with a wildcard: no successful CONNACK, then the
    close."""
    c = net.raw()
    c.send(connect5("wild-will", will=("w/#", b"x")))
    rest = c.expect_closed()
    assert not rest.startswith(b"\x20\x03\x00\x00") and not rest.startswith(b"\x20\x03\x01\x00")
    if rest:
        assert rest[0] == 0x20 and rest[3] >= 0x80, rest.hex()


# --------------------------------------------------------------------------- QoS flows


def test_outgoing_packet_identifiers_and_first_transmissions(net: Net) -> None:
    """[MQTT-2.2.1-4] [MQTT-4.3.2-1] [MQTT-4.3.3-1] [MQTT-4.3.2-2] [MQTT-4.3.3-2]
    [MQTT-4.3.1-1] [MQTT-3.3.1-2] [MQTT-3.3.1-3] Twenty QoS 1 and QoS 2 messages held
    unacknowledged by a subscriber carry distinct non-zero identifiers and go out with
    DUP=0 at their QoS (0x32, 0x34); QoS 0 goes out as 0x30. A publisher's DUP=1 on a
    first attempt is not copied."""
    sub = net.subscriber("ids-sub", ("ids/1", 1), ("ids/2", 2), ("ids/0", 0))
    pub = net.client("ids-pub")
    for i in range(10):
        pub.send(publish5("ids/1", b"%d" % i, qos=1, pkid=100 + i, dup=True))
        assert ack_fields(pub.recv())[:2] == (100 + i, 0)
        pub.send(publish5("ids/2", b"%d" % i, qos=2, pkid=200 + i))
        assert ack_fields(pub.recv())[:2] == (200 + i, 0)
        pub.send(ack5(PUBREL, 200 + i))
        assert pub.recv().first == PUBCOMP
    pub.send(publish5("ids/0", b"zero", dup=False))
    ids = []
    for _ in range(20):
        pkt = sub.recv()
        assert pkt.first in (0x32, 0x34), hex(pkt.first)
        ids.append(publish5_fields(pkt)[1])
    assert 0 not in ids and len(set(ids)) == 20
    assert sub.recv().first == 0x30


def test_unacknowledged_messages_are_resent_on_reconnect_only(net: Net) -> None:
    """[MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.3.2-3] [MQTT-4.3.3-3] [MQTT-4.3.3-4]
    [MQTT-4.3.3-5] [MQTT-4.3.3-6] A subscriber (expiry 60) withholds its PUBACK, its
    PUBREC for one QoS 2 message and its PUBCOMP for another: nothing is resent while it
    stays connected; after a reconnect with Clean Start 0 the two PUBLISHes come again
    with DUP=1 and their identifiers, and the message past PUBREC only gets its PUBREL
    again, never its PUBLISH."""
    sub = net.subscriber("resend", ("re/1", 1), ("re/2", 2), clean=False, properties=EXPIRY_60)
    pub = net.client("resend-pub")
    pub.send(publish5("re/1", b"one", qos=1))
    assert pub.recv().first == PUBACK
    for pkid, body in ((2, b"two"), (3, b"three")):
        pub.send(publish5("re/2", body, qos=2, pkid=pkid))
        assert pub.recv().first == PUBREC
        pub.send(ack5(PUBREL, pkid))
        assert pub.recv().first == PUBCOMP
    first: dict[bytes, int] = {}
    for _ in range(3):
        _, payload, pkt = received(sub)
        assert not pkt.dup
        first[payload] = pkid_of(pkt)
    sub.send(ack5(PUBREC, first[b"three"]))
    pubrel = sub.recv()
    assert (pubrel.first, ack_fields(pubrel)[0]) == (PUBREL, first[b"three"])
    time.sleep(1.0)
    assert is_quiet(sub), "no resend while connected"
    sub.close()
    sub = net.client("resend", clean=False, properties=EXPIRY_60)
    again = [sub.recv() for _ in range(3)]
    resent = {publish5_fields(p)[3]: p for p in again if p.type == 3}
    assert set(resent) == {b"one", b"two"}
    for payload, pkt in resent.items():
        assert pkt.dup and publish5_fields(pkt)[1] == first[payload]
    rel = [p for p in again if p.type == 6]
    assert [ack_fields(p)[0] for p in rel] == [first[b"three"]]
    sub.send(ack5(PUBCOMP, first[b"three"]))
    sub.send(ack5(PUBACK, first[b"one"]))
    sub.send(ack5(PUBREC, first[b"two"]))
    assert sub.recv().first == PUBREL
    sub.send(ack5(PUBCOMP, first[b"two"]))
    assert is_quiet(sub)


def test_error_acknowledgements_end_the_delivery(net: Net) -> None:
    """[MQTT-4.4.0-2] [MQTT-4.3.3-4] PUBACK 0x80 and PUBREC 0x80 from a subscriber count
    as acknowledgements: no PUBREL follows the PUBREC, and neither message is resent after
    a reconnect with Clean Start 0."""
    sub = net.subscriber("errack", ("err/1", 1), ("err/2", 2), clean=False, properties=EXPIRY_60)
    pub = net.client("errack-pub")
    pub.send(publish5("err/1", b"one", qos=1))
    assert pub.recv().first == PUBACK
    pub.send(publish5("err/2", b"two", qos=2, pkid=2))
    assert pub.recv().first == PUBREC
    pub.send(ack5(PUBREL, 2))
    assert pub.recv().first == PUBCOMP
    for _ in range(2):
        _, payload, pkt = received(sub)
        kind = PUBACK if payload == b"one" else PUBREC
        sub.send(ack5(kind, pkid_of(pkt), 0x80))
    assert is_quiet(sub), "no PUBREL after PUBREC 0x80"
    sub.close()
    sub = net.client("errack", clean=False, properties=EXPIRY_60)
    assert is_quiet(sub), "nothing resent"


def test_broker_as_receiver_of_qos_flows(
    make_broker: Callable[..., pyo3mq.Broker], tmp_path: Path, net: Net
) -> None:
    """[MQTT-3.3.4-1] [MQTT-4.3.2-4] [MQTT-4.3.2-5] [MQTT-4.3.3-8] [MQTT-4.3.3-9]
    [MQTT-4.3.3-10] [MQTT-4.3.3-11] [MQTT-4.3.3-12] QoS 0 gets no answer, QoS 1 a PUBACK
    and QoS 2 a PUBREC with the PUBLISH's identifier. After PUBACK, the same id with
    DUP=1 is a new message. A QoS 2 PUBLISH repeated before PUBREL gets PUBREC again and
    is passed on once; PUBREL gets PUBCOMP; after PUBCOMP, and after a PUBREC 0x87, the
    same id is a new message."""
    port = acl_broker(make_broker, tmp_path)
    sub = net.subscriber("recv-sub", ("open/#", 2), port=port)
    pub = net.client("recv-pub", port=port)
    pub.send(publish5("open/0", b"q0"))
    assert is_quiet(pub), "QoS 0 is not answered"
    assert received(sub)[1] == b"q0"
    pub.send(publish5("open/1", b"A", qos=1, pkid=5))
    assert (pub.recv().first, received(sub)[1]) == (PUBACK, b"A")
    pub.send(publish5("open/1", b"B", qos=1, pkid=5, dup=True))
    assert ack_fields(pub.recv())[:2] == (5, 0)
    assert received(sub)[1] == b"B"
    for _ in range(2):
        pub.send(publish5("open/2", b"C", qos=2, pkid=4))
        rec = pub.recv()
        assert (rec.first, ack_fields(rec)[:2]) == (PUBREC, (4, 0))
    pub.send(ack5(PUBREL, 4))
    comp = pub.recv()
    assert (comp.first, ack_fields(comp)[:2]) == (PUBCOMP, (4, 0))
    _, payload, delivery = received(sub)
    assert payload == b"C"
    sub.send(ack5(PUBREC, pkid_of(delivery)))
    assert sub.recv().first == PUBREL
    sub.send(ack5(PUBCOMP, pkid_of(delivery)))
    assert is_quiet(sub), "the repeated QoS 2 PUBLISH is passed on once"
    pub.send(publish5("open/2", b"D", qos=2, pkid=4))
    assert pub.recv().first == PUBREC
    pub.send(ack5(PUBREL, 4))
    assert pub.recv().first == PUBCOMP
    assert received(sub)[1] == b"D", "after PUBCOMP the id is new"
    pub.send(publish5("closed/2", b"E", qos=2, pkid=6))
    assert ack_fields(pub.recv())[:2] == (6, 0x87)
    pub.send(publish5("open/2", b"F", qos=2, pkid=6))
    assert ack_fields(pub.recv())[:2] == (6, 0)
    pub.send(ack5(PUBREL, 6))
    assert pub.recv().first == PUBCOMP
    assert received(sub)[1] == b"F", "after PUBREC 0x87 the id is new"
    # Ownership: the publisher leaves right after its PUBACK; the message is delivered.
    pub.send(publish5("open/1", b"G", qos=1, pkid=7))
    assert pub.recv().first == PUBACK
    pub.close()
    assert received(sub)[1] == b"G"


def test_qos2_is_completed_even_when_the_message_expired(net: Net) -> None:
    """[MQTT-4.3.3-13] A QoS 2 PUBLISH with Message Expiry 1 s whose PUBREL comes 2.5 s
    later still gets its PUBCOMP."""
    pub = net.client("exp-pub")
    pub.send(publish5("exp/t", b"x", qos=2, pkid=9, properties=props(b"\x02\x00\x00\x00\x01")))
    assert pub.recv().first == PUBREC
    time.sleep(2.5)
    pub.send(ack5(PUBREL, 9))
    comp = pub.recv()
    assert (comp.first, ack_fields(comp)[:2]) == (PUBCOMP, (9, 0))


# --------------------------------------------------------------------------- retained


def test_retained_messages(net: Net) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-7] [MQTT-3.3.1-8] [MQTT-3.3.1-9]
    [MQTT-3.8.4-4] A retained PUBLISH replaces the topic's retained message; a
    non-retained one leaves it; Retain Handling 0 sends every matching retained message
    on subscribing, again on an identical re-SUBSCRIBE; an empty retained PUBLISH is
    forwarded to live subscribers and clears the topic (no empty message is kept)."""
    pub = net.client("ret-pub")
    for topic, body, retain in (
        ("ret/a", b"old", True),
        ("ret/a", b"new", True),
        ("ret/a", b"plain", False),
        ("ret/b", b"bee", True),
    ):
        pub.send(publish5(topic, body, qos=1, retain=retain))
        assert pub.recv().first == PUBACK
    sub = net.client("ret-sub")
    for pkid in (1, 2):
        assert subscribe(sub, pkid, ("ret/+", 0x01)) == [1]
        got = {}
        for _ in range(2):
            topic, payload, pkt = received(sub)
            assert pkt.retain
            got[topic] = payload
        assert got == {"ret/a": b"new", "ret/b": b"bee"}
    pub.send(publish5("ret/a", b"", qos=1, retain=True))
    assert pub.recv().first == PUBACK
    topic, payload, pkt = received(sub)
    assert (topic, payload) == ("ret/a", b"")
    later = net.client("ret-later")
    assert subscribe(later, 1, ("ret/+", 0x01)) == [1]
    topic, payload, pkt = received(later)
    assert (topic, payload, pkt.retain) == ("ret/b", b"bee", True)
    assert is_quiet(later), "the cleared topic has no retained message, not even an empty one"


# --------------------------------------------------------------------------- topics


def test_delivered_topics_match_the_filters(net: Net) -> None:
    """[MQTT-3.3.2-3] [MQTT-4.7.1-1] [MQTT-4.7.1-2] A misplaced `#` or `+` gets SUBACK
    0x8F for that filter; `sport/#` also matches `sport`; `sport/+` matches `sport/` but
    not `sport`; `+/tennis/#` matches `x/tennis`. Every delivered topic matches a
    filter of the subscriber."""
    sub = net.client("match")
    codes = subscribe(sub, 1, ("sport/tennis#", 0), ("a/#/b", 0), ("sport+", 0), ("sport/#", 0))
    assert codes == [0x8F, 0x8F, 0x8F, 0]
    other = net.subscriber("match-plus", ("sport/+", 0), ("+/tennis/#", 0))
    pub = net.client("match-pub")
    # The last topic matches everyone: whatever arrives before it is all that matched.
    for topic in ("sport", "sport/", "elsewhere", "x/tennis", "sport/tennis/x", "sport/end"):
        pub.send(publish5(topic, topic.encode()))
    assert [received(sub)[0] for _ in range(4)] == [
        "sport",
        "sport/",
        "sport/tennis/x",
        "sport/end",
    ]
    assert [received(other)[0] for _ in range(4)] == [
        "sport/",
        "x/tennis",
        "sport/tennis/x",
        "sport/end",
    ]


def test_dollar_topics_and_no_normalisation(net: Net) -> None:
    """[MQTT-4.7.2-1] [MQTT-4.7.3-4] `#` and `+/monitor/Clients` do not match
    `$app/monitor/Clients`, `$app/#` does. Matching is byte for byte: `ACCOUNTS` does not
    match `Accounts`, and NFC `é` does not match NFD `é`."""
    nfc, nfd = unicodedata.normalize("NFC", "caf\u00e9"), unicodedata.normalize("NFD", "caf\u00e9")
    wild = net.subscriber("dollar-wild", ("#", 0), ("+/monitor/Clients", 0))
    dollar = net.subscriber("dollar", ("$app/#", 0), ("Accounts", 0), (nfc, 0))
    pub = net.client("dollar-pub")
    for topic in ("$app/monitor/Clients", "ACCOUNTS", nfd, "Accounts", nfc):
        pub.send(publish5(topic, b"x"))
    assert [received(wild)[0] for _ in range(4)] == ["ACCOUNTS", nfd, "Accounts", nfc]
    assert is_quiet(wild)
    assert [received(dollar)[0] for _ in range(3)] == ["$app/monitor/Clients", "Accounts", nfc]
    assert is_quiet(dollar)


def test_empty_filter_is_refused(net: Net) -> None:
    """[MQTT-4.7.3-1] An empty Topic Filter gets SUBACK 0x8F (an empty topic name is in
    test_malformed_5_0_packets_are_refused)."""
    c = net.client("empty-filter")
    assert subscribe(c, 1, ("", 1), ("ok", 1)) == [0x8F, 1]


def test_longest_topic_is_accepted(net: Net) -> None:
    """[MQTT-4.7.3-3] A topic name of 65,535 bytes is accepted, matched and delivered."""
    topic = "t/" + "x" * 65_533
    sub = net.subscriber("long-sub", ("t/+", 0))
    pub = net.client("long-pub")
    pub.send(publish5(topic, b"long", qos=1))
    assert pub.recv().first == PUBACK
    got, payload, _ = received(sub)
    assert (len(got.encode()), got == topic, payload) == (65_535, True, b"long")


# --------------------------------------------------------------------------- subscriptions


def test_overlapping_subscriptions_deliver_at_the_highest_qos(net: Net) -> None:
    """[MQTT-3.3.4-2] `ov/#` at QoS 2 and `ov/b` at QoS 1: a QoS 2 message to `ov/b`
    arrives (at least once) at QoS 2."""
    sub = net.subscriber("overlap", ("ov/#", 2), ("ov/b", 1))
    pub = net.client("overlap-pub")
    pub.send(publish5("ov/b", b"x", qos=2))
    assert pub.recv().first == PUBREC
    pub.send(ack5(PUBREL, 1))
    assert pub.recv().first == PUBCOMP
    qos = []
    while True:
        pkt = sub.recv()
        if pkt.type == 13:
            break
        qos.append(pkt.qos)
        if len(qos) == 1:
            sub.send(PINGREQ)
    assert 2 in qos and all(q in (1, 2) for q in qos)


def test_subscribing_again_replaces_the_subscription(net: Net) -> None:
    """[MQTT-3.8.4-3] `re/t` at QoS 0, then `re/t` at QoS 2: one subscription, so a QoS 2
    message arrives once, at QoS 2."""
    sub = net.subscriber("replace", ("re/t", 0))
    assert subscribe(sub, 2, ("re/t", 2)) == [2]
    pub = net.client("replace-pub")
    pub.send(publish5("re/t", b"x", qos=2))
    assert pub.recv().first == PUBREC
    pub.send(ack5(PUBREL, 1))
    assert pub.recv().first == PUBCOMP
    assert received(sub)[2].qos == 2
    assert is_quiet(sub)


def test_one_subscribe_several_filters_and_qos_downgrade(net: Net) -> None:
    """[MQTT-3.8.4-5] [MQTT-3.8.4-8] One SUBSCRIBE for `m/a` QoS 0, `m/b` QoS 1, `m/c`
    QoS 2: one SUBACK with three codes, each subscription on its own; a QoS 2 message is
    delivered at min(2, granted), and a QoS 0 one stays at QoS 0."""
    sub = net.client("multi")
    assert subscribe(sub, 1, ("m/a", 0), ("m/b", 1), ("m/c", 2)) == [0, 1, 2]
    pub = net.client("multi-pub")
    for i, topic in enumerate(("m/a", "m/b", "m/c"), 1):
        pub.send(publish5(topic, b"x", qos=2, pkid=i))
        assert pub.recv().first == PUBREC
        pub.send(ack5(PUBREL, i))
        assert pub.recv().first == PUBCOMP
    pub.send(publish5("m/c", b"zero"))
    got = []
    for _ in range(4):
        topic, payload, pkt = received(sub)
        got.append((topic, payload, pkt.qos))
    assert got == [("m/a", b"x", 0), ("m/b", b"x", 1), ("m/c", b"x", 2), ("m/c", b"zero", 0)]


def test_unsubscribe_matches_exactly_and_stops_deliveries(net: Net) -> None:
    """[MQTT-3.10.4-1] [MQTT-3.10.4-2] Subscribed to `u/+`: UNSUBSCRIBE `u/b` gets 0x11
    and `u/+` still delivers; UNSUBSCRIBE `u/+` gets 0x00 and nothing more arrives, also
    not queued for the session while it is offline."""
    sub = net.subscriber("unsub", ("u/+", 1), ("mark/u", 1), clean=False, properties=EXPIRY_60)
    pub = net.client("unsub-pub")

    def publish(topic: str, body: bytes) -> None:
        pub.send(publish5(topic, body, qos=1))
        assert pub.recv().first == PUBACK

    sub.send(unsubscribe5(2, "u/b"))
    assert sub.recv().body == b"\x00\x02\x00\x11"
    publish("u/b", b"still")
    _, payload, pkt = received(sub)
    assert payload == b"still"
    sub.send(ack5(PUBACK, pkid_of(pkt)))
    sub.send(unsubscribe5(3, "u/+"))
    assert sub.recv().body == b"\x00\x03\x00\x00"
    # A marker on another subscription follows each message that must not arrive.
    publish("u/b", b"gone")
    publish("mark/u", b"online")
    _, payload, pkt = received(sub)
    assert payload == b"online"
    sub.send(ack5(PUBACK, pkid_of(pkt)))
    sub.close()
    publish("u/b", b"offline")
    publish("mark/u", b"queued")
    sub = net.client("unsub", clean=False, properties=EXPIRY_60)
    assert received(sub)[1] == b"queued"


def test_unsubscribe_completes_qos2_under_way(net: Net) -> None:
    """[MQTT-3.10.4-3] A QoS 2 delivery held at PUBLISH when the subscriber unsubscribes
    is completed: its PUBREC still gets PUBREL, its PUBCOMP is accepted."""
    sub = net.subscriber("unsub2", ("u2/t", 2))
    pub = net.client("unsub2-pub")
    pub.send(publish5("u2/t", b"x", qos=2))
    assert pub.recv().first == PUBREC
    pub.send(ack5(PUBREL, 1))
    assert pub.recv().first == PUBCOMP
    pkid = publish5_fields(sub.recv())[1] or 0
    sub.send(unsubscribe5(2, "u2/t"))
    assert sub.recv().body == b"\x00\x02\x00\x00"
    sub.send(ack5(PUBREC, pkid))
    rel = sub.recv()
    assert (rel.first, ack_fields(rel)[:2]) == (PUBREL, (pkid, 0))
    sub.send(ack5(PUBCOMP, pkid))
    assert is_quiet(sub)


# --------------------------------------------------------------------------- sessions


def test_session_kept_while_connected_and_discarded_after_expiry(net: Net) -> None:
    """[MQTT-4.1.0-1] [MQTT-4.1.0-2] Session Expiry 1 s: while connected for 2.5 s the
    subscription keeps delivering; a DISCONNECT that sets the expiry to 1 s ends the
    session a second after the close (Session Present 0 at 3 s, nothing queued
    delivered)."""
    sub = net.subscriber(
        "alive", ("alive/t", 1), clean=False, properties=props(b"\x11" + b"\x00\x00\x00\x01")
    )
    time.sleep(2.5)
    pub = net.client("alive-pub")
    pub.send(publish5("alive/t", b"still", qos=1))
    assert pub.recv().first == PUBACK
    assert received(sub)[1] == b"still"
    other = net.subscriber("shorten", ("alive/t", 1), clean=False, properties=EXPIRY_60)
    other.send(packet(0xE0, b"\x00" + props(b"\x11\x00\x00\x00\x01")))
    assert other.expect_closed() == b""
    pub.send(publish5("alive/t", b"queued", qos=1, pkid=2))
    assert pub.recv().first == PUBACK
    time.sleep(3.0)
    again, (present, _, _) = net.connect("shorten", clean=False, properties=EXPIRY_60)
    assert present == 0
    assert is_quiet(again)


def test_message_goes_to_every_matching_session(net: Net) -> None:
    """[MQTT-4.5.0-1] After the PUBACK, the message is in the session of every matching
    subscriber: online ones receive it, an offline one (expiry 60) on its return."""
    online = net.subscriber("every-on", ("every/#", 1))
    offline = net.subscriber("every-off", ("every/t", 1), clean=False, properties=EXPIRY_60)
    offline.send(b"\xe0\x00")
    offline.expect_closed()
    pub = net.client("every-pub")
    pub.send(publish5("every/t", b"all", qos=1))
    assert pub.recv().first == PUBACK
    assert received(online)[1] == b"all"
    back, (present, _, _) = net.connect("every-off", clean=False, properties=EXPIRY_60)
    assert present == 1
    assert received(back)[1] == b"all"


def test_messages_keep_the_publishers_order(net: Net) -> None:
    """[MQTT-4.6.0-5] [MQTT-4.6.0-6] With no configuration, 300 QoS 1 messages from one
    publisher reach a QoS 1 and a QoS 0 subscriber in the order sent."""
    sub1 = net.subscriber("order-1", ("order/t", 1))
    sub0 = net.subscriber("order-0", ("order/t", 0))
    pub = net.client("order-pub")
    total = 300
    for i in range(total):
        pub.send(publish5("order/t", b"%d" % i, qos=1, pkid=i + 1))
    for _ in range(total):
        assert pub.recv().first == PUBACK
    for sub in (sub1, sub0):
        got = []
        for _ in range(total):
            _, payload, pkt = received(sub)
            got.append(int(payload))
            if pkt.qos:
                sub.send(ack5(PUBACK, pkid_of(pkt)))
        assert got == list(range(total))


# --------------------------------------------------------------------------- shared subscriptions


def test_share_names_follow_the_rules(net: Net) -> None:
    """[MQTT-4.8.2-1] [MQTT-4.8.2-2] A 5.0 SUBSCRIBE: an empty ShareName, one with `+` or
    `#`, or no filter after it gets SUBACK 0x8F Topic Filter invalid for that filter;
    `$share/g/#` is granted and receives every non-`$` topic."""
    c = net.client("share-names")
    bad = ["$share//t", "$share/g", "$share/g/", "$share/g+/t", "$share/#/t"]
    codes = subscribe(c, 1, *[(f, 1) for f in bad], ("$share/g/#", 1))
    assert codes == [0x8F] * len(bad) + [1]
    pub = net.client("share-names-pub")
    for topic in ("$app/t", "x", "x/y"):
        pub.send(publish5(topic, b"m"))
    assert [received(c)[0] for _ in range(2)] == ["x", "x/y"]
    assert is_quiet(c)


def test_shared_members_get_their_granted_qos(net: Net) -> None:
    """[MQTT-4.8.2-3] Members granted QoS 0 and QoS 2: QoS 2 messages reach the first at
    QoS 0 and the second at QoS 2."""
    low = net.subscriber("sh-low", ("$share/q/sh/t", 0))
    high = net.subscriber("sh-high", ("$share/q/sh/t", 2))
    pub = net.client("sh-pub")
    for i in range(1, 5):
        pub.send(publish5("sh/t", b"%d" % i, qos=2, pkid=i))
        assert pub.recv().first == PUBREC
        pub.send(ack5(PUBREL, i))
        assert pub.recv().first == PUBCOMP
    assert {received(low)[2].qos for _ in range(2)} == {0}
    assert {received(high)[2].qos for _ in range(2)} == {2}


def test_shared_qos2_delivery_stays_with_its_member(net: Net) -> None:
    """[MQTT-4.8.2-4] [MQTT-4.8.2-5] A member holding a QoS 2 PUBLISH without PUBREC
    drops: with a session (expiry 60) it gets the message again (DUP=1, same id) when it
    reconnects, and the other member never gets it; when its session ends instead, the
    message is not given to the other member, whose next message is the one published
    after."""
    for expiry, name in ((EXPIRY_60, "kept"), (b"\x00", "ended")):
        group = f"$share/{name}/s2/{name}"
        first = net.subscriber(f"s2-{name}", (group, 2), clean=False, properties=expiry)
        pub = net.client(f"s2-pub-{name}")
        pub.send(publish5(f"s2/{name}", b"held", qos=2))
        assert pub.recv().first == PUBREC
        pub.send(ack5(PUBREL, 1))
        assert pub.recv().first == PUBCOMP
        _, payload, pkt = received(first)
        assert payload == b"held"
        other = net.subscriber(f"s2-other-{name}", (group, 2))
        if name == "kept":
            first.close()  # the network fails
            back, (present, _, _) = net.connect(f"s2-{name}", clean=False, properties=expiry)
            assert present == 1
            _, payload, again = received(back)
            assert (payload, again.dup, pkid_of(again)) == (b"held", True, pkid_of(pkt))
            assert is_quiet(other), "the other member never gets it"
        else:
            first.send(b"\xe0\x00")  # expiry 0: the session ends with the connection
            assert first.expect_closed() == b""
            # Clean Start 1 ends whatever is left of the old session before the CONNACK.
            assert net.connect(f"s2-{name}")[1][:2] == (0, 0)
            pub.send(publish5(f"s2/{name}", b"after", qos=2, pkid=2))
            assert pub.recv().first == PUBREC
            pub.send(ack5(PUBREL, 2))
            assert pub.recv().first == PUBCOMP
            assert received(other)[1] == b"after", "the held message went to the other member"


@pytest.mark.parametrize("qos", [1, 2], ids=["puback-0x80", "pubrec-0x80"])
def test_shared_error_acknowledgement_discards_the_message(net: Net, qos: int) -> None:
    """[MQTT-4.8.2-6] The chosen member answers PUBACK 0x80 (or PUBREC 0x80): the message
    is discarded, not re-routed, even when that member then leaves the group: the other
    member's next message is the one published after."""
    group = f"$share/err{qos}/se/t"
    first = net.subscriber(f"se-{qos}", (group, qos))
    pub = net.client(f"se-pub-{qos}")

    def publish(body: bytes, pkid: int) -> None:
        pub.send(publish5("se/t", body, qos=qos, pkid=pkid))
        assert pub.recv().first in (PUBACK, PUBREC)
        if qos == 2:
            pub.send(ack5(PUBREL, pkid))
            assert pub.recv().first == PUBCOMP

    publish(b"refused", 1)
    _, _, pkt = received(first)
    first.send(ack5(PUBACK if qos == 1 else PUBREC, pkid_of(pkt), 0x80))
    assert is_quiet(first)
    other = net.subscriber(f"se-other-{qos}", (group, qos))
    first.send(unsubscribe5(5, group))
    assert first.recv().type == 11
    first.send(b"\xe0\x00")
    first.expect_closed()
    publish(b"after", 2)
    assert received(other)[1] == b"after"


# --------------------------------------------------------------------------- WebSocket


def test_5_0_over_websocket(make_broker: Callable[..., pyo3mq.Broker]) -> None:
    """[MQTT-6.0.0-1] [MQTT-6.0.0-2] [MQTT-6.0.0-4] [MQTT-4.2.0-1] A 5.0 client over
    WebSocket: the broker selects the `mqtt` subprotocol; a CONNECT split over two
    binary frames and SUBSCRIBE + PUBLISH + PINGREQ in one frame are all handled; a text
    frame closes the connection."""
    port = make_broker(listeners=["ws://127.0.0.1:0"]).addresses[0][1]
    client = WsClient(port)
    try:
        assert client.status == "HTTP/1.1 101 Switching Protocols"
        assert client.headers.get("sec-websocket-protocol") == "mqtt"
        hello = connect5("ws5")
        client.send_frame(2, hello[:5])
        client.send_frame(2, hello[5:])
        assert connack5(client.recv_packets(1)[0])[1] == 0
        client.send_frame(2, subscribe5(1, ("ws/t", 0)) + publish5("ws/t", b"one") + PINGREQ)
        answers = {p.type: p for p in client.recv_packets(3)}
        assert sorted(answers) == [3, 9, 13]
        assert publish5_fields(answers[3])[0::3] == ("ws/t", b"one")
        client.send_frame(1, b"text")
        opcode, _ = client.recv_frame()
        assert opcode == 8
        client.expect_eof()
    finally:
        client.close()


# --------------------------------------------------------------------------- expiry, QoS 2


def test_message_expiry_stops_once_the_qos2_publish_went_out(
    net: Net, broker: pyo3mq.Broker
) -> None:
    """[MQTT-4.3.3-7] A QoS 2 message with Message Expiry 1 s went out to a subscriber
    (expiry 60) that withholds its PUBREC; 2.5 s later, long expired, the subscriber
    reconnects with Clean Start 0 and the PUBLISH is resent (DUP=1, same identifier),
    not dropped, and its exchange completes. A message with the same expiry that was
    still queued (not sent) then is dropped, as [MQTT-3.3.2-5] asks, so the expiry was
    really in force."""
    sub = net.subscriber("exp2", ("exp2/#", 2), clean=False, properties=EXPIRY_60)
    pub = net.client("exp2-pub")
    one_second = props(b"\x02\x00\x00\x00\x01")
    pub.send(publish5("exp2/t", b"sent", qos=2, pkid=1, properties=one_second))
    assert pub.recv().first == PUBREC
    pub.send(ack5(PUBREL, 1))
    assert pub.recv().first == PUBCOMP
    _, payload, first = received(sub)
    assert (payload, first.dup) == (b"sent", False)
    sub.close()
    # Only once the broker has seen the close is "queued" queued rather than sent (and
    # then resent as an inflight message, which expiry does not stop).
    deadline = time.monotonic() + 5
    while broker.stats()["clients_connected"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert broker.stats()["clients_connected"] == 1, broker.stats()
    pub.send(publish5("exp2/t", b"queued", qos=2, pkid=2, properties=one_second))
    assert pub.recv().first == PUBREC
    pub.send(ack5(PUBREL, 2))
    assert pub.recv().first == PUBCOMP
    pub.send(publish5("exp2/t", b"lasting", qos=1, pkid=3))
    assert pub.recv().first == PUBACK
    time.sleep(2.5)
    sub = net.client("exp2", clean=False, properties=EXPIRY_60)
    _, payload, again = received(sub)
    assert (payload, again.dup, pkid_of(again)) == (b"sent", True, pkid_of(first))
    sub.send(ack5(PUBREC, pkid_of(again)))
    # The PUBREL and the next queued PUBLISH may come in either order.
    rest = {pkt.type: pkt for pkt in (sub.recv(), sub.recv())}
    assert set(rest) == {3, 6}, rest
    assert ack_fields(rest[6])[0] == pkid_of(again)
    sub.send(ack5(PUBCOMP, pkid_of(again)))
    last = rest[3]
    assert publish5_fields(last)[3] == b"lasting", "the expired queued message is dropped"
    sub.send(ack5(PUBACK, pkid_of(last)))
    assert is_quiet(sub)
