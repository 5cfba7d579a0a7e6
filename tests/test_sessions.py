"""Sessions over real sockets: CONNACK session-present, offline queueing, redelivery,
QoS 1/2 flows, the inflight window, queue limits, takeover, client ids, restart, limits.

Raw bytes (tests/support/mqtt_raw.py) wherever exact flags, ids or order matter; paho-mqtt where a
real third-party client is the point.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pyo3mq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
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
)
from support.teardown import closed_at_teardown

PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70

RawFactory = Callable[..., RawClient]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def raw() -> Iterator[RawFactory]:
    """`raw(port)` opens a RawClient that is closed at teardown."""
    yield from closed_at_teardown(RawClient)


def wire(p: Packet) -> bytes:
    """The packet's bytes as they were on the wire."""
    return bytes([p.first]) + remaining_length(len(p.body)) + p.body


def connack(c: RawClient, client_id: str | bytes, **kwargs: object) -> bytes:
    """Sends CONNECT and returns the whole reply packet's bytes (expected: a CONNACK)."""
    c.send(connect(client_id, **kwargs))  # type: ignore[arg-type]
    return wire(c.recv())


def subscribe_ok(c: RawClient, pkid: int, *filters: tuple[str, int]) -> None:
    c.send(subscribe(pkid, *filters))
    p = c.recv()
    assert wire(p) == bytes([0x90, 2 + len(filters)]) + struct.pack("!H", pkid) + bytes(
        q for _, q in filters
    )


def publish_q1(c: RawClient, topic: str, payload: bytes, pkid: int, **kw: bool) -> None:
    """QoS 1 publish; returns once the broker's PUBACK (which follows routing) arrived."""
    c.send(publish(topic, payload, qos=1, pkid=pkid, **kw))
    assert wire(c.recv()) == ack(PUBACK, pkid)


def publish_q2(c: RawClient, topic: str, payload: bytes, pkid: int) -> None:
    """Complete QoS 2 publish flow: PUBLISH / PUBREC / PUBREL / PUBCOMP."""
    c.send(publish(topic, payload, qos=2, pkid=pkid))
    assert wire(c.recv()) == ack(0x50, pkid)
    c.send(ack(PUBREL, pkid))
    assert wire(c.recv()) == ack(PUBCOMP, pkid)


def next_publish(c: RawClient, timeout: float = 5.0) -> Packet:
    p = c.recv(timeout)
    assert p.type == 3, f"expected a PUBLISH, got {wire(p).hex(' ')}"
    return p


def assert_silent(c: RawClient, wait: float = 0.3) -> None:
    """Nothing arrives within `wait` seconds (bounded negative check)."""
    try:
        p = c.recv(wait)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected packet: {wire(p).hex(' ')}")


def marker_is_next(sub: RawClient, pub: RawClient, topic: str, pkid: int = 999) -> None:
    """Publishes a QoS 1 marker from `pub`; the subscriber's next PUBLISH must be it, so
    nothing it should not have received was queued ahead of it."""
    publish_q1(pub, topic, b"marker", pkid)
    p = next_publish(sub)
    assert p.publish_fields()[0::2] == (topic, b"marker"), p.publish_fields()
    if p.qos == 1:
        sub.send(ack(PUBACK, p.publish_fields()[1]))  # type: ignore[arg-type]


def receive_acking(c: RawClient, count: int, timeout: float = 5.0) -> list[Packet]:
    """Reads until `count` PUBLISHes arrived and every QoS 2 flow among them completed,
    acknowledging each as a subscriber should (PUBACK; PUBREC, then PUBCOMP for the PUBREL).
    The broker may interleave later PUBLISHes with a PUBREL, so packets are handled as they
    come. Returns the PUBLISHes in arrival order."""
    publishes: list[Packet] = []
    awaiting_rel: set[int] = set()
    while len(publishes) < count or awaiting_rel:
        p = c.recv(timeout)
        if p.type == 3:
            _, pkid, _ = p.publish_fields()
            publishes.append(p)
            if p.qos == 1:
                c.send(ack(PUBACK, pkid))  # type: ignore[arg-type]
            elif p.qos == 2:
                c.send(ack(PUBREC, pkid))  # type: ignore[arg-type]
                awaiting_rel.add(pkid)  # type: ignore[arg-type]
        else:
            assert p.first == PUBREL and len(p.body) == 2, f"unexpected {wire(p).hex(' ')}"
            assert p.pkid in awaiting_rel, f"PUBREL for id {p.pkid} not awaited"
            awaiting_rel.discard(p.pkid)
            c.send(ack(PUBCOMP, p.pkid))
    return publishes


def disconnect_and_wait(c: RawClient) -> None:
    """Clean DISCONNECT, then wait for the broker's EOF: by then the session is detached."""
    c.send(DISCONNECT)
    assert c.expect_closed(3) == b""
    c.close()


def port_of(broker: pyo3mq.Broker) -> int:
    return broker.addresses[0][1]


# --------------------------------------------------------------------------- CONNACK


def test_connack_first_cs0_has_no_session(port: int, raw: RawFactory) -> None:
    """[MQTT-3.2.2-3] [MQTT-3.1.4-4] A fresh id with CleanSession=0: `20 02 00 00`."""
    c = raw(port)
    assert connack(c, "fresh-cs0", clean=False) == b"\x20\x02\x00\x00"


def test_connack_resume_sets_session_present(port: int, raw: RawFactory) -> None:
    """[MQTT-3.2.2-2] [MQTT-3.1.2-4] [MQTT-4.1.0-1] Second CS=0 connect: `20 02 01 00`, and
    the stored subscription delivers without resubscribing."""
    c = raw(port)
    assert connack(c, "resume", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(c, 1, ("resume/t", 1))
    disconnect_and_wait(c)

    c = raw(port)
    assert connack(c, "resume", clean=False) == b"\x20\x02\x01\x00"
    pub = raw(port)
    pub.connect("resume-pub")
    publish_q1(pub, "resume/t", b"still subscribed", 1)
    p = next_publish(c)
    assert p.publish_fields()[0::2] == ("resume/t", b"still subscribed")
    assert p.qos == 1


def test_connack_clean_session_never_present(port: int, raw: RawFactory) -> None:
    """[MQTT-3.2.2-1] CleanSession=1: `20 02 00 00`, the first time and again."""
    for _ in range(2):
        c = raw(port)
        assert connack(c, "clean", clean=True) == b"\x20\x02\x00\x00"
        disconnect_and_wait(c)


def test_clean_session_discards_stored_session(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-6] [MQTT-3.2.2-1] [MQTT-3.1.4-3] CS=1 after a CS=0 session: session-present
    0, no queued message, old subscription gone; a later CS=0 connect also gets 0."""
    pub = raw(port)
    pub.connect("discard-pub")

    c = raw(port)
    assert connack(c, "discard", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(c, 1, ("discard/t", 1))
    disconnect_and_wait(c)
    publish_q1(pub, "discard/t", b"queued while offline", 1)

    c = raw(port)
    assert connack(c, "discard", clean=True) == b"\x20\x02\x00\x00"
    # Neither the queued message nor a new publish to the old filter arrives.
    publish_q1(pub, "discard/t", b"after clean", 2)
    subscribe_ok(c, 2, ("discard/marker", 1))
    marker_is_next(c, pub, "discard/marker")
    disconnect_and_wait(c)

    c = raw(port)
    assert connack(c, "discard", clean=False) == b"\x20\x02\x00\x00"
    publish_q1(pub, "discard/t", b"after clean, cs0", 3)
    subscribe_ok(c, 3, ("discard/marker", 1))
    marker_is_next(c, pub, "discard/marker")


def test_mqtt31_connack_never_has_session_present(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-4] MQTT 3.1 (`MQIsdp`/3, checklist part 2 item 4): CONNACK byte 1 is
    always 0, even when the stored session is resumed (the subscription still works)."""
    v31 = (b"MQIsdp", 3)
    c = raw(port)
    assert connack(c, "v31-sess", clean=False, protocol=v31) == b"\x20\x02\x00\x00"
    subscribe_ok(c, 1, ("v31/t", 1))
    disconnect_and_wait(c)

    c = raw(port)
    assert connack(c, "v31-sess", clean=False, protocol=v31) == b"\x20\x02\x00\x00"
    pub = raw(port)
    pub.connect("v31-pub")
    publish_q1(pub, "v31/t", b"resumed", 1)
    assert next_publish(c).publish_fields()[0::2] == ("v31/t", b"resumed")


# --------------------------------------------------------------------------- offline queue


def test_offline_queueing_qos1_qos2_not_qos0(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-5] [MQTT-3.1.2-4] [MQTT-4.5.0-1] [MQTT-3.2.2-2] Offline CS=0 subscriber:
    QoS 1/2 messages are stored and delivered on reconnect, in order; QoS 0 is not."""
    sub = raw(port)
    assert connack(sub, "offline", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("off/a", 2), ("off/b", 2))
    disconnect_and_wait(sub)

    pub = raw(port)
    pub.connect("offline-pub")
    publish_q1(pub, "off/a", b"a1", 1)
    publish_q2(pub, "off/b", b"b1", 2)
    publish_q1(pub, "off/a", b"a2", 3)
    pub.send(publish("off/a", b"zero", qos=0) + PINGREQ)
    assert wire(pub.recv()) == b"\xd0\x00"  # the QoS 0 publish was routed (while offline)

    sub = raw(port)
    assert connack(sub, "offline", clean=False) == b"\x20\x02\x01\x00"
    got = []
    for p in receive_acking(sub, 3):
        topic, _, payload = p.publish_fields()
        assert not p.dup, "first transmission of a queued message has DUP=0"
        got.append((topic, payload, p.qos))
    assert got == [("off/a", b"a1", 1), ("off/b", b"b1", 2), ("off/a", b"a2", 1)]
    # The QoS 0 message was not stored: the next thing is a marker published now.
    marker_is_next(sub, pub, "off/a")


def test_offline_queueing_with_paho(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-7.0.0-2] paho-mqtt with clean_session=False gets
    session_present and its QoS 1/2 messages queued while it was away, not the QoS 0 one."""
    messages: list[tuple[str, bytes, int]] = []
    lock = threading.Condition()
    present: list[bool] = []
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        with lock:
            present.append(bool(flags.session_present))
            lock.notify_all()

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        subscribed.set()

    def on_message(client, userdata, msg) -> None:
        with lock:
            messages.append((msg.topic, msg.payload, msg.qos))
            lock.notify_all()

    def make_client() -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="paho-offline", clean_session=False)
        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        return c

    def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
        with lock:
            assert lock.wait_for(pred, timeout), (present, messages)

    c = make_client()
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    try:
        wait_for(lambda: len(present) == 1)
        assert present == [False]
        c.subscribe([("paho/q1", 1), ("paho/q2", 2)])
        assert subscribed.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()

    # Deterministic "the broker has detached paho's connection": take the session over with
    # a raw CS=0 connection (which resumes it) and leave cleanly.
    probe = raw(port)
    assert connack(probe, "paho-offline", clean=False) == b"\x20\x02\x01\x00"
    disconnect_and_wait(probe)

    pub = raw(port)
    pub.connect("paho-offline-pub")
    publish_q1(pub, "paho/q1", b"one", 1)
    publish_q2(pub, "paho/q2", b"two", 2)
    publish_q1(pub, "paho/q1", b"three", 3)
    pub.send(publish("paho/q1", b"qos0", qos=0))
    pub.send(PINGREQ)
    assert wire(pub.recv()) == b"\xd0\x00"

    c = make_client()
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    try:
        wait_for(lambda: len(present) == 2)
        assert present == [False, True]
        wait_for(lambda: len(messages) >= 3)
        publish_q1(pub, "paho/q1", b"marker", 4)
        wait_for(lambda: len(messages) >= 4)
    finally:
        c.disconnect()
        c.loop_stop()
    assert sorted(messages[:3]) == sorted(
        [("paho/q1", b"one", 1), ("paho/q2", b"two", 2), ("paho/q1", b"three", 1)]
    )
    assert [m for m in messages if m[0] == "paho/q1"] == [
        ("paho/q1", b"one", 1),
        ("paho/q1", b"three", 1),
        ("paho/q1", b"marker", 1),
    ]
    assert len(messages) == 4


# --------------------------------------------------------------------------- redelivery


def test_redelivery_qos1_dup_same_ids_same_order(port: int, raw: RawFactory) -> None:
    """[MQTT-3.3.1-1] [MQTT-4.4.0-1] [MQTT-2.3.1-4] [MQTT-4.6.0-1] [MQTT-4.3.2-1] Unacked QoS 1
    deliveries are resent on a CS=0 reconnect with DUP=1, the same ids, in the original order."""
    sub = raw(port)
    assert connack(sub, "redeliver1", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("re/1", 1))
    pub = raw(port)
    pub.connect("redeliver1-pub")
    payloads = [b"first", b"second", b"third"]
    for i, body in enumerate(payloads, start=1):
        publish_q1(pub, "re/1", body, i)

    first = []
    for body in payloads:
        p = next_publish(sub)
        assert p.first == 0x32, f"first delivery must be QoS 1, DUP=0: {p.first:#x}"
        topic, pkid, payload = p.publish_fields()
        assert (topic, payload) == ("re/1", body)
        assert pkid
        first.append(pkid)
    assert len(set(first)) == 3, f"inflight ids must be distinct: {first}"
    sub.close()  # no PUBACK, no DISCONNECT

    sub = raw(port)
    assert connack(sub, "redeliver1", clean=False) == b"\x20\x02\x01\x00"
    again = []
    for body in payloads:
        p = next_publish(sub)
        assert p.first == 0x3A, f"redelivery must have DUP=1, QoS 1: {p.first:#x}"
        topic, pkid, payload = p.publish_fields()
        assert (topic, payload) == ("re/1", body)
        again.append(pkid)
    assert again == first
    for pkid in again:
        sub.send(ack(PUBACK, pkid))
    # Acknowledged now: nothing is resent after another reconnect.
    disconnect_and_wait(sub)
    sub = raw(port)
    assert connack(sub, "redeliver1", clean=False) == b"\x20\x02\x01\x00"
    marker_is_next(sub, pub, "re/1")


def test_redelivery_qos2_unrecd_publish_resent_with_dup(port: int, raw: RawFactory) -> None:
    """[MQTT-3.3.1-1] [MQTT-4.4.0-1] [MQTT-4.3.3-1] QoS 2 delivery without PUBREC: the
    PUBLISH is resent with DUP=1 and its original id on a CS=0 reconnect."""
    sub = raw(port)
    assert connack(sub, "redeliver2", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("re/2", 2))
    pub = raw(port)
    pub.connect("redeliver2-pub")
    publish_q2(pub, "re/2", b"exactly once", 1)
    p = next_publish(sub)
    assert p.first == 0x34
    _, pkid, _ = p.publish_fields()
    sub.close()

    sub = raw(port)
    assert connack(sub, "redeliver2", clean=False) == b"\x20\x02\x01\x00"
    p = next_publish(sub)
    assert p.first == 0x3C, f"expected QoS 2 DUP=1: {p.first:#x}"
    assert p.publish_fields() == ("re/2", pkid, b"exactly once")
    sub.send(ack(PUBREC, pkid))  # type: ignore[arg-type]
    assert wire(sub.recv()) == ack(PUBREL, pkid)  # type: ignore[arg-type]
    sub.send(ack(PUBCOMP, pkid))  # type: ignore[arg-type]
    assert_silent(sub)


def test_redelivery_qos2_after_pubrec_resends_pubrel_only(port: int, raw: RawFactory) -> None:
    """[MQTT-4.3.3-1] [MQTT-4.4.0-1] [MQTT-2.3.1-6] After the subscriber's PUBREC the broker
    sends `62 02 id`; on a CS=0 reconnect it resends that PUBREL, never the PUBLISH."""
    sub = raw(port)
    assert connack(sub, "pubrel-resend", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("re/rel", 2))
    pub = raw(port)
    pub.connect("pubrel-resend-pub")
    publish_q2(pub, "re/rel", b"m", 1)
    p = next_publish(sub)
    assert p.first == 0x34
    _, pkid, _ = p.publish_fields()
    assert pkid
    sub.send(ack(PUBREC, pkid))
    assert wire(sub.recv()) == ack(PUBREL, pkid)
    sub.close()  # no PUBCOMP

    sub = raw(port)
    assert connack(sub, "pubrel-resend", clean=False) == b"\x20\x02\x01\x00"
    assert wire(sub.recv()) == b"\x62\x02" + struct.pack("!H", pkid)
    sub.send(ack(PUBCOMP, pkid))
    # The PUBLISH is not sent again, and the flow is finished: a marker comes next.
    marker_is_next(sub, pub, "re/rel")


def test_publisher_dup_is_not_passed_through(port: int, raw: RawFactory) -> None:
    """[MQTT-3.3.1-3] [MQTT-4.3.2-1] A publisher's DUP=1 is not forwarded: the subscriber's
    first delivery has DUP=0 (QoS 1 and QoS 2)."""
    sub = raw(port)
    sub.connect("dup-sub")
    subscribe_ok(sub, 1, ("dup/t", 2))
    pub = raw(port)
    pub.connect("dup-pub")
    pub.send(publish("dup/t", b"q1", qos=1, pkid=4, dup=True))
    assert wire(pub.recv()) == ack(PUBACK, 4)
    p = next_publish(sub)
    assert p.first == 0x32, f"{p.first:#x}"
    sub.send(ack(PUBACK, p.publish_fields()[1]))  # type: ignore[arg-type]

    pub.send(publish("dup/t", b"q2", qos=2, pkid=5, dup=True))
    assert wire(pub.recv()) == ack(PUBREC, 5)
    pub.send(ack(PUBREL, 5))
    assert wire(pub.recv()) == ack(PUBCOMP, 5)
    p = next_publish(sub)
    assert p.first == 0x34, f"{p.first:#x}"


# --------------------------------------------------------------------------- inbound QoS


def test_inbound_qos2_exactly_once(port: int, raw: RawFactory) -> None:
    """[MQTT-4.3.3-2] [MQTT-2.3.1-6] [MQTT-3.3.4-1] QoS 2 id 3 sent twice before PUBREL: two
    PUBRECs, one copy delivered; PUBREL 3 gets PUBCOMP 3; afterwards id 3 is a new message."""
    sub = raw(port)
    sub.connect("q2in-sub")
    subscribe_ok(sub, 1, ("q2in/t", 0))
    pub = raw(port)
    pub.connect("q2in-pub")

    pub.send(publish("q2in/t", b"once", qos=2, pkid=3))
    assert wire(pub.recv()) == b"\x50\x02\x00\x03"
    pub.send(publish("q2in/t", b"once", qos=2, pkid=3, dup=True))
    assert wire(pub.recv()) == b"\x50\x02\x00\x03"
    pub.send(ack(PUBREL, 3))
    assert wire(pub.recv()) == b"\x70\x02\x00\x03"

    p = next_publish(sub)
    assert wire(p) == publish("q2in/t", b"once")
    # No duplicate: the next delivery is the marker.
    pub.send(publish("q2in/t", b"marker"))
    assert next_publish(sub).publish_fields() == ("q2in/t", None, b"marker")

    # After PUBCOMP, id 3 denotes a new message.
    pub.send(publish("q2in/t", b"new", qos=2, pkid=3))
    assert wire(pub.recv()) == b"\x50\x02\x00\x03"
    pub.send(ack(PUBREL, 3))
    assert wire(pub.recv()) == b"\x70\x02\x00\x03"
    assert next_publish(sub).publish_fields() == ("q2in/t", None, b"new")


def test_inbound_qos1_repeat_after_puback_is_new(port: int, raw: RawFactory) -> None:
    """[MQTT-4.3.2-2] [MQTT-2.3.1-6] QoS 1 id 5 gets `40 02 00 05`; the same id again (DUP=1)
    after that PUBACK is acknowledged again and delivered again."""
    sub = raw(port)
    sub.connect("q1in-sub")
    subscribe_ok(sub, 1, ("q1in/t", 0))
    pub = raw(port)
    pub.connect("q1in-pub")
    pub.send(publish("q1in/t", b"x", qos=1, pkid=5))
    assert wire(pub.recv()) == b"\x40\x02\x00\x05"
    pub.send(publish("q1in/t", b"x", qos=1, pkid=5, dup=True))
    assert wire(pub.recv()) == b"\x40\x02\x00\x05"
    assert next_publish(sub).publish_fields() == ("q1in/t", None, b"x")
    assert next_publish(sub).publish_fields() == ("q1in/t", None, b"x")


# --------------------------------------------------------------------------- inflight window


def test_inflight_window_limits_unacked_deliveries(make_broker, raw: RawFactory) -> None:
    """[MQTT-2.3.1-4] [MQTT-4.6.0-6] With max_inflight=2 a subscriber withholding PUBACKs gets
    exactly 2 PUBLISHes; each PUBACK releases one more; inflight ids are distinct."""
    port = port_of(make_broker(max_inflight=2))
    sub = raw(port)
    sub.connect("window-sub")
    subscribe_ok(sub, 1, ("win/t", 1))
    pub = raw(port)
    pub.connect("window-pub")
    for i in range(5):
        publish_q1(pub, "win/t", b"m%d" % i, i + 1)

    inflight: list[int] = []
    received: list[bytes] = []

    def take() -> None:
        p = next_publish(sub)
        assert p.qos == 1 and not p.dup
        _, pkid, payload = p.publish_fields()
        assert pkid and pkid not in inflight, f"id {pkid} already inflight {inflight}"
        inflight.append(pkid)
        received.append(payload)

    take()
    take()
    assert_silent(sub)
    for expected_more in (True, True, True, False, False):
        sub.send(ack(PUBACK, inflight.pop(0)))
        if expected_more:
            take()
        assert_silent(sub, 0.2)
        assert len(inflight) <= 2
    assert received == [b"m%d" % i for i in range(5)]
    assert inflight == []


# --------------------------------------------------------------------------- queue limits


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("drop_new", range(0, 5)), ("drop_oldest", range(5, 10))],
)
def test_queue_limit_overflow_policy(
    make_broker, raw: RawFactory, policy: str, kept, capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-3.1.2-5] max_queued_messages=5, 10 QoS 1 messages for an offline CS=0 session:
    drop_new keeps the first 5, drop_oldest the last 5; dropped_messages counts 5, and the
    broker says so in one warning for the episode, not one per dropped message."""
    broker = make_broker(max_queued_messages=5, queue_overflow=policy)
    port = port_of(broker)
    pub = offline_subscriber_and_publisher(raw, port, "limited", "lim/t")
    for i in range(10):
        publish_q1(pub, "lim/t", b"m%d" % i, i + 1)
    assert broker.dropped_messages == 5

    sub, got = resume_and_take(raw, port, "limited", 5)
    assert got == [b"m%d" % i for i in kept]
    marker_is_next(sub, pub, "lim/t")
    assert broker.dropped_messages == 5
    warnings = [
        line for line in capfd.readouterr().err.splitlines() if "session queue full" in line
    ]
    assert len(warnings) == 1, warnings
    assert "client_id=limited" in warnings[0]
    assert "max_queued_messages=5" in warnings[0]


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("drop_new", [0, 1, 2]), ("drop_oldest", [7, 8, 9])],
)
def test_queue_byte_limit(make_broker, raw: RawFactory, policy: str, kept: list[int]) -> None:
    """max_queued_bytes=100 with 30-byte messages (topic `lim/b` 5 + payload 25) for an
    offline session: three fit (90 bytes), so of ten, drop_new keeps the first three and
    drop_oldest the last three; seven are counted as dropped. A 200-byte message never
    fits, and evicts nothing even under drop_oldest."""
    broker = make_broker(max_queued_bytes=100, queue_overflow=policy)
    port = port_of(broker)
    pub = offline_subscriber_and_publisher(raw, port, "bytes", "lim/b")
    for i in range(10):
        publish_q1(pub, "lim/b", b"%025d" % i, i + 1)
    assert broker.dropped_messages == 7
    publish_q1(pub, "lim/b", b"x" * 195, 11)
    assert broker.dropped_messages == 8

    sub, got = resume_and_take(raw, port, "bytes", 3)
    assert [int(p) for p in got] == kept
    marker_is_next(sub, pub, "lim/b")


def offline_subscriber_and_publisher(
    raw: RawFactory, port: int, client_id: str, topic: str
) -> RawClient:
    """Leaves `client_id` as an offline CS=0 session subscribed to `topic` at QoS 1, and
    returns a connected publisher."""
    sub = raw(port)
    assert connack(sub, client_id, clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, (topic, 1))
    disconnect_and_wait(sub)
    pub = raw(port)
    pub.connect(f"{client_id}-pub")
    return pub


def resume_and_take(
    raw: RawFactory, port: int, client_id: str, count: int
) -> tuple[RawClient, list[bytes]]:
    """Resumes the session (session present) and acknowledges `count` deliveries."""
    sub = raw(port)
    assert connack(sub, client_id, clean=False) == b"\x20\x02\x01\x00"
    got = []
    for _ in range(count):
        _, pkid, payload = next_publish(sub).publish_fields()
        got.append(payload)
        sub.send(ack(PUBACK, pkid))  # type: ignore[arg-type]
    return sub, got


# --------------------------------------------------------------------------- slow consumer


def test_slow_consumer_costs_only_itself(make_broker, raw: RawFactory) -> None:
    """[MQTT-4.5.0-1] A subscriber that never reads its socket does not hold up a publisher
    or another subscriber: 6,000 x 1 KiB QoS 0 messages (more than the socket buffers and
    the broker's write buffer can absorb) all reach the reading subscriber promptly and in
    order, while only the stalled one's own small queue overflows."""
    broker = make_broker(max_queued_messages=100)
    port = port_of(broker)
    total, batch = 6000, 50

    # The stalled subscriber: a tiny receive buffer, and it reads nothing after SUBACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    stalled = RawClient.__new__(RawClient)
    stalled.sock, stalled.buf, stalled.timeout = sock, b"", 5.0
    try:
        stalled.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert connack(stalled, "stalled") == b"\x20\x02\x00\x00"
        subscribe_ok(stalled, 1, ("slow/t", 0))

        fast = raw(port)
        fast.connect("fast")
        subscribe_ok(fast, 1, ("slow/t", 0))
        pub = raw(port)
        pub.connect("slow-pub")

        body = bytes(1024 - 4)
        start = time.monotonic()
        for first in range(0, total, batch):
            pub.send(
                b"".join(
                    publish("slow/t", struct.pack("!I", n) + body)
                    for n in range(first, first + batch)
                )
            )
            # Flow control by the test: the reading subscriber's queue never overflows.
            for n in range(first, first + batch):
                p = next_publish(fast, 3.0)
                assert p.first == 0x30
                _, _, payload = p.publish_fields()
                assert (struct.unpack("!I", payload[:4])[0], len(payload)) == (n, 1024)
        elapsed = time.monotonic() - start
        assert elapsed < 10.0, f"{total} messages took {elapsed:.1f} s"
        pub.send(PINGREQ)
        assert wire(pub.recv(1.0)) == b"\xd0\x00"
        # The stalled subscriber really was stalled: its own queue overflowed...
        dropped = broker.dropped_messages
        assert 0 < dropped < total
        # ...and what it lost is its own: it still gets the head of the stream, in order.
        for n in range(100):
            p = next_publish(stalled, 3.0)
            assert struct.unpack("!I", p.publish_fields()[2][:4])[0] == n
    finally:
        sock.close()


# --------------------------------------------------------------------------- takeover


def test_takeover_closes_old_connection_and_publishes_will(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.4-2] [MQTT-3.1.2-8] [MQTT-3.1.4-4] A connects as X with a will, B connects as
    X: A's socket closes (EOF, no bytes), B gets `20 02 00 00`, A's will is published."""
    watcher = raw(port)
    watcher.connect("takeover-watch")
    subscribe_ok(watcher, 1, ("takeover/will", 0))

    a = raw(port)
    assert connack(a, "X-takeover", will=("takeover/will", b"A gone", 0, False)) == (
        b"\x20\x02\x00\x00"
    )
    b = raw(port)
    assert connack(b, "X-takeover") == b"\x20\x02\x00\x00"
    assert a.expect_closed(3) == b""
    assert next_publish(watcher).publish_fields() == ("takeover/will", None, b"A gone")
    b.send(PINGREQ)
    assert wire(b.recv()) == b"\xd0\x00"


def test_takeover_cs0_keeps_session(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.4-2] [MQTT-3.2.2-2] [MQTT-3.1.2-4] CS=0 takeover: session-present 1 and the
    subscriptions carry over to the new connection."""
    a = raw(port)
    assert connack(a, "X-keep", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(a, 1, ("keep/t", 1))
    b = raw(port)
    assert connack(b, "X-keep", clean=False) == b"\x20\x02\x01\x00"
    assert a.expect_closed(3) == b""
    pub = raw(port)
    pub.connect("keep-pub")
    publish_q1(pub, "keep/t", b"to B", 1)
    p = next_publish(b)
    assert p.first == 0x32
    assert p.publish_fields()[0::2] == ("keep/t", b"to B")


# --------------------------------------------------------------------------- client ids


def test_zero_length_client_id_cs1_gets_unique_sessions(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.3-6] Two concurrent CS=1 clients with empty ids are both accepted and served
    independently: neither takes the other over, each gets only its own traffic."""
    c1, c2 = raw(port), raw(port)
    assert connack(c1, "") == b"\x20\x02\x00\x00"
    assert connack(c2, "") == b"\x20\x02\x00\x00"
    subscribe_ok(c1, 1, ("anon/1", 0))
    subscribe_ok(c2, 1, ("anon/2", 0))
    pub = raw(port)
    pub.connect("anon-pub")
    for topic, body in (("anon/1", b"x1"), ("anon/2", b"x2"), ("anon/1", b"y1")):
        pub.send(publish(topic, body))
    assert next_publish(c1).publish_fields() == ("anon/1", None, b"x1")
    assert next_publish(c1).publish_fields() == ("anon/1", None, b"y1")
    assert next_publish(c2).publish_fields() == ("anon/2", None, b"x2")
    for c in (c1, c2):
        c.send(PINGREQ)
        assert wire(c.recv()) == b"\xd0\x00"


def test_zero_length_client_id_cs0_rejected(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.3-8] [MQTT-3.2.2-4] [MQTT-3.2.2-5] Empty id with CleanSession=0:
    `20 02 00 02`, then EOF."""
    c = raw(port)
    c.send(connect("", clean=False))
    assert c.expect_closed(3) == b"\x20\x02\x00\x02"


def test_mqtt31_empty_client_id_rejected(port: int, raw: RawFactory) -> None:
    """[MQTT-3.1.3-9] MQTT 3.1 (checklist part 2 item 3): an empty client id, even with
    CleanSession=1, gets `20 02 00 02` and EOF."""
    c = raw(port)
    c.send(connect("", clean=True, protocol=(b"MQIsdp", 3)))
    assert c.expect_closed(3) == b"\x20\x02\x00\x02"


@pytest.mark.parametrize(
    "client_id",
    ["a", "Z", "0123456789abcdefghijklm", "ZZZZZZZZZZZZZZZZZZZZZZZ", "aZ09bY18cX27dW36eV45fU6"],
)
def test_client_ids_1_to_23_alnum_accepted(port: int, raw: RawFactory, client_id: str) -> None:
    """[MQTT-3.1.3-5] [MQTT-3.1.4-4] Client ids of 1..23 characters from [0-9a-zA-Z] are
    accepted with `20 02 00 00`."""
    assert 1 <= len(client_id) <= 23
    c = raw(port)
    assert connack(c, client_id) == b"\x20\x02\x00\x00"
    c.send(PINGREQ)
    assert wire(c.recv()) == b"\xd0\x00"


def test_client_id_over_configured_limit_rejected(make_broker, raw: RawFactory) -> None:
    """[MQTT-3.1.3-9] [MQTT-3.2.2-5] max_client_id_len=30: a 31-char id gets `20 02 00 02`
    then EOF; a 30-char id is accepted."""
    port = port_of(make_broker(max_client_id_len=30))
    c = raw(port)
    c.send(connect("x" * 31))
    assert c.expect_closed(3) == b"\x20\x02\x00\x02"
    c = raw(port)
    assert connack(c, "y" * 30) == b"\x20\x02\x00\x00"


# --------------------------------------------------------------------------- restart


def test_restart_resumes_session_and_queued_messages(make_broker, raw: RawFactory) -> None:
    """[MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-4.1.0-1] stop()/start() of the same
    Broker: a CS=0 client gets session-present 1 and the QoS 1 messages queued for it."""
    broker = make_broker()
    port = port_of(broker)
    sub = raw(port)
    assert connack(sub, "restart-sub", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("rs/t", 1))
    disconnect_and_wait(sub)
    pub = raw(port)
    pub.connect("restart-pub")
    publish_q1(pub, "rs/t", b"before 1", 1)
    publish_q1(pub, "rs/t", b"before 2", 2)

    broker.stop()
    assert pub.expect_closed(3) == b""
    broker.start()
    port = port_of(broker)

    sub = raw(port)
    assert connack(sub, "restart-sub", clean=False) == b"\x20\x02\x01\x00"
    got = []
    for _ in range(2):
        p = next_publish(sub)
        assert p.qos == 1
        _, pkid, payload = p.publish_fields()
        got.append(payload)
        sub.send(ack(PUBACK, pkid))  # type: ignore[arg-type]
    assert got == [b"before 1", b"before 2"]
    # The subscription survived too.
    pub = raw(port)
    pub.connect("restart-pub")
    marker_is_next(sub, pub, "rs/t")


def test_restart_keeps_retained_messages(make_broker, raw: RawFactory) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-8] A retained message survives stop()/start() of the same
    Broker and is replayed, RETAIN=1, to a new subscriber."""
    broker = make_broker()
    pub = raw(port_of(broker))
    pub.connect("retain-pub")
    pub.send(publish("rr/t", b"kept", qos=1, pkid=1, retain=True))
    assert wire(pub.recv()) == ack(PUBACK, 1)
    broker.stop()
    broker.start()
    sub = raw(port_of(broker))
    sub.connect("retain-sub")
    subscribe_ok(sub, 1, ("rr/#", 1))
    p = next_publish(sub)
    assert p.first == 0x33, f"{p.first:#x}"
    assert p.publish_fields()[0::2] == ("rr/t", b"kept")


def test_restart_keeps_inflight_state(make_broker, raw: RawFactory) -> None:
    """[MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.3.3-1] [MQTT-2.3.1-4] Unacknowledged deliveries
    survive stop()/start() with the session: after reconnecting CS=0 the unacked QoS 1
    PUBLISH is resent with DUP=1 and its original id, and the PUBREL of a PUBREC'd QoS 2
    delivery is resent (session-present 1 promises the whole session)."""
    broker = make_broker()
    port = port_of(broker)
    sub = raw(port)
    assert connack(sub, "restart-inflight", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("ri/1", 1), ("ri/2", 2))
    pub = raw(port)
    pub.connect("restart-inflight-pub")
    # Two acknowledged deliveries first, so the ids still in flight are not 1 and 2.
    for i in (1, 2):
        publish_q1(pub, "ri/1", b"acked", i)
    receive_acking(sub, 2)
    publish_q1(pub, "ri/1", b"unacked", 3)
    p1 = next_publish(sub)
    _, id1, _ = p1.publish_fields()
    publish_q2(pub, "ri/2", b"recd", 4)
    p2 = next_publish(sub)
    _, id2, _ = p2.publish_fields()
    assert (p1.first, p2.first) == (0x32, 0x34)
    assert id1 not in (None, 1, 2) and id2 not in (None, 1, 2), (id1, id2)
    sub.send(ack(PUBREC, id2))  # type: ignore[arg-type]
    assert wire(sub.recv()) == ack(PUBREL, id2)  # type: ignore[arg-type]

    broker.stop()
    broker.start()
    sub = raw(port_of(broker))
    assert connack(sub, "restart-inflight", clean=False) == b"\x20\x02\x01\x00"
    got = []
    try:
        while len(got) < 2:
            got.append(wire(sub.recv(2.0)).hex(" "))
    except TimeoutError:
        pass
    assert got == [
        wire(Packet(0x3A, p1.body)).hex(" "),  # same topic, id and payload, DUP=1
        ack(PUBREL, id2).hex(" "),  # type: ignore[arg-type]
    ]


# --------------------------------------------------------------------------- limits


def test_max_connections_refuses_with_server_unavailable(make_broker, raw: RawFactory) -> None:
    """[MQTT-3.2.2-5] [MQTT-3.2.2-4] max_connections=2: a third client gets `20 02 00 03` then
    EOF; once a slot is free a new client is accepted."""
    port = port_of(make_broker(max_connections=2))
    a, b = raw(port), raw(port)
    assert connack(a, "conn-a") == b"\x20\x02\x00\x00"
    assert connack(b, "conn-b") == b"\x20\x02\x00\x00"
    c = raw(port)
    c.send(connect("conn-c"))
    assert c.expect_closed(3) == b"\x20\x02\x00\x03"
    # The two admitted clients are unaffected.
    for x in (a, b):
        x.send(PINGREQ)
        assert wire(x.recv()) == b"\xd0\x00"
    disconnect_and_wait(a)
    deadline = time.monotonic() + 3
    while True:
        d = raw(port)
        reply = connack(d, "conn-d")
        if reply == b"\x20\x02\x00\x00" or time.monotonic() > deadline:
            break
        d.close()
        time.sleep(0.05)
    assert reply == b"\x20\x02\x00\x00"


def test_connect_timeout_closes_silent_socket(make_broker, raw: RawFactory) -> None:
    """Unnumbered (3.1.4: no CONNECT within a reasonable time, close): connect_timeout=0.5
    closes a socket that sends nothing within ~2 s, without a byte."""
    port = port_of(make_broker(connect_timeout=0.5))
    c = raw(port)
    start = time.monotonic()
    assert c.expect_closed(4) == b""
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed <= 2.0, elapsed


def test_connect_timeout_closes_half_connect(make_broker, raw: RawFactory) -> None:
    """Unnumbered (3.1.4): connect_timeout=0.5 also closes a socket that sent only half a
    CONNECT, within ~2 s and without a CONNACK."""
    port = port_of(make_broker(connect_timeout=0.5))
    c = raw(port)
    whole = connect("half-connect")
    c.send(whole[: len(whole) // 2])
    start = time.monotonic()
    assert c.expect_closed(4) == b""
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed <= 2.0, elapsed


# --------------------------------------------------------------------------- pipelining


def test_pipelined_connect_subscribe_publish(port: int, raw: RawFactory) -> None:
    """[MQTT-3.2.0-1] [MQTT-3.8.4-1] CONNECT + SUBSCRIBE + PUBLISH in one send, with a retained
    message waiting: CONNACK is the first packet back; then SUBACK, PUBACK, the retained
    replay and the live delivery, handled in order."""
    pub = raw(port)
    pub.connect("pipe-retainer")
    pub.send(publish("pipe/r", b"retained", qos=1, pkid=1, retain=True))
    assert wire(pub.recv()) == ack(PUBACK, 1)

    c = raw(port)
    c.send(
        connect("pipeliner")
        + subscribe(0x0102, ("pipe/#", 1))
        + publish("pipe/x", b"live", qos=1, pkid=7)
    )
    assert wire(c.recv()) == b"\x20\x02\x00\x00"
    rest = [c.recv() for _ in range(4)]
    kinds = [wire(p) for p in rest if p.type != 3]
    assert kinds == [b"\x90\x03\x01\x02\x01", b"\x40\x02\x00\x07"]  # SUBACK before PUBACK
    pubs = sorted((p.first, p.publish_fields()[0::2]) for p in rest if p.type == 3)
    assert pubs == [(0x32, ("pipe/x", b"live")), (0x33, ("pipe/r", b"retained"))]


# --------------------------------------------------------------------------- expiry


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Polls `condition` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(0.05)
    return time.monotonic() - start


def sqlite_query(path: str, sql: str) -> list[list[object]]:
    """Runs `sql` on a SQLite store file in another process and returns its rows. Not in
    this one: the broker's SQLite is a separate copy of the library, and two copies in one
    process break each other's locks (closing ours would delete the broker's live WAL)."""
    script = (
        "import json, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1])\n"
        "with db:\n"
        "    rows = [list(r) for r in db.execute(sys.argv[2])]\n"
        "db.close()\n"
        "print(json.dumps(rows))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, path, sql], capture_output=True, text=True, check=True
    )
    rows: list[list[object]] = json.loads(done.stdout)
    return rows


def stored_sessions(path: str) -> set[str]:
    """The client ids of the sessions in a SQLite store file."""
    return {str(row[0]) for row in sqlite_query(path, "SELECT client_id FROM sessions")}


def offline_subscriber(port: int, raw: RawFactory, client_id: str, topic: str) -> None:
    """A CS=0 client subscribes to `topic` at QoS 1 and disconnects cleanly."""
    sub = raw(port)
    assert connack(sub, client_id, clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, (topic, 1))
    disconnect_and_wait(sub)


@pytest.mark.parametrize(
    "value", ["1h", "2d", "1w", "1m", "1y", "3600", 3600, 0.5, None, "0"], ids=str
)
def test_persistent_client_expiration_accepts_mosquitto_values(make_broker, value: object) -> None:
    """Mosquitto's `persistent_client_expiration` forms (h, d, w, m = month, y) and a number
    of seconds are accepted, by BrokerConfig and by the broker itself."""
    assert pyo3mq.BrokerConfig(persistent_client_expiration=value).persistent_client_expiration == (
        value
    )
    make_broker(persistent_client_expiration=value)


@pytest.mark.parametrize("value", ["", "1s", "1.5h", "-1", -1, "2 weeks", True, float("nan"), [1]])
def test_persistent_client_expiration_refuses_other_values(value: object) -> None:
    """Anything else is a configuration error that names the setting."""
    with pytest.raises(ValueError, match="persistent_client_expiration"):
        pyo3mq.BrokerConfig(persistent_client_expiration=value)  # type: ignore[arg-type]


def test_offline_session_expires(make_broker, raw: RawFactory) -> None:
    """persistent_client_expiration=1.5: a CS=0 client that reconnects within the limit
    resumes its session; one that stays away longer loses it, subscriptions and queued
    messages included (session present 0, nothing delivered), and not before the limit."""
    broker = make_broker(persistent_client_expiration=1.5)
    port = port_of(broker)
    offline_subscriber(port, raw, "expire-me", "exp/t")
    c = raw(port)
    assert connack(c, "expire-me", clean=False) == b"\x20\x02\x01\x00", "within the limit"
    disconnect_and_wait(c)
    pub = raw(port)
    pub.connect("expire-pub")
    publish_q1(pub, "exp/t", b"queued for nobody", 1)
    assert broker.stats()["clients_disconnected"] == 1
    waited = wait_for(lambda: broker.stats()["clients_disconnected"] == 0)
    assert waited >= 1.0, f"expired {waited:.2f} s after going offline, limit 1.5 s"
    c = raw(port)
    assert connack(c, "expire-me", clean=False) == b"\x20\x02\x00\x00"
    assert_silent(c)
    # The subscription went with it: a new publish is not delivered either.
    publish_q1(pub, "exp/t", b"after expiry", 2)
    assert_silent(c)


def test_no_expiration_by_default(make_broker, raw: RawFactory) -> None:
    """Control: without the setting an offline session stays (here: 2.5 s, longer than the
    limits of the expiry tests) and resumes with its queued message."""
    broker = make_broker()
    port = port_of(broker)
    offline_subscriber(port, raw, "keep-me", "keep/t")
    pub = raw(port)
    pub.connect("keep-pub")
    publish_q1(pub, "keep/t", b"kept", 1)
    time.sleep(2.5)
    assert broker.stats()["clients_disconnected"] == 1
    c = raw(port)
    assert connack(c, "keep-me", clean=False) == b"\x20\x02\x01\x00"
    assert next_publish(c).publish_fields()[0::2] == ("keep/t", b"kept")


def test_expired_session_leaves_the_sqlite_store(
    make_broker, raw: RawFactory, tmp_path: Path
) -> None:
    """With a SQLite store, an expired session is deleted from the file at the next save,
    and a reconnect gets session present 0."""
    path = str(tmp_path / "expire.db")
    broker = make_broker(
        session_store=f"sqlite:{path}", persist_interval=0.1, persistent_client_expiration=1
    )
    port = port_of(broker)
    offline_subscriber(port, raw, "stored-expire", "sexp/t")
    wait_for(lambda: "stored-expire" in stored_sessions(path))
    wait_for(lambda: "stored-expire" not in stored_sessions(path))
    c = raw(port)
    assert connack(c, "stored-expire", clean=False) == b"\x20\x02\x00\x00"


def test_expiry_applies_at_start_to_stored_sessions(
    make_broker, raw: RawFactory, tmp_path: Path
) -> None:
    """The store keeps when each client went offline: a broker started on it with a limit
    the session has already outlived drops it before serving (session present 0), while a
    longer limit keeps it (session present 1)."""
    path = str(tmp_path / "start.db")
    first = make_broker(session_store=f"sqlite:{path}")
    offline_subscriber(port_of(first), raw, "old-session", "old/t")
    first.stop()
    second = make_broker(session_store=f"sqlite:{path}", persistent_client_expiration="1h")
    c = raw(port_of(second))
    assert connack(c, "old-session", clean=False) == b"\x20\x02\x01\x00"
    disconnect_and_wait(c)
    second.stop()
    time.sleep(1.2)
    third = make_broker(session_store=f"sqlite:{path}", persistent_client_expiration=1)
    assert third.stats()["clients_disconnected"] == 0
    c = raw(port_of(third))
    assert connack(c, "old-session", clean=False) == b"\x20\x02\x00\x00"


def test_stored_session_without_disconnect_time_counts_from_start(
    make_broker, raw: RawFactory, tmp_path: Path
) -> None:
    """A stored session with no disconnect time (its client was online at a crash, or the
    file predates expiry) is not expired at once: it counts from the broker's start, and
    the store is given that time, so a later start counts from it too."""
    path = str(tmp_path / "notime.db")
    first = make_broker(session_store=f"sqlite:{path}")
    offline_subscriber(port_of(first), raw, "no-time", "nt/t")
    first.stop()
    assert sqlite_query(path, "SELECT client_id FROM disconnected") == [["no-time"]]
    sqlite_query(path, "DELETE FROM disconnected")
    time.sleep(1.2)
    second = make_broker(
        session_store=f"sqlite:{path}", persist_interval=0.1, persistent_client_expiration=1.5
    )
    assert second.stats()["clients_disconnected"] == 1, "expired from an unknown time"
    wait_for(lambda: sqlite_query(path, "SELECT COUNT(*) FROM disconnected") == [[1]])
    wait_for(lambda: second.stats()["clients_disconnected"] == 0)
    c = raw(port_of(second))
    assert connack(c, "no-time", clean=False) == b"\x20\x02\x00\x00"
