#!/usr/bin/env python3
"""Scaling curve (issue 16): pyo3mq and Mosquitto as the number of subscribers grows.

Two parts, both brokers in the same run, alternating (benches/README.md, "Scaling curve"):

1. **Fan-out curve.** For each N (100, 1,000, 10,000, 18,000 by default), one publisher
   and N subscribers on the wildcard filter `bench/+/#`, 64 B, QoS 0 and QoS 1, through the
   Rust load generator (`benches/load`, `--scenario fanout --wildcard --clients N`):
   a saturated run (deliveries/s) and a paced run (delivery latency p50/p99 at a fixed
   total delivery rate, so every N asks the same work of the broker per second).
2. **Devices.** 10,000 connections, each subscribed to its own topic `dev/I/cmd` and to
   one wildcard `dev/+/all` (the same for all, matched by no message here: it sits in
   the routing table on the path every publish walks), and one publisher addressing
   random devices (the same seeded sequence for both brokers) at a paced rate, QoS 0 and
   1: delivery p50/p99. The clients are raw non-blocking sockets on one epoll loop in
   this process (the generator has no such scenario); the loop's own CPU is reported.

The broker processes, the generator build and its output come from benches/run_load.py
(imported). Writes results.json and summary.md to target/scale-curve/DATE-TIME/ and the
plot (an SVG written by this script: deliveries/s and p99 against subscribers, log x) to
benches/scale_curve.svg.

    .venv/bin/python benches/scale_curve.py                 # the whole curve (~10 min)
    .venv/bin/python benches/scale_curve.py --subscribers 100,1000 --no-devices  # quick

The number of subscribers is bounded by this process's descriptor limit (each client is
one socket in the generator and one in the broker): the script caps N below the hard
limit and says so. 100,000 subscribers need `ulimit -Hn` above 100,000.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_load  # the sibling runner: brokers, generator, formatting
from run_load import ROOT, Broker, Cell, Result

DEFAULT_SUBSCRIBERS = (100, 1_000, 10_000, 18_000)
SIZE = 64
# Descriptors each side keeps beyond its client sockets (listeners, logs, epoll, pipes).
FD_MARGIN = 1_000
MIN_MESSAGES = 10  # per saturated run
MIN_PACED_MESSAGES = 6  # per paced run: a paced run lasts long enough to send this many
PLOT = ROOT / "benches" / "scale_curve.svg"


def fd_cap() -> tuple[int, int]:
    """(largest N this process and a broker can hold, the hard descriptor limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return limit - FD_MARGIN, int(hard) if hard != resource.RLIM_INFINITY else -1


# ---------------------------------------------------------------- part 1: the generator


def fanout_args(broker: Broker, n: int, qos: int) -> list[str]:
    return [
        "run",
        "--port",
        str(broker.port),
        "--broker-pid",
        str(broker.pid),
        "--label",
        broker.label,
        "--scenario",
        "fanout",
        "--wildcard",
        "--clients",
        str(n),
        "--qos",
        str(qos),
        "--size",
        str(SIZE),
        "--threads",
        "1",
        "--timeout",
        "20",
        "--max-seconds",
        "180",
    ]


def run_fanout(exe: str, broker: Broker, n: int, qos: int, kind: str, args: Any) -> Result:
    gen = fanout_args(broker, n, qos)
    if kind == "sat":
        cell = Cell("sat", "fanout", qos, SIZE, wildcard=True)
        want = run_load.deliveries_for(broker.name, cell, args.scale)
        # At least MIN_MESSAGES, so that a run is more than a few fan-outs.
        gen += ["--deliveries", str(max(want, MIN_MESSAGES * n))]
    else:
        rate = args.paced_deliveries / n  # messages/s: the same deliveries/s for every N
        seconds = max(args.paced_seconds, MIN_PACED_MESSAGES / rate)
        gen += ["--rate", f"{rate:.4f}", "--seconds", f"{seconds:.2f}"]
    before = run_load.loadavg()
    result, err = run_load.run_generator(exe, gen, limit=400)
    if result is None:
        result = {"complete": False, "error": err}
    result.update(
        part="fanout",
        kind=kind,
        n=n,
        broker=broker.label,
        broker_process=broker.name,
        loadavg=before,
    )
    if result.get("delivered") and result.get("broker_cpu_s") is not None:
        # The broker's CPU per delivery: what the machine's load changes least.
        result["broker_us_per_delivery"] = result["broker_cpu_s"] / result["delivered"] * 1e6
    reason = run_load.failure_reason(result)
    if reason:
        result["failure"] = reason
    return result


# ---------------------------------------------------------------- part 2: devices


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    # MQTT 3.1.1, clean session, keepalive 0 (as the generator: no PINGREQ during a run).
    body = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack("!H", len(cid)) + cid
    return b"\x10" + remaining_length(len(body)) + body


def subscribe_packet(filters: list[str], qos: int) -> bytes:
    body = b"\x00\x01" + b"".join(
        struct.pack("!H", len(f)) + f.encode() + bytes([qos]) for f in filters
    )
    return b"\x82" + remaining_length(len(body)) + body


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection during setup")
        data += chunk
    return data


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return math.nan
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_devices(broker: Broker, n: int, qos: int, args: Any) -> Result:
    """n device connections (own topic + one wildcard), a paced publisher to random
    devices; every delivery's latency from the send time in its payload."""
    tag = f"{random.getrandbits(32):08x}"
    setup0 = time.monotonic()
    socks: list[socket.socket] = []
    error = ""
    try:
        # Setup in chunks: CONNECT and SUBSCRIBE written together, then CONNACK (4 bytes)
        # and SUBACK (2 + 2 + 2 return codes) read, so a chunk's round trips overlap.
        chunk = 250
        for start in range(0, n, chunk):
            batch = []
            for i in range(start, min(n, start + chunk)):
                s = socket.create_connection(("127.0.0.1", broker.port), timeout=30)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(
                    connect_packet(f"dev-{tag}-{i}")
                    + subscribe_packet([f"dev/{i}/cmd", "dev/+/all"], qos)
                )
                batch.append(s)
            for s in batch:
                connack = recv_exactly(s, 4)
                suback = recv_exactly(s, 6)
                if connack[0] != 0x20 or connack[3] != 0 or suback[0] != 0x90:
                    raise ConnectionError(f"bad CONNACK/SUBACK {connack.hex()} {suback.hex()}")
                if suback[4] != qos or suback[5] != qos:
                    raise ConnectionError(f"SUBACK granted {suback[4:].hex()}, asked {qos}")
            socks.extend(batch)
        pub = socket.create_connection(("127.0.0.1", broker.port), timeout=30)
        pub.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pub.sendall(connect_packet(f"dev-{tag}-pub"))
        if recv_exactly(pub, 4)[0] != 0x20:
            raise ConnectionError("publisher: bad CONNACK")
    except (OSError, ConnectionError) as e:
        for s in socks:
            s.close()
        return {"part": "devices", "complete": False, "error": f"setup: {e}", "n": n, "qos": qos}
    setup_s = time.monotonic() - setup0

    rng = random.Random(args.seed)
    count = int(args.device_rate * args.device_seconds)
    targets = [rng.randrange(n) for _ in range(count)]
    topics = [f"dev/{i}/cmd".encode() for i in range(n)]
    filler = bytes(range(SIZE - 16)) if SIZE - 16 <= 256 else b"x" * (SIZE - 16)

    ep = select.epoll()
    fd_index: dict[int, int] = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        fd_index[s.fileno()] = i
        ep.register(s.fileno(), select.EPOLLIN)
    pub.setblocking(False)
    ep.register(pub.fileno(), select.EPOLLIN)
    bufs: dict[int, bytearray] = {}
    latencies: list[int] = []
    seen = bytearray(count)
    dups = corrupt = ack_bytes = 0
    cpu0, broker0 = self_cpu(), proc_cpu(broker.pid)
    t0 = time.monotonic_ns()
    interval = 1e9 / args.device_rate
    sent = 0
    end_wait = None
    while True:
        now = time.monotonic_ns()
        while sent < count and now >= t0 + sent * interval:
            dev = targets[sent]
            topic = topics[dev]
            payload = struct.pack("!IIQ", sent, dev, time.monotonic_ns()) + filler
            if qos:
                pid = sent % 65535 + 1
                body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", pid) + payload
                head = b"\x32"
            else:
                body = struct.pack("!H", len(topic)) + topic + payload
                head = b"\x30"
            try:
                pub.send(head + remaining_length(len(body)) + body)
            except BlockingIOError:
                error = "publisher socket full"
            sent += 1
            now = time.monotonic_ns()
        received = len(latencies) + dups
        if sent >= count:
            if received >= count and (not qos or ack_bytes >= 4 * count):
                break
            end_wait = end_wait or now
            if now - end_wait > 10e9:
                error = error or "timed out waiting for the last deliveries"
                break
            timeout = 0.05
        else:
            timeout = max(0.0, (t0 + sent * interval - now) / 1e9)
        for fd, _ in ep.poll(timeout):
            if fd == pub.fileno():
                try:
                    data = pub.recv(65536)
                except BlockingIOError:
                    continue
                ack_bytes += len(data)  # PUBACKs only: 4 bytes each
                continue
            i = fd_index[fd]
            try:
                data = socks[i].recv(65536)
            except BlockingIOError:
                continue
            arrived = time.monotonic_ns()
            if not data:
                error = error or f"device {i}: broker closed the connection"
                ep.unregister(fd)
                continue
            buf = bufs.setdefault(fd, bytearray())
            buf += data
            acks = b""
            while len(buf) >= 2:
                # Decode the remaining length (at most 4 bytes).
                mult, length, pos = 1, 0, 1
                while True:
                    if pos >= len(buf):
                        length = -1
                        break
                    b = buf[pos]
                    length += (b & 0x7F) * mult
                    mult *= 128
                    pos += 1
                    if not b & 0x80:
                        break
                if length < 0 or len(buf) < pos + length:
                    break
                packet = bytes(buf[pos : pos + length])
                kind = buf[0]
                del buf[: pos + length]
                if kind >> 4 != 3:
                    corrupt += 1
                    continue
                tlen = struct.unpack_from("!H", packet)[0]
                topic = packet[2 : 2 + tlen]
                at = 2 + tlen
                if (kind >> 1) & 3:
                    acks += b"\x40\x02" + packet[at : at + 2]
                    at += 2
                payload = packet[at:]
                seq, dev, stamp = struct.unpack_from("!IIQ", payload)
                if dev != i or topic != topics[i] or len(payload) != SIZE or seq >= count:
                    corrupt += 1
                elif seen[seq]:
                    dups += 1
                else:
                    seen[seq] = 1
                    latencies.append(arrived - stamp)
            if acks:
                socks[i].send(acks)
    wall = (time.monotonic_ns() - t0) / 1e9
    gen_cpu, broker_cpu = self_cpu() - cpu0, proc_cpu(broker.pid) - broker0
    ep.close()
    for s in socks:
        s.close()
    pub.close()
    latencies.sort()
    delivered = len(latencies)
    complete = not error and delivered == count and dups == 0 and corrupt == 0
    result: Result = {
        "part": "devices",
        "kind": "paced",
        "n": n,
        "qos": qos,
        "size": SIZE,
        "rate": args.device_rate,
        "expected": count,
        "delivered": delivered,
        "lost": count - delivered,
        "duplicates": dups,
        "corrupt": corrupt,
        "pubacks": ack_bytes // 4,
        "setup_s": setup_s,
        "wall_s": wall,
        "p50_us": percentile(latencies, 0.50) / 1e3,
        "p90_us": percentile(latencies, 0.90) / 1e3,
        "p99_us": percentile(latencies, 0.99) / 1e3,
        "p999_us": percentile(latencies, 0.999) / 1e3,
        "max_us": (latencies[-1] / 1e3) if latencies else math.nan,
        "gen_cpu_s": gen_cpu,
        "broker_cpu_s": broker_cpu,
        "complete": complete,
        "error": error,
        "broker": broker.label,
        "broker_process": broker.name,
        "loadavg": run_load.loadavg(),
    }
    if not complete:
        result["failure"] = error or f"lost {count - delivered}, dups {dups}, corrupt {corrupt}"
    return result


# ---------------------------------------------------------------- output


def med(values: list[float]) -> float | None:
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def pick(results: list[Result], **match: Any) -> list[Result]:
    return [
        r for r in results if r.get("complete") and all(r.get(k) == v for k, v in match.items())
    ]


def value(results: list[Result], key: str, **match: Any) -> float | None:
    return med([float(r[key]) for r in pick(results, **match) if key in r])


def fmt(v: float | None, f: Any) -> str:
    return "failed" if v is None else str(f(v))


def ratio_text(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def fmt_small_us(v: float) -> str:
    return f"{v:.3g} µs" if v < 1000 else run_load.fmt_us(v)


def gen_share(results: list[Result], **match: Any) -> str:
    """The generator's CPU as a share of one core over its run (1 thread: 100% = bound)."""
    rs = pick(results, **match)
    shares = [r["gen_cpu_s"] / r["wall_s"] for r in rs if r.get("wall_s")]
    m = med(shares)
    return "" if m is None else f"{m * 100:.0f}%"


def summarize(results: list[Result], meta: dict[str, Any], ns: list[int]) -> str:
    for r in results:
        if r.get("part") == "fanout" and r.get("delivered") and "gen_cpu_s" in r:
            r["gen_us_per_delivery"] = r["gen_cpu_s"] / r["delivered"] * 1e6
    others = [
        r["other_cpu_s"] / r["sys_busy_cpu_s"]
        for r in results
        if r.get("sys_busy_cpu_s") and r.get("other_cpu_s") is not None
    ]
    share = med(others)
    if share is not None:
        meta = dict(meta)
        meta["other processes' share of the machine's busy CPU (median over runs)"] = (
            f"{share * 100:.0f}%"
        )
    out = ["# Scaling curve", ""]
    out += [f"- {k}: {v}" for k, v in meta.items()]
    out += [
        "",
        "## Fan-out over `bench/+/#`: one publisher, N subscribers, 64 B",
        "",
        "Saturated deliveries/s, the broker's and the generator's CPU time per delivery in",
        "those runs (the generator's in the run against each broker), and",
        f"paced latency at {meta['paced deliveries/s']:,} deliveries/s in total.",
        "",
        "| N | QoS | pyo3mq deliveries/s | Mosquitto deliveries/s | ratio"
        " | broker CPU per delivery (pyo3mq / Mosquitto) | generator CPU per delivery"
        " | pyo3mq p50 / p99 | Mosquitto p50 / p99 | p99 ratio |",
        "|---:|---:|---:|---:|---:|---|---|---|---|---:|",
    ]
    for n in ns:
        for q in (0, 1):
            a = value(
                results, "deliveries_per_s", part="fanout", kind="sat", n=n, qos=q, broker="pyo3mq"
            )
            b = value(
                results,
                "deliveries_per_s",
                part="fanout",
                kind="sat",
                n=n,
                qos=q,
                broker="mosquitto",
            )
            lat = {}
            for br in ("pyo3mq", "mosquitto"):
                lat[br] = tuple(
                    value(results, k, part="fanout", kind="paced", n=n, qos=q, broker=br)
                    for k in ("p50_us", "p99_us")
                )
            g = " / ".join(
                fmt(
                    value(
                        results,
                        "gen_us_per_delivery",
                        part="fanout",
                        kind="sat",
                        n=n,
                        qos=q,
                        broker=br,
                    ),
                    fmt_small_us,
                )
                for br in ("pyo3mq", "mosquitto")
            )
            cpu = [
                value(
                    results,
                    "broker_us_per_delivery",
                    part="fanout",
                    kind="sat",
                    n=n,
                    qos=q,
                    broker=br,
                )
                for br in ("pyo3mq", "mosquitto")
            ]
            cpu_text = " / ".join(fmt(c, lambda v: f"{v:.2f} µs") for c in cpu)
            out.append(
                f"| {n:,} | {q} | {fmt(a, run_load.fmt_rate)} | {fmt(b, run_load.fmt_rate)} | "
                f"{ratio_text(a, b)} | {cpu_text} | {g} | "
                f"{fmt(lat['pyo3mq'][0], run_load.fmt_us)} / "
                f"{fmt(lat['pyo3mq'][1], run_load.fmt_us)} | "
                f"{fmt(lat['mosquitto'][0], run_load.fmt_us)} / "
                f"{fmt(lat['mosquitto'][1], run_load.fmt_us)} | "
                f"{ratio_text(lat['pyo3mq'][1], lat['mosquitto'][1])} |"
            )
    devs = [r for r in results if r.get("part") == "devices"]
    if devs:
        out += [
            "",
            f"## Devices: {meta['devices']:,} connections, own topic + one wildcard, "
            f"a publisher to random devices at {meta['device rate']:,} msgs/s",
            "",
            "| QoS | pyo3mq p50 / p99 / p99.9 | Mosquitto p50 / p99 / p99.9 | p99 ratio | "
            "client loop CPU (pyo3mq / Mosquitto) |",
            "|---:|---|---|---:|---|",
        ]
        for q in (0, 1):
            cols = []
            for br in ("pyo3mq", "mosquitto"):
                cols.append(
                    " / ".join(
                        fmt(value(devs, k, qos=q, broker=br), run_load.fmt_us)
                        for k in ("p50_us", "p99_us", "p999_us")
                    )
                )
            p99 = [value(devs, "p99_us", qos=q, broker=br) for br in ("pyo3mq", "mosquitto")]
            g = " / ".join(
                gen_share(devs, qos=q, broker=br) or "-" for br in ("pyo3mq", "mosquitto")
            )
            out.append(f"| {q} | {cols[0]} | {cols[1]} | {ratio_text(p99[0], p99[1])} | {g} |")
    failed = [r for r in results if not r.get("complete")]
    if failed:
        out += ["", "## Failed runs", ""]
        for r in failed:
            out.append(
                f"- {r.get('part')} {r.get('kind')} N={r.get('n')} QoS {r.get('qos')} "
                f"{r.get('broker')}: {r.get('failure') or r.get('error')}"
            )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- plot (plain SVG)

COLORS = {
    ("pyo3mq", 0): "#1f77b4",
    ("pyo3mq", 1): "#6baed6",
    ("mosquitto", 0): "#d62728",
    ("mosquitto", 1): "#fc9272",
}


def svg_panel(
    x0: float,
    y0: float,
    w: float,
    h: float,
    title: str,
    ylabel: str,
    series: dict[tuple[str, int], list[tuple[int, float]]],
    ns: list[int],
    yfmt: Any,
) -> list[str]:
    pts = [v for s in series.values() for _, v in s if v > 0]
    if not pts:
        return []
    lo = 10 ** math.floor(math.log10(min(pts)))
    hi = 10 ** math.ceil(math.log10(max(pts)))
    if hi <= lo:
        hi = lo * 10
    xlo, xhi = math.log10(min(ns)) - 0.1, math.log10(max(ns)) + 0.1

    def px(n: float) -> float:
        return x0 + (math.log10(n) - xlo) / (xhi - xlo) * w

    def py(v: float) -> float:
        return y0 + h - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * h

    out = [
        f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#444"/>',
        f'<text x="{x0 + w / 2}" y="{y0 - 10}" text-anchor="middle" font-weight="bold">'
        f"{title}</text>",
        f'<text x="{x0 - 62}" y="{y0 + h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 {x0 - 62} {y0 + h / 2})">{ylabel}</text>',
        f'<text x="{x0 + w / 2}" y="{y0 + h + 48}" text-anchor="middle">'
        "subscribers (log scale)</text>",
    ]
    decade = lo
    while decade <= hi * 1.001:
        y = py(decade)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{yfmt(decade)}</text>')
        decade *= 10
    last_x = -1e9
    for n in ns:
        x = px(n)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + h}" stroke="#eee"/>')
        # Ticks closer than a label's width (10,000 and 18,000) go on a second line.
        below = 18 if x - last_x > 45 else 30
        last_x = x if below == 18 else last_x
        out.append(f'<text x="{x:.1f}" y="{y0 + h + below}" text-anchor="middle">{n:,}</text>')
    for (br, q), s in series.items():
        s = [(n, v) for n, v in s if v > 0]
        if not s:
            continue
        color = COLORS[(br, q)]
        dash = "" if q == 0 else ' stroke-dasharray="6 4"'
        path = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in s)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
        )
        for n, v in s:
            out.append(f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="3.5" fill="{color}"/>')
    return out


def write_svg(results: list[Result], ns: list[int], path: Path, note: str) -> None:
    panels = (
        (
            "Deliveries/s (saturated fan-out)",
            "deliveries/s",
            "sat",
            "deliveries_per_s",
            run_load.fmt_rate,
        ),
        ("Delivery latency p99 (paced)", "p99 latency", "paced", "p99_us", run_load.fmt_us),
        (
            "Broker CPU per delivery (saturated)",
            "CPU time per delivery",
            "sat",
            "broker_us_per_delivery",
            fmt_small_us,
        ),
    )
    width, height = 1420, 470
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for k, (title, ylabel, kind, key, yfmt) in enumerate(panels):
        series: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for br in ("pyo3mq", "mosquitto"):
            for q in (0, 1):
                for n in ns:
                    v = value(results, key, part="fanout", kind=kind, n=n, qos=q, broker=br)
                    if v is not None:
                        series.setdefault((br, q), []).append((n, v))
        body += svg_panel(90 + k * 470, 40, 340, 300, title, ylabel, series, ns, yfmt)
    legend_y = 410
    for k, ((br, q), color) in enumerate(COLORS.items()):
        x = 90 + k * 220
        dash = "" if q == 0 else ' stroke-dasharray="6 4"'
        name = "pyo3mq" if br == "pyo3mq" else "Mosquitto"
        body.append(
            f'<line x1="{x}" y1="{legend_y}" x2="{x + 30}" y2="{legend_y}" stroke="{color}" '
            f'stroke-width="2"{dash}/>'
        )
        body.append(f'<text x="{x + 36}" y="{legend_y + 4}">{name}, QoS {q}</text>')
    body.append(f'<text x="90" y="{legend_y + 36}" fill="#555">{note}</text>')
    body.append("</svg>")
    path.write_text("\n".join(body) + "\n")


def plot_note(meta: dict[str, Any]) -> str:
    return (
        f"{meta['date']}, 2 shared cores (load average {meta['loadavg at start']:.1f} at start); "
        f"64 B, filter bench/+/#; p99 paced at {meta['paced deliveries/s']:,} deliveries/s"
    )


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--subscribers",
        default=",".join(str(n) for n in DEFAULT_SUBSCRIBERS),
        help="comma-separated subscriber counts (capped by the descriptor limit)",
    )
    ap.add_argument("--qos", default="0,1", help="comma-separated QoS levels (0,1)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions (broker order alternates)")
    ap.add_argument("--scale", type=float, default=1.0, help="saturated run sizes (run_load)")
    ap.add_argument(
        "--paced-deliveries",
        type=int,
        default=5_000,
        help="total deliveries/s of a paced run: the publisher sends this / N msgs/s",
    )
    ap.add_argument("--paced-seconds", type=float, default=4.0)
    ap.add_argument("--devices", type=int, default=10_000, help="0: skip the devices part")
    ap.add_argument("--device-rate", type=int, default=2_000, help="devices part, msgs/s")
    ap.add_argument("--device-seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--replot",
        type=Path,
        default=None,
        help="only rewrite summary.md and the plot from an earlier run's results.json",
    )
    ap.add_argument("--plot", default=str(PLOT), help="SVG to write ('' for none)")
    ap.add_argument("--generator", default=None, help="load generator (default: cargo builds it)")
    ap.add_argument("--pyo3mq", default=None)
    ap.add_argument("--mosquitto", default=None)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        saved = json.loads(args.replot.read_text())
        old: list[Result] = saved["results"]
        old_ns = sorted({r["n"] for r in old if r.get("part") == "fanout"})
        text = summarize(old, saved["meta"], old_ns)
        (args.replot.parent / "summary.md").write_text(text)
        if args.plot:
            write_svg(old, old_ns, Path(args.plot), plot_note(saved["meta"]))
        print(text)
        return 0
    venv = ROOT / ".venv" / "bin" / "pyo3mq"
    pyo3mq = args.pyo3mq or (str(venv) if venv.exists() else shutil.which("pyo3mq") or "pyo3mq")
    mosquitto = args.mosquitto or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    cap, hard = fd_cap()
    wanted = [int(x) for x in args.subscribers.split(",") if x]
    ns = sorted({min(n, cap) for n in wanted})
    notes = []
    if cap < 100_000:
        # Issue 16 asks for 100,000 subscribers: say plainly why this run stops short.
        capped = " (capped)" if any(n > cap for n in wanted) else ""
        notes.append(
            f"descriptor limit {cap + FD_MARGIN:,} (hard {hard:,}): at most {cap:,} "
            f"subscribers{capped}; 100,000 need `ulimit -Hn` above 100,000, which takes "
            "root with CAP_SYS_RESOURCE"
        )
    if args.devices > cap:
        notes.append(f"devices capped at {cap:,} by the descriptor limit")
        args.devices = cap
    for note in notes:
        print("note:", note, file=sys.stderr)
    qoss = [int(q) for q in args.qos.split(",") if q]
    out = args.out or ROOT / "target" / "scale-curve" / time.strftime("%Y%m%d-%H%M%S")
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    exe = args.generator or run_load.build_generator()
    brokers = {
        "pyo3mq": Broker("pyo3mq", pyo3mq, out),
        "mosquitto": Broker("mosquitto", mosquitto, out),
        # Paced runs: Mosquitto with TCP_NODELAY, its best latency setting (as run_load).
        "mosquitto-nodelay": Broker("mosquitto-nodelay", mosquitto, out),
    }
    # A SIGTERM (timeout, CI) unwinds through the finally below, which stops the brokers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": run_load.git_describe(),
        "pyo3mq": pyo3mq,
        "mosquitto": run_load.version_of([mosquitto, "-h"], "mosquitto version"),
        "subscribers": ", ".join(f"{n:,}" for n in ns),
        "paced deliveries/s": args.paced_deliveries,
        "paced seconds": args.paced_seconds,
        "devices": args.devices,
        "device rate": args.device_rate,
        "reps": args.reps,
        "loadavg at start": run_load.loadavg(),
        "notes": "; ".join(notes) or "none",
    }
    results: list[Result] = []
    jsonl = (out / "results.jsonl").open("w")

    def record(r: Result) -> None:
        results.append(r)
        jsonl.write(json.dumps(r) + "\n")
        jsonl.flush()
        what = f"{r.get('part')} {r.get('kind')} N={r.get('n')} q{r.get('qos')} {r.get('broker')}"
        if r.get("complete"):
            rate = r.get("deliveries_per_s")
            shown = f"{run_load.fmt_rate(rate)}/s " if rate and r.get("kind") == "sat" else ""
            print(
                f"{what}: {shown}p50 {run_load.fmt_us(r['p50_us'])} "
                f"p99 {run_load.fmt_us(r['p99_us'])} (setup {r.get('setup_s', 0):.1f} s, "
                f"load {r.get('loadavg', 0):.1f})",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"{what}: FAILED {r.get('failure')}", file=sys.stderr, flush=True)

    try:
        for rep in range(args.reps):
            for b in brokers.values():
                b.start()
            k = 0
            for n in ns:
                for q in qoss:
                    for kind in ("sat", "paced"):
                        order = ["pyo3mq", "mosquitto"]
                        if (rep + k) % 2:
                            order.reverse()
                        k += 1
                        for name in order:
                            if kind == "paced" and name == "mosquitto":
                                name = "mosquitto-nodelay"
                            b = brokers[name]
                            r = run_fanout(exe, b, n, q, kind, args)
                            r["rep"] = rep
                            record(r)
                            if not r.get("complete"):
                                b.start()
            if args.devices:
                for q in qoss:
                    order = ["pyo3mq", "mosquitto-nodelay"]
                    if (rep + q) % 2:
                        order.reverse()
                    for name in order:
                        r = run_devices(brokers[name], args.devices, q, args)
                        r["rep"] = rep
                        record(r)
                        if not r.get("complete"):
                            brokers[name].start()
    finally:
        for b in brokers.values():
            b.stop()
        jsonl.close()
    meta["minutes"] = round((time.time() - started) / 60, 1)
    meta["loadavg at end"] = run_load.loadavg()
    summary = summarize(results, meta, ns)
    (out / "summary.md").write_text(summary)
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    if args.plot:
        write_svg(results, ns, Path(args.plot), plot_note(meta))
    print(summary)
    print(f"results: {out}", file=sys.stderr)
    return 0 if all(r.get("complete") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
