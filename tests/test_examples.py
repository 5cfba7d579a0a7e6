"""The examples, end to end with real clients: each one both driven in-process through
its `run(...)` (with a deadline, cancelled when done) and run as a script
(`python examples/X.py --port 0`, stopped with SIGTERM)."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pyo3mq
import pytest
from support.mqtt_raw import connect
from test_hooks import (
    CONNACK_BAD_CREDENTIALS,
    CONNACK_OK,
    TIMEOUT,
    Paho,
    PahoPool,
    connack,
    port_of,
    refused,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BAD_CREDENTIALS = "Bad user name or password"


def load(name: str) -> ModuleType:
    """Imports examples/NAME.py (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


auth_dict = load("auth_dict")
auth_sqlite = load("auth_sqlite")
gateway = load("gateway")


@pytest.fixture
def paho() -> Iterator[PahoPool]:
    """Opens paho clients (blocking: through to_thread in async tests)."""
    pool = PahoPool()
    yield pool
    pool.close_all()


class Running:
    """An example's `run(...)` as a task; `started` is what it passed to `ready`."""

    def __init__(self, task: asyncio.Task[None], started: Any) -> None:
        self.task = task
        self.started = started

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(self.task, TIMEOUT)


async def start(run: Callable[..., Awaitable[None]], *args: Any, **kwargs: Any) -> Running:
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run(*args, duration=30, ready=ready.set_result, **kwargs))
    done, _ = await asyncio.wait({task, ready}, timeout=TIMEOUT, return_when="FIRST_COMPLETED")
    assert ready in done, f"the example did not start: {task}"
    return Running(task, ready.result())


class Script:
    """`python examples/NAME.py ARGS...` with its stdout read on a thread."""

    def __init__(self, name: str, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def port(self) -> int:
        """The port from the example's `listening on HOST:PORT` line."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT * 2)
            except queue.Empty:
                raise AssertionError(f"no 'listening on' line: {self.output}") from None
            if line is None:
                raise AssertionError(f"the example exited: {self.output}")
            self.output.append(line)
            m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                return int(m.group(1))

    def terminate(self) -> int:
        """SIGTERM; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TIMEOUT * 2)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def script() -> Iterator[Callable[..., Script]]:
    started: list[Script] = []

    def factory(name: str, *args: str, **kwargs: Any) -> Script:
        s = Script(name, *args, **kwargs)
        started.append(s)
        return s

    yield factory
    for s in started:
        s.close()


def check_credentials(paho: PahoPool, port: int, user: str, password: str) -> None:
    """The right password connects (and the broker works); anything else gets 0x04."""
    ok = paho(port, "good", username=user, password=password)
    assert ok.reason == "Success"
    assert ok.subscribe(("echo", 1)) == [1]
    ok.publish("echo", b"hi", qos=1)
    m = ok.next_msg()
    assert (m.topic, m.payload) == ("echo", b"hi")
    assert paho(port, "bad", username=user, password=password + "x").reason == BAD_CREDENTIALS
    assert paho(port, "nobody", username="mallory", password=password).reason == BAD_CREDENTIALS
    assert paho(port, "anonymous").reason == BAD_CREDENTIALS
    assert refused(port, connect("raw", username=user, password=b"")) == (
        CONNACK_BAD_CREDENTIALS,
        b"",
    )


# --------------------------------------------------------------------------- auth_dict


async def test_auth_dict_run(paho) -> None:
    """auth_dict's `run()` accepts the users of the dict it is given, nobody else."""
    running = await start(auth_dict.run, "127.0.0.1", 0, {"carol": "c0rrect horse"})
    broker = running.started
    assert isinstance(broker, pyo3mq.Broker) and broker.running
    await asyncio.to_thread(check_credentials, paho, port_of(broker), "carol", "c0rrect horse")
    paho.close_all()
    await running.stop()
    assert not broker.running


async def test_dict_authenticator_directly() -> None:
    """DictAuthenticator compares exact bytes and refuses missing credentials."""
    auth = auth_dict.DictAuthenticator({"alice": "wonderland"})
    assert await auth.authenticate("c", "alice", b"wonderland") is True
    assert await auth.authenticate("c", "alice", b"Wonderland") is False
    assert await auth.authenticate("c", "alice", b"wonderland\x00") is False
    assert await auth.authenticate("c", "alice", None) is False
    assert await auth.authenticate("c", None, b"wonderland") is False
    assert await auth.authenticate("c", "bob", b"wonderland") is False


def test_auth_dict_script(script, paho) -> None:
    """`python examples/auth_dict.py --port 0` serves its USERS and exits 0 on SIGTERM."""
    s = script("auth_dict", "--port", "0", "--duration", "30")
    port = s.port()
    check_credentials(paho, port, "alice", auth_dict.USERS["alice"])
    assert connack(port, "bob", username="bob", password=b"builder") == CONNACK_OK
    paho.close_all()
    assert s.terminate() == 0


# --------------------------------------------------------------------------- auth_sqlite


def test_sqlite_users_table(tmp_path: Path) -> None:
    """Users are stored salted and hashed (PBKDF2), never as the password; the check is a
    plain function (so the broker runs it off the event loop)."""
    db = str(tmp_path / "users.db")
    auth_sqlite.add_user(db, "alice", "same password", iterations=1000)
    auth_sqlite.add_user(db, "bob", "same password", iterations=1000)
    auth = auth_sqlite.SqliteAuthenticator(db)
    assert not inspect.iscoroutinefunction(auth.authenticate)
    assert auth.authenticate("c", "alice", b"same password") is True
    assert auth.authenticate("c", "bob", b"same password") is True
    assert auth.authenticate("c", "alice", b"same password ") is False
    assert auth.authenticate("c", "carol", b"same password") is False
    assert auth.authenticate("c", "alice", None) is False
    assert auth.authenticate("c", None, b"same password") is False
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT username, salt, iterations, hash FROM users").fetchall()
    conn.close()
    assert len(rows) == 2
    (_, salt_a, it_a, hash_a), (_, salt_b, _, hash_b) = sorted(rows)
    assert salt_a != salt_b and hash_a != hash_b, "salts must differ per user"
    assert hash_a == auth_sqlite.hash_password(b"same password", salt_a, it_a)
    assert all(b"same password" not in bytes(r[3]) for r in rows)
    # A password change replaces the row.
    auth_sqlite.add_user(db, "alice", "new", iterations=1000)
    assert auth.authenticate("c", "alice", b"new") is True
    assert auth.authenticate("c", "alice", b"same password") is False


async def test_auth_sqlite_run(paho, tmp_path: Path) -> None:
    """auth_sqlite's `run()` accepts the users in the table, nobody else, and stays
    responsive while passwords are hashed."""
    db = str(tmp_path / "users.db")
    auth_sqlite.add_user(db, "dave", "s3cret!")
    running = await start(auth_sqlite.run, db, "127.0.0.1", 0)
    broker = running.started
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    try:
        await asyncio.to_thread(check_credentials, paho, port_of(broker), "dave", "s3cret!")
    finally:
        tick_task.cancel()
    assert ticks > 5
    paho.close_all()
    await running.stop()
    assert not broker.running


def test_auth_sqlite_script(script, paho, tmp_path: Path) -> None:
    """`python examples/auth_sqlite.py --db F --add-user U P --port 0` adds the user,
    serves, and exits 0 on SIGTERM; the database keeps the user for the next run."""
    db = str(tmp_path / "users.db")
    s = script("auth_sqlite", "--db", db, "--add-user", "erin", "pa ss", "--port", "0")
    check_credentials(paho, s.port(), "erin", "pa ss")
    paho.close_all()
    assert s.terminate() == 0
    again = script("auth_sqlite", "--db", db, "--port", "0")
    port = again.port()
    assert connack(port, "e", username="erin", password=b"pa ss") == CONNACK_OK
    assert connack(port, "e", username="erin", password=b"pass") == CONNACK_BAD_CREDENTIALS
    assert again.terminate() == 0


# --------------------------------------------------------------------------- gateway


def aggregates(sub: Paho, n: int) -> dict[str, tuple[dict[str, Any], int, bool]]:
    """The next `n` aggregates: topic -> (JSON payload, QoS, retain)."""
    out = {}
    for _ in range(n):
        m = sub.next_msg()
        out[m.topic] = (json.loads(m.payload), m.qos, bool(m.retain))
    return out


def publish_readings(pub: Paho, readings: list[tuple[str, bytes]]) -> None:
    for topic, payload in readings:
        pub.publish(topic, payload, qos=1)


async def test_gateway_every_n(paho) -> None:
    """Every 4 readings of a sensor the gateway publishes their count, average, min and
    max to aggregates/<sensor> (QoS 1, retained); bad readings are skipped."""
    running = await start(gateway.run, "127.0.0.1", 0, every=4)
    gw = running.started
    port = port_of(gw.broker)
    sub = await asyncio.to_thread(paho, port, "dashboard")
    assert await asyncio.to_thread(sub.subscribe, ("aggregates/#", 1)) == [1]
    pub = await asyncio.to_thread(paho, port, "sensor-hub")
    readings = [
        ("sensors/kitchen", b"1"),
        ("sensors/garage", b"10"),
        ("sensors/kitchen", b"2"),
        ("sensors/garage", b"not a number"),
        ("sensors/kitchen", b"3.5"),
        ("sensors/garage", b"20"),
        ("sensors/kitchen", b"-0.5"),
        ("sensors/floor1/room2", b"7"),
        ("sensors/garage", b"nan"),
        ("sensors/garage", b"30"),
        ("sensors", b"5"),
        ("sensors/garage", b"40"),
    ]
    await asyncio.to_thread(publish_readings, pub, readings)
    got = await asyncio.to_thread(aggregates, sub, 2)
    assert got == {
        "aggregates/kitchen": (
            {"sensor": "kitchen", "count": 4, "avg": 1.5, "min": -0.5, "max": 3.5},
            1,
            False,
        ),
        "aggregates/garage": (
            {"sensor": "garage", "count": 4, "avg": 25.0, "min": 10.0, "max": 40.0},
            1,
            False,
        ),
    }
    assert (gw.received, gw.rejected, gw.published) == (9, 3, 2)
    # The aggregates are retained: a dashboard connecting later gets the latest ones.
    late = await asyncio.to_thread(paho, port, "late-dashboard")
    assert await asyncio.to_thread(late.subscribe, ("aggregates/#", 1)) == [1]
    got = await asyncio.to_thread(aggregates, late, 2)
    assert {topic: retain for topic, (_, _, retain) in got.items()} == {
        "aggregates/kitchen": True,
        "aggregates/garage": True,
    }
    paho.close_all()
    await running.stop()
    assert not gw.broker.running


async def test_gateway_interval(paho) -> None:
    """With an interval, sensors that got readings are summarised every interval seconds:
    the summaries add up to exactly the readings sent (sensor names may span levels)."""
    running = await start(gateway.run, "127.0.0.1", 0, every=None, interval=0.2)
    port = port_of(running.started.broker)
    sub = await asyncio.to_thread(paho, port, "dashboard")
    assert await asyncio.to_thread(sub.subscribe, ("aggregates/#", 1)) == [1]
    pub = await asyncio.to_thread(paho, port, "sensor-hub")
    values = [1.0, 2.0, 6.0, 3.0]
    readings = [("sensors/lab/bench", str(v).encode()) for v in values]
    await asyncio.to_thread(publish_readings, pub, readings)

    def collect() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while sum(a["count"] for a in out) < len(values):
            m = sub.next_msg()
            assert m.topic == "aggregates/lab/bench"
            out.append(json.loads(m.payload))
        return out

    summaries = await asyncio.to_thread(collect)
    assert {s["sensor"] for s in summaries} == {"lab/bench"}
    assert sum(s["count"] for s in summaries) == 4
    assert sum(s["avg"] * s["count"] for s in summaries) == pytest.approx(12.0)
    assert min(s["min"] for s in summaries) == 1.0
    assert max(s["max"] for s in summaries) == 6.0
    paho.close_all()
    await running.stop()


def test_gateway_validates_its_settings() -> None:
    """A gateway needs `every` >= 1, a positive `interval`, or both."""
    broker = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"])
    for kwargs in ({"every": None}, {"every": 0}, {"every": None, "interval": 0.0}):
        with pytest.raises(ValueError):
            gateway.Gateway(broker, **kwargs)


def test_gateway_script(script, paho) -> None:
    """`python examples/gateway.py --port 0 --every 2` aggregates pairs of readings and
    exits 0 on SIGTERM."""
    s = script("gateway", "--port", "0", "--every", "2")
    port = s.port()
    sub = paho(port, "dashboard")
    assert sub.subscribe(("aggregates/#", 1)) == [1]
    publish_readings(paho(port, "hub"), [("sensors/x", b"1"), ("sensors/x", b"4")])
    assert aggregates(sub, 1) == {
        "aggregates/x": ({"sensor": "x", "count": 2, "avg": 2.5, "min": 1.0, "max": 4.0}, 1, False)
    }
    paho.close_all()
    assert s.terminate() == 0
    # The broker's own lines came through Python's logging, on per-module loggers.
    s.reader.join(TIMEOUT)
    rest = []
    while (line := s.lines.get_nowait()) is not None:
        rest.append(line)
    assert any(
        " pyo3mq.connection client connected client_id=dashboard " in line for line in rest
    ), rest
