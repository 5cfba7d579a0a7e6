"""Client benchmark: pyo3mq.Client against paho-mqtt and aiomqtt, same mosquitto, same run.

    .venv/bin/python benches/client_bench.py [--rounds 3] [--json out.json]

Measures, per library, from Python:

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

A fresh mosquitto (Debian's /usr/sbin/mosquitto, loopback, anonymous) serves the whole
run unless --port names a running broker. Rounds alternate the order of the libraries;
rates are the median of the rounds, and each ratio to paho-mqtt is the median of the
per-round ratios (paired within a round, so machine noise hits both sides alike).
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


@contextmanager
def mosquitto() -> Iterator[int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = os.path.join(tmp, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} {HOST}\nallow_anonymous true\n")
            if os.name == "posix" and os.geteuid() == 0:
                f.write("user root\n")
        proc = subprocess.Popen(
            [binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection((HOST, port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("mosquitto did not start") from None
                    time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait(5)


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
    parser.add_argument("--qos0-count", type=int, default=200_000)
    parser.add_argument("--qos1-count", type=int, default=50_000)
    parser.add_argument("--latency-count", type=int, default=2_000)
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--window", type=int, default=64, help="inflight window, all clients")
    parser.add_argument("--port", type=int, help="use the broker on this port, not mosquitto")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
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
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": {
            "pyo3mq": pyo3mq.__version__,
            "paho-mqtt": _version("paho-mqtt"),
            "aiomqtt": _version("aiomqtt"),
        },
        "payload_size": args.payload_size,
        "window": args.window,
        "rounds": args.rounds,
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
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


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
