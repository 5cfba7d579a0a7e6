"""Malformed and edge-case packets over a real socket: the codec's rules, end to end.

Every negative case follows the same script: a *witness* client connects first and
subscribes; the offending client then sends its bytes; the broker must close that
connection without any reply (no CONNACK for a bad CONNECT [MQTT-3.1.4-1], no ack for a
bad later packet), its log line for that peer must name the rule, and the witness must
still get a PINGRESP and its own publish back afterwards.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable, Iterator, Sequence

import pyo3mq
import pytest
from support.mqtt_raw import (
    PINGREQ,
    Packet,
    RawClient,
    ack,
    connect,
    packet,
    publish,
    s,
    subscribe,
    unsubscribe,
)
from support.stderr_capture import captured_stderr

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_BAD_VERSION = b"\x20\x02\x00\x01"
PINGRESP = b"\xd0\x00"
WITNESS_TOPIC = "witness/echo"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def raw(pkt: Packet) -> bytes:
    """The packet's exact bytes on the wire (our own framing of what was received)."""
    return packet(pkt.first, pkt.body)


def raw_connect(
    flags: int,
    payload: bytes,
    *,
    name: bytes = b"MQTT",
    level: int = 4,
    first: int = 0x10,
    keepalive: int = 60,
) -> bytes:
    """A CONNECT built field by field, so any flag/payload combination can be sent."""
    body = s(name) + bytes([level, flags]) + struct.pack("!H", keepalive) + payload
    return packet(first, body)


# --------------------------------------------------------------------------------------
# Broker log reading
# --------------------------------------------------------------------------------------


class BrokerLog:
    """The broker's stderr log lines (via capfd), searched per client connection."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self.capfd = capfd  # active for the test: stderr goes to its capture file

    def _pull(self) -> list[str]:
        return _ANSI.sub("", captured_stderr()).splitlines()

    def expect(self, peer_port: int, needles: Sequence[str], timeout: float = 1.0) -> str:
        """Waits for a log line about the connection from `peer_port` that contains one of
        `needles`; a needle like `MQTT-3.1.2-1` must appear as `[MQTT-3.1.2-1]`."""
        peer = re.compile(rf"peer=127\.0\.0\.1:{peer_port}(?!\d)")
        wanted = [f"[{n}]" if n.startswith("MQTT-") else n for n in needles]
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self._pull() if peer.search(line)]
            for line in lines:
                if any(w in line for w in wanted):
                    return line
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no broker log line for peer port {peer_port} naming any of {wanted}; "
                    f"its lines were: {lines!r}"
                )
            time.sleep(0.02)


@pytest.fixture
def log(capfd: pytest.CaptureFixture[str]) -> BrokerLog:
    return BrokerLog(capfd)


# --------------------------------------------------------------------------------------
# The witness: a client connected before the offender, checked after it is closed
# --------------------------------------------------------------------------------------


def open_witness(port: int, client_id: str = "witness") -> RawClient:
    w = RawClient(port)
    w.send(connect(client_id))
    assert raw(w.recv()) == CONNACK_OK
    w.send(subscribe(1, (WITNESS_TOPIC, 0)))
    assert raw(w.recv()) == b"\x90\x03\x00\x01\x00"
    return w


_alive_counter = 0


def assert_alive(w: RawClient) -> None:
    """The witness gets `D0 00` for its PINGREQ and its own QoS 0 publish, byte for byte."""
    global _alive_counter
    _alive_counter += 1
    w.send(PINGREQ)
    assert raw(w.recv()) == PINGRESP
    payload = f"alive-{_alive_counter}".encode()
    w.send(publish(WITNESS_TOPIC, payload))
    assert raw(w.recv()) == publish(WITNESS_TOPIC, payload)


@pytest.fixture
def witness(port: int) -> Iterator[RawClient]:
    w = open_witness(port)
    yield w
    w.close()


def close_after_connect(port: int, bad: bytes) -> int:
    """Connects properly, sends `bad`, asserts EOF with no byte after the CONNACK.
    Returns the client's local port (the `peer=` of the broker's log line)."""
    with RawClient(port) as c:
        c.send(connect("offender"))
        assert raw(c.recv()) == CONNACK_OK
        peer = c.sock.getsockname()[1]
        c.send(bad)
        assert c.expect_closed() == b"", "the broker answered a malformed packet"
    return peer


def close_on_connect(port: int, bad: bytes, expect: bytes = b"") -> int:
    """Sends `bad` as the first bytes; asserts exactly `expect` then EOF."""
    with RawClient(port) as c:
        peer = c.sock.getsockname()[1]
        c.send(bad)
        assert c.expect_closed() == expect
    return peer


def case(bad: bytes, *log_ids: str, id: str) -> object:
    return pytest.param(bad, log_ids, id=id)


# --------------------------------------------------------------------------------------
# Reserved fixed-header flags [MQTT-2.2.2-2]
# --------------------------------------------------------------------------------------

SUB_BODY = b"\x00\x01" + s("a") + b"\x00"
UNSUB_BODY = b"\x00\x01" + s("a")

FLAG_CASES = [
    case(b"\xc1\x00", "MQTT-2.2.2-2", id="MQTT-2.2.2-2-PINGREQ-C1"),
    case(b"\xc8\x00", "MQTT-2.2.2-2", id="MQTT-2.2.2-2-PINGREQ-C8"),
    case(b"\x41\x02\x00\x01", "MQTT-2.2.2-2", id="MQTT-2.2.2-2-PUBACK-41"),
    case(b"\x52\x02\x00\x01", "MQTT-2.2.2-2", id="MQTT-2.2.2-2-PUBREC-52"),
    case(b"\x60\x02\x00\x01", "MQTT-2.2.2-2", "MQTT-3.6.1-1", id="MQTT-3.6.1-1-PUBREL-60"),
    case(b"\x6a\x02\x00\x01", "MQTT-2.2.2-2", "MQTT-3.6.1-1", id="MQTT-3.6.1-1-PUBREL-DUP-6A"),
    case(b"\x63\x02\x00\x01", "MQTT-2.2.2-2", "MQTT-3.6.1-1", id="MQTT-3.6.1-1-PUBREL-63"),
    case(b"\x74\x02\x00\x01", "MQTT-2.2.2-2", id="MQTT-2.2.2-2-PUBCOMP-74"),
    case(packet(0x80, SUB_BODY), "MQTT-2.2.2-2", "MQTT-3.8.1-1", id="MQTT-3.8.1-1-SUB-80"),
    case(packet(0x8A, SUB_BODY), "MQTT-2.2.2-2", "MQTT-3.8.1-1", id="MQTT-3.8.1-1-SUB-DUP-8A"),
    case(packet(0x83, SUB_BODY), "MQTT-2.2.2-2", "MQTT-3.8.1-1", id="MQTT-3.8.1-1-SUB-83"),
    case(packet(0xA0, UNSUB_BODY), "MQTT-2.2.2-2", "MQTT-3.10.1-1", id="MQTT-3.10.1-1-UNSUB-A0"),
    case(packet(0xAA, UNSUB_BODY), "MQTT-2.2.2-2", "MQTT-3.10.1-1", id="MQTT-3.10.1-1-UNSUB-AA"),
]


@pytest.mark.parametrize("bad, log_ids", FLAG_CASES)
def test_reserved_fixed_header_flags_close(
    port: int, witness: RawClient, log: BrokerLog, bad: bytes, log_ids: tuple[str, ...]
) -> None:
    """[MQTT-2.2.2-2] [MQTT-2.2.2-1] [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] A packet whose
    reserved fixed-header flags are wrong closes the connection without any reply."""
    peer = close_after_connect(port, bad)
    log.expect(peer, log_ids)
    assert_alive(witness)


def test_disconnect_with_flags_closes_and_publishes_will(
    port: int, witness: RawClient, log: BrokerLog
) -> None:
    """[MQTT-3.14.1-1] [MQTT-2.2.2-2] [MQTT-3.1.2-8] `E1 00` is not a valid DISCONNECT: the
    connection is closed as abnormal and the will is published."""
    witness.send(subscribe(2, ("will/e1", 0)))
    assert raw(witness.recv()) == b"\x90\x03\x00\x02\x00"
    with RawClient(port) as c:
        c.send(connect("e1", will=("will/e1", b"gone", 0, False)))
        assert raw(c.recv()) == CONNACK_OK
        peer = c.sock.getsockname()[1]
        c.send(b"\xe1\x00")
        assert c.expect_closed() == b""
    log.expect(peer, ["MQTT-2.2.2-2", "MQTT-3.14.1-1"])
    assert raw(witness.recv()) == publish("will/e1", b"gone")
    assert_alive(witness)


def test_valid_disconnect_discards_will(port: int, witness: RawClient) -> None:
    """[MQTT-3.14.4-3] Control for the `E1 00` case: a valid `E0 00` publishes no will."""
    witness.send(subscribe(2, ("will/e0", 0)))
    assert raw(witness.recv()) == b"\x90\x03\x00\x02\x00"
    with RawClient(port) as c:
        c.send(connect("e0", will=("will/e0", b"gone", 0, False)))
        assert raw(c.recv()) == CONNACK_OK
        c.send(b"\xe0\x00")
        assert c.expect_closed() == b""
    # The witness's next packet is its PINGRESP, not the will.
    assert_alive(witness)


# --------------------------------------------------------------------------------------
# Fixed header: Remaining Length, packet types, size limit
# --------------------------------------------------------------------------------------

TYPE_CASES = [
    case(b"\x30\xff\xff\xff\xff\x01", "MQTT-2.2.3", id="remaining-length-5-bytes"),
    case(b"\xc0\x80\x80\x80\x80\x00", "MQTT-2.2.3", id="remaining-length-5-bytes-pingreq"),
    case(b"\x00\x00", "MQTT-2.2.1", id="MQTT-4.8.0-1-reserved-type-0"),
    case(b"\xf0\x00", "MQTT-2.2.1", id="MQTT-4.8.0-1-reserved-type-15"),
    case(b"\x20\x02\x00\x00", "MQTT-4.8.0-1", id="MQTT-4.8.0-1-CONNACK-from-client"),
    case(b"\x90\x03\x00\x01\x00", "MQTT-4.8.0-1", id="MQTT-4.8.0-1-SUBACK-from-client"),
    case(b"\xb0\x02\x00\x01", "MQTT-4.8.0-1", id="MQTT-4.8.0-1-UNSUBACK-from-client"),
    case(b"\xd0\x00", "MQTT-4.8.0-1", id="MQTT-4.8.0-1-PINGRESP-from-client"),
]


@pytest.mark.parametrize("bad, log_ids", TYPE_CASES)
def test_bad_fixed_header_or_packet_type_closes(
    port: int, witness: RawClient, log: BrokerLog, bad: bytes, log_ids: tuple[str, ...]
) -> None:
    """[MQTT-4.8.0-1] A Remaining Length with a fifth continuation byte, a reserved packet type
    (0 or 15), or a packet only a server may send (CONNACK, SUBACK, UNSUBACK, PINGRESP)
    closes the connection without any reply."""
    peer = close_after_connect(port, bad)
    log.expect(peer, log_ids)
    assert_alive(witness)


def test_oversized_packet_closed_from_its_fixed_header(
    make_broker: Callable[..., pyo3mq.Broker], log: BrokerLog
) -> None:
    """[MQTT-4.8.0-1] A PUBLISH announcing 2000 bytes to a broker with max_packet_size=1024 is
    closed at once, from its fixed header, without waiting for the body."""
    port = make_broker(max_packet_size=1024).addresses[0][1]
    with open_witness(port) as w:
        with RawClient(port) as c:
            c.send(connect("big"))
            assert raw(c.recv()) == CONNACK_OK
            peer = c.sock.getsockname()[1]
            # 2000 = 0x7D0 -> D0 0F; then only the start of the topic.
            c.send(b"\x30\xd0\x0f" + s("t") + b"xx")
            started = time.monotonic()
            assert c.expect_closed(timeout=3.0) == b""
            assert time.monotonic() - started < 2.0
        log.expect(peer, ["maximum packet size"])
        assert_alive(w)


def test_max_packet_size_boundary(make_broker: Callable[..., pyo3mq.Broker]) -> None:
    """[MQTT-3.3.4-1] [MQTT-4.8.0-1] max_packet_size counts the whole packet: 1024 bytes on the
    wire is accepted (PUBACK), 1025 closes the connection."""
    port = make_broker(max_packet_size=1024).addresses[0][1]
    # remaining 1021 -> 2 length bytes -> 1 + 2 + 1021 = 1024 bytes in all.
    exact = publish("t", b"x" * (1021 - 3 - 2), qos=1, pkid=5)
    assert len(exact) == 1024
    over = publish("t", b"x" * (1022 - 3 - 2), qos=1, pkid=6)
    assert len(over) == 1025
    with RawClient(port) as c:
        c.send(connect("edge"))
        assert raw(c.recv()) == CONNACK_OK
        c.send(exact)
        assert raw(c.recv()) == b"\x40\x02\x00\x05"
        c.send(over)
        assert c.expect_closed() == b""


# --------------------------------------------------------------------------------------
# PUBLISH
# --------------------------------------------------------------------------------------

SURROGATE = b"\xed\xa0\x80"  # U+D800 encoded as UTF-8: forbidden [MQTT-1.5.3-1]

PUBLISH_CASES = [
    case(packet(0x36, s("a") + b"\x00\x01"), "MQTT-3.3.1-4", id="MQTT-3.3.1-4-qos3-36"),
    case(packet(0x37, s("a") + b"\x00\x01x"), "MQTT-3.3.1-4", id="MQTT-3.3.1-4-qos3-retain-37"),
    case(packet(0x38, s("a") + b"x"), "MQTT-3.3.1-2", id="MQTT-3.3.1-2-qos0-dup-38"),
    case(packet(0x39, s("a") + b"x"), "MQTT-3.3.1-2", id="MQTT-3.3.1-2-qos0-dup-retain-39"),
    case(publish("a/+"), "MQTT-3.3.2-2", "MQTT-4.7.1-1", id="MQTT-3.3.2-2-plus"),
    case(publish("a/#"), "MQTT-3.3.2-2", "MQTT-4.7.1-1", id="MQTT-3.3.2-2-hash"),
    case(publish("#"), "MQTT-3.3.2-2", "MQTT-4.7.1-1", id="MQTT-4.7.1-1-hash-only"),
    case(publish("+", qos=1), "MQTT-3.3.2-2", "MQTT-4.7.1-1", id="MQTT-4.7.1-1-plus-qos1"),
    case(publish("a+b"), "MQTT-3.3.2-2", "MQTT-4.7.1-1", id="MQTT-3.3.2-2-plus-inside"),
    case(b"\x30\x02\x00\x00", "MQTT-4.7.3-1", id="MQTT-4.7.3-1-empty-topic-qos0"),
    case(b"\x32\x04\x00\x00\x00\x01", "MQTT-4.7.3-1", id="MQTT-4.7.3-1-empty-topic-qos1"),
    case(publish(b"a/" + SURROGATE), "MQTT-1.5.3-1", id="MQTT-3.3.2-1-topic-surrogate"),
    case(publish(b"\xc0"), "MQTT-1.5.3-1", id="MQTT-3.3.2-1-topic-lone-C0"),
    case(publish(b"a\xc0\x80"), "MQTT-1.5.3-1", id="MQTT-1.5.3-1-topic-overlong-nul"),
    case(publish(b"a\x00b"), "MQTT-1.5.3-2", "MQTT-4.7.3-2", id="MQTT-1.5.3-2-topic-nul"),
    case(publish(b"\x00", qos=1), "MQTT-1.5.3-2", "MQTT-4.7.3-2", id="MQTT-4.7.3-2-topic-nul"),
    case(publish("a", qos=1, pkid=0), "MQTT-2.3.1-1", id="MQTT-2.3.1-1-publish-qos1-id0"),
    case(publish("a", qos=2, pkid=0), "MQTT-2.3.1-1", id="MQTT-2.3.1-1-publish-qos2-id0"),
]


@pytest.mark.parametrize("bad, log_ids", PUBLISH_CASES)
def test_malformed_publish_closes(
    port: int, witness: RawClient, log: BrokerLog, bad: bytes, log_ids: tuple[str, ...]
) -> None:
    """[MQTT-3.3.1-4] [MQTT-3.3.1-2] [MQTT-3.3.2-2] [MQTT-4.7.1-1] [MQTT-4.7.3-1] [MQTT-1.5.3-1]
    [MQTT-3.3.2-1] [MQTT-1.5.3-2] [MQTT-4.7.3-2] [MQTT-2.3.1-1] [MQTT-4.8.0-1] A malformed
    PUBLISH (QoS 3, DUP on QoS 0, wildcard or empty topic, bad UTF-8, U+0000, packet id 0)
    closes the connection with no PUBACK/PUBREC."""
    witness.send(subscribe(2, ("#", 0)))
    assert raw(witness.recv()) == b"\x90\x03\x00\x02\x00"
    peer = close_after_connect(port, bad)
    log.expect(peer, log_ids)
    # Nothing was delivered to `#` either: the next packets are the witness's own.
    witness.send(PINGREQ)
    assert raw(witness.recv()) == PINGRESP
    witness.send(unsubscribe(3, "#"))
    assert raw(witness.recv()) == b"\xb0\x02\x00\x03"
    assert_alive(witness)


# --------------------------------------------------------------------------------------
# SUBSCRIBE / UNSUBSCRIBE
# --------------------------------------------------------------------------------------

SUBSCRIBE_CASES = [
    case(subscribe(1, (b"a/" + SURROGATE, 0)), "MQTT-1.5.3-1", id="MQTT-3.8.3-1-surrogate"),
    case(subscribe(1, (b"\xc0", 0)), "MQTT-1.5.3-1", id="MQTT-3.8.3-1-lone-C0"),
    case(subscribe(1, ("ok", 0), (b"x\xc0", 1)), "MQTT-1.5.3-1", id="MQTT-3.8.3-1-second-filter"),
    case(subscribe(1, (b"a\x00b", 0)), "MQTT-1.5.3-2", "MQTT-4.7.3-2", id="MQTT-1.5.3-2-nul"),
    case(subscribe(1, (b"#\x00", 0)), "MQTT-1.5.3-2", "MQTT-4.7.3-2", id="MQTT-4.7.3-2-nul"),
    case(subscribe(0, ("a", 0)), "MQTT-2.3.1-1", id="MQTT-2.3.1-1-subscribe-id0"),
    case(b"\x82\x02\x00\x01", "MQTT-3.8.3-3", id="MQTT-3.8.3-3-empty"),
    case(subscribe(1, ("a", 3)), "MQTT-3.8.3-4", id="MQTT-3.8.3-4-qos-03"),
    case(subscribe(1, ("a", 4)), "MQTT-3.8.3-4", id="MQTT-3.8.3-4-qos-04"),
    case(subscribe(1, ("a", 0x81)), "MQTT-3.8.3-4", id="MQTT-3.8.3-4-qos-81"),
    case(packet(0x82, b"\x00\x01" + s("a")), "SUBSCRIBE is truncated", id="requested-qos-missing"),
    case(subscribe(1, ("", 0)), "MQTT-4.7.3-1", id="MQTT-4.7.3-1-empty-filter"),
    case(subscribe(1, ("ok", 0), ("", 1)), "MQTT-4.7.3-1", id="MQTT-4.7.3-1-empty-second-filter"),
]


@pytest.mark.parametrize("bad, log_ids", SUBSCRIBE_CASES)
def test_malformed_subscribe_closes(
    port: int, witness: RawClient, log: BrokerLog, bad: bytes, log_ids: tuple[str, ...]
) -> None:
    """[MQTT-3.8.3-1] [MQTT-1.5.3-1] [MQTT-1.5.3-2] [MQTT-4.7.3-2] [MQTT-2.3.1-1] [MQTT-3.8.3-3]
    [MQTT-3.8.3-4] [MQTT-4.7.3-1] A malformed SUBSCRIBE (bad UTF-8 or U+0000 in a filter,
    packet id 0, no filter, requested QoS 3/4/0x81, a zero-length filter, as Mosquitto
    closes for it) closes the connection with no SUBACK."""
    peer = close_after_connect(port, bad)
    log.expect(peer, log_ids)
    assert_alive(witness)


UNSUBSCRIBE_CASES = [
    case(unsubscribe(1, b"a/" + SURROGATE), "MQTT-1.5.3-1", id="MQTT-3.10.3-1-surrogate"),
    case(unsubscribe(1, b"\xc0"), "MQTT-1.5.3-1", id="MQTT-3.10.3-1-lone-C0"),
    case(unsubscribe(1, b"a\x00b"), "MQTT-1.5.3-2", "MQTT-4.7.3-2", id="MQTT-1.5.3-2-nul"),
    case(unsubscribe(0, "a"), "MQTT-2.3.1-1", id="MQTT-2.3.1-1-unsubscribe-id0"),
    case(b"\xa2\x02\x00\x01", "MQTT-3.10.3-2", id="MQTT-3.10.3-2-empty"),
]


@pytest.mark.parametrize("bad, log_ids", UNSUBSCRIBE_CASES)
def test_malformed_unsubscribe_closes(
    port: int, witness: RawClient, log: BrokerLog, bad: bytes, log_ids: tuple[str, ...]
) -> None:
    """[MQTT-3.10.3-1] [MQTT-1.5.3-1] [MQTT-1.5.3-2] [MQTT-2.3.1-1] [MQTT-3.10.3-2] A malformed
    UNSUBSCRIBE (bad UTF-8 or U+0000 in a filter, packet id 0, no filter) closes the
    connection with no UNSUBACK."""
    peer = close_after_connect(port, bad)
    log.expect(peer, log_ids)
    assert_alive(witness)


# --------------------------------------------------------------------------------------
# CONNECT
# --------------------------------------------------------------------------------------

CID = s("c")

CONNECT_CASES = [
    case(raw_connect(0x02, CID, first=0x11), "MQTT-2.2.2-2", id="MQTT-2.2.2-2-fixed-flags-11"),
    case(raw_connect(0x02, CID, first=0x18), "MQTT-2.2.2-2", id="MQTT-2.2.2-2-fixed-flags-18"),
    case(raw_connect(0x03, CID), "MQTT-3.1.2-3", id="MQTT-3.1.2-3-reserved-bit-03"),
    case(raw_connect(0x01, CID), "MQTT-3.1.2-3", id="MQTT-3.1.2-3-reserved-bit-01"),
    case(
        raw_connect(0x0A, CID),
        "MQTT-3.1.2-11",
        "MQTT-3.1.2-13",
        id="MQTT-3.1.2-13-will-qos1-no-will-0A",
    ),
    case(
        raw_connect(0x12, CID),
        "MQTT-3.1.2-11",
        "MQTT-3.1.2-13",
        id="MQTT-3.1.2-13-will-qos2-no-will-12",
    ),
    case(
        raw_connect(0x22, CID),
        "MQTT-3.1.2-11",
        "MQTT-3.1.2-15",
        id="MQTT-3.1.2-15-will-retain-no-will-22",
    ),
    case(raw_connect(0x1E, CID + s("w") + s("m")), "MQTT-3.1.2-14", id="MQTT-3.1.2-14-will-qos3"),
    case(raw_connect(0x42, CID + s("pw")), "MQTT-3.1.2-22", id="MQTT-3.1.2-22-password-no-user"),
    case(raw_connect(0x06, CID), "MQTT-3.1.2-9", "MQTT-3.1.4-1", id="MQTT-3.1.2-9-no-will-fields"),
    case(
        raw_connect(0x06, CID + s("w")),
        "MQTT-3.1.2-9",
        "MQTT-3.1.4-1",
        id="MQTT-3.1.2-9-no-will-message",
    ),
    case(raw_connect(0x82, CID), "MQTT-3.1.2-19", "MQTT-3.1.4-1", id="MQTT-3.1.2-19-no-user"),
    case(
        raw_connect(0xC2, CID + s("u")),
        "MQTT-3.1.2-21",
        "MQTT-3.1.4-1",
        id="MQTT-3.1.2-21-no-password",
    ),
    case(
        raw_connect(0x02, CID + s("u")),
        "MQTT-3.1.2-18",
        "MQTT-3.1.4-1",
        id="MQTT-3.1.2-18-trailing-field",
    ),
    case(raw_connect(0x02, b""), "MQTT-3.1.3-3", "MQTT-3.1.4-1", id="MQTT-3.1.3-3-empty-payload"),
    case(raw_connect(0x02, s(b"c" + SURROGATE)), "MQTT-1.5.3-1", id="MQTT-3.1.3-4-id-surrogate"),
    case(raw_connect(0x02, s(b"\xc0")), "MQTT-1.5.3-1", id="MQTT-3.1.3-4-id-lone-C0"),
    case(raw_connect(0x02, s(b"c\x00")), "MQTT-1.5.3-2", id="MQTT-1.5.3-2-id-nul"),
    case(
        raw_connect(0x06, CID + s(b"w" + SURROGATE) + s("m")),
        "MQTT-1.5.3-1",
        id="MQTT-3.1.3-10-will-topic-surrogate",
    ),
    case(
        raw_connect(0x06, CID + s(b"\xc0") + s("m")),
        "MQTT-1.5.3-1",
        id="MQTT-3.1.3-10-will-topic-lone-C0",
    ),
    case(
        raw_connect(0x82, CID + s(b"u" + SURROGATE)),
        "MQTT-1.5.3-1",
        id="MQTT-3.1.3-11-user-surrogate",
    ),
    case(raw_connect(0xC2, CID + s(b"\xc0") + s("p")), "MQTT-1.5.3-1", id="MQTT-3.1.3-11-user-C0"),
    case(raw_connect(0x02, CID, name=b"MQTX"), "MQTT-3.1.2-1", id="MQTT-3.1.2-1-MQTX-4"),
    case(raw_connect(0x02, CID, name=b"mqtt"), "MQTT-3.1.2-1", id="MQTT-3.1.2-1-lowercase"),
    case(PINGREQ, "MQTT-3.1.0-1", id="MQTT-3.1.0-1-PINGREQ-first"),
    case(subscribe(1, ("a", 0)), "MQTT-3.1.0-1", id="MQTT-3.1.0-1-SUBSCRIBE-first"),
    case(publish("a", b"x"), "MQTT-3.1.0-1", id="MQTT-3.1.0-1-PUBLISH-first"),
]


@pytest.mark.parametrize("bad, log_ids", CONNECT_CASES)
def test_malformed_connect_closes_without_connack(
    port: int, witness: RawClient, log: BrokerLog, bad: bytes, log_ids: tuple[str, ...]
) -> None:
    """[MQTT-3.1.4-1] [MQTT-2.2.2-2] [MQTT-3.1.2-3] [MQTT-3.1.2-11] [MQTT-3.1.2-13]
    [MQTT-3.1.2-15] [MQTT-3.1.2-14] [MQTT-3.1.2-22] [MQTT-3.1.2-9] [MQTT-3.1.2-19]
    [MQTT-3.1.2-21] [MQTT-3.1.2-18] [MQTT-3.1.3-3] [MQTT-1.5.3-1] [MQTT-1.5.3-2]
    [MQTT-3.1.3-4] [MQTT-3.1.3-10] [MQTT-3.1.3-11] [MQTT-3.1.2-1] [MQTT-3.1.0-1] A malformed
    CONNECT, an unknown protocol name, or a first packet that is not CONNECT: EOF and not a
    single byte (in particular never `20 02 00 00`)."""
    peer = close_on_connect(port, bad)
    log.expect(peer, log_ids)
    assert_alive(witness)


@pytest.mark.parametrize(
    "name, level",
    [
        # Level 5 is MQTT 5.0, served since (tests/test_mqtt5.py); 6 is no revision.
        pytest.param(b"MQTT", 6, id="MQTT-3.1.2-2-MQTT-6"),
        pytest.param(b"MQTT", 3, id="MQTT-3.1.2-2-MQTT-3"),
        pytest.param(b"MQTT", 7, id="MQTT-3.1.2-2-MQTT-7"),
        pytest.param(b"MQIsdp", 4, id="MQTT-3.1.2-2-MQIsdp-4"),
    ],
)
def test_unsupported_protocol_level_gets_connack_1(
    port: int, witness: RawClient, log: BrokerLog, name: bytes, level: int
) -> None:
    """[MQTT-3.1.2-2] [MQTT-3.2.2-4] [MQTT-3.2.2-5] A known protocol name with a level it does not
    pair with gets exactly `20 02 00 01`, then EOF."""
    peer = close_on_connect(
        port, raw_connect(0x02, CID, name=name, level=level), expect=CONNACK_BAD_VERSION
    )
    log.expect(peer, ["MQTT-3.1.2-2"])
    assert_alive(witness)


def test_second_connect_closes_and_publishes_will(
    port: int, witness: RawClient, log: BrokerLog
) -> None:
    """[MQTT-3.1.0-2] [MQTT-4.8.0-1] [MQTT-3.1.2-8] A second CONNECT on a connection closes it
    without a second CONNACK, and the will is published."""
    witness.send(subscribe(2, ("will/2nd", 0)))
    assert raw(witness.recv()) == b"\x90\x03\x00\x02\x00"
    with RawClient(port) as c:
        c.send(connect("twice", will=("will/2nd", b"bye", 0, False)))
        assert raw(c.recv()) == CONNACK_OK
        peer = c.sock.getsockname()[1]
        c.send(connect("twice"))
        assert c.expect_closed() == b""
    log.expect(peer, ["MQTT-3.1.0-2"])
    assert raw(witness.recv()) == publish("will/2nd", b"bye")
    assert_alive(witness)


def test_empty_filter_subscribes_nothing_of_its_subscribe(port: int, log: BrokerLog) -> None:
    """[MQTT-4.7.3-1] A SUBSCRIBE whose second filter is empty is refused whole: the valid
    first filter is not subscribed either. Shown with a persistent session, which outlives
    the close: a QoS 1 message on that filter is not queued for it."""
    with RawClient(port) as c:
        c.send(connect("empty-sub", clean=False))
        assert raw(c.recv()) == CONNACK_OK
        peer = c.sock.getsockname()[1]
        c.send(subscribe(1, ("empty/ok", 1), ("", 1)))
        assert c.expect_closed() == b""
    log.expect(peer, ["MQTT-4.7.3-1"])
    with RawClient(port) as p:
        p.send(connect("empty-pub"))
        assert raw(p.recv()) == CONNACK_OK
        p.send(publish("empty/ok", b"not for it", qos=1, pkid=1))
        assert raw(p.recv()) == ack(0x40, 1)
    with RawClient(port) as c:
        c.send(connect("empty-sub", clean=False))
        assert raw(c.recv()) == b"\x20\x02\x01\x00"
        c.send(PINGREQ)
        assert raw(c.recv()) == PINGRESP, "a message was queued for the refused SUBSCRIBE"


WRONG_ACK_CASES = [
    pytest.param(1, [0x50], id="MQTT-4.8.0-1-PUBREC-for-qos1"),
    pytest.param(1, [0x70], id="MQTT-4.8.0-1-PUBCOMP-for-qos1"),
    pytest.param(2, [0x40], id="MQTT-4.8.0-1-PUBACK-for-qos2"),
    pytest.param(2, [0x70], id="MQTT-4.8.0-1-PUBCOMP-before-PUBREC"),
    pytest.param(2, [0x50, 0x40], id="MQTT-4.8.0-1-PUBACK-after-PUBREC"),
]


@pytest.mark.parametrize("qos, acks", WRONG_ACK_CASES)
def test_wrong_ack_kind_closes(
    port: int, witness: RawClient, log: BrokerLog, qos: int, acks: list[int]
) -> None:
    """[MQTT-4.8.0-1] [MQTT-4.3.2-1] [MQTT-4.3.3-1] An acknowledgement of the wrong kind for the
    delivery its packet id names (PUBREC or PUBCOMP for QoS 1, PUBACK for QoS 2, PUBCOMP
    before PUBREC) is a protocol violation: the connection is closed, with no reply (no
    PUBREL), as Mosquitto does; the rule is logged and the witness keeps working."""
    with RawClient(port) as c:
        c.send(connect("wrong-ack"))
        assert raw(c.recv()) == CONNACK_OK
        peer = c.sock.getsockname()[1]
        c.send(subscribe(1, ("acks/t", qos)))
        assert raw(c.recv()) == b"\x90\x03\x00\x01" + bytes([qos])
        witness.send(publish("acks/t", b"m", qos=qos, pkid=5))
        assert raw(witness.recv()).startswith(bytes([0x40 if qos == 1 else 0x50]))
        delivery = c.recv()
        topic, pkid, payload = delivery.publish_fields()
        assert (delivery.qos, topic, payload) == (qos, "acks/t", b"m")
        assert pkid is not None
        for kind in acks[:-1]:  # the right acknowledgements first, answered as usual
            c.send(ack(kind, pkid))
            assert raw(c.recv()) == ack(0x62, pkid)
        c.send(ack(acks[-1], pkid))
        assert c.expect_closed() == b""
    log.expect(peer, ["MQTT-4.8.0-1"])
    if qos == 2:
        witness.send(ack(0x62, 5))
        assert raw(witness.recv()) == ack(0x70, 5)
    assert_alive(witness)


def test_right_ack_kinds_and_unknown_ids_keep_the_connection(port: int, witness: RawClient) -> None:
    """[MQTT-4.3.2-1] [MQTT-4.3.3-1] Control for the wrong-kind cases: the right acknowledgement
    of each flow, a repeated PUBREC, and acknowledgements naming no delivery at all (ignored,
    as 3.1.1 asks nothing else) leave the connection open."""
    with RawClient(port) as c:
        c.send(connect("right-ack"))
        assert raw(c.recv()) == CONNACK_OK
        c.send(subscribe(1, ("acks/q1", 1), ("acks/q2", 2)))
        assert raw(c.recv()) == b"\x90\x04\x00\x01\x01\x02"
        witness.send(publish("acks/q1", b"one", qos=1, pkid=6))
        assert raw(witness.recv()) == ack(0x40, 6)
        _, id1, _ = c.recv().publish_fields()
        assert id1 is not None
        c.send(ack(0x40, id1))
        witness.send(publish("acks/q2", b"two", qos=2, pkid=7))
        assert raw(witness.recv()) == ack(0x50, 7)
        witness.send(ack(0x62, 7))
        assert raw(witness.recv()) == ack(0x70, 7)
        _, id2, _ = c.recv().publish_fields()
        assert id2 is not None
        c.send(ack(0x50, id2))
        assert raw(c.recv()) == ack(0x62, id2)
        c.send(ack(0x50, id2))  # a repeated PUBREC is answered again
        assert raw(c.recv()) == ack(0x62, id2)
        c.send(ack(0x70, id2))
        for kind in (0x40, 0x70):  # no delivery has these ids now
            c.send(ack(kind, id1))
            c.send(ack(kind, id2))
        c.send(PINGREQ)
        assert raw(c.recv()) == PINGRESP
    assert_alive(witness)


def test_refused_connect_ignores_pipelined_retained_publish(port: int) -> None:
    """[MQTT-3.1.4-5] [MQTT-3.1.2-2] A CONNECT refused for its protocol level, sent together
    with a retained PUBLISH: `20 02 00 01`, EOF, and the retained message is never stored."""
    with RawClient(port) as c:
        c.send(
            raw_connect(0x02, s("ghost"), level=6)
            + publish("refused/t", b"ghost", retain=True)
            + publish("refused/t", b"ghost1", qos=1, pkid=1, retain=True)
        )
        assert c.expect_closed() == CONNACK_BAD_VERSION

    def retained_for(client_id: str) -> list[Packet]:
        """Subscribes to refused/t and returns the packets that arrive before PINGRESP."""
        with RawClient(port) as sub:
            sub.send(connect(client_id))
            assert raw(sub.recv()) == CONNACK_OK
            sub.send(subscribe(1, ("refused/t", 1)))
            assert raw(sub.recv()) == b"\x90\x03\x00\x01\x01"
            sub.send(PINGREQ)
            got = []
            while raw(pkt := sub.recv()) != PINGRESP:
                got.append(pkt)
            return got

    assert retained_for("late1") == []
    # Control: the same observation does see a retained message that was really stored.
    with RawClient(port) as p:
        p.send(connect("real"))
        assert raw(p.recv()) == CONNACK_OK
        p.send(publish("refused/t", b"real", qos=1, pkid=2, retain=True))
        assert raw(p.recv()) == b"\x40\x02\x00\x02"
    got = retained_for("late2")
    assert [p.first for p in got] == [0x33]  # QoS 1, RETAIN=1
    topic, pkid, payload = got[0].publish_fields()
    assert (topic, payload) == ("refused/t", b"real")
    assert pkid


# --------------------------------------------------------------------------------------
# MQTT 3.1 leniency (checklist part 2)
# --------------------------------------------------------------------------------------


def test_mqtt31_client_may_set_dup_on_pubrel_subscribe_unsubscribe(port: int) -> None:
    """[MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] [MQTT-3.8.4-2] [MQTT-3.10.4-4] An MQTT 3.1
    client (`MQIsdp`, 3) may resend PUBREL, SUBSCRIBE and UNSUBSCRIBE with DUP set (checklist
    part 2, item 6): `6A`, `8A`, `AA` are answered, not closed."""
    with RawClient(port) as c:
        c.send(connect("v31", protocol=(b"MQIsdp", 3)))
        assert raw(c.recv()) == CONNACK_OK
        c.send(b"\x6a\x02\x00\x01")
        assert raw(c.recv()) == b"\x70\x02\x00\x01"
        c.send(packet(0x8A, b"\x00\x05" + s("v31/t") + b"\x01"))
        assert raw(c.recv()) == b"\x90\x03\x00\x05\x01"
        c.send(packet(0xAA, b"\x00\x06" + s("v31/t")))
        assert raw(c.recv()) == b"\xb0\x02\x00\x06"
        c.send(PINGREQ)
        assert raw(c.recv()) == PINGRESP


def test_mqtt31_client_invalid_filter_closes(port: int, witness: RawClient, log: BrokerLog) -> None:
    """[MQTT-4.7.1-2] [MQTT-4.8.0-1] A 3.1 SUBACK has no 0x80 (checklist part 2, item 5): an
    invalid filter from a 3.1 client closes the connection with no SUBACK at all."""
    with RawClient(port) as c:
        c.send(connect("v31bad", protocol=(b"MQIsdp", 3)))
        assert raw(c.recv()) == CONNACK_OK
        peer = c.sock.getsockname()[1]
        c.send(subscribe(2, ("ok/t", 0), ("a/#/b", 0)))
        assert c.expect_closed() == b""
    log.expect(peer, ["from an MQTT 3.1 client"])
    assert_alive(witness)


def test_mqtt311_invalid_filter_gets_0x80(port: int) -> None:
    """[MQTT-4.7.1-2] [MQTT-3.8.4-5] Control for the 3.1 case: a 3.1.1 client gets 0x80 in the
    failing slot and keeps its connection."""
    with RawClient(port) as c:
        c.send(connect("v311bad"))
        assert raw(c.recv()) == CONNACK_OK
        c.send(subscribe(2, ("ok/t", 0), ("a/#/b", 0)))
        assert raw(c.recv()) == b"\x90\x04\x00\x02\x00\x80"
        c.send(PINGREQ)
        assert raw(c.recv()) == PINGRESP


# --------------------------------------------------------------------------------------
# Exact-bytes positives
# --------------------------------------------------------------------------------------


def test_pingreq_gets_exact_pingresp(port: int) -> None:
    """[MQTT-3.12.4-1] `C0 00` gets exactly `D0 00`, each time."""
    with RawClient(port) as c:
        c.send(connect("ping"))
        assert raw(c.recv()) == CONNACK_OK
        for _ in range(3):
            c.send(PINGREQ)
            assert raw(c.recv()) == PINGRESP
        c.send(PINGREQ + PINGREQ)
        assert raw(c.recv()) + raw(c.recv()) == PINGRESP + PINGRESP


def test_suback_and_unsuback_echo_packet_ids(port: int) -> None:
    """[MQTT-3.8.4-2] [MQTT-3.10.4-4] [MQTT-2.3.1-7] SUBSCRIBE id 0x1234 gets SUBACK id 0x1234;
    UNSUBSCRIBE id 0x0102 gets UNSUBACK id 0x0102."""
    with RawClient(port) as c:
        c.send(connect("ids"))
        assert raw(c.recv()) == CONNACK_OK
        c.send(subscribe(0x1234, ("x/y", 1)))
        assert raw(c.recv()) == b"\x90\x03\x12\x34\x01"
        c.send(unsubscribe(0x0102, "x/y"))
        assert raw(c.recv()) == b"\xb0\x02\x01\x02"
        c.send(subscribe(0xFFFF, ("x/y", 2), ("x/z", 0)))
        assert raw(c.recv()) == b"\x90\x04\xff\xff\x02\x00"


def test_publish_acks_echo_packet_id(port: int) -> None:
    """[MQTT-2.3.1-6] [MQTT-3.3.4-1] QoS 1 PUBLISH id 7 gets `40 02 00 07`; QoS 2 id 9 gets
    `50 02 00 09` and PUBREL 9 gets `70 02 00 09`."""
    with RawClient(port) as c:
        c.send(connect("acks"))
        assert raw(c.recv()) == CONNACK_OK
        c.send(publish("nobody/here", b"q1", qos=1, pkid=7))
        assert raw(c.recv()) == b"\x40\x02\x00\x07"
        c.send(publish("nobody/here", b"q2", qos=2, pkid=9))
        assert raw(c.recv()) == b"\x50\x02\x00\x09"
        c.send(ack(0x62, 9))
        assert raw(c.recv()) == b"\x70\x02\x00\x09"


def test_bom_in_topic_is_kept(port: int) -> None:
    """[MQTT-1.5.3-3] EF BB BF in a topic is U+FEFF and is never stripped: a `\\ufeffT`
    subscriber gets a publish to `\\ufeffT` with the bytes intact, and not one to `T`."""
    bom_topic = "\ufeffT"
    assert bom_topic.encode() == b"\xef\xbb\xbfT"
    with RawClient(port) as a, RawClient(port) as b, RawClient(port) as p:
        a.send(connect("bom-sub"))
        assert raw(a.recv()) == CONNACK_OK
        a.send(subscribe(1, (bom_topic, 0)))
        assert raw(a.recv()) == b"\x90\x03\x00\x01\x00"
        b.send(connect("plain-sub"))
        assert raw(b.recv()) == CONNACK_OK
        b.send(subscribe(1, ("T", 0)))
        assert raw(b.recv()) == b"\x90\x03\x00\x01\x00"
        p.send(connect("bom-pub"))
        assert raw(p.recv()) == CONNACK_OK
        p.send(publish("T", b"plain") + publish(bom_topic, b"bom"))
        # The filter kept its BOM: the first (and only) delivery is the BOM topic.
        got = a.recv()
        assert raw(got) == b"\x30\x09\x00\x04\xef\xbb\xbfTbom"
        assert got.publish_fields() == (bom_topic, None, b"bom")
        a.send(PINGREQ)
        assert raw(a.recv()) == PINGRESP
        # And the topic kept its BOM: the `T` subscriber only sees `T`.
        assert raw(b.recv()) == b"\x30\x08\x00\x01Tplain"
        b.send(PINGREQ)
        assert raw(b.recv()) == PINGRESP


def test_65535_byte_topic_accepted_and_matched(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    """[MQTT-4.7.3-3] A topic of exactly 65,535 bytes is accepted as a filter and as a topic
    name, and matched (exactly and through `a/+`)."""
    port = make_broker(max_packet_size=200_000).addresses[0][1]
    topic = "a/" + "x" * 65_533
    assert len(topic.encode()) == 65_535
    with RawClient(port) as c, RawClient(port) as w:
        c.send(connect("long"))
        assert raw(c.recv()) == CONNACK_OK
        c.send(subscribe(1, (topic, 0)))
        assert raw(c.recv()) == b"\x90\x03\x00\x01\x00"
        w.send(connect("long-wild"))
        assert raw(w.recv()) == CONNACK_OK
        w.send(subscribe(1, ("a/+", 0)))
        assert raw(w.recv()) == b"\x90\x03\x00\x01\x00"
        c.send(publish(topic, b"big", qos=1, pkid=3))
        assert raw(c.recv()) == b"\x40\x02\x00\x03"
        expected = publish(topic, b"big")
        assert raw(c.recv()) == expected
        assert raw(w.recv()) == expected
        c.send(unsubscribe(2, topic))
        assert raw(c.recv()) == b"\xb0\x02\x00\x02"
