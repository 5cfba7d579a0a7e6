"""Client sessions that survive the process (`session_store="sqlite:PATH"`): a client
process is killed (no DISCONNECT, no clean-up) with unacknowledged QoS 1/2 publishes, or
with inbound QoS 2 messages whose PUBREC never reached the broker; a client made later
in another process with the same store and identifier resumes the session. Against
pyo3mq's broker and Debian's mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pyo3mq import Client, ClientMessage, MqttError
from test_client import next_message, no_message, proxy_to, server

__all__ = ["server"]  # a fixture, imported for its side effect

#: The client process: connects through the given port with the store, waits for a line
#: on stdin, then publishes 20 messages or receives 5, and dies without a word.
CHILD = r"""
import asyncio, os, sys
import pyo3mq

mode, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]


async def main():
    store = f"sqlite:{db}"
    if mode == "publish":
        async with pyo3mq.Client(
            "127.0.0.1", port, identifier="persist-pub", clean_session=False, session_store=store
        ) as client:
            print("connected", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            for i in range(20):
                client.publish(f"persist/{1 + i % 2}", b"%d" % i, qos=1 + i % 2)
            await asyncio.sleep(0.5)
            print("published", flush=True)
            os._exit(0)
    async with pyo3mq.Client(
        "127.0.0.1", port, identifier="persist-sub", clean_session=False, session_store=store
    ) as client:
        await client.subscribe("persist/#", qos=2)
        print("connected", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        received = 0
        async for message in client.messages:
            print(message.payload.decode(), flush=True)
            received += 1
            if received == 5:
                await asyncio.sleep(0.5)
                os._exit(0)


asyncio.run(main())
"""


async def child(mode: str, port: int, db: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        mode,
        str(port),
        str(db),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert await line(proc) == "connected"
    return proc


async def line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()


async def go(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()


def stored_rows(db: Path) -> tuple[int, int]:
    """(outgoing publishes, inbound QoS 2 ids) in the store, read by another process (the
    extension's SQLite and Python's must not share a file within one process)."""
    script = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); print("
        "c.execute('SELECT COUNT(*) FROM client_outgoing').fetchone()[0], "
        "c.execute('SELECT COUNT(*) FROM client_inbound_qos2').fetchone()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(db)], capture_output=True, text=True, check=True
    )
    outgoing, inbound = out.stdout.split()
    return int(outgoing), int(inbound)


async def until_empty(db: Path) -> tuple[int, int]:
    for _ in range(100):
        rows = await asyncio.to_thread(stored_rows, db)
        if rows == (0, 0):
            break
        await asyncio.sleep(0.1)
    return rows


@pytest.fixture
async def subscriber(server: int) -> AsyncIterator[Client]:
    async with Client("127.0.0.1", server, identifier="persist-watch") as client:
        await client.subscribe("persist/#", qos=2)
        yield client


async def collect(client: Client, n: int) -> list[ClientMessage]:
    return [await next_message(client, 10) for _ in range(n)]


async def until_quiet(client: Client, quiet: float = 0.5) -> list[ClientMessage]:
    """Every message that arrives until none came for `quiet` seconds."""
    got = []
    while True:
        try:
            got.append(await next_message(client, quiet))
        except asyncio.TimeoutError:
            return got


def complete(messages: list[ClientMessage]) -> bool:
    topics = {(m.topic, int(m.payload)) for m in messages}
    return len(topics) == 20


def check_delivery(messages: list[ClientMessage]) -> None:
    """Every QoS 1 message at least once, every QoS 2 message exactly once."""
    qos1 = {int(m.payload) for m in messages if m.topic == "persist/1"}
    qos2 = sorted(int(m.payload) for m in messages if m.topic == "persist/2")
    assert qos1 == set(range(0, 20, 2))
    assert qos2 == list(range(1, 20, 2)), "QoS 2: each exactly once"


@pytest.mark.parametrize("lost", ["publishes", "acks"])
async def test_unacknowledged_publishes_survive_the_process(
    server: int, subscriber: Client, tmp_path: Path, lost: str
) -> None:
    """The publishing process dies with 20 QoS 1/2 publishes unacknowledged: either the
    broker never saw them ("publishes") or it did and its acknowledgements were lost
    ("acks"). The next process resends them from the store: every QoS 1 message arrives,
    and every QoS 2 message exactly once."""
    db = tmp_path / "client.db"
    async with proxy_to(server) as proxy:
        proc = await child("publish", proxy.port, db)
        if lost == "publishes":
            proxy.paused_up = True
        else:
            proxy.paused = True
        await go(proc)
        assert await line(proc) == "published"
        await proc.wait()
    # pyo3mq's broker routes a QoS 2 message when the PUBLISH comes, mosquitto when the
    # PUBREL does: with the acknowledgements lost, the QoS 1 messages (and with pyo3mq the
    # QoS 2 ones) are out already.
    before = await until_quiet(subscriber)
    assert len(before) in ((0,) if lost == "publishes" else (10, 20))
    assert (await asyncio.to_thread(stored_rows, db))[0] == 20
    store = f"sqlite:{db}"
    async with Client(
        "127.0.0.1", server, identifier="persist-pub", clean_session=False, session_store=store
    ) as resumed:
        assert resumed.session_present
        after: list[ClientMessage] = []
        while not complete(before + after):
            after.append(await next_message(subscriber, 10))
        assert await until_empty(db) == (0, 0)  # all acknowledged now
        after += await until_quiet(subscriber)  # a duplicate would come now
    check_delivery(before + after)


async def test_inbound_qos2_ids_survive_the_process(server: int, tmp_path: Path) -> None:
    """The receiving process dies after 5 QoS 2 messages whose PUBREC never reached the
    broker. The broker sends them again to the next process, which must not deliver them
    again (their ids are in the store), and delivers what is new."""
    db = tmp_path / "client.db"
    async with proxy_to(server) as proxy:
        proc = await child("subscribe", proxy.port, db)
        proxy.paused_up = True  # PUBRECs are lost
        await go(proc)
        async with Client("127.0.0.1", server) as publisher:
            for i in range(5):
                await publisher.publish("persist/2", b"old-%d" % i, qos=2)
            assert [await line(proc) for _ in range(5)] == [f"old-{i}" for i in range(5)]
            await proc.wait()
            assert (await asyncio.to_thread(stored_rows, db))[1] == 5
            store = f"sqlite:{db}"
            async with Client(
                "127.0.0.1",
                server,
                identifier="persist-sub",
                clean_session=False,
                session_store=store,
            ) as resumed:
                assert resumed.session_present
                await publisher.publish("persist/2", b"new", qos=2)
                assert (await next_message(resumed)).payload == b"new"
                await no_message(resumed)
                assert await until_empty(db) == (0, 0)


async def test_without_the_store_the_session_dies_with_the_process(
    server: int, subscriber: Client, tmp_path: Path
) -> None:
    """The control: the same crash with publishes that never reached the broker, and a
    next process without the store file: nothing is resent."""
    db = tmp_path / "client.db"
    async with proxy_to(server) as proxy:
        proc = await child("publish", proxy.port, db)
        proxy.paused_up = True
        await go(proc)
        assert await line(proc) == "published"
        await proc.wait()
    db.unlink()
    async with Client(
        "127.0.0.1",
        server,
        identifier="persist-pub",
        clean_session=False,
        session_store=f"sqlite:{db}",
    ):
        await no_message(subscriber, 1.0)


def test_store_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clean_session=False"):
        Client("127.0.0.1", 1, identifier="x", session_store=f"sqlite:{tmp_path}/a.db")
    with pytest.raises(ValueError, match="clean_session=False"):
        Client("127.0.0.1", 1, clean_session=False, session_store=f"sqlite:{tmp_path}/a.db")
    with pytest.raises(ValueError, match="sqlite:PATH"):
        Client("127.0.0.1", 1, session_store="postgres://x")
    with pytest.raises(MqttError, match="client session store"):
        Client(
            "127.0.0.1",
            1,
            identifier="x",
            clean_session=False,
            session_store=f"sqlite:{tmp_path}/missing/dir/a.db",
        )
    Client("127.0.0.1", 1, session_store="memory")
