"""Publishers that ignore flow control cannot grow a queue without bound.

Python's `broker.publish` waits for a full flow-controlled subscription only on the
broker's own event loop; called from another thread (with its own event loop) it does
not wait, and neither does the `$SYS` publisher. What such a publisher sends beyond a
queue's bound must be dropped and counted, never held: the session queue of a
flow-controlled in-process subscription stops at its hard limit (`max_buffered` plus at
least 65,536, src/broker/router.rs `Flow::limit`), a socket subscriber's at
`max_queued_messages`. The tests count: every message published is either delivered or
counted in `dropped_messages`, and the delivered ones fit in the bound.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyo3mq
from support.mqtt_raw import RawClient, subscribe

Serve = Callable[..., Awaitable[pyo3mq.Broker]]
# The flow-controlled session queue's hard limit above `max_buffered`
# (src/broker/router.rs, FLOW_OVERSHOOT).
FLOW_OVERSHOOT = 65_536


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def publish_from_a_thread(broker: pyo3mq.Broker, topic: str, payload: bytes, count: int) -> None:
    """`count` `broker.publish` calls in a tight loop, on a thread of its own with its own
    event loop (so nothing there waits for the subscription to drain)."""

    async def pump() -> None:
        for _ in range(count):
            await broker.publish(topic, payload)

    thread = threading.Thread(target=asyncio.run, args=(pump(),))
    thread.start()
    thread.join()


async def test_a_thread_publishing_into_a_stalled_flow_controlled_subscription(
    serve: Serve,
) -> None:
    """150,000 messages of 256 bytes from another thread into a flow-controlled in-process
    subscription (`max_buffered=1000`) whose consumer is stalled: the thread is not held
    back (it has no way to wait), and the broker holds no more than the bound: the rest is
    dropped at the session queue's hard limit and counted. Once the consumer runs, it gets
    exactly what was not counted as dropped, and the process grew by little more than the
    bound's 17 MB of payloads (held as a waiting task per message, as `broker.publish`
    from another loop once was, it grew by about 200 MB)."""
    count, max_buffered = 150_000, 1000
    broker = await serve()
    rss_before = rss_mb()
    async with broker.subscribe("bound/#", max_buffered=max_buffered, flow_control=True) as sub:
        await asyncio.to_thread(publish_from_a_thread, broker, "bound/x", b"x" * 256, count)
        grown = rss_mb() - rss_before
        received = 0
        while True:
            try:
                batch = await asyncio.wait_for(sub.next_batch(), 1.0)
            except asyncio.TimeoutError:
                break
            received += len(batch)
        dropped = broker.dropped_messages
        assert sub.dropped == 0  # flow control never drops in the subscription's buffer
    print(f"received {received}, dropped {dropped}, RSS grew {grown:.0f} MB")
    assert dropped > 0
    assert received + dropped == count, (received, dropped)
    # The feed's `max_buffered` plus the session queue's hard limit.
    assert received <= max_buffered + max_buffered + FLOW_OVERSHOOT, received
    # Bounded: about 35 MB here.
    assert grown < 100, f"RSS grew by {grown:.0f} MB"


async def test_a_thread_publishing_to_a_subscriber_that_does_not_read(serve: Serve) -> None:
    """100,000 messages of 2 KiB (200 MB) from another thread toward a socket subscriber
    that never reads: its session queue stops at `max_queued_messages` (1000), the excess
    is dropped and counted, and the process does not hold the 200 MB. When it finally
    reads, what it gets and what was counted as dropped add up to what was published."""
    count = 100_000
    broker = await serve(max_queued_messages=1000)
    port = broker.addresses[0][1]
    with RawClient(port) as reader:
        reader.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        reader.connect("never-reads")
        reader.send(subscribe(1, ("slow/#", 0)))
        assert reader.recv().type == 9  # SUBACK
        rss_before = rss_mb()
        await asyncio.to_thread(publish_from_a_thread, broker, "slow/x", b"y" * 2048, count)
        grown = rss_mb() - rss_before
        dropped = broker.dropped_messages

        def read_all() -> int:
            received = 0
            while True:
                try:
                    packet = reader.recv(timeout=1.0)
                except (TimeoutError, socket.timeout):
                    return received
                assert packet.type == 3
                received += 1

        received = await asyncio.to_thread(read_all)
    print(f"received {received}, dropped {dropped}, RSS grew {grown:.0f} MB")
    assert dropped > 0
    assert received + dropped == count, (received, dropped)
    assert grown < 100, f"RSS grew by {grown:.0f} MB"


async def test_sys_publisher_does_not_wait_for_a_stalled_flow_controlled_subscriber(
    serve: Serve,
) -> None:
    """A flow-controlled in-process subscription to `$SYS/#` (`max_buffered=1`) that is
    never consumed is full at once; the `$SYS` publisher cannot wait for it (it is not a
    client), so it goes on publishing: a socket subscriber keeps getting fresh figures."""
    broker = await serve(sys_interval=0.1)
    port = broker.addresses[0][1]
    async with broker.subscribe("$SYS/#", max_buffered=1, flow_control=True):
        await asyncio.sleep(0.5)  # several rounds of figures: far beyond its high water
        with RawClient(port) as watcher:
            watcher.connect("sys-watcher")
            watcher.send(subscribe(1, ("$SYS/broker/messages/received", 0)))

            def received_values(n: int) -> list[int]:
                values: list[int] = []
                deadline = time.monotonic() + 10
                while len(values) < n and time.monotonic() < deadline:
                    packet = watcher.recv(timeout=max(deadline - time.monotonic(), 0.01))
                    if packet.type == 3:
                        values.append(int(packet.publish_fields()[2]))
                return values

            assert watcher.recv().type == 9  # SUBACK
            before: list[Any] = await asyncio.to_thread(received_values, 1)
            # Traffic the figure counts: the watcher's own PINGREQs do not, PUBLISHes do.
            with RawClient(port) as publisher:
                publisher.connect("sys-traffic")
                publisher.send(b"\x30\x05\x00\x01tok" * 10)
                after = await asyncio.to_thread(received_values, 1)
    assert after and before and after[0] > before[0], (before, after)
