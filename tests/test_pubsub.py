"""Publish/subscribe behaviour seen by real clients over sockets.

QoS downgrade, retained messages, overlapping subscriptions, wildcards, SUBACK/UNSUBACK,
ordering, fan-out/fan-in and large payloads. Exact flags are checked with the raw-bytes
helper (`RawPeer`); paho-mqtt drives the same paths as an ordinary third-party client.

"Nothing else arrives" is checked with a marker: the test publishes a marker after the
message that must not arrive, waits for the marker, then listens `SETTLE` seconds more.
"""

from __future__ import annotations

import os
import queue
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.mqtt_raw import (
    DISCONNECT,
    PINGREQ,
    Packet,
    RawClient,
    ack,
    publish,
    subscribe,
    unsubscribe,
)
from support.teardown import closed_at_teardown

TIMEOUT = 5.0
SETTLE = 0.15  # bounded wait after a marker for anything that must not arrive
MARK = b"MARK"

PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70
SUBACK, UNSUBACK, PINGRESP = 0x90, 0xB0, 0xD0
QOS = (0, 1, 2)


@dataclass(frozen=True)
class Msg:
    """One delivered PUBLISH as the subscriber saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    dup: bool = False


def is_mark(m: Msg) -> bool:
    return m.payload == MARK


# --------------------------------------------------------------------------- raw peer


class RawPeer:
    """A raw-bytes client that completes every acknowledgement flow it is sent.

    Deliveries go to `msgs`, other packets (acks, SUBACK, PINGRESP...) to `ctrl`, so a
    test can wait for either without losing the other.
    """

    def __init__(self, port: int, client_id: str = "", *, clean: bool = True) -> None:
        self.c = RawClient(port, timeout=TIMEOUT)
        self.connack = self.c.connect(client_id, clean=clean)
        assert self.connack.body[1] == 0, f"CONNACK refused: {self.connack.body!r}"
        self.msgs: deque[Msg] = deque()
        self.ctrl: deque[Packet] = deque()
        self._pkid = 0

    def pkid(self) -> int:
        self._pkid = self._pkid % 65535 + 1
        return self._pkid

    def _pump(self, deadline: float) -> None:
        pkt = self.c.recv(max(deadline - time.monotonic(), 0.001))
        if pkt.type == 3:
            topic, pkid, payload = pkt.publish_fields()
            if pkt.qos == 0:
                assert not pkt.dup, "[MQTT-3.3.1-2] QoS 0 PUBLISH with DUP=1"
            else:
                assert pkid, "[MQTT-2.3.1-1] QoS>0 PUBLISH with packet id 0"
                self.c.send(ack(PUBACK if pkt.qos == 1 else PUBREC, pkid))
            assert pkt.qos != 3, "[MQTT-3.3.1-4] PUBLISH with QoS 3"
            self.msgs.append(Msg(topic, payload, pkt.qos, pkt.retain, pkt.dup))
        elif pkt.first == PUBREL:
            self.c.send(ack(PUBCOMP, pkt.pkid))
        else:
            self.ctrl.append(pkt)

    def next_msg(self, timeout: float = TIMEOUT) -> Msg:
        deadline = time.monotonic() + timeout
        while not self.msgs:
            self._pump(deadline)
        return self.msgs.popleft()

    def next_ctrl(self, timeout: float = TIMEOUT) -> Packet:
        deadline = time.monotonic() + timeout
        while not self.ctrl:
            self._pump(deadline)
        return self.ctrl.popleft()

    def drain(self, duration: float = SETTLE) -> list[Msg]:
        """Everything delivered within `duration` seconds (and anything already read)."""
        deadline = time.monotonic() + duration
        try:
            while True:
                self._pump(deadline)
        except TimeoutError:
            pass
        out = list(self.msgs)
        self.msgs.clear()
        return out

    def until(self, pred: Callable[[Msg], bool] = is_mark, settle: float = SETTLE) -> list[Msg]:
        """Deliveries up to and including the first matching one, then `settle` s more."""
        out = []
        while True:
            m = self.next_msg()
            out.append(m)
            if pred(m):
                break
        return out + self.drain(settle)

    def take(self, n: int, timeout: float = TIMEOUT) -> list[Msg]:
        return [self.next_msg(timeout) for _ in range(n)]

    def subscribe(self, *filters: tuple[str, int], pkid: int | None = None) -> bytes:
        """Sends one SUBSCRIBE; returns the SUBACK return codes."""
        pkid = self.pkid() if pkid is None else pkid
        self.c.send(subscribe(pkid, *filters))
        p = self.next_ctrl()
        assert p.first == SUBACK, f"expected SUBACK, got {p.first:#x}"
        assert p.body[:2] == struct.pack("!H", pkid), "[MQTT-3.8.4-2] SUBACK packet id"
        return p.body[2:]

    def unsubscribe(self, *filters: str, pkid: int | None = None) -> None:
        pkid = self.pkid() if pkid is None else pkid
        self.c.send(unsubscribe(pkid, *filters))
        p = self.next_ctrl()
        assert (p.first, p.body) == (UNSUBACK, struct.pack("!H", pkid))

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False) -> None:
        """Publishes and completes the QoS flow, so the broker has routed the message."""
        pkid = self.pkid()
        self.c.send(publish(topic, payload, qos=qos, retain=retain, pkid=pkid))
        if qos == 1:
            p = self.next_ctrl()
            assert (p.first, p.body) == (PUBACK, struct.pack("!H", pkid))
        elif qos == 2:
            p = self.next_ctrl()
            assert (p.first, p.body) == (PUBREC, struct.pack("!H", pkid))
            self.c.send(ack(PUBREL, pkid))
            p = self.next_ctrl()
            assert (p.first, p.body) == (PUBCOMP, struct.pack("!H", pkid))

    def ping(self) -> None:
        """PINGREQ; the next control packet must be the PINGRESP (nothing unexpected first)."""
        self.c.send(PINGREQ)
        p = self.next_ctrl()
        assert (p.first, p.body) == (PINGRESP, b""), f"expected PINGRESP, got {p.first:#x}"

    def close(self, disconnect: bool = True) -> None:
        if disconnect:
            try:
                self.c.send(DISCONNECT)
            except OSError:
                pass
        self.c.close()


# --------------------------------------------------------------------------- paho client


class PahoClient:
    """A paho-mqtt 2.x client on its own network thread, with waitable results."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        clean_session: bool = True,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv311,
        will: tuple[str, bytes, int, bool] | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=protocol,
        )
        self.msgs: queue.Queue[Msg] = queue.Queue()
        self.connected = threading.Event()
        self.reason_code: Any = None
        self.session_present: bool | None = None
        self._acks: dict[int, list[int]] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "paho: no CONNACK"
        assert self.reason_code == 0, f"paho: connection refused: {self.reason_code}"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.reason_code = rc
        self.session_present = flags.session_present
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, m: mqtt.MQTTMessage) -> None:
        self.msgs.put(Msg(m.topic, m.payload, m.qos, bool(m.retain), bool(m.dup)))

    def _on_ack(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self._acks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def _wait_ack(self, mid: int) -> list[int]:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, TIMEOUT), f"no ack {mid}"
            return self._acks.pop(mid)

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        rc, mid = self.client.subscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        return self._wait_ack(mid)

    def unsubscribe(self, *filters: str) -> None:
        rc, mid = self.client.unsubscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        self._wait_ack(mid)

    def publish_async(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos, retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS
        return info

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        info = self.publish_async(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"paho: publish {topic!r} not completed"

    def next_msg(self, timeout: float = TIMEOUT) -> Msg:
        try:
            return self.msgs.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"paho: no message within {timeout} s") from None

    def take(self, n: int, timeout: float = TIMEOUT) -> list[Msg]:
        return [self.next_msg(timeout) for _ in range(n)]

    def drain(self, duration: float = SETTLE) -> list[Msg]:
        deadline = time.monotonic() + duration
        out = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self.msgs.get(timeout=left))
            except queue.Empty:
                break
        while True:
            try:
                out.append(self.msgs.get_nowait())
            except queue.Empty:
                return out

    def until(self, pred: Callable[[Msg], bool] = is_mark, settle: float = SETTLE) -> list[Msg]:
        out = []
        while True:
            m = self.next_msg()
            out.append(m)
            if pred(m):
                break
        return out + self.drain(settle)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def raw(port: int) -> Iterator[Callable[..., RawPeer]]:
    """Factory of connected `RawPeer`s, closed after the test."""
    yield from closed_at_teardown(RawPeer, port)


@pytest.fixture
def paho(port: int) -> Iterator[Callable[..., PahoClient]]:
    """Factory of connected `PahoClient`s, disconnected after the test."""
    yield from closed_at_teardown(PahoClient, port)


# --------------------------------------------------------------------------- QoS matrix


@pytest.mark.parametrize("sub_qos", QOS)
@pytest.mark.parametrize("pub_qos", QOS)
def test_qos_matrix_raw(raw: Callable[..., RawPeer], pub_qos: int, sub_qos: int) -> None:
    """[MQTT-3.8.4-6] [MQTT-3.3.1-9] [MQTT-3.3.1-3] Delivered QoS is min(published, granted):
    never dropped, never upgraded, exactly one copy, DUP=0 and RETAIN=0."""
    sub = raw("sub")
    assert sub.subscribe(("m/x", sub_qos)) == bytes([sub_qos])
    pub = raw("pub")
    pub.publish("m/x", b"payload", qos=pub_qos)
    pub.publish("m/x", MARK, qos=pub_qos)
    want = min(pub_qos, sub_qos)
    assert sub.until() == [Msg("m/x", b"payload", want), Msg("m/x", MARK, want)]


@pytest.mark.parametrize("sub_qos", QOS)
@pytest.mark.parametrize("pub_qos", QOS)
def test_qos_matrix_paho(paho: Callable[..., PahoClient], pub_qos: int, sub_qos: int) -> None:
    """[MQTT-3.8.4-6] [MQTT-3.3.1-9] paho publisher to paho subscriber: delivered QoS is
    min(published, granted), one copy."""
    sub = paho("psub")
    assert sub.subscribe(("m/y", sub_qos)) == [sub_qos]
    pub = paho("ppub")
    pub.publish("m/y", b"payload", qos=pub_qos)
    pub.publish("m/y", MARK, qos=pub_qos)
    want = min(pub_qos, sub_qos)
    assert sub.until() == [Msg("m/y", b"payload", want), Msg("m/y", MARK, want)]


def test_qos2_repeat_before_pubrel_delivered_once(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-4.3.3-2] [MQTT-3.3.1-3] A QoS 2 PUBLISH repeated (DUP=1) before PUBREL is
    acknowledged again but forwarded once, with DUP=0."""
    sub = raw("sub")
    assert sub.subscribe(("q2/t", 2)) == b"\x02"
    pub = raw("pub")
    pub.c.send(publish("q2/t", b"once", qos=2, pkid=5))
    p = pub.next_ctrl()
    assert (p.first, p.body) == (PUBREC, b"\x00\x05")
    pub.c.send(publish("q2/t", b"once", qos=2, pkid=5, dup=True))
    p = pub.next_ctrl()
    assert (p.first, p.body) == (PUBREC, b"\x00\x05")
    pub.c.send(ack(PUBREL, 5))
    p = pub.next_ctrl()
    assert (p.first, p.body) == (PUBCOMP, b"\x00\x05")
    pub.publish("q2/t", MARK, qos=2)
    assert sub.until() == [Msg("q2/t", b"once", 2), Msg("q2/t", MARK, 2)]


# --------------------------------------------------------------------------- retained


def test_retained_replay_carries_retain_flag(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-8] A retained QoS 1 message is replayed to a new QoS 2
    subscriber at QoS 1 with RETAIN=1; a live publish after it has RETAIN=0."""
    pub = raw("pub")
    pub.publish("r/t", b"kept", qos=1, retain=True)
    sub = raw("sub")
    assert sub.subscribe(("r/t", 2)) == b"\x02"
    pub.publish("r/t", MARK, qos=1)
    assert sub.until() == [Msg("r/t", b"kept", 1, True), Msg("r/t", MARK, 1, False)]


@pytest.mark.parametrize("granted", QOS)
@pytest.mark.parametrize("stored", QOS)
def test_retained_qos_downgrade(raw: Callable[..., RawPeer], stored: int, granted: int) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.8.4-6] A retained message is replayed at
    min(stored QoS, granted QoS), with RETAIN=1."""
    pub = raw("pub")
    pub.publish("r/q", b"kept", qos=stored, retain=True)
    pub.ping()  # a QoS 0 publish has no acknowledgement: processed once PINGRESP comes
    pub.close()
    sub = raw("sub")
    assert sub.subscribe(("r/q", granted)) == bytes([granted])
    sub.publish("r/q", MARK)
    assert sub.until() == [Msg("r/q", b"kept", min(stored, granted), True), Msg("r/q", MARK, 0)]


def test_retained_replaced_by_newer(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.3.1-5] A new retained message replaces the old one, QoS included: a later
    subscriber gets only the newest."""
    pub = raw("pub")
    pub.publish("r/t", b"v1", qos=1, retain=True)
    pub.publish("r/t", b"v2", qos=2, retain=True)
    pub.publish("r/t", b"v3", qos=1, retain=True)
    sub = raw("sub")
    assert sub.subscribe(("r/t", 2)) == b"\x02"
    sub.publish("r/t", MARK)
    assert sub.until() == [Msg("r/t", b"v3", 1, True), Msg("r/t", MARK, 0)]


def test_retained_qos0_discards_previous(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.3.1-7] A retained QoS 0 message discards the earlier retained QoS 1 one: a
    later subscriber gets the new message (or nothing), never the old."""
    pub = raw("pub")
    pub.publish("r/t", b"old", qos=1, retain=True)
    pub.publish("r/t", b"new", qos=0, retain=True)
    pub.ping()  # the QoS 0 publish has been processed
    sub = raw("sub")
    assert sub.subscribe(("r/t", 1)) == b"\x01"
    sub.publish("r/t", MARK)
    got = sub.until()
    assert got in ([Msg("r/t", b"new", 0, True), Msg("r/t", MARK, 0)], [Msg("r/t", MARK, 0)])


@pytest.mark.parametrize("clear_qos", QOS)
def test_retained_cleared_by_empty_payload(raw: Callable[..., RawPeer], clear_qos: int) -> None:
    """[MQTT-3.3.1-10] [MQTT-3.3.1-11] [MQTT-3.3.1-9] A zero-length retained publish (any
    QoS) is forwarded to a live subscriber with RETAIN=0 and deletes the retained message:
    a later subscriber gets nothing."""
    live = raw("live")
    assert live.subscribe(("r/c", 2)) == b"\x02"
    pub = raw("pub")
    pub.publish("r/c", b"kept", qos=1, retain=True)
    assert live.next_msg() == Msg("r/c", b"kept", 1, False)
    pub.publish("r/c", b"", qos=clear_qos, retain=True)
    pub.publish("r/c", MARK, qos=clear_qos)
    assert live.until() == [Msg("r/c", b"", clear_qos, False), Msg("r/c", MARK, clear_qos)]

    late = raw("late")
    assert late.subscribe(("r/c", 2), ("r/#", 2)) == b"\x02\x02"
    late.publish("r/c", MARK, qos=1)
    assert late.until() == [Msg("r/c", MARK, 1)]


@pytest.mark.parametrize("qos", QOS)
def test_retained_live_forward_has_retain_0(raw: Callable[..., RawPeer], qos: int) -> None:
    """[MQTT-3.3.1-9] [MQTT-3.3.1-8] A retained publish reaches an established subscriber
    with RETAIN=0; a subscriber arriving afterwards gets it with RETAIN=1."""
    live = raw("live")
    assert live.subscribe(("r/l", 2)) == b"\x02"
    pub = raw("pub")
    pub.publish("r/l", b"v", qos=qos, retain=True)
    pub.publish("r/l", MARK, qos=qos, retain=False)
    assert live.until() == [Msg("r/l", b"v", qos, False), Msg("r/l", MARK, qos, False)]
    late = raw("late")
    assert late.subscribe(("r/l", 2)) == b"\x02"
    late.publish("r/l", MARK)
    assert late.until() == [Msg("r/l", b"v", qos, True), Msg("r/l", MARK, 0)]


def test_non_retained_publish_leaves_retained(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.3.1-12] RETAIN=0 publishes (including a zero-length one) neither replace nor
    remove the retained message."""
    pub = raw("pub")
    pub.publish("r/n", b"A", qos=1, retain=True)
    pub.publish("r/n", b"B", qos=1)
    pub.publish("r/n", b"", qos=1)
    pub.publish("r/n", b"C", qos=0)
    pub.ping()
    sub = raw("sub")
    assert sub.subscribe(("r/n", 1)) == b"\x01"
    sub.publish("r/n", MARK)
    assert sub.until() == [Msg("r/n", b"A", 1, True), Msg("r/n", MARK, 0)]


RETAINED_TOPICS = ["sport", "sport/a", "sport/a/b", "sport/b", "other/a", "$dev/x"]


@pytest.mark.parametrize(
    ("flt", "marker", "expected"),
    [
        ("sport/+", "sport/mk", ["sport/a", "sport/b"]),
        ("sport/#", "sport/mk", ["sport", "sport/a", "sport/a/b", "sport/b"]),
        ("#", "mk", ["sport", "sport/a", "sport/a/b", "sport/b", "other/a"]),
        ("+/a", "mk/a", ["sport/a", "other/a"]),
        ("+/+/b", "mk/x/b", ["sport/a/b"]),
        ("$dev/#", "$dev/mk", ["$dev/x"]),
        ("sport/a", "sport/a", ["sport/a"]),
    ],
)
def test_retained_wildcard_replay(
    raw: Callable[..., RawPeer], flt: str, marker: str, expected: list[str]
) -> None:
    """[MQTT-3.3.1-6] [MQTT-3.3.1-8] [MQTT-4.7.2-1] A new subscription replays the retained
    message of every matching topic once, with RETAIN=1 (`$` topics only to `$` filters)."""
    pub = raw("pub")
    for t in RETAINED_TOPICS:
        pub.publish(t, t.encode(), qos=1, retain=True)
    sub = raw("sub")
    assert sub.subscribe((flt, 1)) == b"\x01"
    pub.publish(marker, MARK, qos=1)
    got = sub.until()
    assert got[-1] == Msg(marker, MARK, 1, False)
    replay = got[:-1]
    assert Counter(replay) == Counter(Msg(t, t.encode(), 1, True) for t in expected)


@pytest.mark.parametrize("abrupt", [False, True])
def test_retained_outlives_publisher_session(raw: Callable[..., RawPeer], abrupt: bool) -> None:
    """[MQTT-3.1.2-7] Retained messages are not session state: they survive the end of a
    clean session and the discarding of a persistent one."""
    clean_pub = raw("pub-clean", clean=True)
    clean_pub.publish("r/s1", b"from-clean", qos=1, retain=True)
    clean_pub.close(disconnect=not abrupt)
    durable = raw("pub-durable", clean=False)
    durable.publish("r/s2", b"from-durable", qos=2, retain=True)
    durable.close(disconnect=not abrupt)
    # Reconnecting with CleanSession=1 discards the persistent session.
    again = raw("pub-durable", clean=True)
    assert again.connack.body == b"\x00\x00"
    again.close()

    sub = raw("sub")
    assert sub.subscribe(("r/+", 2)) == b"\x02"
    sub.publish("r/mk", MARK)
    got = sub.until()
    assert got[-1] == Msg("r/mk", MARK, 0)
    assert Counter(got[:-1]) == Counter(
        [Msg("r/s1", b"from-clean", 1, True), Msg("r/s2", b"from-durable", 2, True)]
    )


def test_resubscribe_resends_retained(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.8.4-3] Subscribing again with the same filter replaces the subscription (new
    QoS, one copy) and re-sends the retained message."""
    pub = raw("pub")
    pub.publish("r/re", b"kept", qos=2, retain=True)
    sub = raw("sub")
    assert sub.subscribe(("r/re", 0)) == b"\x00"
    assert sub.next_msg() == Msg("r/re", b"kept", 0, True)
    assert sub.subscribe(("r/re", 2)) == b"\x02"
    assert sub.next_msg() == Msg("r/re", b"kept", 2, True)
    pub.publish("r/re", b"live", qos=2)
    pub.publish("r/re", MARK, qos=2)
    assert sub.until() == [Msg("r/re", b"live", 2), Msg("r/re", MARK, 2)]
    # And downgrading works the same way.
    assert sub.subscribe(("r/re", 1)) == b"\x01"
    assert sub.next_msg() == Msg("r/re", b"kept", 1, True)
    pub.publish("r/re", MARK, qos=2)
    assert sub.until() == [Msg("r/re", MARK, 1)]


def test_resubscribe_does_not_interrupt_stream(port: int, raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.8.4-3] Re-subscribing while a publisher runs loses and duplicates nothing."""
    sub = raw("sub")
    assert sub.subscribe(("r/stream", 1)) == b"\x01"
    pub = raw("pub")
    pub.publish("r/stream", b"kept", qos=1, retain=True)
    assert sub.next_msg() == Msg("r/stream", b"kept", 1, False)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(1, 101):
                pub.publish("r/stream", str(i).encode(), qos=1)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    for _ in range(10):
        assert sub.subscribe(("r/stream", 1)) == b"\x01"
    t.join(TIMEOUT * 2)
    assert not errors
    pub.publish("r/stream", MARK, qos=1)
    got = sub.until()
    live = [m.payload for m in got if not m.retain]
    assert live == [str(i).encode() for i in range(1, 101)] + [MARK]
    # Each re-subscribe replayed the retained message once.
    assert [m for m in got if m.retain] == [Msg("r/stream", b"kept", 1, True)] * 10


# --------------------------------------------------------------------------- overlapping


@pytest.mark.parametrize("together", [True, False], ids=["one-subscribe", "separate"])
@pytest.mark.parametrize(
    ("filters", "pub_qos", "want"),
    [
        ([("a/#", 2), ("a/b", 1)], 2, 2),
        ([("a/b", 1), ("a/#", 2)], 2, 2),
        ([("a/b", 2), ("a/+", 0), ("#", 1)], 2, 2),
        ([("a/+", 0), ("a/b", 1)], 2, 1),
        ([("a/#", 2), ("a/b", 1)], 1, 1),
        ([("+/b", 0), ("a/+", 0)], 2, 0),
        ([("#", 0), ("+/+", 1), ("a/#", 2), ("a/b", 0)], 0, 0),
    ],
)
def test_overlapping_subscriptions_one_copy_highest_qos(
    raw: Callable[..., RawPeer],
    filters: list[tuple[str, int]],
    pub_qos: int,
    want: int,
    together: bool,
) -> None:
    """[MQTT-3.3.5-1] A message matching several of one client's filters arrives once, at
    min(published QoS, highest granted QoS) (documented policy: one copy)."""
    sub = raw("sub")
    if together:
        assert sub.subscribe(*filters) == bytes(q for _, q in filters)
    else:
        for f in filters:
            assert sub.subscribe(f) == bytes([f[1]])
    pub = raw("pub")
    pub.publish("a/b", b"x", qos=pub_qos)
    pub.publish("a/b", MARK, qos=pub_qos)
    assert sub.until() == [Msg("a/b", b"x", want), Msg("a/b", MARK, want)]


# --------------------------------------------------------------------------- wildcards


def routed(raw: Callable[..., RawPeer], flt: str, topics: list[str], marker: str) -> list[str]:
    """Subscribes `flt`, publishes each topic (payload = topic) then a marker on `marker`
    (which `flt` must match); returns the topics delivered besides the marker."""
    sub = raw("wsub")
    assert sub.subscribe((flt, 0)) == b"\x00"
    pub = raw("wpub")
    for t in topics:
        pub.publish(t, t.encode(), qos=1)
    pub.publish(marker, MARK, qos=1)
    got = sub.until()
    assert got.count(Msg(marker, MARK, 0)) == 1, got
    rest = [m for m in got if m != Msg(marker, MARK, 0)]
    for m in rest:
        assert m.payload == m.topic.encode() and m.qos == 0 and not m.retain
    return [m.topic for m in rest]


@pytest.mark.parametrize(
    ("flt", "yes", "no"),
    [
        ("+", ["a", "x"], ["a/b", "/a", "a/"]),
        ("+/+", ["a/b", "/a", "a/"], ["a", "a/b/c"]),
        ("/+", ["/a", "/"], ["a", "a/b", "//a"]),
        ("a/+/c", ["a/b/c", "a//c"], ["a/c", "a/b/c/d", "a/b/d", "b/b/c", "a/b/c/"]),
        ("+/b/#", ["a/b", "x/b/c/d", "/b"], ["a/c", "b", "a/x/b"]),
        ("sport/#", ["sport", "sport/", "sport/a", "sport/a/b"], ["sports", "sportx/a", "x/sport"]),
        ("sport/tennis/#", ["sport/tennis", "sport/tennis/p1"], ["sport", "sport/tennisx"]),
        ("#", ["a", "a/b", "/a", "/", "a/$SYS"], ["$dev/x", "$test"]),
        ("a/b", ["a/b"], ["a", "a/b/c", "a/bb", "/a/b", "a/b/"]),
    ],
)
def test_wildcard_matching(
    raw: Callable[..., RawPeer], flt: str, yes: list[str], no: list[str]
) -> None:
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-3.3.2-3] `+` matches exactly one (possibly empty)
    level, `#` any number of levels including the parent (`sport/#` matches `sport`)."""
    assert sorted(routed(raw, flt, no + yes, yes[0])) == sorted(yes)


@pytest.mark.parametrize(
    ("flt", "yes", "no"),
    [
        ("#", ["x/y"], ["$dev/x", "$dev", "$test/x"]),
        ("+/x", ["a/x"], ["$test/x", "$dev/x"]),
        ("+/#", ["a/b"], ["$dev/broker/uptime", "$dev"]),
        ("+", ["a"], ["$dev", "$test"]),
        ("$dev/#", ["$dev", "$dev/x", "$dev/broker/uptime"], ["dev/x", "a/$dev", "$test/x"]),
        ("$test/+", ["$test/x"], ["$test/x/y", "$test", "test/x"]),
        ("$test/#", ["$test", "$test/x", "$test/x/y"], ["$dev/x", "test/x"]),
        ("+/$SYS", ["a/$SYS"], ["$dev/$SYS"]),
    ],
)
def test_dollar_topics(
    raw: Callable[..., RawPeer], flt: str, yes: list[str], no: list[str]
) -> None:
    """[MQTT-4.7.2-1] Filters starting with `#` or `+` do not match `$` topics; filters
    starting with `$` do. (Clients cannot publish to `$SYS`, so the `$` topics here are
    others; `test_sys_topics` checks the rule on the broker's own `$SYS` messages.)"""
    assert sorted(routed(raw, flt, no + yes, yes[0])) == sorted(yes)


@pytest.mark.parametrize(
    ("flt", "yes", "no"),
    [
        ("Accounts", ["Accounts"], ["ACCOUNTS", "accounts", "Accounts/", " Accounts"]),
        ("/finance", ["/finance"], ["finance", "/Finance", "//finance"]),
        ("finance", ["finance"], ["/finance", "finance/"]),
        ("caf\u00e9/+", ["caf\u00e9/x"], ["cafe\u0301/x", "CAF\u00c9/x", "cafe/x"]),
        ("cafe\u0301/#", ["cafe\u0301/x"], ["caf\u00e9/x"]),
        ("A/+/C", ["A/b/C"], ["a/b/c", "A/b/c"]),
    ],
)
def test_topic_matching_is_exact(
    raw: Callable[..., RawPeer], flt: str, yes: list[str], no: list[str]
) -> None:
    """[MQTT-4.7.3-4] Matching is case sensitive and applies no normalisation (NFC vs NFD
    `é` differ; `/finance` is not `finance`)."""
    assert sorted(routed(raw, flt, no + yes, yes[0])) == sorted(yes)


# --------------------------------------------------------------------------- SUBACK


def test_suback_several_filters_in_order(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.8.4-4] [MQTT-3.9.3-1] [MQTT-3.8.4-5] [MQTT-3.8.4-1] Several filters in one
    SUBSCRIBE get one SUBACK whose codes follow the filter order; all subscriptions work."""
    sub = raw("sub")
    sub.c.send(subscribe(0x0A0B, ("s/x", 0), ("s/y", 1), ("s/z", 2), ("s/w", 1)))
    p = sub.next_ctrl()
    assert (p.first, p.body) == (SUBACK, b"\x0a\x0b\x00\x01\x02\x01")
    sub.ping()  # no second SUBACK
    pub = raw("pub")
    for t in ("s/x", "s/y", "s/z", "s/w"):
        pub.publish(t, t.encode(), qos=2)
    got = sub.take(4)
    assert sorted(got, key=lambda m: m.topic) == [
        Msg("s/w", b"s/w", 1),
        Msg("s/x", b"s/x", 0),
        Msg("s/y", b"s/y", 1),
        Msg("s/z", b"s/z", 2),
    ]
    sub.ping()
    assert sub.drain() == []


# A zero-length filter is not here: it closes the connection [MQTT-4.7.3-1], as Mosquitto
# does (tests/test_wire.py::test_malformed_subscribe_closes).
INVALID_FILTERS = ["a#", "a/#/b", "a+", "a/+b", "#/a", "+a/b", "a/b#", "a/++", "##"]


@pytest.mark.parametrize("bad", INVALID_FILTERS)
def test_suback_invalid_filter_refused_others_granted(
    raw: Callable[..., RawPeer], bad: str
) -> None:
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1] [MQTT-3.8.4-5] [MQTT-3.9.3-2] An invalid
    filter gets 0x80 while the valid filters of the same SUBSCRIBE are granted and work."""
    sub = raw("sub")
    assert sub.subscribe(("ok/1", 1), (bad, 2), ("ok/2", 2)) == b"\x01\x80\x02"
    sub.ping()  # still connected
    pub = raw("pub")
    pub.publish("ok/1", b"one", qos=2)
    pub.publish("ok/2", b"two", qos=2)
    got = sub.take(2)
    assert sorted(got, key=lambda m: m.topic) == [Msg("ok/1", b"one", 1), Msg("ok/2", b"two", 2)]


def test_suback_all_invalid_filters_in_one_subscribe(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.8.4-5] [MQTT-3.9.3-1] [MQTT-3.9.3-2] One SUBSCRIBE mixing valid and invalid
    filters: one code per filter, in order, 0x80 exactly for the invalid ones."""
    filters = [("v/1", 0)]
    for i, bad in enumerate(INVALID_FILTERS):
        filters += [(bad, i % 3), (f"v/{i + 2}", (i + 1) % 3)]
    expected = bytes(0x80 if f in INVALID_FILTERS else q for f, q in filters)
    sub = raw("sub")
    assert sub.subscribe(*filters) == expected
    pub = raw("pub")
    valid = [(f, q) for f, q in filters if f not in INVALID_FILTERS]
    for f, _ in valid:
        pub.publish(f, f.encode(), qos=2)
    got = sub.take(len(valid))
    assert Counter(got) == Counter(Msg(f, f.encode(), q) for f, q in valid)


def test_suback_echoes_packet_id(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.8.4-2] [MQTT-2.3.1-7] [MQTT-3.10.4-4] SUBACK and UNSUBACK carry the packet
    identifier of the SUBSCRIBE / UNSUBSCRIBE they answer."""
    sub = raw("sub")
    for i, pkid in enumerate([1, 0x00FF, 0x0100, 0x1234, 0x8001, 0xFFFF]):
        sub.c.send(subscribe(pkid, (f"id/{i}", i % 3)))
        p = sub.next_ctrl()
        assert (p.first, p.body) == (SUBACK, struct.pack("!HB", pkid, i % 3))
        unsub_id = 0xFFFF - pkid + 1
        sub.c.send(unsubscribe(unsub_id, f"id/{i}"))
        p = sub.next_ctrl()
        assert (p.first, p.body) == (UNSUBACK, struct.pack("!H", unsub_id))


# --------------------------------------------------------------------------- UNSUBSCRIBE


def test_unsubscribe_matches_filter_exactly(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.10.4-1] [MQTT-3.10.4-2] Unsubscribing `u/x` or `U/+` leaves `u/+` in place;
    unsubscribing `u/+` itself stops delivery."""
    sub = raw("sub")
    assert sub.subscribe(("u/+", 1), ("mk", 0)) == b"\x01\x00"
    for other in ("u/x", "U/+", "u/#", "u/+/", "+/+", "u/+ "):
        sub.unsubscribe(other)
    pub = raw("pub")
    pub.publish("u/x", b"one", qos=1)
    pub.publish("mk", MARK, qos=1)
    assert Counter(sub.until()) == Counter([Msg("u/x", b"one", 1), Msg("mk", MARK, 0)])
    sub.unsubscribe("u/+")
    pub.publish("u/x", b"two", qos=1)
    pub.publish("u/y", b"three", qos=0)
    pub.publish("mk", MARK, qos=1)
    assert sub.until() == [Msg("mk", MARK, 0)]


def test_unsubscribe_wildcard_keeps_literal_subscription(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.10.4-1] With `u/x` and `u/+` both subscribed, removing `u/+` keeps `u/x`."""
    sub = raw("sub")
    assert sub.subscribe(("u/x", 2), ("u/+", 1)) == b"\x02\x01"
    sub.unsubscribe("u/+")
    pub = raw("pub")
    pub.publish("u/y", b"gone", qos=2)
    pub.publish("u/x", MARK, qos=2)
    assert sub.until() == [Msg("u/x", MARK, 2)]


def test_unsuback_when_nothing_removed(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.10.4-5] [MQTT-3.10.4-4] UNSUBACK (`B0 02 id`) arrives even when no
    subscription was removed, also twice for the same filter."""
    sub = raw("sub")
    sub.c.send(unsubscribe(0x0102, "never/subscribed"))
    p = sub.next_ctrl()
    assert (p.first, p.body) == (UNSUBACK, b"\x01\x02")
    assert sub.subscribe(("once", 0)) == b"\x00"
    for pkid in (7, 8):
        sub.c.send(unsubscribe(pkid, "once"))
        p = sub.next_ctrl()
        assert (p.first, p.body) == (UNSUBACK, struct.pack("!H", pkid))
    sub.ping()


def test_unsubscribe_several_filters_one_unsuback(raw: Callable[..., RawPeer]) -> None:
    """[MQTT-3.10.4-6] [MQTT-3.10.4-2] An UNSUBSCRIBE listing several filters gets exactly
    one UNSUBACK and every listed subscription is gone."""
    sub = raw("sub")
    assert sub.subscribe(("x", 1), ("y", 2), ("z", 1)) == b"\x01\x02\x01"
    sub.c.send(unsubscribe(9, "x", "nope", "y"))
    p = sub.next_ctrl()
    assert (p.first, p.body) == (UNSUBACK, b"\x00\x09")
    sub.ping()  # no second UNSUBACK
    pub = raw("pub")
    pub.publish("x", b"x", qos=1)
    pub.publish("y", b"y", qos=1)
    pub.publish("z", MARK, qos=1)
    assert sub.until() == [Msg("z", MARK, 1)]


# --------------------------------------------------------------------------- ordering


def test_ordering_per_qos_stream(
    raw: Callable[..., RawPeer], paho: Callable[..., PahoClient]
) -> None:
    """[MQTT-4.6.0-6] [MQTT-4.6.0-5] One publisher sends 1..200 on one topic at QoS 0, 1
    and 2, interleaved: every subscriber sees each QoS stream complete and in order."""
    n = 200
    raw_sub = raw("raw-sub")
    assert raw_sub.subscribe(("ord/t", 2)) == b"\x02"
    raw_sub1 = raw("raw-sub1")
    assert raw_sub1.subscribe(("ord/#", 1)) == b"\x01"
    paho_sub = paho("paho-sub")
    assert paho_sub.subscribe(("ord/t", 2)) == [2]
    pub = paho("publisher")
    infos = [
        pub.publish_async("ord/t", f"{q}:{i}".encode(), qos=q) for i in range(1, n + 1) for q in QOS
    ]
    for info in infos:
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    for sub, cap in ((raw_sub, 2), (raw_sub1, 1), (paho_sub, 2)):
        got = sub.take(3 * n)
        streams: dict[int, list[int]] = {0: [], 1: [], 2: []}
        for m in got:
            q, i = m.payload.decode().split(":")
            assert m.qos == min(int(q), cap) and m.topic == "ord/t" and not m.retain
            streams[int(q)].append(int(i))
        for q in QOS:
            assert streams[q] == list(range(1, n + 1)), f"QoS {q} stream out of order"


@pytest.mark.parametrize(("qos", "ack_type"), [(1, PUBACK), (2, PUBREC)])
def test_pipelined_acks_in_publish_order(
    raw: Callable[..., RawPeer], qos: int, ack_type: int
) -> None:
    """[MQTT-4.6.0-2] [MQTT-4.6.0-3] PUBACKs (QoS 1) and PUBRECs (QoS 2) for pipelined
    publishes come back in the order the PUBLISHes were sent; PUBCOMPs follow PUBRELs."""
    ids = [(i * 7919) % 65535 + 1 for i in range(1, 61)]
    assert len(set(ids)) == len(ids)
    c = raw("pipeliner")
    sub = raw("sub")
    assert sub.subscribe(("pipe", 2)) == b"\x02"
    c.c.send(b"".join(publish("pipe", str(i).encode(), qos=qos, pkid=i) for i in ids))
    acks = [c.next_ctrl() for _ in ids]
    assert [(p.first, p.body) for p in acks] == [(ack_type, struct.pack("!H", i)) for i in ids]
    if qos == 2:
        c.c.send(b"".join(ack(PUBREL, i) for i in ids))
        comps = [c.next_ctrl() for _ in ids]
        assert [(p.first, p.body) for p in comps] == [(PUBCOMP, struct.pack("!H", i)) for i in ids]
    assert [m.payload for m in sub.take(len(ids))] == [str(i).encode() for i in ids]


# --------------------------------------------------------------------------- routing


@pytest.mark.parametrize("qos", QOS)
def test_client_receives_own_publications(paho: Callable[..., PahoClient], qos: int) -> None:
    """[MQTT-4.5.0-1] A client subscribed to a topic receives its own publications (3.1.1
    has no "no local"), once."""
    c = paho("self")
    assert c.subscribe(("own/#", 2)) == [2]
    c.publish("own/t", b"echo", qos=qos)
    c.publish("own/t", MARK, qos=qos)
    assert c.until() == [Msg("own/t", b"echo", qos), Msg("own/t", MARK, qos)]


def test_fan_out(paho: Callable[..., PahoClient], raw: Callable[..., RawPeer]) -> None:
    """[MQTT-4.5.0-1] [MQTT-4.6.0-6] Ten subscribers each receive every message once, in
    order."""
    subs = [paho(f"fan-out-{i}") for i in range(10)]
    for i, s in enumerate(subs):
        assert s.subscribe(("fan/out", 1 + i % 2)) == [1 + i % 2]
    pub = raw("pub")
    n = 50
    for i in range(n):
        pub.publish("fan/out", str(i).encode(), qos=1)
    pub.publish("fan/out", MARK, qos=1)
    for s in subs:
        got = s.take(n + 1)
        assert [m.payload for m in got] == [str(i).encode() for i in range(n)] + [MARK]
        assert {m.qos for m in got} == {1}
    # Nothing more for anyone: one bounded wait covers all ten.
    assert [s.drain(SETTLE if s is subs[0] else 0) for s in subs] == [[]] * len(subs)


def test_fan_in(paho: Callable[..., PahoClient]) -> None:
    """[MQTT-4.5.0-1] [MQTT-4.6.0-6] Ten publishers publishing concurrently to one
    subscriber: every message counted once, each publisher's stream in order."""
    sub = paho("fan-in-sub")
    assert sub.subscribe(("fan/in/+", 2)) == [2]
    pubs = [paho(f"fan-in-{i}") for i in range(10)]
    n = 20
    infos = [
        p.publish_async(f"fan/in/{k}", f"{k}:{i}".encode(), qos=1 + (k % 2))
        for i in range(n)
        for k, p in enumerate(pubs)
    ]
    for info in infos:
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
    got = sub.take(n * len(pubs))
    per_pub: dict[int, list[int]] = {k: [] for k in range(len(pubs))}
    for m in got:
        k, i = map(int, m.payload.decode().split(":"))
        assert m.topic == f"fan/in/{k}" and m.qos == 1 + (k % 2)
        per_pub[k].append(i)
    assert per_pub == {k: list(range(n)) for k in range(len(pubs))}
    assert sub.drain() == []


@pytest.mark.parametrize("qos", QOS)
def test_large_payload_roundtrip(
    paho: Callable[..., PahoClient], raw: Callable[..., RawPeer], qos: int
) -> None:
    """[MQTT-4.5.0-1] A 512 KiB payload (below the 1 MiB max_packet_size) arrives intact at
    a raw and a paho subscriber."""
    payload = os.urandom(512 * 1024)
    raw_sub = raw("raw-big")
    assert raw_sub.subscribe(("big", 2)) == b"\x02"
    paho_sub = paho("paho-big")
    assert paho_sub.subscribe(("big", 2)) == [2]
    pub = paho("big-pub")
    pub.publish("big", payload, qos=qos)
    pub.publish("big", MARK, qos=qos)
    want = [Msg("big", payload, qos), Msg("big", MARK, qos)]
    assert raw_sub.until() == want
    assert paho_sub.until() == want
