"""Many idle connections, then traffic on all of them at once (issue 16).

An idle connection holds no read or output buffer: it gives them back to its worker
thread's spare lists when it goes quiet, and takes whichever spare is at hand when traffic
resumes. These tests prove the reuse loses and mixes up nothing: every connection's
messages arrive whole, in order and to the right client, burst after burst, with payloads
small enough to be copied next to their header, large enough to be written by reference
from the publisher's read buffer, and larger than one read.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator

import pytest
from pyo3mq import Broker
from support.mqtt_raw import PINGREQ, RawClient, ack, publish, subscribe
from support.teardown import closed_at_teardown
from test_pubsub import PahoClient

CONNECTIONS = 120
# Copied beside its header (< 1 KiB), written by reference (>= 1 KiB), more than one
# 16 KiB read.
SIZES = (100, 3_000, 40_000)


def body(burst: int, sender: int, seq: int, size: int) -> bytes:
    """A payload no other (burst, sender, seq) shares, of exactly `size` bytes."""
    seed = hashlib.sha256(f"{burst}/{sender}/{seq}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def test_idle_connections_then_a_burst_on_all_of_them_deliver_everything(port: int) -> None:
    clients = [RawClient(port, timeout=30.0) for _ in range(CONNECTIONS)]
    try:
        for i, c in enumerate(clients):
            c.connect(f"idle-{i}")
            c.send(subscribe(1, (f"idle/{i}", 1)))
            assert c.recv().type == 9, "SUBACK"
        # Two bursts with idle time between: the second runs on buffers the first gave
        # back, so stale or shared bytes would show up as wrong payloads.
        for burst in range(2):
            # Everyone publishes to its neighbour before anyone reads: all connections
            # busy at once.
            for i, c in enumerate(clients):
                target = (i + 1) % CONNECTIONS
                c.send(
                    b"".join(
                        publish(
                            f"idle/{target}",
                            body(burst, i, seq, size),
                            qos=1,
                            pkid=seq + 1,
                        )
                        for seq, size in enumerate(SIZES)
                    )
                )
            for i, c in enumerate(clients):
                sender = (i - 1) % CONNECTIONS
                acked: set[int] = set()
                delivered: list[bytes] = []
                while len(acked) < len(SIZES) or len(delivered) < len(SIZES):
                    pkt = c.recv()
                    if pkt.type == 4:  # PUBACK for our own PUBLISH
                        acked.add(pkt.pkid)
                    else:
                        assert pkt.type == 3, f"client {i}: unexpected packet {pkt.first:#x}"
                        topic, pkid, payload = pkt.publish_fields()
                        assert topic == f"idle/{i}"
                        assert pkid is not None
                        c.send(ack(0x40, pkid))
                        delivered.append(payload)
                assert acked == {1, 2, 3}, f"client {i}: PUBACKs {sorted(acked)}"
                expected = [body(burst, sender, seq, size) for seq, size in enumerate(SIZES)]
                assert delivered == expected, f"client {i}, burst {burst}: payloads differ"
    finally:
        for c in clients:
            c.close()


# --------------------------------------------------------------------------- parked connections
# A connection with nothing to do for `idle_park_after` seconds ends its task and leaves
# a small one waiting for its socket, its session, takeover, shutdown and keepalive
# (src/broker/connection/park.rs). These tests park connections (the broker's
# `connections_parked` figure says when) and then make every kind of wake-up happen.

PARK_AFTER = 0.2


def wait_parked(broker: Broker, n: int, timeout: float = 10.0) -> None:
    """Waits until at least `n` connections are parked."""
    deadline = time.monotonic() + timeout
    while broker.stats()["connections_parked"] < n:
        assert time.monotonic() < deadline, (
            f"{broker.stats()['connections_parked']} parked, not {n}"
        )
        time.sleep(0.02)


def wait_parks(broker: Broker, n: int, timeout: float = 10.0) -> None:
    """Waits until connections have parked at least `n` times since the start."""
    deadline = time.monotonic() + timeout
    while broker.stats()["connection_parks"] < n:
        assert time.monotonic() < deadline, f"{broker.stats()['connection_parks']} parks, not {n}"
        time.sleep(0.02)


@pytest.fixture
def parking(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(idle_park_after=PARK_AFTER)


@pytest.fixture
def paho(parking: Broker) -> Iterator[Callable[..., PahoClient]]:
    yield from closed_at_teardown(PahoClient, parking.addresses[0][1])


@pytest.fixture
def raw(parking: Broker) -> Iterator[Callable[..., RawClient]]:
    yield from closed_at_teardown(RawClient, parking.addresses[0][1])


def test_parked_subscribers_get_qos_0_1_2_in_order(
    parking: Broker, paho: Callable[..., PahoClient]
) -> None:
    """Deliveries wake parked subscribers: every message of every QoS arrives once, in
    order, at min(published, granted) QoS, twice over (parked, woken, parked again)."""
    subs = [paho(f"park-sub-{qos}") for qos in (0, 1, 2)]
    for qos, sub in enumerate(subs):
        assert sub.subscribe(("park/t", qos)) == [qos]
    pub = paho("park-pub")
    for rnd in range(2):
        wait_parked(parking, 4)
        assert parking.stats()["clients_connected"] == 4
        sent = [
            (f"{rnd}-{pub_qos}-{i}".encode(), pub_qos) for pub_qos in (0, 1, 2) for i in range(3)
        ]
        for payload, pub_qos in sent:
            pub.publish_async("park/t", payload, pub_qos)
        for sub_qos, sub in enumerate(subs):
            got = [(m.payload, m.qos) for m in sub.take(len(sent))]
            assert got == [(p, min(q, sub_qos)) for p, q in sent], f"subscriber QoS {sub_qos}"
            assert sub.drain() == []


def test_parked_connection_is_taken_over_and_its_will_fires(
    parking: Broker, paho: Callable[..., PahoClient], raw: Callable[..., RawClient]
) -> None:
    """[MQTT-3.1.4-2] A new connection with a parked connection's client id takes the
    session over: the parked one is closed (will published) and the new one gets the
    session, its subscription and what is published to it."""
    watcher = paho("park-watch")
    assert watcher.subscribe(("park/will", 1)) == [1]
    old = raw()
    old.connect("park-owner", clean=False, will=("park/will", b"taken over", 1, False))
    old.send(subscribe(1, ("park/owned", 1)))
    assert old.recv().type == 9, "SUBACK"
    wait_parked(parking, 2)
    new = paho("park-owner", clean_session=False)
    assert new.session_present is True
    old.expect_closed()
    will = watcher.next_msg()
    assert (will.topic, will.payload) == ("park/will", b"taken over")
    watcher.publish("park/owned", b"to the new owner", 1)
    got = new.next_msg()
    assert (got.topic, got.payload, got.qos) == ("park/owned", b"to the new owner", 1)


def test_parked_connection_keeps_keepalive(
    parking: Broker, paho: Callable[..., PahoClient], raw: Callable[..., RawClient]
) -> None:
    """[MQTT-3.1.2-24] Parking changes nothing in keepalive: a client that pings within
    1.5 times its keepalive stays (parking and waking between pings), one that is silent
    for 1.5 times its keepalive while parked is closed and its will is published."""
    watcher = paho("ka-watch")
    assert watcher.subscribe(("ka/will", 0)) == [0]
    pinger = raw()
    pinger.connect("ka-pinger", keepalive=2)
    silent = raw()
    silent.connect("ka-silent", keepalive=3, will=("ka/will", b"silent", 0, False))
    wait_parked(parking, 3)
    parks = parking.stats()["connection_parks"]
    opened = time.monotonic()
    for _ in range(3):
        # Pings 1.2 s apart, within the 3 s limit: each wakes a parked connection.
        pinger.send(PINGREQ)
        assert pinger.recv().type == 13, "PINGRESP"
        wait_parks(parking, parks + 1)
        parks = parking.stats()["connection_parks"]
        time.sleep(max(0.0, opened + 1.2 - time.monotonic()))
        opened = time.monotonic()
    # 4.5 s after its CONNECT.
    will = watcher.next_msg(timeout=10.0)
    assert (will.topic, will.payload) == ("ka/will", b"silent")
    silent.expect_closed()
    pinger.send(PINGREQ)
    assert pinger.recv().type == 13, "the pinging client is still served"


def test_stop_closes_parked_connections(make_broker: Callable[..., Broker]) -> None:
    """Stopping the broker wakes and closes parked connections at once: its 10 s wait
    for connections to close is not used up, and every client sees its socket closed."""
    broker = make_broker(idle_park_after=PARK_AFTER)
    port = broker.addresses[0][1]
    clients = [RawClient(port) for _ in range(20)]
    try:
        for i, c in enumerate(clients):
            c.connect(f"stop-{i}", will=("stop/will", f"w{i}".encode(), 0, False))
        wait_parked(broker, 20)
        assert broker.stats()["clients_connected"] == 20
        started = time.monotonic()
        broker.stop()
        assert time.monotonic() - started < 9.0, "parked connections held up the stop"
        for c in clients:
            c.expect_closed()
    finally:
        for c in clients:
            c.close()
