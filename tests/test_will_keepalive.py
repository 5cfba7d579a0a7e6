"""Will messages and keepalive over real sockets, in raw bytes (tests/support/mqtt_raw.py).

"Nothing was published" is checked deterministically: the client that might publish a will
is first known to be gone (the broker closed it, or a new connection with the same client
id got its CONNACK, which the broker sends only after the old connection has fully ended),
then a marker is published and must be the next thing the watcher receives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from support.mqtt_raw import (
    DISCONNECT,
    PINGREQ,
    Packet,
    RawClient,
    ack,
    connect,
    publish,
    remaining_length,
    subscribe,
    unsubscribe,
)
from support.teardown import closed_at_teardown

RawFactory = Callable[..., RawClient]
PINGRESP = b"\xd0\x00"


@pytest.fixture
def raw() -> Iterator[RawFactory]:
    """`raw(port)` opens a RawClient that is closed at teardown."""
    yield from closed_at_teardown(RawClient)


def wire(p: Packet) -> bytes:
    return bytes([p.first]) + remaining_length(len(p.body)) + p.body


def connack(c: RawClient, client_id: str, **kwargs: object) -> bytes:
    c.send(connect(client_id, **kwargs))  # type: ignore[arg-type]
    return wire(c.recv())


def watch(port: int, raw: RawFactory, topic: str, qos: int = 0, name: str = "watch") -> RawClient:
    """A connected subscriber to `topic`."""
    w = raw(port)
    assert connack(w, f"{name}-{topic}") == b"\x20\x02\x00\x00"
    w.send(subscribe(1, (topic, qos)))
    assert wire(w.recv()) == b"\x90\x03\x00\x01" + bytes([qos])
    return w


def next_publish(c: RawClient, timeout: float = 5.0) -> Packet:
    p = c.recv(timeout)
    assert p.type == 3, f"expected a PUBLISH, got {wire(p).hex(' ')}"
    return p


def wait_gone(port: int, raw: RawFactory, client_id: str) -> None:
    """Returns once the broker has fully ended every earlier connection of `client_id`
    (will published or discarded): a takeover CONNACK comes only after that."""
    probe = raw(port)
    assert connack(probe, client_id) == b"\x20\x02\x00\x00"
    probe.send(DISCONNECT)
    assert probe.expect_closed(3) == b""


def marker_is_next(port: int, raw: RawFactory, watcher: RawClient, topic: str) -> None:
    """Publishes a marker on `topic`; the watcher's next packet must be exactly it."""
    m = raw(port)
    m.connect("marker")
    m.send(publish(topic, b"marker", qos=1, pkid=1))
    assert wire(m.recv()) == ack(0x40, 1)
    p = next_publish(watcher)
    assert p.publish_fields()[0::2] == (topic, b"marker"), p.publish_fields()


# --------------------------------------------------------------------------- will


def test_will_published_on_abnormal_close(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-8] [MQTT-3.1.2-16] A client with a will closes its socket without
    DISCONNECT: the will is published (QoS 0, RETAIN=0, exact bytes)."""
    w = watch(port, raw, "will/abnormal")
    a = raw(port)
    assert connack(a, "will-abnormal", will=("will/abnormal", b"lost", 0, False)) == (
        b"\x20\x02\x00\x00"
    )
    a.close()
    assert wire(next_publish(w)) == publish("will/abnormal", b"lost")


def test_will_published_at_most_once(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-10] [MQTT-3.1.2-8] Once published the will is removed: one copy only,
    even when the client id is reused afterwards."""
    w = watch(port, raw, "will/once")
    a = raw(port)
    assert connack(a, "will-once", will=("will/once", b"bye", 0, False)) == b"\x20\x02\x00\x00"
    a.close()
    assert next_publish(w).publish_fields() == ("will/once", None, b"bye")
    wait_gone(port, raw, "will-once")
    marker_is_next(port, raw, w, "will/once")


def test_no_will_after_disconnect(port: int, raw: RawFactory) -> None:
    """[MQTT-3.14.4-3] [MQTT-3.1.2-10] A client with a will sends `E0 00`: the will is
    discarded, nothing is published, neither then nor on a later close for that id."""
    w = watch(port, raw, "will/disc")
    a = raw(port)
    assert connack(a, "will-disc", will=("will/disc", b"never", 1, True)) == b"\x20\x02\x00\x00"
    a.send(DISCONNECT)
    assert a.expect_closed(3) == b""
    wait_gone(port, raw, "will-disc")
    marker_is_next(port, raw, w, "will/disc")
    # Not stored as retained either.
    late = watch(port, raw, "will/disc", name="late")
    marker_is_next(port, raw, late, "will/disc")


def test_no_will_flag_publishes_nothing(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-12] A client without a will drops its socket: a `#` subscriber sees
    nothing (the marker published afterwards is the next packet)."""
    w = watch(port, raw, "#")
    a = raw(port)
    assert connack(a, "no-will") == b"\x20\x02\x00\x00"
    a.close()
    wait_gone(port, raw, "no-will")
    marker_is_next(port, raw, w, "nowill/marker")


@pytest.mark.parametrize(
    ("will_qos", "sub_qos", "first_byte"),
    [(1, 2, 0x32), (2, 2, 0x34), (2, 1, 0x32), (0, 2, 0x30)],
)
def test_will_qos_honoured(
    port: int, raw: RawFactory, will_qos: int, sub_qos: int, first_byte: int
) -> None:
    """[MQTT-3.1.2-8] [MQTT-3.8.4-6] The will is published with its Will QoS, delivered at
    min(Will QoS, granted QoS): e.g. will QoS 1 reaches a QoS 2 subscriber at QoS 1."""
    w = watch(port, raw, "will/qos", sub_qos)
    a = raw(port)
    assert connack(a, "will-qos", will=("will/qos", b"q", will_qos, False)) == (b"\x20\x02\x00\x00")
    a.close()
    p = next_publish(w)
    assert p.first == first_byte, f"{p.first:#x}"
    topic, pkid, payload = p.publish_fields()
    assert (topic, payload) == ("will/qos", b"q")
    assert (pkid is None) == (first_byte == 0x30)


def test_will_retain_1_is_retained(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-17] [MQTT-3.3.1-8] [MQTT-3.3.1-9] Will Retain=1: a live subscriber gets it
    with RETAIN=0, and a subscriber arriving afterwards receives it with RETAIN=1."""
    live = watch(port, raw, "will/ret1", 1)
    a = raw(port)
    assert connack(a, "will-ret1", will=("will/ret1", b"retained will", 1, True)) == (
        b"\x20\x02\x00\x00"
    )
    a.close()
    p = next_publish(live)
    assert (p.first, p.publish_fields()[0::2]) == (0x32, ("will/ret1", b"retained will"))

    later = raw(port)
    later.connect("will-ret1-later")
    later.send(subscribe(1, ("will/ret1", 1)))
    packets = [later.recv(), later.recv()]
    assert wire(next(x for x in packets if x.type == 9)) == b"\x90\x03\x00\x01\x01"
    p = next(x for x in packets if x.type == 3)
    assert (p.first, p.publish_fields()[0::2]) == (0x33, ("will/ret1", b"retained will"))


def test_will_retain_0_is_not_retained(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-16] Will Retain=0: the live subscriber gets it with RETAIN=0; a subscriber
    arriving afterwards receives nothing."""
    live = watch(port, raw, "will/ret0")
    a = raw(port)
    assert connack(a, "will-ret0", will=("will/ret0", b"plain", 0, False)) == (b"\x20\x02\x00\x00")
    a.close()
    p = next_publish(live)
    assert p.first == 0x30
    assert p.publish_fields() == ("will/ret0", None, b"plain")
    later = watch(port, raw, "will/ret0", name="late")
    marker_is_next(port, raw, later, "will/ret0")


def test_will_on_protocol_violation(port: int, raw: RawFactory) -> None:
    """[MQTT-3.14.1-1] [MQTT-3.1.2-8] [MQTT-4.8.0-1] DISCONNECT with a reserved flag set
    (`E1 00`) is a violation, not a DISCONNECT: the broker closes and publishes the will."""
    w = watch(port, raw, "will/violation")
    a = raw(port)
    assert connack(a, "will-violation", will=("will/violation", b"bad", 0, False)) == (
        b"\x20\x02\x00\x00"
    )
    a.send(b"\xe1\x00")
    assert a.expect_closed(3) == b""
    assert next_publish(w).publish_fields() == ("will/violation", None, b"bad")


def test_will_on_second_connect(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.0-2] [MQTT-3.1.2-8] A second CONNECT on a connection: closed without a
    second CONNACK, and the will is published."""
    w = watch(port, raw, "will/again")
    a = raw(port)
    assert connack(a, "will-again", will=("will/again", b"twice", 0, False)) == (
        b"\x20\x02\x00\x00"
    )
    a.send(connect("will-again"))
    assert a.expect_closed(3) == b""
    assert next_publish(w).publish_fields() == ("will/again", None, b"twice")


def test_will_on_keepalive_expiry(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-24] [MQTT-3.1.2-8] keepalive=1 with a will, then silence: the broker closes
    the connection after ~1.5 s and publishes the will."""
    w = watch(port, raw, "will/ka")
    a = raw(port)
    assert connack(a, "will-ka", keepalive=1, will=("will/ka", b"timed out", 0, False)) == (
        b"\x20\x02\x00\x00"
    )
    start = time.monotonic()
    p = next_publish(w, 5.0)
    elapsed = time.monotonic() - start
    assert p.publish_fields() == ("will/ka", None, b"timed out")
    assert 1.4 <= elapsed <= 3.5, elapsed
    assert a.expect_closed(2) == b""


# --------------------------------------------------------------------------- keepalive


def test_keepalive_expiry_closes_after_one_and_a_half(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-24] keepalive=1 and silence: EOF no earlier than 1.5 s (small tolerance)
    and within ~3 s, with no bytes sent first."""
    c = raw(port)
    assert connack(c, "ka-silent", keepalive=1) == b"\x20\x02\x00\x00"
    start = time.monotonic()
    assert c.expect_closed(6) == b""
    elapsed = time.monotonic() - start
    assert 1.4 <= elapsed <= 3.5, elapsed


def test_pingreq_keeps_connection_alive(port: int, raw: RawFactory) -> None:
    """[MQTT-3.12.4-1] [MQTT-3.1.2-24] keepalive=1 with a PINGREQ every 0.5 s: each gets
    exactly `D0 00`, and the connection is still open after more than 3 s."""
    c = raw(port)
    assert connack(c, "ka-ping", keepalive=1) == b"\x20\x02\x00\x00"
    start = time.monotonic()
    pings = 0
    while time.monotonic() - start < 3.2:
        time.sleep(0.5)
        c.send(PINGREQ)
        assert wire(c.recv(1.0)) == PINGRESP
        pings += 1
    assert pings >= 6


def test_any_packet_resets_keepalive(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-24] keepalive=1: any control packet, not only PINGREQ, resets the timer
    (QoS 0 and QoS 1 PUBLISH, SUBSCRIBE, UNSUBSCRIBE every 0.5 s for over 3 s)."""
    c = raw(port)
    assert connack(c, "ka-any", keepalive=1) == b"\x20\x02\x00\x00"
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 3.2:
        time.sleep(0.5)
        i += 1
        kind = i % 4
        if kind == 0:
            c.send(publish("ka/any", b"x"))  # no reply at all
        elif kind == 1:
            c.send(publish("ka/any", b"x", qos=1, pkid=i))
            assert wire(c.recv(1.0)) == ack(0x40, i)
        elif kind == 2:
            c.send(subscribe(i, ("ka/other", 0)))
            assert wire(c.recv(1.0)) == b"\x90\x03" + i.to_bytes(2, "big") + b"\x00"
        else:
            c.send(unsubscribe(i, "ka/other"))
            assert wire(c.recv(1.0)) == b"\xb0\x02" + i.to_bytes(2, "big")
    # The last sends were QoS 0 publishes or acked packets; the connection is still open.
    c.send(PINGREQ)
    assert wire(c.recv(1.0)) == PINGRESP


def test_keepalive_zero_is_never_timed_out(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-24] keepalive=0 turns the timeout off: still open after 3 s of silence."""
    c = raw(port)
    assert connack(c, "ka-zero", keepalive=0) == b"\x20\x02\x00\x00"
    with pytest.raises(TimeoutError):
        c.recv(3.0)  # neither a packet nor EOF (EOF would raise Closed)
    c.send(PINGREQ)
    assert wire(c.recv(1.0)) == PINGRESP


def test_no_will_when_disconnect_precedes_immediate_reconnect(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-10] [MQTT-3.14.4-3] [MQTT-3.1.4-2] A persistent-session client with a will
    publishes, sends `E0 00`, closes its socket and at once connects again with the same
    client id, hundreds of times. The DISCONNECT was in the old socket before the new
    CONNECT arrived, so the takeover must see it first: no will, ever (Mosquitto bug 1273).
    Every cycle's publish still arrives (processed before the takeover too)."""
    cycles = 400
    w = watch(port, raw, "churn/will")
    data = watch(port, raw, "churn/data", name="data")
    for i in range(cycles):
        with RawClient(port) as c:
            c.send(connect("churn-will", clean=False, will=("churn/will", b"spurious", 0, False)))
            assert wire(c.recv()) in (b"\x20\x02\x00\x00", b"\x20\x02\x01\x00")
            c.send(publish("churn/data", str(i).encode()) + DISCONNECT)
        # Closed without waiting for the broker's EOF: the next CONNECT races the old
        # connection's reading of its DISCONNECT.
    last = raw(port)
    assert connack(last, "churn-will", clean=False) == b"\x20\x02\x01\x00"
    last.send(DISCONNECT)
    assert last.expect_closed(3) == b""
    marker_is_next(port, raw, w, "churn/will")
    got = [next_publish(data).publish_fields()[2] for _ in range(cycles)]
    assert got == [str(i).encode() for i in range(cycles)]
