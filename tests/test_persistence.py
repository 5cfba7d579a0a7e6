"""Persistent sessions and retained messages across restarts: the SQLite store (two
different `Broker` objects on one database file), a Python `SessionStore` (what it is
told, when, and what a broker seeded from it resumes), examples/persistent_broker.py, and
the settings that are refused.

Raw sockets (tests/support/mqtt_raw.py) wherever exact flags, packet ids or order matter. Brokers
with a Python store run on the test's event loop, so blocking client calls run in worker
threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyo3mq
import pytest
from pyo3mq import Broker, BrokerConfig, RetainedRecord, SessionRecord, StoredMessage
from support.mqtt_raw import DISCONNECT, PINGREQ, Packet, RawClient, ack, publish, subscribe
from support.stderr_capture import captured_stderr
from support.teardown import closed_at_teardown
from test_examples import Script, load, start
from test_hooks import LOOPBACK, TIMEOUT, frame, port_of

PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70
CONNACK_NEW = bytes.fromhex("20020000")
CONNACK_RESUMED = bytes.fromhex("20020100")
PINGRESP = bytes.fromhex("d000")

persistent_broker = load("persistent_broker")

RawFactory = Callable[[int], RawClient]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def raw() -> Iterator[RawFactory]:
    """`raw(port)` opens a RawClient (from any thread) that is closed at teardown."""
    yield from closed_at_teardown(RawClient)


@pytest.fixture
def script() -> Iterator[Callable[..., Script]]:
    started: list[Script] = []

    def factory(*args: str) -> Script:
        s = Script("persistent_broker", *args)
        started.append(s)
        return s

    yield factory
    for s in started:
        s.close()


def connack(c: RawClient, client_id: str, *, clean: bool) -> bytes:
    return frame(c.connect(client_id, clean=clean))


def subscribed(c: RawClient, pkid: int, *filters: tuple[str, int]) -> None:
    """SUBSCRIBE, and a SUBACK granting every requested QoS."""
    c.send(subscribe(pkid, *filters))
    expected = bytes([0x90, 2 + len(filters), pkid >> 8, pkid & 0xFF]) + bytes(
        q for _, q in filters
    )
    assert frame(c.recv()) == expected


def leave(c: RawClient) -> None:
    """DISCONNECT, then wait for the broker to close the socket (the session is detached
    once it has)."""
    c.send(DISCONNECT)
    assert c.expect_closed() == b""


def offline_session(raw: RawFactory, port: int, client_id: str, *filters: tuple[str, int]) -> None:
    """A new clean-session-0 session subscribed to `filters`, left offline."""
    sub = raw(port)
    assert connack(sub, client_id, clean=False) == CONNACK_NEW
    subscribed(sub, 1, *filters)
    leave(sub)


def publish_q1(c: RawClient, topic: str, payload: bytes, pkid: int, retain: bool = False) -> None:
    c.send(publish(topic, payload, qos=1, pkid=pkid, retain=retain))
    assert frame(c.recv()) == ack(PUBACK, pkid)


def publish_q2(c: RawClient, topic: str, payload: bytes, pkid: int) -> None:
    """The whole QoS 2 flow as publisher: PUBLISH, PUBREC, PUBREL, PUBCOMP."""
    c.send(publish(topic, payload, qos=2, pkid=pkid))
    assert frame(c.recv()) == ack(PUBREC, pkid)
    c.send(ack(PUBREL, pkid))
    assert frame(c.recv()) == ack(PUBCOMP, pkid)


def delivery(c: RawClient, first: int, topic: str, payload: bytes) -> Packet:
    """The next packet: a PUBLISH with exactly this first byte, topic and payload."""
    p = c.recv()
    assert p.type == 3, f"expected PUBLISH, got {frame(p).hex(' ')}"
    t, _, body = p.publish_fields()
    assert (hex(p.first), t, body) == (hex(first), topic, payload)
    return p


def pkid_of(p: Packet) -> int:
    pkid = p.publish_fields()[1]
    assert pkid is not None
    return pkid


def nothing_more(c: RawClient) -> None:
    """PINGREQ is answered after everything already queued: a PINGRESP next proves that
    nothing else was pending for this connection."""
    c.send(PINGREQ)
    assert frame(c.recv()).hex(" ") == PINGRESP.hex(" ")


class DictStore:
    """A `pyo3mq.SessionStore` in two dicts, logging every call; `until(pred)` waits
    (without polling) for a call after which `pred()` holds."""

    def __init__(
        self, sessions: Iterable[SessionRecord] = (), retained: Iterable[RetainedRecord] = ()
    ) -> None:
        self.sessions = {s.client_id: s for s in sessions}
        self.retained = {r.topic: r for r in retained}
        self.loads = 0
        self.calls: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def _note(self, method: str, key: str) -> None:
        self.calls.append((method, key))
        self._changed.set()

    async def load(self) -> tuple[list[SessionRecord], list[RetainedRecord]]:
        self.loads += 1
        return list(self.sessions.values()), list(self.retained.values())

    async def save_session(self, session: SessionRecord) -> None:
        self.sessions[session.client_id] = session
        self._note("save_session", session.client_id)

    async def delete_session(self, client_id: str) -> None:
        del self.sessions[client_id]
        self._note("delete_session", client_id)

    async def save_retained(self, message: RetainedRecord) -> None:
        self.retained[message.topic] = message
        self._note("save_retained", message.topic)

    async def delete_retained(self, topic: str) -> None:
        del self.retained[topic]
        self._note("delete_retained", topic)

    def deletes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0].startswith("delete")]

    async def until(self, pred: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            if pred():
                return
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"store never reached the state; calls: {self.calls}"
                ) from None


def store_broker(store: DictStore, **settings: Any) -> Broker:
    settings.setdefault("listeners", [LOOPBACK])
    settings.setdefault("persist_interval", 0.1)
    return Broker(session_store=store, **settings)


# --------------------------------------------------------------------------- SQLite


def test_sqlite_restart_resumes_session_and_retained(make_broker, raw: RawFactory, tmp_path: Path):
    """[MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2] [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-4.6.0-6]
    `session_store = "sqlite:F"`: a CS=0 client subscribes QoS 1 and leaves; 3 QoS 1
    messages and a retained one are published (and another retained one, then cleared);
    the broker stops. A *new* Broker on the same file resumes the session (`20 02 01 00`,
    the 3 messages in order, DUP=0, then live messages through the restored
    subscription), and a new subscriber gets the retained message with RETAIN=1, and not
    the cleared one [MQTT-3.3.1-10]."""
    store = f"sqlite:{tmp_path / 'sessions.db'}"
    first = make_broker(session_store=store)
    port = port_of(first)
    offline_session(raw, port, "sq-sub", ("sq/#", 1))
    pub = raw(port)
    pub.connect("sq-pub")
    pub.send(
        b"".join(publish("sq/m", b"m%d" % i, qos=1, pkid=i + 1) for i in range(3))
        + publish("kept/t", b"kept", qos=1, retain=True, pkid=4)
        + publish("kept/gone", b"soon cleared", qos=1, retain=True, pkid=5)
        + publish("kept/gone", b"", qos=1, retain=True, pkid=6)
    )
    assert [frame(pub.recv()) for _ in range(6)] == [ack(PUBACK, i) for i in range(1, 7)]
    leave(pub)
    first.stop()

    second = make_broker(session_store=store)
    assert second is not first
    port = port_of(second)
    sub = raw(port)
    assert connack(sub, "sq-sub", clean=False) == CONNACK_RESUMED
    for i in range(3):
        p = delivery(sub, 0x32, "sq/m", b"m%d" % i)
        sub.send(ack(PUBACK, pkid_of(p)))
    nothing_more(sub)
    # The subscription itself was restored: live messages reach it (RETAIN=0).
    pub = raw(port)
    pub.connect("sq-pub")
    publish_q1(pub, "sq/live", b"live", 1)
    sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "sq/live", b"live"))))
    newcomer = raw(port)
    assert connack(newcomer, "sq-new", clean=True) == CONNACK_NEW
    subscribed(newcomer, 1, ("kept/#", 1))
    delivery(newcomer, 0x33, "kept/t", b"kept")
    nothing_more(newcomer)


def test_sqlite_restart_resends_inflight_with_dup(make_broker, raw: RawFactory, tmp_path: Path):
    """[MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.6.0-1] [MQTT-2.3.1-4] Deliveries in flight at a
    graceful stop survive in SQLite: after the restart (a new Broker) the unacknowledged
    QoS 1 PUBLISH is resent with DUP=1 and its original packet id, the PUBREL of a
    PUBREC'd QoS 2 delivery is resent, and only then the message that waited behind the
    full window goes out (DUP=0)."""
    store = f"sqlite:{tmp_path / 'inflight.db'}"
    first = make_broker(session_store=store, max_inflight=2)
    port = port_of(first)
    sub = raw(port)
    assert connack(sub, "if-sub", clean=False) == CONNACK_NEW
    subscribed(sub, 1, ("if/1", 1), ("if/2", 2))
    pub = raw(port)
    pub.connect("if-pub")
    # Two acknowledged deliveries first, so the ids in flight are not the first ones.
    for i in (1, 2):
        publish_q1(pub, "if/1", b"acked", i)
        sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "if/1", b"acked"))))
    publish_q1(pub, "if/1", b"unacked", 3)
    p1 = delivery(sub, 0x32, "if/1", b"unacked")
    publish_q2(pub, "if/2", b"received", 4)
    p2 = delivery(sub, 0x34, "if/2", b"received")
    id1, id2 = pkid_of(p1), pkid_of(p2)
    assert id1 != id2 and {id1, id2}.isdisjoint({1, 2}), (id1, id2)
    sub.send(ack(PUBREC, id2))
    assert frame(sub.recv()) == ack(PUBREL, id2)
    publish_q1(pub, "if/1", b"waiting", 5)  # the window (2) is full: it stays queued
    nothing_more(sub)
    first.stop()

    second = make_broker(session_store=store, max_inflight=2)
    sub = raw(port_of(second))
    assert connack(sub, "if-sub", clean=False) == CONNACK_RESUMED
    resent = [frame(sub.recv()).hex(" "), frame(sub.recv()).hex(" ")]
    assert resent == [
        frame(Packet(0x3A, p1.body)).hex(" "),  # same topic, id and payload; DUP=1
        ack(PUBREL, id2).hex(" "),
    ]
    sub.send(ack(PUBACK, id1) + ack(PUBCOMP, id2))
    sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "if/1", b"waiting"))))
    nothing_more(sub)


# --------------------------------------------------------------------------- Python store


def first_run(raw: RawFactory, port: int) -> tuple[int, int]:
    """Leaves the session of `ps-sub` (max_inflight 2) with a PUBREC'd QoS 2 delivery, an
    unacknowledged QoS 1 one, and two queued messages; and one retained message. Returns
    the packet ids of the two deliveries in flight."""
    sub = raw(port)
    assert connack(sub, "ps-sub", clean=False) == CONNACK_NEW
    subscribed(sub, 1, ("ps/q1", 1), ("ps/q2", 2))
    pub = raw(port)
    pub.connect("ps-pub")
    publish_q2(pub, "ps/q2", b"two", 1)
    released = pkid_of(delivery(sub, 0x34, "ps/q2", b"two"))
    sub.send(ack(PUBREC, released))
    assert frame(sub.recv()) == ack(PUBREL, released)  # PUBCOMP is never sent
    publish_q1(pub, "ps/q1", b"m1", 2)
    unacked = pkid_of(delivery(sub, 0x32, "ps/q1", b"m1"))  # never acknowledged
    publish_q1(pub, "ps/q1", b"m2", 3)
    publish_q2(pub, "ps/q1", b"m3", 4)  # QoS 2 to a QoS 1 subscription
    publish_q1(pub, "ps/retained", b"keep", 5, retain=True)
    nothing_more(sub)  # m2 and m3 wait behind the full window
    return released, unacked


def second_run(raw: RawFactory, port: int, released: int, unacked: int) -> RawClient:
    """`ps-sub` resumes: PUBREL and the DUP=1 PUBLISH again, then the queue; a new client
    gets the retained message."""
    sub = raw(port)
    assert connack(sub, "ps-sub", clean=False) == CONNACK_RESUMED
    assert frame(sub.recv()) == ack(PUBREL, released)
    delivery(sub, 0x3A, "ps/q1", b"m1")  # DUP=1 ...
    sub.send(ack(PUBCOMP, released) + ack(PUBACK, unacked))
    for payload in (b"m2", b"m3"):
        sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "ps/q1", payload))))
    nothing_more(sub)
    newcomer = raw(port)
    assert connack(newcomer, "ps-new", clean=True) == CONNACK_NEW
    subscribed(newcomer, 1, ("ps/retained", 1))
    delivery(newcomer, 0x33, "ps/retained", b"keep")
    return sub


async def test_python_store_saves_and_resumes(raw: RawFactory) -> None:
    """[MQTT-3.1.2-4] [MQTT-3.2.2-2] [MQTT-4.4.0-1] [MQTT-3.3.1-5] A Python SessionStore:
    `load` is called once, before serving; periodic syncs (persist_interval 0.1) hand it
    the session with its subscriptions and pending messages (in-flight ones with their
    packet ids, a PUBREC'd QoS 2 one as released, then the queue at delivery QoS) and the
    retained message. A second Broker seeded from what the store holds resumes all of it."""
    store = DictStore()
    broker = store_broker(store, max_inflight=2)
    assert store.loads == 0
    async with broker:
        assert store.loads == 1
        released, unacked = await asyncio.to_thread(first_run, raw, port_of(broker))
        # Written by a periodic sync, while the broker runs.
        await store.until(
            lambda: (
                "ps/retained" in store.retained
                and len(getattr(store.sessions.get("ps-sub"), "pending", ())) == 4
            )
        )
    assert store.loads == 1
    assert set(store.sessions) == {"ps-sub"}
    record = store.sessions["ps-sub"]
    assert record.client_id == "ps-sub"
    assert sorted(record.subscriptions) == [("ps/q1", 1), ("ps/q2", 2)]
    assert record.pending == [
        StoredMessage("ps/q2", b"two", 2, 2, False, "ps-pub", packet_id=released, released=True),
        StoredMessage("ps/q1", b"m1", 1, 1, False, "ps-pub", packet_id=unacked, released=False),
        StoredMessage("ps/q1", b"m2", 1, 1, False, "ps-pub", packet_id=None, released=False),
        StoredMessage("ps/q1", b"m3", 2, 1, False, "ps-pub", packet_id=None, released=False),
    ]
    assert store.retained == {
        "ps/retained": RetainedRecord("ps/retained", b"keep", 1, "ps-pub"),
    }
    assert store.deletes() == []

    seeded = DictStore(store.sessions.values(), store.retained.values())
    second = store_broker(seeded, max_inflight=2)
    async with second:
        assert seeded.loads == 1
        port = port_of(second)
        sub = await asyncio.to_thread(second_run, raw, port, released, unacked)
        await seeded.until(lambda: seeded.sessions["ps-sub"].pending == [])
        assert seeded.deletes() == []

        # [MQTT-3.1.2-6] Clean session 1 discards the session: the next sync deletes it.
        def clean_reconnect() -> None:
            leave(sub)
            assert connack(raw(port), "ps-sub", clean=True) == CONNACK_NEW

        await asyncio.to_thread(clean_reconnect)
        await seeded.until(lambda: seeded.deletes() == [("delete_session", "ps-sub")])
        assert "ps-sub" not in seeded.sessions

        # [MQTT-3.3.1-10] An empty retained message clears it: the next sync deletes it.
        def clear_retained() -> None:
            pub = raw(port)
            pub.connect("ps-pub")
            publish_q1(pub, "ps/retained", b"", 1, retain=True)

        await asyncio.to_thread(clear_retained)
        await seeded.until(lambda: ("delete_retained", "ps/retained") in seeded.calls)
    assert seeded.deletes() == [("delete_session", "ps-sub"), ("delete_retained", "ps/retained")]
    assert seeded.sessions == {} and seeded.retained == {}
    assert seeded.loads == 1


async def test_python_store_is_given_only_what_changed(raw: RawFactory) -> None:
    """The broker records which sessions changed: with 20 persistent sessions stored, a
    message for one of them makes the syncs that follow save that session only, and no
    sync while running reads a full snapshot. A change synced while running survives the
    stop (its final full compare does not undo it)."""
    store = DictStore()
    async with store_broker(store) as broker:
        port = port_of(broker)
        persister = broker._persister
        assert persister is not None
        counting = CountingCore(persister._core)
        persister._core = counting  # type: ignore[assignment]

        def make_sessions() -> None:
            for i in range(20):
                offline_session(raw, port, f"many-{i}", (f"many/{i}", 1))

        await asyncio.to_thread(make_sessions)
        await store.until(
            lambda: (
                len(store.sessions) == 20 and all(s.subscriptions for s in store.sessions.values())
            )
        )
        before = len(store.calls)

        def publish_one() -> None:
            pub = raw(port)
            pub.connect("many-pub")
            publish_q1(pub, "many/7", b"x", 1)

        await asyncio.to_thread(publish_one)
        await store.until(lambda: len(store.sessions["many-7"].pending) == 1)
        await asyncio.sleep(0.35)  # three more syncs: nothing else changed
        assert store.calls[before:] == [("save_session", "many-7")]
        assert counting.snapshots == 0 and counting.changes_taken >= 4
    assert [m.payload for m in store.sessions["many-7"].pending] == [b"x"]
    assert all(store.sessions[f"many-{i}"].pending == [] for i in range(20) if i != 7)
    assert store.deletes() == []


class CountingCore:
    """Stands in for the broker core the persister talks to, counting its reads."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.snapshots = 0
        self.changes_taken = 0

    def snapshot(self) -> Any:
        self.snapshots += 1
        return self._core.snapshot()

    def take_changes(self) -> Any:
        self.changes_taken += 1
        return self._core.take_changes()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)


async def test_restart_brings_the_store_up_to_date_after_a_failed_final_sync(
    raw: RawFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """When the sync at stop fails, the same Broker object started again does not reload
    the stale store over its newer in-memory copy: it writes that copy to the store."""
    store = FailingStore(0)
    broker = store_broker(store, persist_interval=0)  # only the sync at stop writes
    async with broker:
        port = port_of(broker)

        await asyncio.to_thread(offline_session, raw, port, "restart-1", ("restart/t", 1))
        store.failures = store.attempts + 1  # the next save_session fails
    assert "restart-1" not in store.sessions
    assert "session store failed" in caplog.text
    async with broker:
        assert "restart-1" in store.sessions
        assert store.sessions["restart-1"].subscriptions == [("restart/t", 1)]
    assert store.loads == 1


class FlakyLoadStore(DictStore):
    """Its first `load` raises, as a database that is not up yet would."""

    async def load(self) -> tuple[list[SessionRecord], list[RetainedRecord]]:
        self.loads += 1
        if self.loads == 1:
            raise OSError("database not reachable")
        return list(self.sessions.values()), list(self.retained.values())


async def test_failed_starts_leave_the_store_alone(raw: RawFactory) -> None:
    """A start whose store load fails is refused (`BrokerStartError`, the store's error
    as its cause) and retried with a new load; a start that fails after loading (its
    port is taken) is retried without reloading or rewriting the store. Then the stored
    session resumes, and nothing was deleted."""
    store = FlakyLoadStore([SessionRecord("kept", [("k/t", 1)], [])])
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    broker = store_broker(store, listeners=[f"tcp://127.0.0.1:{port}"])
    with pytest.raises(pyo3mq.BrokerStartError, match="not reachable") as refused:
        await broker.__aenter__()
    assert isinstance(refused.value.__cause__, OSError)
    with pytest.raises(pyo3mq.BrokerStartError):
        await broker.__aenter__()
    blocker.close()
    async with broker:
        sub = await asyncio.to_thread(raw, port)
        assert await asyncio.to_thread(connack, sub, "kept", clean=False) == b"\x20\x02\x01\x00"
    assert store.loads == 2
    assert store.deletes() == []
    assert store.sessions["kept"].subscriptions == [("k/t", 1)]


def test_a_session_store_object_and_a_session_store_setting_conflict(tmp_path: Path) -> None:
    """Two stores would each get half of the changes: the combination is refused."""
    config = BrokerConfig(session_store=f"sqlite:{tmp_path / 's.db'}")
    with pytest.raises(ValueError, match="replaces session_store"):
        Broker(config, session_store=DictStore())


class FailingStore(DictStore):
    """Its first `failures` save_session calls raise."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.attempts = 0

    async def save_session(self, session: SessionRecord) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            self._note("save_session_failed", session.client_id)
            raise OSError("disk full")
        await super().save_session(session)


async def test_failing_store_is_logged_and_broker_keeps_serving(
    raw: RawFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A store whose save_session raises is logged on the `pyo3mq` logger (with the
    exception) and retried at the next sync; the broker keeps serving meanwhile."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")
    store = FailingStore(failures=2)
    async with store_broker(store) as broker:
        port = port_of(broker)

        def subscriber() -> RawClient:
            sub = raw(port)
            assert connack(sub, "fs-sub", clean=False) == CONNACK_NEW
            subscribed(sub, 1, ("fs/#", 1))
            return sub

        sub = await asyncio.to_thread(subscriber)
        await store.until(lambda: store.attempts >= 2)

        def round_trip() -> None:
            pub = raw(port)
            pub.connect("fs-pub")
            publish_q1(pub, "fs/after-failure", b"still serving", 1)
            sub.send(
                ack(PUBACK, pkid_of(delivery(sub, 0x32, "fs/after-failure", b"still serving")))
            )

        await asyncio.to_thread(round_trip)
        assert broker.running
        # Retried: the third attempt succeeds and the store catches up.
        await store.until(lambda: "fs-sub" in store.sessions)
    failures = [
        r
        for r in caplog.records
        if r.name == "pyo3mq" and r.levelno >= logging.ERROR and "session store" in r.getMessage()
    ]
    assert len(failures) == 2, [r.getMessage() for r in caplog.records]
    for r in failures:
        assert r.exc_info is not None and isinstance(r.exc_info[1], OSError)
        assert str(r.exc_info[1]) == "disk full"
    assert store.sessions["fs-sub"].subscriptions == [("fs/#", 1)]


# --------------------------------------------------------------------------- example


def test_example_script_keeps_queued_message_across_restart(
    script: Callable[..., Script], raw: RawFactory, tmp_path: Path
) -> None:
    """[MQTT-3.1.2-5] `python examples/persistent_broker.py --db F --port 0`: a QoS 1
    message queued for an offline CS=0 subscriber survives SIGTERM (exit 0) and a second
    run on the same database."""
    db = str(tmp_path / "example.db")
    s = script("--db", db, "--port", "0")
    port = s.port()
    offline_session(raw, port, "ex-sub", ("ex/#", 1))
    pub = raw(port)
    pub.connect("ex-pub")
    publish_q1(pub, "ex/door", b"opened while away", 1)
    assert s.terminate() == 0

    again = script("--db", db, "--port", "0")
    sub = raw(again.port())
    assert connack(sub, "ex-sub", clean=False) == CONNACK_RESUMED
    sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "ex/door", b"opened while away"))))
    nothing_more(sub)
    assert again.terminate() == 0


async def test_example_run_resumes_in_process(raw: RawFactory, tmp_path: Path) -> None:
    """The example's `run(db, host, port)`: retained messages and a CS=0 session with a
    queued message outlive one run and are there in the next (same file)."""
    db = tmp_path / "nested" / "dir" / "run.db"  # the directory is created
    running = await start(persistent_broker.run, db, "127.0.0.1", 0)
    broker = running.started
    assert isinstance(broker, pyo3mq.Broker) and broker.running
    assert broker.config.session_store == f"sqlite:{db}"
    assert broker.config.durability == "interval"

    def before(port: int) -> None:
        offline_session(raw, port, "run-sub", ("run/#", 1))
        pub = raw(port)
        pub.connect("run-pub")
        publish_q1(pub, "run/queued", b"q", 1)
        publish_q1(pub, "state/run", b"retained", 2, retain=True)

    await asyncio.to_thread(before, port_of(broker))
    await running.stop()
    assert not broker.running

    running = await start(persistent_broker.run, db, "127.0.0.1", 0)

    def after(port: int) -> None:
        sub = raw(port)
        assert connack(sub, "run-sub", clean=False) == CONNACK_RESUMED
        sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "run/queued", b"q"))))
        subscribed(sub, 2, ("state/#", 0))
        delivery(sub, 0x31, "state/run", b"retained")
        nothing_more(sub)

    await asyncio.to_thread(after, port_of(running.started))
    await running.stop()


READ_PENDING = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
rows = conn.execute("SELECT client_id, payload FROM pending ORDER BY seq").fetchall()
conn.close()
print(json.dumps([[c, bytes(p).hex()] for c, p in rows]))
"""


def pending_rows(db: Path) -> list[tuple[str, bytes]]:
    """The store's pending rows, read by another process: Python's sqlite3 in this process
    is a second copy of SQLite, whose POSIX locks would clash with the broker's (closing
    it deletes the broker's WAL and loses its later writes)."""
    out = subprocess.run(
        [sys.executable, "-c", READ_PENDING, str(db)],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    return [(c, bytes.fromhex(p)) for c, p in json.loads(out)]


@pytest.mark.parametrize("sync", [True, False])
async def test_example_sync_commits_before_puback(
    raw: RawFactory, tmp_path: Path, sync: bool
) -> None:
    """[MQTT-4.5.0-1] The example's `sync` (`--sync`): when the PUBACK arrives the message
    is already in the database. Without it (and no periodic writes) nothing is written
    before the stop, which shows the check can fail."""
    db = tmp_path / "sync.db"
    running = await start(persistent_broker.run, db, "127.0.0.1", 0, sync=sync, persist_interval=0)
    broker = running.started
    assert broker.config.durability == ("sync" if sync else "interval")

    def queue_one(port: int) -> None:
        offline_session(raw, port, "sync-sub", ("sync/#", 1))
        pub = raw(port)
        pub.connect("sync-pub")
        publish_q1(pub, "sync/t", b"committed", 1)

    await asyncio.to_thread(queue_one, port_of(broker))
    assert pending_rows(db) == ([("sync-sub", b"committed")] if sync else [])
    await running.stop()
    assert pending_rows(db) == [("sync-sub", b"committed")]


def test_example_main_reports_a_bad_database_path(tmp_path: Path, capsys) -> None:
    """`main()` exits 2 with a message when the database cannot be created."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert persistent_broker.main(["--db", str(blocker / "x.db"), "--port", "0"]) == 2
    assert "persistent_broker:" in capsys.readouterr().err


# --------------------------------------------------------------------------- unreadable stores


TAMPER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.executescript(sys.argv[2])
conn.close()
"""

USER_VERSION = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
print(conn.execute("PRAGMA user_version").fetchone()[0])
conn.close()
"""


def tamper(db: Path, sql: str) -> None:
    """Changes the file as a person with `sqlite3` would (another process: see
    `pending_rows`)."""
    subprocess.run([sys.executable, "-c", TAMPER, str(db), sql], check=True, timeout=TIMEOUT)


def user_version(db: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", USER_VERSION, str(db)],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout
    return int(out)


def store_files(db: Path) -> dict[str, bytes]:
    """The database and whatever SQLite keeps beside it (-wal, -shm), by name."""
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}


def store_with_state(raw: RawFactory, db: Path) -> None:
    """The measured case: `db` holds one persistent session (`keep-sub`, subscribed to
    `keep/#` at QoS 1) with 5 acknowledged QoS 1 messages queued, and 2 retained
    messages; the broker that wrote it is gone."""
    broker = Broker(listeners=[LOOPBACK], session_store=f"sqlite:{db}")
    broker.start()
    try:
        port = port_of(broker)
        offline_session(raw, port, "keep-sub", ("keep/#", 1))
        pub = raw(port)
        pub.connect("keep-pub")
        for i in range(5):
            publish_q1(pub, "keep/q", b"m%d" % i, i + 1)
        publish_q1(pub, "state/a", b"A", 6, retain=True)
        publish_q1(pub, "state/b", b"B", 7, retain=True)
        leave(pub)
    finally:
        broker.stop()
    # The last reference: its store connection closes (SQLite folds the write-ahead log
    # into the file and removes it).
    del broker
    gc.collect()
    assert list(store_files(db)) == [db.name]


def resumes_everything(raw: RawFactory, port: int) -> None:
    """`keep-sub` resumes with its 5 messages in order, and both retained messages are
    there."""
    sub = raw(port)
    assert connack(sub, "keep-sub", clean=False) == CONNACK_RESUMED
    for i in range(5):
        sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "keep/q", b"m%d" % i))))
    nothing_more(sub)
    sub.send(subscribe(2, ("state/#", 0)))
    assert frame(sub.recv()) == bytes.fromhex("9003000200")
    replayed = sorted(sub.recv().publish_fields() for _ in range(2))
    assert replayed == [("state/a", None, b"A"), ("state/b", None, b"B")]
    nothing_more(sub)


BAD_ROW = "UPDATE retained SET payload = CAST(payload AS TEXT) WHERE topic = 'state/b'"


def test_sqlite_store_with_an_unreadable_row_refuses_to_start(
    make_broker, raw: RawFactory, tmp_path: Path
) -> None:
    """One retained row's payload turned from BLOB to TEXT: the broker refuses to start
    (`BrokerStartError` naming the file, the table and the row), and so does the
    `pyo3mq` command (exit 2, the same message); the file is byte-for-byte as it was.
    Nothing was lost: with the row repaired, the session resumes with its 5 messages
    and both retained messages are there. (Before, the broker started empty and its
    next save deleted all of it.)"""
    db = tmp_path / "sessions.db"
    store_with_state(raw, db)
    tamper(db, BAD_ROW)
    before = store_files(db)
    assert list(before) == [db.name]

    refused = Broker(listeners=[LOOPBACK], session_store=f"sqlite:{db}")
    with pytest.raises(pyo3mq.BrokerStartError) as excinfo:
        refused.start()
    problem = f'cannot read session store {db}: retained row "state/b": Invalid column type Text'
    assert str(excinfo.value).startswith(problem), str(excinfo.value)
    assert not refused.running
    assert refused.stats() == {}
    # The last references (the traceback holds one): its store connection closes.
    del refused, excinfo
    gc.collect()
    assert store_files(db) == before

    config = tmp_path / "broker.toml"
    config.write_text(f'listeners = ["{LOOPBACK}"]\nsession_store = "sqlite:{db}"\n')
    cli = subprocess.run(
        [sys.executable, "-m", "pyo3mq", "--config", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert cli.returncode == 2, cli.stderr
    assert f"pyo3mq: {problem}" in cli.stderr
    assert "listening" not in cli.stdout
    assert store_files(db) == before

    tamper(db, BAD_ROW.replace("AS TEXT", "AS BLOB"))
    resumes_everything(raw, port_of(make_broker(session_store=f"sqlite:{db}")))


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        (
            "PRAGMA user_version = 99",
            "has schema version 99; this pyo3mq reads version 4 (the file was written by a "
            "newer pyo3mq or another program)",
        ),
        (
            "PRAGMA user_version = 0; CREATE TABLE accounts (id INTEGER)",
            "is not a pyo3mq session store: its tables are",
        ),
    ],
    ids=["newer", "foreign"],
)
def test_unknown_schema_is_refused(raw: RawFactory, tmp_path: Path, sql: str, problem: str) -> None:
    """A schema version this build does not know (a newer pyo3mq's), or unversioned
    tables that are not only pyo3mq's, refuse the start with a message naming the file;
    the file is left as it was."""
    db = tmp_path / "sessions.db"
    store_with_state(raw, db)
    tamper(db, sql)
    before = store_files(db)
    broker = Broker(listeners=[LOOPBACK], session_store=f"sqlite:{db}")
    with pytest.raises(pyo3mq.BrokerStartError, match=re.escape(f"{db} {problem}")):
        broker.start()
    # The last reference: its store connection closes (SQLite folds the write-ahead log
    # into the file and removes it).
    del broker
    gc.collect()
    assert store_files(db) == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    db.write_bytes(b"sessions, as a text file someone put here\n" * 20)
    before = store_files(db)
    broker = Broker(listeners=[LOOPBACK], session_store=f"sqlite:{db}")
    with pytest.raises(pyo3mq.BrokerStartError, match=f"session store {re.escape(str(db))}: "):
        broker.start()
    # The last reference: its store connection closes (SQLite folds the write-ahead log
    # into the file and removes it).
    del broker
    gc.collect()
    assert store_files(db) == before


def test_start_empty_moves_the_unreadable_store_aside(
    make_broker, raw: RawFactory, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`store_load_error = "start_empty"`: the unreadable file is moved to
    `PATH.corrupt-TIMESTAMP` (unchanged), the error is logged with where it went, and the
    broker starts on a new, empty file of the current schema version."""
    db = tmp_path / "sessions.db"
    store_with_state(raw, db)
    tamper(db, BAD_ROW)
    before = db.read_bytes()

    broker = make_broker(session_store=f"sqlite:{db}", store_load_error="start_empty")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("sessions.db.corrupt-")]
    assert len(aside) == 1, aside
    assert re.fullmatch(r"sessions\.db\.corrupt-\d{8}T\d{6}Z", aside[0].name), aside[0].name
    assert aside[0].read_bytes() == before
    log = captured_stderr()
    assert 'retained row "state/b"' in log
    assert f'store_load_error = "start_empty"); it was moved to {aside[0]}' in log

    port = port_of(broker)
    sub = raw(port)
    assert connack(sub, "keep-sub", clean=False) == CONNACK_NEW
    subscribed(sub, 1, ("keep/#", 1))
    nothing_more(sub)
    leave(sub)
    broker.stop()
    assert user_version(db) == 4
    assert aside[0].read_bytes() == before
    # The new file is the store from now on: the new session is in it.
    again = make_broker(session_store=f"sqlite:{db}")
    assert connack(raw(port_of(again)), "keep-sub", clean=False) == CONNACK_RESUMED


OLD_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE sessions (client_id TEXT PRIMARY KEY);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL,
    PRIMARY KEY (client_id, filter));
CREATE TABLE pending (
    client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, msg_qos INTEGER NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, publisher TEXT NOT NULL, pkid INTEGER,
    released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, seq));
CREATE TABLE retained (
    topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    publisher TEXT NOT NULL);
INSERT INTO sessions VALUES ('old-sub');
INSERT INTO subscriptions VALUES ('old-sub', 'old/#', 1);
INSERT INTO pending VALUES ('old-sub', 0, 'old/t', x'6f6c64', 1, 1, 0, 'old-pub', NULL, 0);
INSERT INTO retained VALUES ('kept/r', x'72', 0, 'old-pub');
"""


def test_a_store_from_before_schema_versions_loads(
    make_broker, raw: RawFactory, tmp_path: Path
) -> None:
    """A file as the broker wrote it before the schema had a version (user_version 0,
    the same tables) loads: the session resumes with its message, the retained message
    is there, and the file now carries the current version (4)."""
    db = tmp_path / "old.db"
    tamper(db, OLD_SCHEMA)
    assert user_version(db) == 0
    broker = make_broker(session_store=f"sqlite:{db}")
    assert user_version(db) == 4
    sub = raw(port_of(broker))
    assert connack(sub, "old-sub", clean=False) == CONNACK_RESUMED
    sub.send(ack(PUBACK, pkid_of(delivery(sub, 0x32, "old/t", b"old"))))
    nothing_more(sub)
    subscribed(sub, 2, ("kept/#", 0))
    delivery(sub, 0x31, "kept/r", b"r")
    nothing_more(sub)


class BrokenLoadStore(DictStore):
    """Its `load` always raises, as a store with a row it cannot decode would."""

    async def load(self) -> tuple[list[SessionRecord], list[RetainedRecord]]:
        self.loads += 1
        raise ValueError("row 3: payload is not bytes")


async def test_python_store_whose_load_raises_refuses_the_start(
    raw: RawFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python SessionStore whose `load()` raises refuses the start (`async with` and
    `start()` alike) with a `BrokerStartError` naming the store and the problem, and the
    store is told nothing. With `store_load_error = "start_empty"` the broker starts
    with no stored session, logs the error (with the exception), deletes nothing it did
    not load, and saves the sessions made since."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")
    store = BrokenLoadStore([SessionRecord("kept", [("k/t", 1)], [])])
    broker = store_broker(store)
    problem = "session store BrokenLoadStore cannot be loaded: ValueError('row 3: payload"
    with pytest.raises(pyo3mq.BrokerStartError, match=re.escape(problem)) as refused:
        await broker.__aenter__()
    assert isinstance(refused.value.__cause__, ValueError)
    assert not broker.running
    with pytest.raises(pyo3mq.BrokerStartError, match=re.escape(problem)):
        await asyncio.to_thread(broker.start)
    assert not broker.running
    assert store.loads == 2 and store.calls == []

    async with store_broker(store, store_load_error="start_empty") as empty:
        port = port_of(empty)
        await asyncio.to_thread(offline_session, raw, port, "fresh", ("f/t", 1))
        sub = await asyncio.to_thread(raw, port)
        assert await asyncio.to_thread(connack, sub, "kept", clean=True) == CONNACK_NEW
        await store.until(lambda: "fresh" in store.sessions)
    logged = [r for r in caplog.records if r.name == "pyo3mq" and problem in r.getMessage()]
    assert len(logged) == 1 and "start_empty" in logged[0].getMessage()
    assert logged[0].exc_info is not None and isinstance(logged[0].exc_info[1], ValueError)
    assert store.deletes() == []
    assert store.sessions["kept"] == SessionRecord("kept", [("k/t", 1)], [])
    assert store.sessions["fresh"].subscriptions == [("f/t", 1)]


# --------------------------------------------------------------------------- settings


def test_sync_durability_needs_sqlite() -> None:
    """`durability = "sync"` with the memory store (or a Python store, which the core sees
    as memory) is refused with a message naming the setting."""
    with pytest.raises(ValueError, match="durability"):
        Broker(listeners=[LOOPBACK], durability="sync")
    with pytest.raises(ValueError, match="durability"):
        Broker(listeners=[LOOPBACK], durability="sync", session_store="memory")
    with pytest.raises(ValueError, match="durability"):
        Broker(listeners=[LOOPBACK], durability="sync", session_store=DictStore())
    with pytest.raises(ValueError, match="durability"):
        BrokerConfig(durability="sync")
    assert BrokerConfig(durability="sync", session_store="sqlite:x.db").durability == "sync"


def test_unknown_session_store_is_refused() -> None:
    """Only `memory`, `sqlite:PATH` or a SessionStore object are stores."""
    with pytest.raises(ValueError, match="session_store"):
        Broker(listeners=[LOOPBACK], session_store="redis:x")
    with pytest.raises(ValueError, match="session_store"):
        BrokerConfig(session_store="redis:x")
    with pytest.raises(ValueError, match="session_store"):
        BrokerConfig(session_store="sqlite:")


def test_store_load_error_setting() -> None:
    """`store_load_error` is `refuse` (default) or `start_empty`, nothing else."""
    assert BrokerConfig().store_load_error == "refuse"
    assert BrokerConfig(store_load_error="start_empty").store_load_error == "start_empty"
    with pytest.raises(ValueError, match="store_load_error"):
        BrokerConfig(store_load_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Broker(listeners=[LOOPBACK], session_store=object())  # type: ignore[arg-type]
