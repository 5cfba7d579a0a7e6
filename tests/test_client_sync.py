"""pyo3mq.SyncClient: the blocking face, without asyncio, against pyo3mq's broker and
Debian's mosquitto (and threaded scripted servers for the failure cases): context
manager, blocking subscribe and iterator, paho's wait_for_publish and on_message, use
from many threads at once, Ctrl-C, and the README's paho port printing what paho prints."""

from __future__ import annotations

import _thread
import contextlib
import inspect
import io
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pyo3mq
import pytest
from pyo3mq import (
    Client,
    ClientMessage,
    ConnectionState,
    MqttConnectionError,
    MqttNotAuthorizedError,
    MqttOperationTimeoutError,
    MqttReentrantError,
    StateChange,
    SyncClient,
)
from support.mqtt_raw import Packet
from test_client import server

__all__ = ["server"]  # a fixture, imported for its side effect

README = Path(__file__).resolve().parent.parent / "README.md"
CONNACK_OK = b"\x20\x02\x00\x00"


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pyo3mq-sync")]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --------------------------------------------------------------------------------------
# A threaded scripted server: each connection runs `script(conn)`
# --------------------------------------------------------------------------------------


def read_packet(conn: socket.socket) -> Packet:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    first = exactly(1)[0]
    length, shift = 0, 0
    while True:
        byte = exactly(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return Packet(first, exactly(length))


@contextlib.contextmanager
def scripted(script: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            script(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            conns.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        listener.close()


def deaf(conn: socket.socket) -> None:
    """CONNACK, then read everything and acknowledge nothing."""
    read_packet(conn)
    conn.sendall(CONNACK_OK)
    while True:
        read_packet(conn)


def close_after_subscribe(conn: socket.socket) -> None:
    read_packet(conn)
    conn.sendall(CONNACK_OK)
    read_packet(conn)


# --------------------------------------------------------------------------------------
# Basics
# --------------------------------------------------------------------------------------


def test_same_constructor_arguments_as_client() -> None:
    ours = dict(inspect.signature(SyncClient).parameters)
    assert ours.pop("on_message").default is None
    assert ours.pop("userdata").default is None
    theirs = dict(inspect.signature(Client).parameters)
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


def test_with_connects_and_disconnects(server: int) -> None:
    changes: list[StateChange] = []
    with SyncClient(
        "127.0.0.1", server, identifier="sync-with", on_state_change=changes.append
    ) as client:
        assert client.is_connected and client.identifier == "sync-with"
        assert len(sync_threads()) == 1  # the events thread; no on_message
    assert client.state is ConnectionState.CLOSED
    assert [c.state for c in changes] == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.CLOSED,
    ]
    assert wait_until(lambda: not sync_threads())
    with client:  # reusable
        assert client.subscribe("sync/again") == [0]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_and_iterate(server: int, qos: int) -> None:
    with SyncClient("127.0.0.1", server, identifier=f"sync-{qos}") as client:
        assert client.subscribe("sync/t/#", qos=2) == [2]
        handles = [client.publish(f"sync/t/{i}", b"%d" % i, qos=qos) for i in range(3)]
        for handle in handles:
            assert handle.wait_for_publish(5) is None
            assert handle.is_published() and handle.rc == 0
        assert all(h.mid > 0 for h in handles) == (qos > 0)
        got = []
        for message in client.messages(timeout=5):
            got.append(message)
            if len(got) == 3:
                break
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        (f"sync/t/{i}", b"%d" % i, qos) for i in range(3)
    ]
    assert all(isinstance(m, ClientMessage) and m.topic.matches("sync/t/+") for m in got)


def test_messages_ends_after_timeout_and_after_disconnect(server: int) -> None:
    with SyncClient("127.0.0.1", server) as client:
        client.subscribe("sync/quiet")
        start = time.monotonic()
        assert list(client.messages(timeout=0.3)) == []
        assert 0.25 <= time.monotonic() - start < 5
        timer = threading.Timer(0.3, client.disconnect)
        timer.start()
        assert list(client.messages()) == []  # no timeout: ends with the disconnect
        timer.join()
    with pytest.raises(MqttConnectionError, match="not connected"):
        list(SyncClient("127.0.0.1", server).messages())


def test_messages_raises_when_the_connection_is_lost(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    broker = make_broker()
    client = SyncClient("127.0.0.1", broker.addresses[0][1])
    client.connect()
    client.subscribe("sync/lost")
    threading.Timer(0.3, broker.stop).start()
    with pytest.raises(MqttConnectionError) as lost:
        list(client.messages())
    assert lost.value.rc == 7
    assert client.state is ConnectionState.CLOSED
    with pytest.raises(MqttConnectionError):
        client.publish("sync/lost", b"x")
    client.disconnect()  # no-op


def test_errors() -> None:
    def refuse(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(b"\x20\x02\x00\x05")

    with scripted(refuse) as port, pytest.raises(MqttNotAuthorizedError) as refused:
        SyncClient("127.0.0.1", port).connect()
    assert refused.value.rc == 5
    assert wait_until(lambda: not sync_threads())
    with scripted(deaf) as port, SyncClient("127.0.0.1", port, timeout=0.3) as client:
        with pytest.raises(MqttReentrantError):
            client.connect()
        with pytest.raises(MqttOperationTimeoutError, match="subscribe timed out"):
            client.subscribe("t")
        handle = client.publish("t", b"x", qos=1)
        assert handle.wait_for_publish(0.2) is None  # paho: quietly, on timeout
        assert not handle.is_published()
    with pytest.raises(MqttConnectionError):
        handle.wait_for_publish(1)  # the disconnect failed it
    assert handle.rc == 4
    with scripted(close_after_subscribe) as port, SyncClient("127.0.0.1", port) as client:
        handle = client.publish("t", b"x", qos=1)
        with pytest.raises(MqttConnectionError) as lost:
            client.subscribe("t")
        with pytest.raises(MqttConnectionError):
            handle.wait_for_publish(5)
        assert lost.value.rc == handle.rc == 7


# --------------------------------------------------------------------------------------
# paho-style callbacks
# --------------------------------------------------------------------------------------


def test_on_message_paho_signature_on_a_client_thread(server: int) -> None:
    """on_message(client, userdata, message) runs on the client's message thread, and
    may itself publish and wait for the acknowledgement."""
    calls: list[tuple[SyncClient, Any, bytes, str]] = []
    done = threading.Event()

    def on_message(client: SyncClient, userdata: Any, message: ClientMessage) -> None:
        calls.append((client, userdata, message.payload, threading.current_thread().name))
        if message.topic == "sync/cb/request":
            client.publish("sync/cb/reply", message.payload, qos=1).wait_for_publish(5)
        else:
            done.set()

    client = SyncClient("127.0.0.1", server, userdata={"k": 1}, on_message=on_message)
    with client:
        client.subscribe("sync/cb/#", qos=1)
        client.publish("sync/cb/request", b"ping", qos=1)
        assert done.wait(5)
    assert [(c[0], c[1], c[2]) for c in calls] == [
        (client, {"k": 1}, b"ping"),
        (client, {"k": 1}, b"ping"),
    ]
    assert {c[3] for c in calls} == {"pyo3mq-sync-messages"}
    assert wait_until(lambda: not sync_threads())


def test_on_message_set_late_and_unset(server: int) -> None:
    got: list[bytes] = []
    with SyncClient("127.0.0.1", server) as client:
        client.subscribe("sync/late", qos=1)
        client.on_message = lambda _c, _u, m: got.append(m.payload)
        client.publish("sync/late", b"1", qos=1).wait_for_publish(5)
        assert wait_until(lambda: got == [b"1"])
        client.on_message = None
        client.publish("sync/late", b"2", qos=1).wait_for_publish(5)
        # The message thread may have taken it already; it hands it to the iterator.
        assert [m.payload for m in client.messages(timeout=2)] == [b"2"]
    assert got == [b"1"]


def test_a_failing_callback_is_logged_and_delivery_goes_on(
    server: int, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []

    def on_message(_client: SyncClient, _userdata: Any, message: ClientMessage) -> None:
        if message.payload == b"bad":
            raise RuntimeError("callback bug")
        got.append(message.payload)

    with caplog.at_level(logging.ERROR, logger="pyo3mq"):
        with SyncClient("127.0.0.1", server, on_message=on_message) as client:
            client.subscribe("sync/bad", qos=1)
            client.publish("sync/bad", b"bad", qos=1)
            client.publish("sync/bad", b"good", qos=1)
            assert wait_until(lambda: got == [b"good"])
    assert "on_message callback failed" in caplog.text and "callback bug" in caplog.text


def test_loop_forever_returns_after_disconnect_and_raises_after_a_loss(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    broker = make_broker()
    port = broker.addresses[0][1]

    def on_message(client: SyncClient, _userdata: Any, _message: ClientMessage) -> None:
        client.disconnect()

    client = SyncClient("127.0.0.1", port, on_message=on_message)
    client.connect()
    client.subscribe("sync/forever")
    client.publish("sync/forever", b"stop")
    client.loop_forever()
    assert client.state is ConnectionState.CLOSED
    client.connect()
    threading.Timer(0.3, broker.stop).start()
    with pytest.raises(MqttConnectionError):
        client.loop_forever()


# --------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------


def test_many_threads_publish_and_iterate_at_once(server: int) -> None:
    """8 threads publish 300 QoS 1 messages each through one client while 2 threads
    iterate its messages: every handle completes and every message arrives once."""
    threads, per_thread = 8, 300
    received: list[bytes] = []
    lock = threading.Lock()
    with SyncClient("127.0.0.1", server, identifier="sync-threads", max_inflight=16) as client:
        client.subscribe("sync/threads", qos=1)

        def consume() -> None:
            for message in client.messages(timeout=10):
                with lock:
                    received.append(message.payload)
                    if len(received) == threads * per_thread:
                        return

        def produce(n: int) -> None:
            handles = [
                client.publish("sync/threads", b"%d-%d" % (n, i), qos=1) for i in range(per_thread)
            ]
            for handle in handles:
                handle.wait_for_publish(20)
                assert handle.is_published()

        consumers = [threading.Thread(target=consume) for _ in range(2)]
        producers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
        for t in consumers + producers:
            t.start()
        for t in producers:
            t.join(30)
        assert wait_until(lambda: len(received) == threads * per_thread, 20)
        client.disconnect()  # ends the other consumer's iteration
        for t in consumers:
            t.join(10)
    assert sorted(received) == sorted(
        b"%d-%d" % (n, i) for n in range(threads) for i in range(per_thread)
    )


def test_publish_blocks_while_the_buffer_is_full() -> None:
    """With a server that stops reading, publishing fills the kernel's buffers, then
    `max_buffered_bytes`: publish() blocks, and resumes once the server reads again."""
    reading = threading.Event()

    def slow(conn: socket.socket) -> None:
        read_packet(conn)
        conn.sendall(CONNACK_OK)
        reading.wait(20)
        while conn.recv(1 << 20):
            pass

    payload = b"x" * 65536
    sent = 0
    with (
        scripted(slow) as port,
        SyncClient("127.0.0.1", port, max_buffered_bytes=256 * 1024, keepalive=0) as client,
    ):

        def publish() -> None:
            nonlocal sent
            for _ in range(400):  # 26 MB: more than loopback's socket buffers hold
                client.publish("t", payload)
                sent += 1

        thread = threading.Thread(target=publish)
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive() and sent < 400
        reading.set()
        thread.join(20)
        assert not thread.is_alive() and sent == 400


def test_ctrl_c_reaches_a_main_thread_blocked_in_messages(server: int) -> None:
    class Interrupted(Exception):
        pass

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGINT, handler)
    try:
        with SyncClient("127.0.0.1", server) as client:
            client.subscribe("sync/ctrl-c")
            threading.Timer(0.3, _thread.interrupt_main).start()
            start = time.monotonic()
            with pytest.raises(Interrupted):
                for _ in client.messages():
                    pass
            assert time.monotonic() - start < 5
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------
# The README's paho port
# --------------------------------------------------------------------------------------


def test_readme_paho_port_prints_what_paho_prints(server: int) -> None:
    section = README.read_text().split("### Switching from paho-mqtt", 1)[1]
    paho_program, ours = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    assert "import paho.mqtt.client as mqtt" in paho_program and "SyncClient" in ours
    outputs = {}
    for name, program in [("paho", paho_program), ("pyo3mq", ours)]:
        program = program.replace('"127.0.0.1", 1883', f'"127.0.0.1", {server}')
        out = io.StringIO()
        namespace: dict[str, Any] = {"__name__": "program"}
        with contextlib.redirect_stdout(out):
            exec(compile(program, "<program>", "exec"), namespace)
            with SyncClient("127.0.0.1", server) as feeder:
                feeder.publish("sensors/kitchen", b"21", qos=1).wait_for_publish(5)
            assert wait_until(lambda out=out: out.getvalue().count("\n") >= 2)
            namespace["client"].disconnect()
            if name == "paho":
                namespace["client"].loop_stop()
        outputs[name] = out.getvalue().splitlines()
    assert outputs["paho"] == ["log sensors/logger b'up'", "log sensors/kitchen b'21'"]
    assert outputs["pyo3mq"] == outputs["paho"]
