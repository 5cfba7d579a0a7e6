"""pyo3mq.Client on every kind of event loop: the default asyncio loop, uvloop, and a loop
without `add_reader` (as Windows' Proactor loop is), where the client falls back to a
thread that waits in Rust. The same exercise runs on each, against pyo3mq's broker and
Debian's mosquitto."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pyo3mq
import pytest
from pyo3mq import Client, ConnectionState, MqttConnectionError
from test_client import server

__all__ = ["server"]  # a fixture, imported for its side effect

uvloop = pytest.importorskip("uvloop", reason="uvloop is installed by `make` (Makefile)")


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch file descriptors, like Windows' ProactorEventLoop."""

    def add_reader(self, *args: Any) -> None:
        raise NotImplementedError

    def remove_reader(self, *args: Any) -> bool:
        raise NotImplementedError


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
    "no-add_reader": NoReaderLoop,
}


def run_on(name: str, main: Callable[[], Awaitable[None]]) -> None:
    loop = LOOPS[name]()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def waker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pyo3mq-client-waker"]


def no_waker_left() -> bool:
    """The fallback's thread ends once the client closed (within moments)."""
    deadline = time.monotonic() + 5
    while waker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not waker_threads()


async def exercise(port: int) -> None:
    async with Client("127.0.0.1", port, identifier="loops") as client:
        assert await client.subscribe("loops/#", qos=2) == [2]
        for qos in (0, 1, 2):
            await client.publish(f"loops/{qos}", b"%d" % qos, qos=qos)
        got = [await asyncio.wait_for(client.messages.__anext__(), 5) for _ in range(3)]
        assert [(m.topic, m.payload, m.qos) for m in got] == [
            ("loops/0", b"0", 0),
            ("loops/1", b"1", 1),
            ("loops/2", b"2", 2),
        ]
        # A burst crosses in batches, in order.
        for i in range(3000):
            client.publish("loops/burst", b"%d" % i)
        await client.publish("loops/burst", b"end", qos=1)
        payloads = []
        async for message in client.messages:
            payloads.append(message.payload)
            if message.payload == b"end":
                break
        assert payloads == [b"%d" % i for i in range(3000)] + [b"end"]
        # An iteration waiting before its message arrives is woken by it.
        waiting = asyncio.ensure_future(client.messages.__anext__())
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await client.publish("loops/late", b"late", qos=1)
        assert (await asyncio.wait_for(waiting, 5)).payload == b"late"
        # Many QoS 1/2 acknowledgements in flight at once.
        await asyncio.wait_for(
            asyncio.gather(*(client.publish("other", b"x", qos=1 + i % 2) for i in range(500))),
            20,
        )
    assert client.state is ConnectionState.CLOSED


@pytest.mark.parametrize("loop", list(LOOPS))
def test_round_trip_on_each_loop(server: int, loop: str) -> None:
    run_on(loop, lambda: exercise(server))
    assert no_waker_left()


@pytest.mark.parametrize("loop", list(LOOPS))
def test_lost_connection_on_each_loop(make_broker: Callable[..., pyo3mq.Broker], loop: str) -> None:
    broker = make_broker()
    port = broker.addresses[0][1]

    async def main() -> None:
        client = Client("127.0.0.1", port)
        async with client:
            await client.subscribe("loops/lost")
            asyncio.get_running_loop().call_later(0.3, broker.stop)
            with pytest.raises(MqttConnectionError) as lost:
                async for _ in client.messages:
                    pass
            assert lost.value.rc == 7
            assert client.state is ConnectionState.CLOSED

    run_on(loop, main)
    assert no_waker_left()


def test_the_fallback_uses_a_thread_and_stops_it(server: int) -> None:
    seen: list[int] = []

    async def main() -> None:
        async with Client("127.0.0.1", server) as client:
            seen.append(len(waker_threads()))
            await client.subscribe("loops/thread")
        client2 = Client("127.0.0.1", server)
        for _ in range(2):  # connect again: a new thread each time, none left behind
            async with client2:
                seen.append(len(waker_threads()))

    run_on("no-add_reader", main)
    assert seen == [1, 1, 1]
    assert no_waker_left()
