"""Throughput of an embedded broker with Python hooks, against the same broker without.

Three variants of one in-process broker, measured in one run with interleaved repetitions:

- ``none``: no hooks;
- ``authorizer``: a Python authorizer (its publish decisions cached per connection);
- ``inproc``: an in-process subscriber to ``#`` consuming every message in Python.

The load is the independent C generator in ``../shared/mqttload`` (1:1, QoS 0, 64 B).
For ``inproc`` the figure that matters is how many messages per second the Python
subscriber consumed while the MQTT subscriber received them too, as a share of the
no-hook delivery rate (target: at least 50%).

Run: ``.venv/bin/python benches/hooks_bench.py [--count N] [--reps R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyo3mq

ROOT = Path(__file__).resolve().parent.parent
MQTTLOAD_SRC = ROOT.parent / "shared" / "mqttload"
MQTTLOAD = Path("/tmp/mqttload/mqttload")


def ensure_mqttload() -> Path:
    if not MQTTLOAD.exists():
        subprocess.run(["sh", str(MQTTLOAD_SRC / "build.sh")], check=True)
    return MQTTLOAD


class Acl:
    """Allows everything; exists to put a Python authorizer in the path."""

    def authorize_subscribe(self, client: pyo3mq.ClientInfo, filter: str, qos: int) -> int:
        return qos

    def authorize_publish(self, client: pyo3mq.ClientInfo, topic: str) -> bool:
        return True


async def run_variant(variant: str, count: int) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "listeners": ["tcp://127.0.0.1:0"],
        "max_queued_messages": 10_000_000,
        "max_inflight": 100,
    }
    if variant == "authorizer":
        settings["authorizer"] = Acl()
    async with pyo3mq.Broker(**settings) as broker:
        port = broker.addresses[0][1]
        consumed = 0
        first = last = 0.0
        consumer: asyncio.Task[None] | None = None
        all_consumed = asyncio.Event()
        sub = None
        if variant == "inproc":
            sub = broker.subscribe("#", max_buffered=1_000_000)

            async def consume() -> None:
                nonlocal consumed, first, last
                assert sub is not None
                # The documented fast path: a batch per wake-up, as it crossed from Rust.
                while batch := await sub.next_batch():
                    if consumed == 0:
                        first = time.perf_counter()
                    consumed += len(batch)
                    last = time.perf_counter()
                    if consumed >= count:
                        all_consumed.set()

            consumer = asyncio.get_running_loop().create_task(consume())
        proc = await asyncio.create_subprocess_exec(
            str(MQTTLOAD),
            "--port",
            str(port),
            "--scenario",
            "1:1",
            "--qos",
            "0",
            "--size",
            "64",
            "--count",
            str(count),
            "--quiet",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        result = json.loads(out)
        if consumer is not None:
            # Let the Python subscriber finish what is already queued for it.
            try:
                await asyncio.wait_for(all_consumed.wait(), 30)
            except asyncio.TimeoutError:
                pass  # reported through python_consumed and python_dropped
            consumer.cancel()
        row = {
            "variant": variant,
            "complete": bool(result["complete"]) and result["lost"] == 0,
            "deliveries_per_s": float(result["deliveries_per_s"]),
        }
        if variant == "inproc":
            span = max(last - first, 1e-9)
            row["python_consumed"] = consumed
            row["python_dropped"] = sub.dropped if sub is not None else 0
            row["python_per_s"] = consumed / span
        return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ensure_mqttload()
    rows: dict[str, list[dict[str, Any]]] = {"none": [], "authorizer": [], "inproc": []}
    for _ in range(args.reps):
        for variant in rows:
            rows[variant].append(asyncio.run(run_variant(variant, args.count)))
    base = statistics.median(r["deliveries_per_s"] for r in rows["none"])
    print(f"1:1, QoS 0, 64 B, {args.count} messages, {args.reps} repetitions (median, min-max)")
    print("| variant | MQTT deliveries/s | vs no hooks | Python-consumed msgs/s | vs no hooks |")
    print("|---|---|---|---|---|")
    for variant, results in rows.items():
        failed = [r for r in results if not r["complete"]]
        rates = [r["deliveries_per_s"] for r in results]
        med = statistics.median(rates)
        cell = f"{med:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
        if failed:
            cell = f"FAILED ({len(failed)} incomplete runs)"
        py = ""
        py_ratio = ""
        if variant == "inproc":
            py_rates = [r["python_per_s"] for r in results]
            py_med = statistics.median(py_rates)
            drops = sum(r["python_dropped"] for r in results)
            py = f"{py_med:,.0f} ({min(py_rates):,.0f}-{max(py_rates):,.0f}); dropped {drops}"
            py_ratio = f"{py_med / base:.2f}x"
        print(f"| {variant} | {cell} | {med / base:.2f}x | {py} | {py_ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
