"""A reconnect storm: the broker (pyo3mq's, and Debian's mosquitto with persistence) is
restarted 10 times while a client publishes QoS 1 and QoS 2 messages without pause and
another receives them, both with persistent sessions and automatic reconnect. No QoS 1
message may be lost and no QoS 2 message lost or delivered twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pyo3mq
import pytest
from pyo3mq import Client, ConnectionState, Reconnect, StateChange
from support.mosquitto import MOSQUITTO, free_port, wait_listening

RESTARTS = 10


class MosquittoProcess:
    """Mosquitto on a fixed port with a persistence file, restarted in place (SIGTERM
    makes it save the file; the next start loads it)."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.conf = tmp / "mosquitto.conf"
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "max_queued_messages 0",
            "persistence true",
            f"persistence_location {tmp}/",
            "autosave_interval 0",
        ]
        if os.name == "posix" and os.geteuid() == 0:
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_listening(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def restartable(
    kind: str, tmp: Path, make_broker: Callable[..., pyo3mq.Broker]
) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    """(port, stop, start) of a running broker of `kind`."""
    port = free_port()
    if kind == "pyo3mq":
        broker = make_broker(listeners=[f"tcp://127.0.0.1:{port}"], max_queued_messages=1_000_000)
        yield port, broker.stop, broker.start
        return
    if not Path(MOSQUITTO).exists():
        pytest.skip("Debian's mosquitto is not installed")
    process = MosquittoProcess(tmp, port)
    process.start()
    try:
        yield port, process.stop, process.start
    finally:
        process.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["pyo3mq", "mosquitto"])
async def test_reconnect_storm_loses_no_qos1_and_duplicates_no_qos2(
    kind: str, tmp_path: Path, make_broker: Callable[..., pyo3mq.Broker]
) -> None:
    policy = Reconnect(initial_delay=0.02, max_delay=0.2)
    states: dict[str, list[ConnectionState]] = {"pub": [], "sub": []}

    def recorder(name: str) -> Callable[[StateChange], None]:
        return lambda change: states[name].append(change.state)

    with restartable(kind, tmp_path, make_broker) as (port, stop, start):
        sub = Client(
            "127.0.0.1",
            port,
            identifier="storm-sub",
            clean_session=False,
            reconnect=policy,
            on_state_change=recorder("sub"),
        )
        pub = Client(
            "127.0.0.1",
            port,
            identifier="storm-pub",
            clean_session=False,
            reconnect=policy,
            max_inflight=20,
            on_state_change=recorder("pub"),
        )
        received: dict[int, list[int]] = {1: [], 2: []}
        published = 0
        futures: list[asyncio.Future[None]] = []
        publishing = True
        async with sub, pub:
            assert await sub.subscribe([("storm/1", 1), ("storm/2", 2)]) == [1, 2]

            async def consume() -> None:
                async for message in sub.messages:
                    received[1 if message.topic == "storm/1" else 2].append(int(message.payload))

            async def produce() -> None:
                nonlocal published
                while publishing:
                    for _ in range(10):
                        qos = 1 + published % 2
                        futures.append(pub.publish(f"storm/{qos}", b"%d" % published, qos=qos))
                        published += 1
                    await asyncio.sleep(0.005)

            consumer = asyncio.ensure_future(consume())
            producer = asyncio.ensure_future(produce())
            for _ in range(RESTARTS):
                await asyncio.sleep(0.3)
                await asyncio.to_thread(stop)
                await asyncio.sleep(0.1)
                await asyncio.to_thread(start)
            await asyncio.sleep(0.3)
            publishing = False
            await producer
            await asyncio.wait_for(asyncio.gather(*futures), 60)
            expected = {qos: [n for n in range(published) if 1 + n % 2 == qos] for qos in (1, 2)}
            for _ in range(600):
                if set(received[1]) >= set(expected[1]) and len(received[2]) >= len(expected[2]):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # a late duplicate would show up now
            consumer.cancel()
    assert published > 1000
    # Each client lost its connection at every restart and came back.
    for name in ("pub", "sub"):
        assert states[name].count(ConnectionState.RECONNECTING) >= RESTARTS, (name, states[name])
    missing_1 = sorted(set(expected[1]) - set(received[1]))
    assert not missing_1, f"QoS 1 messages lost: {missing_1[:20]} ({len(missing_1)})"
    duplicated_2 = sorted({n for n in received[2] if received[2].count(n) > 1})
    assert not duplicated_2, f"QoS 2 messages delivered twice: {duplicated_2[:20]}"
    assert sorted(received[2]) == expected[2], "QoS 2 messages lost"
