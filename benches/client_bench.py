"""Client benchmark: pyo3mq's clients against paho-mqtt and aiomqtt, in the same run.

    .venv/bin/python benches/client_bench.py [--rounds 3] [--only flow|publish] [--json F]

Two suites. **flow** (receiving), against pyo3mq's broker and Debian's mosquitto, each
measured on a quiet machine and again while another process keeps one core busy:

- receive-only: another process (a raw socket, pre-encoded packets) publishes N QoS 0
  messages of 64 bytes, then an end marker, to a topic the client subscribes to; the
  rate is N over the time from the start of the feed to the marker's arrival.
- publish+receive: the client publishes N QoS 0 messages to a topic it subscribes to and
  receives them all back; the rate is N over the time until the last one arrived.

Libraries: pyo3mq.Client (asyncio), pyo3mq.SyncClient (blocking, iterating
`messages()`), paho-mqtt (`loop_start()` thread, counting in `on_message`) and aiomqtt.
Both brokers queue without limit here (mosquitto `max_queued_messages 0`, pyo3mq
`max_queued_messages = 10000000`), so a slow client loses nothing and every library is
timed on the same N messages.

**publish** (sending), against mosquitto:

- QoS 0 publish rate: N publishes of a 64-byte payload, then one QoS 1 publish awaited
  as a barrier (it is acknowledged only after everything before it reached the broker),
  so the time covers delivery to the broker, not just queueing in the client.
- QoS 1 publish rate: N publishes started, then all acknowledgements awaited (each
  library's natural way of having many in flight: futures + gather for pyo3mq, tasks +
  gather 1000 at a time for aiomqtt, MQTTMessageInfo.wait_for_publish for paho with its
  network loop thread). Every client gets the same inflight window (--window, 64).
- CPU µs/msg: process CPU time (every thread of the benchmark process: Python, the
  pyo3mq runtime, paho's loop thread; not the broker) per message.
- The broker's ceiling: the same QoS 0 messages pre-encoded and written with one
  sendall from a raw socket, with the same barrier. No client can beat it.
- Round-trip latency: the client is subscribed to a topic and publishes a QoS 0 request
  to it, then waits for the message to come back through the broker; repeated, one at a
  time. Reported as median and 99th percentile.

Fresh brokers (Debian's /usr/sbin/mosquitto and the `pyo3mq` command, loopback,
anonymous) serve the whole run unless --port names a running broker (publish suite
only). Rounds alternate the order of the libraries; rates are the median of the rounds,
and each ratio to paho-mqtt is the median of the per-round ratios (paired within a
round, so machine noise hits both sides alike).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pyo3mq

HOST = "127.0.0.1"
TOPIC = "bench/t"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _serve(command: list[str], port: int, name: str) -> Iterator[int]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start") from None
                time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def mosquitto(*lines: str) -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} {HOST}\nallow_anonymous true\n")
            f.writelines(f"{line}\n" for line in lines)
            if os.name == "posix" and os.geteuid() == 0:
                f.write("user root\n")
        yield from _serve([binary, "-c", conf], port, "mosquitto")


@contextmanager
def pyo3mq_broker() -> Iterator[int]:
    """The `pyo3mq` command from this virtualenv, in its own process."""
    port = free_port()
    command = os.path.join(os.path.dirname(sys.executable), "pyo3mq")
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "pyo3mq.toml")
        with open(conf, "w") as f:
            f.write("max_queued_messages = 10000000\n")
        yield from _serve([command, "--port", str(port), "--config", conf], port, "pyo3mq")


# --------------------------------------------------------------------------------------
# pyo3mq
# --------------------------------------------------------------------------------------


async def pyo3mq_qos0(port: int, n: int, payload: bytes, window: int) -> tuple[float, float]:
    async with pyo3mq.Client(HOST, port, max_inflight=window) as c:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await c.publish(TOPIC, payload)
        await c.publish(TOPIC, payload, qos=1)
        return time.perf_counter() - start, time.process_time() - cpu


async def pyo3mq_qos1(port: int, n: int, payload: bytes, window: int) -> tuple[float, float]:
    async with pyo3mq.Client(HOST, port, max_inflight=window) as c:
        start, cpu = time.perf_counter(), time.process_time()
        futures = [c.publish(TOPIC, payload, qos=1) for _ in range(n)]
        await asyncio.gather(*futures)
        return time.perf_counter() - start, time.process_time() - cpu


async def round_trips(c: Any, name: str, n: int, payload: bytes) -> list[float]:
    """Publish, then wait for the message to come back, `n` times (the pyo3mq and aiomqtt
    clients share the calls this needs)."""
    topic = f"bench/rtt/{name}/{os.getpid()}"
    await c.subscribe(topic)
    messages = c.messages
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await c.publish(topic, payload)
        await messages.__anext__()
        samples.append(time.perf_counter() - start)
    return samples


async def pyo3mq_latency(port: int, n: int, payload: bytes) -> list[float]:
    async with pyo3mq.Client(HOST, port) as c:
        return await round_trips(c, "pyo3mq", n, payload)


# --------------------------------------------------------------------------------------
# aiomqtt
# --------------------------------------------------------------------------------------


async def aiomqtt_qos0(port: int, n: int, payload: bytes, window: int) -> tuple[float, float]:
    async with aiomqtt.Client(HOST, port, max_inflight_messages=window) as c:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await c.publish(TOPIC, payload)
        await c.publish(TOPIC, payload, qos=1)
        return time.perf_counter() - start, time.process_time() - cpu


async def aiomqtt_qos1(port: int, n: int, payload: bytes, window: int) -> tuple[float, float]:
    async with aiomqtt.Client(HOST, port, max_inflight_messages=window) as c:
        # aiomqtt lists its pending calls on every publish (O(pending) each), so it gets
        # 1000 publishes at a time, its fastest chunk size (64: 1.5k/s, 1000: 5.3k/s,
        # 10000: 1.9k/s measured), rather than all n at once.
        c.pending_calls_threshold = n + 1
        start, cpu = time.perf_counter(), time.process_time()
        for done in range(0, n, 1000):
            batch = min(1000, n - done)
            await asyncio.gather(*(c.publish(TOPIC, payload, qos=1) for _ in range(batch)))
        return time.perf_counter() - start, time.process_time() - cpu


async def aiomqtt_latency(port: int, n: int, payload: bytes) -> list[float]:
    async with aiomqtt.Client(HOST, port) as c:
        return await round_trips(c, "aiomqtt", n, payload)


# --------------------------------------------------------------------------------------
# paho-mqtt (its network loop in its own thread, as `loop_start()` runs it)
# --------------------------------------------------------------------------------------


@contextmanager
def paho_client(port: int, window: int = 20) -> Iterator[paho.Client]:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.max_inflight_messages_set(window)
    connected = threading.Event()
    c.on_connect = lambda *args: connected.set()
    c.connect(HOST, port)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("paho did not connect")
    try:
        yield c
    finally:
        c.disconnect()
        c.loop_stop()


def paho_qos0(port: int, n: int, payload: bytes, window: int) -> tuple[float, float]:
    with paho_client(port, window) as c:
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            c.publish(TOPIC, payload, qos=0)
        c.publish(TOPIC, payload, qos=1).wait_for_publish(60)
        return time.perf_counter() - start, time.process_time() - cpu


def paho_qos1(port: int, n: int, payload: bytes, window: int) -> tuple[float, float]:
    with paho_client(port, window) as c:
        start, cpu = time.perf_counter(), time.process_time()
        infos = [c.publish(TOPIC, payload, qos=1) for _ in range(n)]
        for info in infos:
            info.wait_for_publish(60)
        return time.perf_counter() - start, time.process_time() - cpu


def paho_latency(port: int, n: int, payload: bytes) -> list[float]:
    topic = f"bench/rtt/paho/{os.getpid()}"
    with paho_client(port) as c:
        arrived = threading.Event()
        c.on_message = lambda *args: arrived.set()
        subscribed = threading.Event()
        c.on_subscribe = lambda *args: subscribed.set()
        c.subscribe(topic)
        subscribed.wait(10)
        samples = []
        for _ in range(n):
            arrived.clear()
            start = time.perf_counter()
            c.publish(topic, payload)
            if not arrived.wait(10):
                raise RuntimeError("paho: no round trip")
            samples.append(time.perf_counter() - start)
        return samples


# --------------------------------------------------------------------------------------
# The broker's own ceiling: pre-encoded QoS 0 PUBLISH packets written by one sendall
# --------------------------------------------------------------------------------------


def _packet(first: int, body: bytes) -> bytes:
    out = bytearray([first])
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + body


def raw_ceiling(port: int, n: int, payload: bytes) -> float:
    """QoS 0 messages/s the broker ingests when a client costs nothing."""
    topic = TOPIC.encode()
    name = struct.pack("!H", len(topic)) + topic
    connect = _packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
    blob = _packet(0x30, name + payload) * n
    barrier = _packet(0x32, name + b"\x00\x01" + payload)
    with socket.create_connection((HOST, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(connect)
        sock.recv(4)
        start = time.perf_counter()
        sock.sendall(blob + barrier)
        if sock.recv(4)[:1] != b"\x40":
            raise RuntimeError("no PUBACK")
        return n / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------
# The flow suite: receive-only and publish+receive
# --------------------------------------------------------------------------------------

FLOW_TOPIC = "bench/flow"
END = b"end"

#: The feeder: a raw socket in a process of its own, with the N PUBLISH packets and the end
#: marker encoded before the start signal, so that it costs the client side nothing.
FEEDER = r"""
import socket, struct, sys

host, port, topic, n, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:6])


def packet(first, body):
    out, length = bytearray([first]), len(body)
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out) + body


name = struct.pack("!H", len(topic)) + topic.encode()
blob = packet(0x30, name + b"x" * size) * n + packet(0x30, name + b"end")
sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.sendall(packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"))
sock.recv(4)
print("ready", flush=True)
sys.stdin.readline()
sock.sendall(blob)
sys.stdin.readline()
sock.sendall(b"\xe0\x00")
sock.close()
"""


class Feeder:
    """Publishes N messages and the end marker from another process when `go()` is
    called; `go()` returns the start time."""

    def __init__(self, port: int, n: int, size: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FEEDER, HOST, str(port), FLOW_TOPIC, str(n), str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the feeder did not connect")

    def go(self) -> float:
        assert self.proc.stdin is not None
        start = time.perf_counter()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return start

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("done\n")
        self.proc.stdin.close()
        self.proc.wait(30)


async def pyo3mq_receive(port: int, n: int, size: int) -> tuple[int, float]:
    async with pyo3mq.Client(HOST, port) as c:
        await c.subscribe(FLOW_TOPIC)
        feeder = Feeder(port, n, size)
        count = 0
        start = feeder.go()
        async for message in c.messages:
            if message.payload == END:
                break
            count += 1
        elapsed = time.perf_counter() - start
    feeder.close()
    return count, elapsed


def sync_receive(port: int, n: int, size: int) -> tuple[int, float]:
    with pyo3mq.SyncClient(HOST, port) as c:
        c.subscribe(FLOW_TOPIC)
        feeder = Feeder(port, n, size)
        count = 0
        start = feeder.go()
        for message in c.messages():
            if message.payload == END:
                break
            count += 1
        elapsed = time.perf_counter() - start
    feeder.close()
    return count, elapsed


async def aiomqtt_receive(port: int, n: int, size: int) -> tuple[int, float]:
    async with aiomqtt.Client(HOST, port, max_queued_incoming_messages=0) as c:
        await c.subscribe(FLOW_TOPIC)
        feeder = Feeder(port, n, size)
        count = 0
        start = feeder.go()
        async for message in c.messages:
            if message.payload == END:
                break
            count += 1
        elapsed = time.perf_counter() - start
    feeder.close()
    return count, elapsed


def _paho_subscribe(c: paho.Client, topic: str) -> None:
    subscribed = threading.Event()
    c.on_subscribe = lambda *args: subscribed.set()
    c.subscribe(topic)
    if not subscribed.wait(10):
        raise RuntimeError("paho: no SUBACK")


def paho_receive(port: int, n: int, size: int) -> tuple[int, float]:
    done = threading.Event()
    count = 0

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        nonlocal count
        if message.payload == END:
            done.set()
        else:
            count += 1

    with paho_client(port) as c:
        c.on_message = on_message
        _paho_subscribe(c, FLOW_TOPIC)
        feeder = Feeder(port, n, size)
        start = feeder.go()
        if not done.wait(600):
            raise RuntimeError("paho: no end marker")
        elapsed = time.perf_counter() - start
    feeder.close()
    return count, elapsed


async def pyo3mq_publish_receive(port: int, n: int, size: int) -> tuple[int, float]:
    payload = b"x" * size
    topic = f"{FLOW_TOPIC}/{os.getpid()}/pyo3mq"
    async with pyo3mq.Client(HOST, port) as c:
        await c.subscribe(topic)

        async def consume() -> int:
            count = 0
            async for _message in c.messages:
                count += 1
                if count == n:
                    break
            return count

        start = time.perf_counter()
        consumer = asyncio.ensure_future(consume())
        for _ in range(n):
            await c.publish(topic, payload)
        count = await consumer
        return count, time.perf_counter() - start


def sync_publish_receive(port: int, n: int, size: int) -> tuple[int, float]:
    payload = b"x" * size
    topic = f"{FLOW_TOPIC}/{os.getpid()}/sync"
    with pyo3mq.SyncClient(HOST, port) as c:
        c.subscribe(topic)

        def produce() -> None:
            for _ in range(n):
                c.publish(topic, payload)

        start = time.perf_counter()
        producer = threading.Thread(target=produce)
        producer.start()
        count = 0
        for _message in c.messages():
            count += 1
            if count == n:
                break
        elapsed = time.perf_counter() - start
        producer.join()
        return count, elapsed


async def aiomqtt_publish_receive(port: int, n: int, size: int) -> tuple[int, float]:
    payload = b"x" * size
    topic = f"{FLOW_TOPIC}/{os.getpid()}/aiomqtt"
    async with aiomqtt.Client(HOST, port, max_queued_incoming_messages=0) as c:
        await c.subscribe(topic)

        async def consume() -> int:
            count = 0
            async for _message in c.messages:
                count += 1
                if count == n:
                    break
            return count

        start = time.perf_counter()
        consumer = asyncio.ensure_future(consume())
        for _ in range(n):
            await c.publish(topic, payload)
        count = await consumer
        return count, time.perf_counter() - start


def paho_publish_receive(port: int, n: int, size: int) -> tuple[int, float]:
    payload = b"x" * size
    topic = f"{FLOW_TOPIC}/{os.getpid()}/paho"
    done = threading.Event()
    count = 0

    def on_message(_c: paho.Client, _u: Any, _message: paho.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    with paho_client(port) as c:
        c.on_message = on_message
        _paho_subscribe(c, topic)
        start = time.perf_counter()
        for _ in range(n):
            c.publish(topic, payload)
        if not done.wait(600):
            raise RuntimeError(f"paho: {count} of {n} messages came back")
        return count, time.perf_counter() - start


def _raw_subscriber(port: int, topic: str) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"))
    if sock.recv(4)[:1] != b"\x20":
        raise RuntimeError("raw socket: no CONNACK")
    name = struct.pack("!H", len(topic)) + topic.encode()
    sock.sendall(_packet(0x82, b"\x00\x01" + name + b"\x00"))
    if sock.recv(5)[:1] != b"\x90":
        raise RuntimeError("raw socket: no SUBACK")
    return sock


def _read_until(sock: socket.socket, total: int | None, tail: bytes) -> int:
    """Reads until `total` bytes came, or until the stream ends with `tail`; returns the
    bytes read (tail excluded)."""
    buffer = bytearray(1 << 20)
    got, last = 0, b""
    while True:
        n = sock.recv_into(buffer)
        if n == 0:
            raise RuntimeError("raw socket: closed")
        got += n
        if total is not None and got >= total:
            return got
        last = (last + bytes(buffer[max(0, n - len(tail)) : n]))[-len(tail) :]
        if tail and last == tail:
            return got - len(tail)


def raw_receive(port: int, n: int, size: int) -> tuple[int, float]:
    """What the broker delivers when reading costs nothing: the ceiling of receive."""
    name = struct.pack("!H", len(FLOW_TOPIC)) + FLOW_TOPIC.encode()
    one = len(_packet(0x30, name + b"x" * size))
    with _raw_subscriber(port, FLOW_TOPIC) as sock:
        feeder = Feeder(port, n, size)
        start = feeder.go()
        got = _read_until(sock, None, _packet(0x30, name + END))
        elapsed = time.perf_counter() - start
    feeder.close()
    return got // one, elapsed


def raw_publish_receive(port: int, n: int, size: int) -> tuple[int, float]:
    """The same socket writes N pre-encoded messages and reads them back: the ceiling of
    publish+receive."""
    topic = f"{FLOW_TOPIC}/{os.getpid()}/raw"
    name = struct.pack("!H", len(topic)) + topic.encode()
    one = _packet(0x30, name + b"x" * size)
    with _raw_subscriber(port, topic) as sock:
        start = time.perf_counter()
        writer = threading.Thread(target=sock.sendall, args=(one * n,))
        writer.start()
        got = _read_until(sock, len(one) * n, b"")
        elapsed = time.perf_counter() - start
        writer.join()
    return got // len(one), elapsed


FLOW_LIBRARIES = ("pyo3mq", "pyo3mq-sync", "paho-mqtt", "aiomqtt", "raw socket")
FLOW = {
    "receive": {
        "pyo3mq": pyo3mq_receive,
        "pyo3mq-sync": sync_receive,
        "paho-mqtt": paho_receive,
        "aiomqtt": aiomqtt_receive,
        "raw socket": raw_receive,
    },
    "publish+receive": {
        "pyo3mq": pyo3mq_publish_receive,
        "pyo3mq-sync": sync_publish_receive,
        "paho-mqtt": paho_publish_receive,
        "aiomqtt": aiomqtt_publish_receive,
        "raw socket": raw_publish_receive,
    },
}
FLOW_BROKERS: dict[str, Callable[[], Any]] = {
    "pyo3mq": pyo3mq_broker,
    "mosquitto": lambda: mosquitto("max_queued_messages 0"),
}
LOADS = ("quiet", "busy")


@contextmanager
def busy(load: str) -> Iterator[None]:
    """With "busy", another process spins on one core for the duration."""
    if load != "busy":
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def flow_suite(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    n, size = args.flow_count, args.payload_size
    # rates[broker][scenario][load][library] = per-round rates
    rates: dict[str, Any] = {}
    lost: list[str] = []
    for broker, serve in FLOW_BROKERS.items():
        rates[broker] = {
            k: {load: {lib: [] for lib in FLOW_LIBRARIES} for load in LOADS} for k in FLOW
        }
        with serve() as port:
            for kind in FLOW:  # warm-up: imports, first connections, the client runtime
                for lib in FLOW_LIBRARIES:
                    _call(FLOW[kind][lib], port, 1000, size)
            for load in LOADS:
                with busy(load):
                    for r in range(args.rounds):
                        order = FLOW_LIBRARIES if r % 2 == 0 else tuple(reversed(FLOW_LIBRARIES))
                        for kind in FLOW:
                            for lib in order:
                                count, elapsed = _call(FLOW[kind][lib], port, n, size)
                                if count != n:
                                    lost.append(f"{broker} {load} {kind} {lib}: {count} of {n}")
                                rate = count / elapsed
                                rates[broker][kind][load][lib].append(rate)
                                log(
                                    f"{broker:9} {load:5} round {r + 1} {kind:15} {lib:11} "
                                    f"{rate:>10,.0f} msg/s"
                                )
    med = statistics.median
    results: dict[str, Any] = {"count": n, "rates": rates, "lost": lost}
    lines = []
    for broker in FLOW_BROKERS:
        lines += [
            "",
            f"Against {broker}:",
            "",
            "| client | receive msg/s | vs paho | busy: receive | vs paho "
            "| publish+receive msg/s | vs paho | busy: publish+receive | vs paho |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for lib in FLOW_LIBRARIES:
            cells = []
            for kind in FLOW:
                for load in LOADS:
                    mine = rates[broker][kind][load][lib]
                    paho_rates = rates[broker][kind][load]["paho-mqtt"]
                    ratio = med(a / b for a, b in zip(mine, paho_rates))
                    results.setdefault(broker, {}).setdefault(lib, {})[f"{kind} {load}"] = {
                        "rate": med(mine),
                        "vs_paho": ratio,
                    }
                    cells += [f"{med(mine):,.0f}", f"{ratio:.1f}x"]
            lines.append(f"| {lib} | " + " | ".join(cells) + " |")
    if lost:
        lines += ["", "Messages lost (should not happen with unlimited queues):", *lost]
    return results, lines


# --------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------

LIBRARIES = ("pyo3mq", "paho-mqtt", "aiomqtt")
THROUGHPUT = {
    "qos0": {"pyo3mq": pyo3mq_qos0, "aiomqtt": aiomqtt_qos0, "paho-mqtt": paho_qos0},
    "qos1": {"pyo3mq": pyo3mq_qos1, "aiomqtt": aiomqtt_qos1, "paho-mqtt": paho_qos1},
}
LATENCY = {"pyo3mq": pyo3mq_latency, "aiomqtt": aiomqtt_latency, "paho-mqtt": paho_latency}


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return asyncio.run(fn(*args)) if asyncio.iscoroutinefunction(fn) else fn(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("flow", "publish"), help="run one suite")
    parser.add_argument("--flow-count", type=int, default=100_000)
    parser.add_argument("--qos0-count", type=int, default=200_000)
    parser.add_argument("--qos1-count", type=int, default=50_000)
    parser.add_argument("--latency-count", type=int, default=2_000)
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--window", type=int, default=64, help="inflight window, all clients")
    parser.add_argument("--port", type=int, help="publish suite: the broker on this port")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": {
            "pyo3mq": pyo3mq.__version__,
            "paho-mqtt": _version("paho-mqtt"),
            "aiomqtt": _version("aiomqtt"),
        },
        "payload_size": args.payload_size,
        "rounds": args.rounds,
    }
    lines: list[str] = []
    if args.only in (None, "flow"):
        results["flow"], flow_lines = flow_suite(args)
        lines += ["Receiving (QoS 0, messages/s, median of rounds; ratios paired per round):"]
        lines += flow_lines
    if args.only in (None, "publish"):
        results["publish"], publish_lines = publish_suite(args)
        lines += ["", "Publishing, against mosquitto:", "", *publish_lines]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def publish_suite(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    payload = os.urandom(args.payload_size)
    counts = {"qos0": args.qos0_count, "qos1": args.qos1_count}

    rates: dict[str, dict[str, list[float]]] = {k: {lib: [] for lib in LIBRARIES} for k in counts}
    cpu: dict[str, dict[str, list[float]]] = {k: {lib: [] for lib in LIBRARIES} for k in counts}
    latencies: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    ceilings: list[float] = []

    with mosquitto() if args.port is None else _given(args.port) as port:
        for lib in LIBRARIES:  # warm-up: imports, first connections, the client runtime
            _call(LATENCY[lib], port, 50, payload)
        for r in range(args.rounds):
            order = LIBRARIES if r % 2 == 0 else tuple(reversed(LIBRARIES))
            ceilings.append(raw_ceiling(port, args.qos0_count, payload))
            log(f"round {r + 1} qos0    raw socket {ceilings[-1]:>10,.0f} msg/s")
            for kind, n in counts.items():
                for lib in order:
                    elapsed, used = _call(THROUGHPUT[kind][lib], port, n, payload, args.window)
                    rates[kind][lib].append(n / elapsed)
                    cpu[kind][lib].append(used / n * 1e6)
                    log(
                        f"round {r + 1} {kind}    {lib:10} {n / elapsed:>10,.0f} msg/s "
                        f"{used / n * 1e6:6.2f} µs CPU/msg"
                    )
            for lib in order:
                samples = _call(LATENCY[lib], port, args.latency_count, payload)
                latencies[lib].extend(samples)
                rtt = statistics.median(samples) * 1e6
                log(f"round {r + 1} latency {lib:10} median {rtt:.0f} µs")

    med = statistics.median
    results: dict[str, Any] = {
        "window": args.window,
        "counts": counts,
        "broker_qos0_ceiling": med(ceilings),
    }

    def vs_paho(kind: str, lib: str) -> float:
        # Paired: each round's rate over paho's in the same round, then the median, so
        # that a slow moment of the machine weighs on both sides of a ratio alike.
        pairs = zip(rates[kind][lib], rates[kind]["paho-mqtt"])
        return med(mine / theirs for mine, theirs in pairs)

    lines = [
        "| client | QoS 0 msg/s | vs paho | CPU µs/msg | QoS 1 msg/s | vs paho | CPU µs/msg "
        "| RTT median µs | RTT p99 µs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lib in LIBRARIES:
        q0, q1 = med(rates["qos0"][lib]), med(rates["qos1"][lib])
        samples = sorted(latencies[lib])
        rtt, p99 = med(samples) * 1e6, samples[max(0, int(len(samples) * 0.99) - 1)] * 1e6
        c0, c1 = med(cpu["qos0"][lib]), med(cpu["qos1"][lib])
        r0, r1 = vs_paho("qos0", lib), vs_paho("qos1", lib)
        results[lib] = {
            "qos0_rate": q0,
            "qos0_vs_paho": r0,
            "qos0_cpu_us_per_msg": c0,
            "qos1_rate": q1,
            "qos1_vs_paho": r1,
            "qos1_cpu_us_per_msg": c1,
            "rtt_median_us": rtt,
            "rtt_p99_us": p99,
            "qos0_rounds": rates["qos0"][lib],
            "qos1_rounds": rates["qos1"][lib],
        }
        lines.append(
            f"| {lib} | {q0:,.0f} | {r0:.1f}x | {c0:.2f} | {q1:,.0f} | "
            f"{r1:.1f}x | {c1:.2f} | {rtt:.0f} | {p99:.0f} |"
        )
    ceiling_vs_paho = med(c / p for c, p in zip(ceilings, rates["qos0"]["paho-mqtt"]))
    results["broker_qos0_ceiling_vs_paho"] = ceiling_vs_paho
    results["broker_qos0_ceiling_rounds"] = ceilings
    lines.append(
        f"| raw socket (broker ceiling) | {med(ceilings):,.0f} | {ceiling_vs_paho:.1f}x "
        "| | | | | | |"
    )
    return results, lines


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def _given(port: int) -> Iterator[int]:
    yield port


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    raise SystemExit(main())
