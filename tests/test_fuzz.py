"""Property tests: no byte sequence from one client can hurt the broker or its other clients.

One broker serves the whole module. For each example a fresh client connects properly and
sends arbitrary bytes; the broker may answer, close, or wait for more, but once the client
half-closes its side the broker must close the connection (it did not hang on it), and a
long-lived client on the same broker must still get its PINGRESP and its own publish back.
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Iterator

import pyo3mq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.mqtt_raw import (
    PINGREQ,
    Closed,
    RawClient,
    packet,
    publish,
    remaining_length,
    subscribe,
)

QUIET = 0.02  # seconds of silence after which the broker is taken to be waiting for more
FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no .hypothesis directory in the project
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def fuzz_port() -> Iterator[int]:
    broker = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"])
    broker.start()
    try:
        yield broker.addresses[0][1]
    finally:
        broker.stop()


class Observer:
    """The long-lived client: subscribed to a topic only it knows."""

    def __init__(self, port: int) -> None:
        self.client = RawClient(port)
        self.topic = f"observer/{uuid.uuid4().hex}"
        self.count = 0
        assert self.client.connect(f"observer-{uuid.uuid4().hex}").body == b"\x00\x00"
        self.client.send(subscribe(1, (self.topic, 0)))
        ack = self.client.recv()
        assert (ack.first, ack.body) == (0x90, b"\x00\x01\x00")

    def check(self) -> None:
        """PINGREQ gets exactly `D0 00`; a QoS 0 publish to our own topic comes straight back."""
        self.client.send(PINGREQ)
        pong = self.client.recv()
        assert (pong.first, pong.body) == (0xD0, b"")
        self.count += 1
        payload = f"still-here-{self.count}".encode()
        self.client.send(publish(self.topic, payload))
        echo = self.client.recv()
        assert packet(echo.first, echo.body) == publish(self.topic, payload)


@pytest.fixture(scope="module")
def observer(fuzz_port: int) -> Iterator[Observer]:
    obs = Observer(fuzz_port)
    yield obs
    obs.client.close()


def drain_until_closed_or_quiet(sock: socket.socket, quiet: float, limit: float) -> bool:
    """Reads (and discards) what the broker sends; True at EOF, False after `quiet` seconds
    with nothing to read. Fails if the broker keeps talking for `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sock], [], [], quiet)
        if not readable:
            return False
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
    pytest.fail(f"the broker was still sending after {limit} s")


def throw_at_broker(port: int, data: bytes) -> None:
    """Connects, sends `data`, waits for close or quiet; then half-closes and requires EOF."""
    c = RawClient(port, timeout=5.0)
    try:
        pkt = c.connect("")
        assert pkt.body == b"\x00\x00"
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed already, before we finished writing: fine
        if drain_until_closed_or_quiet(c.sock, QUIET, limit=5.0):
            return
        # The broker is waiting for more bytes; end our side: it must close its side too.
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        assert drain_until_closed_or_quiet(c.sock, 3.0, limit=5.0), (
            "the broker kept the connection open after the client half-closed it"
        )
    except Closed:
        pytest.fail("the broker closed a connection on a valid CONNECT")
    finally:
        c.close()


@FUZZ_SETTINGS
@given(data=st.binary(max_size=512))
def test_random_bytes_after_connect(fuzz_port: int, observer: Observer, data: bytes) -> None:
    """[MQTT-4.8.0-1] [MQTT-4.8.0-2] Arbitrary bytes after a valid CONNECT end that connection
    at worst; another client keeps its PINGRESP and publish round trip."""
    throw_at_broker(fuzz_port, data)
    observer.check()


def framed(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


# A packet type in 0..15 and a flags nibble, weighted toward the types a client may send
# and their correct flags, so the decoder's deeper paths are reached.
first_bytes = st.one_of(
    st.integers(0, 255),
    st.sampled_from([0x10, 0x30, 0x32, 0x34, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xC0, 0xE0]),
)
utf8_field = st.text(max_size=20).map(lambda t: len(t.encode()).to_bytes(2, "big") + t.encode())
bodies = st.one_of(
    st.binary(max_size=300),
    # Plausible bodies: a string field, an id, then anything.
    st.tuples(utf8_field, st.binary(min_size=2, max_size=2), st.binary(max_size=40)).map(
        lambda parts: b"".join(parts)
    ),
    st.tuples(st.binary(min_size=2, max_size=2), utf8_field, st.integers(0, 255)).map(
        lambda parts: parts[0] + parts[1] + bytes([parts[2]])
    ),
)
structured_packets = st.lists(st.tuples(first_bytes, bodies), min_size=1, max_size=5)


@FUZZ_SETTINGS
@given(packets=structured_packets, tail=st.binary(max_size=8))
def test_structured_garbage_after_connect(
    fuzz_port: int, observer: Observer, packets: list[tuple[int, bytes]], tail: bytes
) -> None:
    """[MQTT-4.8.0-1] [MQTT-2.2.2-2] [MQTT-3.1.0-2] Well-framed packets of random type, flags
    and body (plus a ragged tail) after a valid CONNECT end that connection at worst;
    another client keeps its PINGRESP and publish round trip."""
    throw_at_broker(fuzz_port, b"".join(framed(f, b) for f, b in packets) + tail)
    observer.check()
