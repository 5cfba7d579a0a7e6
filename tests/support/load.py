"""Load generators for the isolation tests and benchmark (tests/test_isolation.py,
benches/isolation_bench.py). Raw MQTT 3.1.1 over plain sockets, no client library, and
each meant to run in a process of its own, so that what it measures is the broker and not
the GIL of the process that embeds it.

    python tests/support/load.py flood PORT TOPIC [--connections 4] [--rate 150000]
    python tests/support/load.py logins PORT [--count 200] [--concurrency 20]
    python tests/support/load.py paced PORT [--rate 200] [--seconds 10] [--qos 0]

`flood` prints "ready" once every connection is accepted and floods until killed (or
`--seconds`); `logins` and `paced` print one JSON object with their figures.

`logins` and `paced` time what they receive by the kernel's arrival stamp of the bytes
(SO_TIMESTAMPNS), not by when this process got round to reading them: on a busy machine
(the broker's floods share the cores with it) the load process itself can wait tens of
milliseconds for a CPU, and that wait is not the broker's latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_raw import DISCONNECT, connect, publish, subscribe, unsubscribe

HOST = "127.0.0.1"
# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS; Linux's generic value, which Python's socket module
# does not name): each read carries the arrival time (CLOCK_REALTIME) of its data.
SO_TIMESTAMPNS = 35
STAMP_SPACE = socket.CMSG_SPACE(16)
# A flooding publisher's messages: a short topic and a 16-byte payload (21-byte packets),
# as small as real telemetry gets, so the broker does the most work per byte.
FLOOD_PAYLOAD = b"0123456789abcdef"
TICK = 0.01


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# -- flood -----------------------------------------------------------------------------


def _flood_one(port: int, topic: str, client_id: str, rate: int, until: float) -> None:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.sendall(connect(client_id, keepalive=0))
    if sock.recv(4)[:2] != b"\x20\x02":
        raise SystemExit(f"{client_id}: no CONNACK")
    sock.settimeout(None)
    packet = publish(topic, FLOOD_PAYLOAD)
    try:
        if rate <= 0:
            burst = packet * (65536 // len(packet))
            while time.monotonic() < until:
                sock.sendall(burst)
        else:
            # `rate` messages per second in 10 ms bursts, on an absolute schedule.
            burst = packet * max(1, int(rate * TICK))
            due = time.monotonic()
            while due < until:
                sock.sendall(burst)
                due += TICK
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
    except OSError:
        pass  # the broker went away: the flood is over
    finally:
        sock.close()


def flood(port: int, topic: str, connections: int, rate: int, seconds: float) -> None:
    """`connections` publishers of QoS 0 to `topic`, each at `rate` messages per second
    (0: as fast as the socket takes them)."""
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=_flood_one, args=(port, topic, f"flood-{i}", rate, until), daemon=True
        )
        for i in range(connections)
    ]
    for t in threads:
        t.start()
    print("ready", flush=True)
    for t in threads:
        t.join()


# -- stamped reads ---------------------------------------------------------------------


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


class Stamped:
    """A TCP connection on the running loop whose reads know when their bytes arrived:
    `arrival` is the kernel's time stamp (`time.time()` clock) of the data that completed
    the last `readexactly`."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.arrival = 0.0

    @classmethod
    async def open(cls, port: int) -> Stamped:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def write(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, STAMP_SPACE)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(self.sock.fileno(), _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(self.sock.fileno())
                continue
            if not data:
                raise asyncio.IncompleteReadError(bytes(self.buf), None)
            self.buf += data
            self.arrival = time.time()  # only if the kernel gave no stamp
            for level, kind, stamp in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", stamp[:16])
                    self.arrival = seconds + nanoseconds / 1e9
            return

    async def readexactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def close(self) -> None:
        self.sock.close()


async def read_packet(conn: Stamped) -> tuple[int, bytes]:
    """One MQTT packet: (first byte, body)."""
    first = (await conn.readexactly(1))[0]
    length, mult = 0, 1
    while True:
        byte = (await conn.readexactly(1))[0]
        length += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            break
    return first, await conn.readexactly(length)


# -- logins ----------------------------------------------------------------------------


async def _login(
    port: int,
    client_id: str,
    username: str | None,
    password: str | None,
    timeout: float,
    churn: bool,
) -> tuple[int | None, float, float]:
    """(CONNACK return code or None when none came, seconds from TCP connect to the
    CONNACK's arrival, seconds from the CONNECT's sending to it). With `churn`, an
    accepted client also subscribes and unsubscribes (waiting for SUBACK and UNSUBACK)
    before it leaves, so that every login makes four events."""
    start = time.time()
    sent = start
    conn = None
    try:
        conn = await asyncio.wait_for(Stamped.open(port), timeout)
        await conn.write(
            connect(
                client_id,
                username=username,
                password=None if password is None else password.encode(),
            )
        )
        sent = time.time()
        remaining = timeout - (time.time() - start)
        connack = await asyncio.wait_for(conn.readexactly(4), max(remaining, 0.001))
        elapsed, after_connect = conn.arrival - start, conn.arrival - sent
        if connack[:2] != b"\x20\x02":
            return None, elapsed, after_connect
        if churn and connack[3] == 0:
            await conn.write(subscribe(1, (f"churn/{client_id}", 0)))
            await asyncio.wait_for(conn.readexactly(5), timeout)  # SUBACK
            await conn.write(unsubscribe(2, f"churn/{client_id}"))
            await asyncio.wait_for(conn.readexactly(4), timeout)  # UNSUBACK
        await conn.write(DISCONNECT)
        return connack[3], elapsed, after_connect
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        now = time.time()
        return None, now - start, now - sent
    finally:
        if conn is not None:
            conn.close()


async def logins(
    port: int,
    count: int,
    concurrency: int,
    username: str | None,
    password: str | None,
    timeout: float,
    churn: bool = False,
) -> dict[str, Any]:
    """`count` CONNECTs, `concurrency` at a time: every return code and time (`seconds`:
    from TCP connect, `after_connect`: from the CONNECT's sending, to the CONNACK)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[int | None, float, float]:
        async with gate:
            return await _login(port, f"login-{i}", username, password, timeout, churn)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    accepted = [t for code, t, _ in results if code == 0]
    seconds = [t for _, t, _ in results]
    return {
        "codes": [code for code, _, _ in results],
        "seconds": seconds,
        "after_connect": [t for _, _, t in results],
        "accepted": len(accepted),
        "answered": sum(code is not None for code, _, _ in results),
        "p50": percentile(seconds, 50),
        "p99": percentile(seconds, 99),
        "max": max(seconds),
        "max_accepted": max(accepted, default=0.0),
    }


# -- paced pair ------------------------------------------------------------------------


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, mult = 0, 1
    while True:
        byte = (await reader.readexactly(1))[0]
        length += (byte & 0x7F) * mult
        mult *= 128
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


async def paced(
    port: int,
    rate: int,
    seconds: float,
    qos: int,
    grace: float,
    username: str | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    """A subscriber and a publisher of `rate` messages per second to one topic, for
    `seconds`: how many arrived (within `grace` after the last) and how late."""
    topic = "paced/pair"
    secret = None if password is None else password.encode()
    # The subscriber's reads are stamped on arrival (see the module's doc).
    sub = await Stamped.open(port)
    await sub.write(connect("paced-sub", username=username, password=secret))
    first, body = await read_packet(sub)
    if first != 0x20 or body[1] != 0:
        raise SystemExit(f"paced subscriber refused: {body!r}")
    await sub.write(subscribe(1, (topic, qos)))
    await read_packet(sub)  # SUBACK
    pub_reader, pub_writer = await asyncio.open_connection(HOST, port)
    pub_writer.write(connect("paced-pub", username=username, password=secret))
    first, body = await _read_packet(pub_reader)
    if first != 0x20 or body[1] != 0:
        raise SystemExit(f"paced publisher refused: {body!r}")

    total = int(rate * seconds)
    latencies: list[float] = []
    seen: set[int] = set()
    done = asyncio.Event()

    async def receive() -> None:
        while len(seen) < total:
            first, body = await read_packet(sub)
            if first >> 4 != 3:
                continue
            (tlen,) = struct.unpack("!H", body[:2])
            rest = body[2 + tlen :]
            if (first >> 1) & 3:
                await sub.write(b"\x40\x02" + rest[:2])  # PUBACK
                rest = rest[2:]
            seq, sent = struct.unpack("!Qd", rest)
            latencies.append(sub.arrival - sent)
            seen.add(seq)
        done.set()

    async def drain_acks() -> None:
        while True:
            await _read_packet(pub_reader)

    receiver = asyncio.create_task(receive())
    acks = asyncio.create_task(drain_acks())
    start = time.perf_counter()
    for seq in range(total):
        due = start + seq / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        # The clock of the arrival stamps; taken just before the write sends it.
        payload = struct.pack("!Qd", seq, time.time())
        pub_writer.write(publish(topic, payload, qos=qos, pkid=(seq % 65535) + 1))
    try:
        await asyncio.wait_for(done.wait(), grace)
    except asyncio.TimeoutError:
        pass
    receiver.cancel()
    acks.cancel()
    try:
        await sub.write(DISCONNECT)
    except OSError:
        pass
    sub.close()
    pub_writer.write(DISCONNECT)
    pub_writer.close()
    return {
        "sent": total,
        "received": len(seen),
        "lost": total - len(seen),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=0.0),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("flood")
    p.add_argument("port", type=int)
    p.add_argument("topic")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--rate", type=int, default=0, help="messages/s per connection, 0 = max")
    p.add_argument("--seconds", type=float, default=3600)
    p = commands.add_parser("logins")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--churn", action="store_true", help="also subscribe and unsubscribe")
    p = commands.add_parser("paced")
    p.add_argument("port", type=int)
    p.add_argument("--rate", type=int, default=200)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--grace", type=float, default=15.0)
    p.add_argument("--username")
    p.add_argument("--password")
    args = parser.parse_args(argv)
    if args.command == "flood":
        flood(args.port, args.topic, args.connections, args.rate, args.seconds)
        return
    if args.command == "logins":
        result = asyncio.run(
            logins(
                args.port,
                args.count,
                args.concurrency,
                args.username,
                args.password,
                args.timeout,
                args.churn,
            )
        )
    else:
        result = asyncio.run(
            paced(
                args.port,
                args.rate,
                args.seconds,
                args.qos,
                args.grace,
                args.username,
                args.password,
            )
        )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
