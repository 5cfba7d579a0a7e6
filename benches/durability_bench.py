"""Cost of `durability = "sync"` as the persistent state grows.

Starts a broker with `session_store = "sqlite:..."` and sync durability, creates
`--sessions` offline clean-session-0 clients (each subscribed to a topic of its own), then
measures how many QoS 1 messages per second (20,000 of them by default) go from one
pyo3mq Client to a persistent (clean-session-0) subscriber, which reads them as they
come. Each PUBACK waits for the SQLite commit that holds its message in the subscriber's
session; commits are grouped, and each writes only the sessions that changed.

    .venv/bin/python benches/durability_bench.py --sessions 0 10000
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

import pyo3mq


def connect_packet(client_id: bytes) -> bytes:
    body = b"\x00\x04MQTT\x04\x00\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    return b"\x10" + bytes([len(body)]) + body


def subscribe_packet(topic: bytes) -> bytes:
    body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x01"
    return b"\x82" + bytes([len(body)]) + body


def make_offline_sessions(port: int, count: int) -> None:
    """Clean-session-0 clients that subscribe and leave: persistent, offline state."""
    for i in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            client_id = b"offline-%06d" % i
            s.sendall(connect_packet(client_id) + subscribe_packet(b"idle/" + client_id))
            got = b""
            while len(got) < 4 + 5:  # CONNACK, SUBACK
                chunk = s.recv(64)
                if not chunk:
                    raise RuntimeError("the broker closed the connection")
                got += chunk
            s.sendall(b"\xe0\x00")  # DISCONNECT


async def measure(sessions: int, messages: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:{Path(tmp) / 'bench.db'}"
        async with pyo3mq.Broker(
            listeners=["tcp://127.0.0.1:0"],
            session_store=store,
            durability="sync",
            sys_interval=0,
        ) as broker:
            port = broker.addresses[0][1]
            await asyncio.to_thread(make_offline_sessions, port, sessions)
            subscriber = pyo3mq.Client(
                "127.0.0.1", port, client_id="bench-sub", clean_session=False
            )
            async with (
                subscriber,
                pyo3mq.Client("127.0.0.1", port, client_id="bench-pub") as client,
            ):
                await subscriber.subscribe("bench/t", qos=1)

                async def consume() -> None:
                    for _ in range(messages):
                        await subscriber.messages.__anext__()

                consumer = asyncio.ensure_future(consume())
                start = time.perf_counter()
                await asyncio.gather(
                    *(client.publish("bench/t", b"%06d" % i, qos=1) for i in range(messages))
                )
                await consumer
                return messages / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[0, 1000, 10000])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"pyo3mq {pyo3mq.__version__}: QoS 1 publishes/s with durability=sync")
    for n in args.sessions:
        rates = sorted(asyncio.run(measure(n, args.messages)) for _ in range(args.reps))
        print(
            f"  {n:>6} offline sessions: median {rates[len(rates) // 2]:>8.0f}/s "
            f"(min {rates[0]:.0f}, max {rates[-1]:.0f})"
        )


if __name__ == "__main__":
    main()
