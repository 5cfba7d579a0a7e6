"""Python hooks: authentication, authorization and events, driven by real clients.

The broker runs on the test's event loop (`async with Broker(...)`), so its hooks do too.
Every blocking client call therefore runs in a worker thread (`asyncio.to_thread`): the
loop must stay free to run the very hooks under test. The helpers at the top are shared
with test_embedding.py and test_examples.py.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pyo3mq import ClientInfo, ConnectEvent, DisconnectEvent, SubscribeEvent, UnsubscribeEvent
from support.mqtt_raw import (
    DISCONNECT,
    PINGREQ,
    Packet,
    RawClient,
    ack,
    connect,
    publish,
    remaining_length,
    subscribe,
    unsubscribe,
)
from support.teardown import closed_at_teardown

LOOPBACK = "tcp://127.0.0.1:0"
TIMEOUT = 5.0
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"

CONNACK_OK = bytes.fromhex("20020000")
CONNACK_BAD_CREDENTIALS = bytes.fromhex("20020004")
CONNACK_NOT_AUTHORIZED = bytes.fromhex("20020005")


# --------------------------------------------------------------------------- helpers


def frame(p: Packet) -> bytes:
    """A received packet's bytes, fixed header included."""
    return bytes([p.first]) + remaining_length(len(p.body)) + p.body


def connack(port: int, client_id: str = "", **kwargs: Any) -> bytes:
    """Connects, returns the CONNACK's bytes, then leaves (with DISCONNECT if accepted)."""
    with RawClient(port) as c:
        c.send(connect(client_id, **kwargs))
        got = frame(c.recv())
        if got == CONNACK_OK:
            c.send(DISCONNECT)
        return got


def refused(port: int, data: bytes) -> tuple[bytes, bytes]:
    """Sends `data`; returns the CONNACK's bytes and whatever came before the close."""
    with RawClient(port) as c:
        c.send(data)
        got = frame(c.recv())
        return got, c.expect_closed()


async def aconnack(port: int, client_id: str = "", **kwargs: Any) -> bytes:
    return await asyncio.to_thread(connack, port, client_id, **kwargs)


def port_of(broker: pyo3mq.Broker) -> int:
    return broker.addresses[0][1]


async def wait_until(pred: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def pyo3mq_errors(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "pyo3mq" and r.levelno >= logging.ERROR and text in r.getMessage()
    ]


class Raw:
    """A raw MQTT connection whose blocking calls run in a worker thread."""

    def __init__(self, port: int) -> None:
        self.c = RawClient(port)

    async def connect(self, client_id: str, **kwargs: Any) -> bytes:
        def run() -> bytes:
            self.c.send(connect(client_id, **kwargs))
            return frame(self.c.recv())

        return await asyncio.to_thread(run)

    def send(self, data: bytes) -> None:
        self.c.send(data)

    async def recv(self, timeout: float = TIMEOUT) -> Packet:
        return await asyncio.to_thread(self.c.recv, timeout)

    async def request(self, data: bytes) -> bytes:
        """Sends one packet; returns the bytes of the next packet received."""
        self.c.send(data)
        return frame(await self.recv())

    async def publish_until(self, stop_topic: str, timeout: float = TIMEOUT) -> list[Packet]:
        """PUBLISH packets received up to and including one on `stop_topic`."""
        out: list[Packet] = []
        while True:
            p = await self.recv(timeout)
            assert p.type == 3, f"expected PUBLISH, got {p.first:#x}"
            out.append(p)
            if p.publish_fields()[0] == stop_topic:
                return out

    async def expect_closed(self) -> bytes:
        return await asyncio.to_thread(self.c.expect_closed)

    def close(self) -> None:
        self.c.close()


@pytest.fixture
def raw() -> Iterator[Callable[[int], Raw]]:
    yield from closed_at_teardown(Raw)


async def session(raw: Callable[[int], Raw], port: int, client_id: str, **kwargs: Any) -> Raw:
    """A connected raw client (CONNACK 0 asserted)."""
    r = raw(port)
    assert await r.connect(client_id, **kwargs) == CONNACK_OK
    return r


@pytest.fixture
def password_file(tmp_path: Any) -> str:
    """A mosquitto_passwd file: alice/s3cret, bob/p@ss:word."""
    path = str(tmp_path / "passwd")
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", path, "alice", "s3cret"], check=True)
    subprocess.run([MOSQUITTO_PASSWD, "-b", path, "bob", "p@ss:word"], check=True)
    return path


class Paho:
    """A paho-mqtt 2.x client on its own network thread (blocking API; use to_thread)."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        username: str | None = None,
        password: str | None = None,
        clean_session: bool = True,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.msgs: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.reason: str | None = None
        self._acks: dict[int, list[int]] = {}
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda client, userdata, m: self.msgs.put(m)
        self.client.on_subscribe = self._on_ack
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "paho: no CONNACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.reason = rc.getName()
        self.connected.set()

    def _on_ack(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self._acks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def subscribe(self, *filters: tuple[str, int]) -> list[int]:
        rc, mid = self.client.subscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS and mid is not None
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, TIMEOUT), "paho: no SUBACK"
            return self._acks.pop(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"paho: publish {topic!r} not completed"

    def next_msg(self, timeout: float = TIMEOUT) -> mqtt.MQTTMessage:
        try:
            return self.msgs.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"paho: no message within {timeout} s") from None

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class PahoPool:
    """Opens paho clients (`pool(port, "id", ...)`, blocking) and closes them all; close
    them before stopping the broker, or paho's reconnect back-off delays the close."""

    def __init__(self) -> None:
        self.opened: list[Paho] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Paho:
        p = Paho(*args, **kwargs)
        self.opened.append(p)
        return p

    def close_all(self) -> None:
        opened, self.opened = self.opened, []
        for p in opened:
            p.client.disconnect()
        for p in opened:
            p.client.loop_stop()


@pytest.fixture
def paho() -> Iterator[PahoPool]:
    pool = PahoPool()
    yield pool
    pool.close_all()


class Rules:
    """An authorizer answering from two functions (which may return awaitables) and
    recording every call."""

    def __init__(
        self,
        subscribe: Callable[[ClientInfo, str, int], Any] = lambda c, f, q: True,
        publish: Callable[[ClientInfo, str], Any] = lambda c, t: True,
    ) -> None:
        self._sub = subscribe
        self._pub = publish
        self.sub_calls: list[tuple[ClientInfo, str, int]] = []
        self.pub_calls: list[tuple[ClientInfo, str]] = []

    async def authorize_subscribe(self, client: ClientInfo, filter: str, qos: int) -> Any:
        self.sub_calls.append((client, filter, qos))
        result = self._sub(client, filter, qos)
        return await result if inspect.isawaitable(result) else result

    async def authorize_publish(self, client: ClientInfo, topic: str) -> Any:
        self.pub_calls.append((client, topic))
        result = self._pub(client, topic)
        return await result if inspect.isawaitable(result) else result


class Recorder:
    """An event handler that queues what it gets and notes the thread it ran on."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.threads: set[int] = set()

    def __call__(self, event: Any) -> None:
        self.threads.add(threading.get_ident())
        self.events.put_nowait(event)

    async def next(self, timeout: float = TIMEOUT) -> Any:
        return await asyncio.wait_for(self.events.get(), timeout)


# --------------------------------------------------------------------------- authentication


async def test_async_authenticator_accepts_and_refuses(serve) -> None:
    """[MQTT-3.2.2-4] [MQTT-3.2.2-5] An async authenticator's True gives CONNACK 0; its
    False gives `20 02 00 04` (session present 0) and the connection is closed."""

    async def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        await asyncio.sleep(0.01)
        return password == b"open sesame"

    broker = await serve(authenticator=authenticate)
    port = port_of(broker)
    assert await aconnack(port, "good", username="u", password=b"open sesame") == CONNACK_OK
    got = await asyncio.to_thread(
        refused, port, connect("bad", username="u", password=b"open sesame!")
    )
    assert got == (CONNACK_BAD_CREDENTIALS, b"")


async def test_sync_authenticator_runs_off_the_event_loop(serve) -> None:
    """A plain-function authenticator runs on a worker thread: while it blocks for 0.3 s,
    other coroutines on the loop keep running."""
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}

    def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        seen["thread"] = threading.get_ident()
        seen["start"] = time.monotonic()
        time.sleep(0.3)
        seen["end"] = time.monotonic()
        return client_id == "sync"

    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    broker = await serve(authenticator=authenticate)
    task = asyncio.create_task(ticker())
    try:
        assert await aconnack(port_of(broker), "sync") == CONNACK_OK
    finally:
        task.cancel()
    assert seen["thread"] != loop_thread
    during = [t for t in ticks if seen["start"] < t < seen["end"]]
    assert len(during) >= 10, f"the loop ran only {len(during)} times during a 0.3 s hook"


class CallableSync:
    def __call__(self, client_id: str, username: str | None, password: bytes | None) -> bool:
        return username == "ok"


class CallableAsync:
    async def __call__(self, client_id: str, username: str | None, password: bytes | None) -> bool:
        return username == "ok"


class MethodSync:
    def authenticate(self, client_id: str, username: str | None, password: bytes | None) -> bool:
        return username == "ok"


class MethodAsync:
    async def authenticate(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> bool:
        return username == "ok"


class MethodAndCall(MethodAsync):
    """`.authenticate` is what counts when an object also happens to be callable."""

    def __call__(self, *args: object) -> bool:
        raise AssertionError("__call__ used instead of .authenticate")


@pytest.mark.parametrize(
    "kind", [CallableSync, CallableAsync, MethodSync, MethodAsync, MethodAndCall]
)
async def test_authenticator_objects(serve, kind: type) -> None:
    """A callable object (sync or async `__call__`) and an object with a sync or async
    `.authenticate` method are both authenticators."""
    broker = await serve(authenticator=kind())
    port = port_of(broker)
    assert await aconnack(port, "a", username="ok") == CONNACK_OK
    assert await aconnack(port, "b", username="ko") == CONNACK_BAD_CREDENTIALS


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_raising_authenticator_denies_logs_and_keeps_serving(
    serve, caplog: pytest.LogCaptureFixture, style: str
) -> None:
    """An authenticator that raises refuses with `20 02 00 05`, logs the exception on the
    "pyo3mq" logger, and the broker goes on serving other clients."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")

    def check(client_id: str) -> bool:
        if client_id == "boom":
            raise RuntimeError("user database down")
        return True

    async def async_hook(client_id: str, username: str | None, password: bytes | None) -> bool:
        return check(client_id)

    def sync_hook(client_id: str, username: str | None, password: bytes | None) -> bool:
        return check(client_id)

    broker = await serve(authenticator=sync_hook if style == "sync" else async_hook)
    port = port_of(broker)
    got = await asyncio.to_thread(refused, port, connect("boom"))
    assert got == (CONNACK_NOT_AUTHORIZED, b"")
    records = pyo3mq_errors(caplog, "'boom'")
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert await aconnack(port, "fine") == CONNACK_OK
    assert await aconnack(port, "fine-too") == CONNACK_OK


@pytest.mark.parametrize("style", ["sync", "async"])
async def test_hanging_authenticator_times_out(
    serve, caplog: pytest.LogCaptureFixture, style: str
) -> None:
    """An authenticator slower than auth_timeout=0.5 refuses with `20 02 00 05` after
    about 0.5 s and is logged; a client connecting meanwhile is not held up."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")

    async def async_hook(client_id: str, username: str | None, password: bytes | None) -> bool:
        if client_id == "slow":
            await asyncio.sleep(10)
        return True

    def sync_hook(client_id: str, username: str | None, password: bytes | None) -> bool:
        if client_id == "slow":
            time.sleep(1.0)
        return True

    broker = await serve(
        authenticator=sync_hook if style == "sync" else async_hook, auth_timeout=0.5
    )
    port = port_of(broker)
    start = time.monotonic()
    slow = asyncio.create_task(asyncio.to_thread(refused, port, connect("slow")))
    await asyncio.sleep(0.1)
    assert await aconnack(port, "quick") == CONNACK_OK
    assert not slow.done(), "the quick client waited for the slow one"
    assert await slow == (CONNACK_NOT_AUTHORIZED, b"")
    elapsed = time.monotonic() - start
    assert 0.45 <= elapsed < 1.0, elapsed
    await wait_until(lambda: bool(pyo3mq_errors(caplog, "timed out")))


@pytest.mark.parametrize("garbage", ["yes", None, 1])
async def test_authenticator_garbage_result_denies(
    serve, caplog: pytest.LogCaptureFixture, garbage: object
) -> None:
    """An authenticator returning something other than a bool refuses with `20 02 00 05`
    and logs what it returned."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")

    async def authenticate(client_id: str, username: str | None, password: bytes | None) -> Any:
        return garbage

    broker = await serve(authenticator=authenticate)
    got = await asyncio.to_thread(refused, port_of(broker), connect("g"))
    assert got == (CONNACK_NOT_AUTHORIZED, b"")
    records = pyo3mq_errors(caplog, "authenticate('g')")
    assert len(records) == 1 and records[0].exc_info is not None
    assert f"returned {garbage!r}" in str(records[0].exc_info[1])


async def test_authenticator_receives_credentials(serve) -> None:
    """The authenticator gets the client id, the user name as str and the password as
    the exact bytes sent (not decoded), None for what the CONNECT lacks."""
    calls: list[tuple[str, Any, Any]] = []

    async def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        calls.append((client_id, username, password))
        return True

    broker = await serve(authenticator=authenticate)
    port = port_of(broker)
    assert await aconnack(port, "c1", username="alice", password=b"s3\xff\x00cret") == CONNACK_OK
    assert await aconnack(port, "c2", username="Zoë") == CONNACK_OK
    assert await aconnack(port, "c3") == CONNACK_OK
    v31 = {"protocol": (b"MQIsdp", 3)}
    assert await aconnack(port, "c4", username="old", password=b"pw", **v31) == CONNACK_OK
    assert calls == [
        ("c1", "alice", b"s3\xff\x00cret"),
        ("c2", "Zoë", None),
        ("c3", None, None),
        ("c4", "old", b"pw"),
    ]
    assert type(calls[0][2]) is bytes


async def test_password_file(serve, password_file: str) -> None:
    """The built-in password_file (mosquitto_passwd, PBKDF2-SHA512 `$7$`) accepts the
    right password and refuses anything else with `20 02 00 04`."""
    broker = await serve(password_file=password_file)
    port = port_of(broker)
    assert await aconnack(port, "a", username="alice", password=b"s3cret") == CONNACK_OK
    assert await aconnack(port, "b", username="bob", password=b"p@ss:word") == CONNACK_OK
    for kwargs in (
        {"username": "alice", "password": b"wrong"},
        {"username": "alice", "password": b"s3cret "},
        {"username": "bob", "password": b"s3cret"},
        {"username": "carol", "password": b"s3cret"},
        {"username": "alice"},
        {},
    ):
        got = await asyncio.to_thread(refused, port, connect("x", **kwargs))
        assert got == (CONNACK_BAD_CREDENTIALS, b""), kwargs


@pytest.mark.parametrize("source", ["hook", "password_file"])
async def test_refused_client_pipelined_packets_are_ignored(
    serve, raw, password_file: str, source: str
) -> None:
    """[MQTT-3.1.4-5] PUBLISH and SUBSCRIBE pipelined behind a refused CONNECT are not
    processed: no PUBACK or SUBACK, nothing delivered, nothing retained."""

    def check(client_id: str, username: str | None, password: bytes | None) -> bool:
        return (username, password) in {("alice", b"s3cret"), ("bob", b"p@ss:word")}

    if source == "hook":
        broker = await serve(authenticator=check)
    else:
        broker = await serve(password_file=password_file)
    port = port_of(broker)
    creds = {"username": "alice", "password": b"s3cret"}
    watcher = await session(raw, port, "watcher", **creds)
    assert await watcher.request(subscribe(1, ("#", 1))) == bytes.fromhex("9003000101")

    data = (
        connect("intruder", username="mallory", password=b"guess")
        + publish("leak/0", b"qos0")
        + publish("leak/1", b"qos1", qos=1, pkid=1, retain=True)
        + subscribe(2, ("#", 0))
    )
    got = await asyncio.to_thread(refused, port, data)
    assert got == (CONNACK_BAD_CREDENTIALS, b"")

    pub = await session(raw, port, "pub", username="bob", password=b"p@ss:word")
    assert await pub.request(publish("mark", b"m", qos=1, pkid=7)) == ack(0x40, 7)
    delivered = await watcher.publish_until("mark")
    assert [p.publish_fields()[0] for p in delivered] == ["mark"]
    # A new subscriber to "#" gets no retained "leak/1" before the next marker.
    late = await session(raw, port, "late", **creds)
    assert await late.request(subscribe(3, ("#", 0))) == bytes.fromhex("9003000300")
    assert await pub.request(publish("mark2", b"m", qos=1, pkid=8)) == ack(0x40, 8)
    delivered = await late.publish_until("mark2")
    assert [p.publish_fields()[0] for p in delivered] == ["mark2"]


# --------------------------------------------------------------------------- authorization


async def test_subscribe_grant_is_downgraded(serve, raw) -> None:
    """[MQTT-3.8.4-5] [MQTT-3.8.4-6] The authorizer may grant less than asked (never
    more): SUBACK shows the granted QoS and deliveries come at most at that QoS."""
    answers = {"a/b": 1, "cap/x": 2}
    rules = Rules(subscribe=lambda c, f, q: answers[f])
    broker = await serve(authorizer=rules)
    port = port_of(broker)
    sub = await session(raw, port, "sub", username="u1")
    got = await sub.request(subscribe(1, ("a/b", 2), ("cap/x", 1)))
    assert got == bytes.fromhex("900400010101")
    assert rules.sub_calls == [
        (ClientInfo("sub", "u1"), "a/b", 2),
        (ClientInfo("sub", "u1"), "cap/x", 1),
    ]

    pub = await session(raw, port, "pub")
    assert await pub.request(publish("a/b", b"two", qos=2, pkid=5)) == ack(0x50, 5)
    assert await pub.request(ack(0x62, 5)) == ack(0x70, 5)
    assert await pub.request(publish("cap/x", b"cap", qos=2, pkid=6)) == ack(0x50, 6)
    assert await pub.request(ack(0x62, 6)) == ack(0x70, 6)
    pub.send(publish("a/b", b"zero"))
    first, second, third = [await sub.recv() for _ in range(3)]
    assert first.qos == 1 and first.publish_fields()[0::2] == ("a/b", b"two")
    assert second.qos == 1 and second.publish_fields()[0::2] == ("cap/x", b"cap")
    assert third.qos == 0 and third.publish_fields() == ("a/b", None, b"zero")


async def test_subscribe_denied_filters_fail_alone(serve, raw) -> None:
    """[MQTT-3.8.4-5] [MQTT-3.9.3-1] False or None from the authorizer gives 0x80 for that
    filter only; the other filters of the same SUBSCRIBE are granted, in order."""
    answers = {"ok/true": True, "no/false": False, "ok/zero": 0, "no/none": None, "ok/two": 2}
    rules = Rules(subscribe=lambda c, f, q: answers[f])
    broker = await serve(authorizer=rules)
    port = port_of(broker)
    sub = await session(raw, port, "sub")
    got = await sub.request(
        subscribe(7, ("ok/true", 2), ("no/false", 1), ("ok/zero", 2), ("no/none", 0), ("ok/two", 1))
    )
    assert got == bytes.fromhex("9007000702800080" + "01")
    pub = await session(raw, port, "pub")
    for topic in ("no/false", "no/none"):
        pub.send(publish(topic, b"x"))
    pub.send(publish("ok/true", b"mark"))
    delivered = await sub.publish_until("ok/true")
    assert [p.publish_fields()[0] for p in delivered] == ["ok/true"]


async def test_publish_denied_is_acknowledged_and_dropped(serve, raw) -> None:
    """[MQTT-3.3.5-2] A publish the authorizer refuses is acknowledged by the normal QoS
    rules (PUBACK, PUBREC/PUBCOMP) but neither delivered nor retained."""
    rules = Rules(publish=lambda c, t: not t.startswith("forbidden/"))
    broker = await serve(authorizer=rules)
    port = port_of(broker)
    watcher = await session(raw, port, "watcher")
    assert await watcher.request(subscribe(1, ("#", 2))) == bytes.fromhex("9003000102")

    pub = await session(raw, port, "pub")
    pub.send(publish("forbidden/0", b"q0"))
    assert await pub.request(publish("forbidden/1", b"q1", qos=1, pkid=1)) == ack(0x40, 1)
    assert await pub.request(publish("forbidden/2", b"q2", qos=2, pkid=2)) == ack(0x50, 2)
    assert await pub.request(ack(0x62, 2)) == ack(0x70, 2)
    got = await pub.request(publish("forbidden/r", b"keep", qos=1, pkid=3, retain=True))
    assert got == ack(0x40, 3)
    assert await pub.request(publish("allowed/mark", b"m", qos=1, pkid=4)) == ack(0x40, 4)
    delivered = await watcher.publish_until("allowed/mark")
    assert [p.publish_fields()[0] for p in delivered] == ["allowed/mark"]

    late = await session(raw, port, "late")
    assert await late.request(subscribe(2, ("#", 0))) == bytes.fromhex("9003000200")
    assert await pub.request(publish("allowed/mark2", b"m", qos=1, pkid=5)) == ack(0x40, 5)
    delivered = await late.publish_until("allowed/mark2")
    assert [p.publish_fields()[0] for p in delivered] == ["allowed/mark2"]


async def test_publish_decision_is_cached_per_connection_and_topic(serve, raw) -> None:
    """The publish hook is asked once per (connection, topic), not per message: 100
    messages on two topics cost two calls; a new connection asks again."""
    rules = Rules()
    broker = await serve(authorizer=rules)
    port = port_of(broker)
    watcher = await session(raw, port, "watcher")
    assert await watcher.request(subscribe(1, ("t/#", 0))) == bytes.fromhex("9003000100")

    pub = await session(raw, port, "p")
    data = b"".join(
        publish(f"t/{'ab'[i % 2]}", str(i).encode(), qos=1, pkid=i + 1) for i in range(100)
    )
    pub.send(data)
    acks = [frame(await pub.recv()) for _ in range(100)]
    assert acks == [ack(0x40, i + 1) for i in range(100)]
    delivered = [p.publish_fields()[2] for p in [await watcher.recv() for _ in range(100)]]
    assert delivered == [str(i).encode() for i in range(100)]
    client = ClientInfo("p", None)
    assert Counter(rules.pub_calls) == {(client, "t/a"): 1, (client, "t/b"): 1}

    pub.send(DISCONNECT)
    assert await pub.expect_closed() == b""
    again = await session(raw, port, "p")
    assert await again.request(publish("t/a", b"x", qos=1, pkid=1)) == ack(0x40, 1)
    assert await again.request(publish("t/a", b"y", qos=1, pkid=2)) == ack(0x40, 2)
    assert Counter(rules.pub_calls) == {(client, "t/a"): 2, (client, "t/b"): 1}


async def test_publish_cache_ttl(serve, raw) -> None:
    """acl_cache_ttl bounds how long a publish decision is reused: with 0 the hook is asked
    for every message; with 0.3 s it is asked again once the decision is older."""
    no_cache = Rules()
    port = port_of(await serve(authorizer=no_cache, acl_cache_ttl=0))
    pub = await session(raw, port, "p")
    for i in range(1, 6):
        assert await pub.request(publish("t", b"x", qos=1, pkid=i)) == ack(0x40, i)
    assert len(no_cache.pub_calls) == 5

    short = Rules()
    port = port_of(await serve(authorizer=short, acl_cache_ttl=0.3))
    pub = await session(raw, port, "p")
    assert await pub.request(publish("t", b"x", qos=1, pkid=1)) == ack(0x40, 1)
    assert await pub.request(publish("t", b"x", qos=1, pkid=2)) == ack(0x40, 2)
    assert len(short.pub_calls) == 1
    await asyncio.sleep(0.4)
    assert await pub.request(publish("t", b"x", qos=1, pkid=3)) == ack(0x40, 3)
    assert len(short.pub_calls) == 2


def failing(mode: str, garbage: object) -> Callable[..., Any]:
    """A hook body that misbehaves for "bad/..." and allows everything else."""

    async def hang() -> bool:
        await asyncio.sleep(10)
        return True

    def answer(target: str) -> Any:
        if not target.startswith("bad/"):
            return True
        if mode == "raise":
            raise RuntimeError("policy service down")
        if mode == "hang":
            return hang()
        return garbage

    return answer


@pytest.mark.parametrize("mode", ["raise", "hang", "garbage"])
async def test_failing_subscribe_authorizer_denies_and_logs(
    serve, raw, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """A subscribe authorizer that raises, outlasts auth_timeout=0.5 or returns garbage
    ("yes") gives 0x80 for that filter and is logged; the connection goes on."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")
    answer = failing(mode, "yes")
    broker = await serve(authorizer=Rules(subscribe=lambda c, f, q: answer(f)), auth_timeout=0.5)
    sub = await session(raw, port_of(broker), "sub")
    got = await sub.request(subscribe(1, ("bad/x", 1), ("good/x", 1)))
    assert got == bytes.fromhex("900400018001")
    await wait_until(lambda: bool(pyo3mq_errors(caplog, "authorize_subscribe")))
    assert await sub.request(PINGREQ) == b"\xd0\x00"


@pytest.mark.parametrize(("mode", "garbage"), [("raise", None), ("hang", None), ("garbage", 1)])
async def test_failing_publish_authorizer_denies_and_logs(
    serve, raw, caplog: pytest.LogCaptureFixture, mode: str, garbage: object
) -> None:
    """[MQTT-3.3.5-2] A publish authorizer that raises, outlasts auth_timeout=0.5 or
    returns a non-bool (1) denies: the message is acknowledged, not delivered, and the
    failure is logged."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")
    answer = failing(mode, garbage)
    broker = await serve(authorizer=Rules(publish=lambda c, t: answer(t)), auth_timeout=0.5)
    port = port_of(broker)
    watcher = await session(raw, port, "watcher")
    assert await watcher.request(subscribe(1, ("#", 1))) == bytes.fromhex("9003000101")
    pub = await session(raw, port, "pub")
    assert await pub.request(publish("bad/x", b"no", qos=1, pkid=1)) == ack(0x40, 1)
    assert await pub.request(publish("good/x", b"yes", qos=1, pkid=2)) == ack(0x40, 2)
    delivered = await watcher.publish_until("good/x")
    assert [p.publish_fields()[0] for p in delivered] == ["good/x"]
    await wait_until(lambda: bool(pyo3mq_errors(caplog, "authorize_publish")))


ACL = """\
# anonymous clients
topic read public/#
topic readwrite anon/#

user alice
topic readwrite alice/#
topic read sensors/#
topic write sensors/alice/#
topic deny alice/secret

pattern readwrite devices/%c/#
pattern read inbox/%u
"""


async def test_acl_file(serve, raw, tmp_path: Any) -> None:
    """The built-in acl_file (mosquitto format: anonymous rules, `user`, `topic
    read|write|readwrite|deny`, `pattern` with %c and %u) decides subscriptions (0x80 when
    refused) and publishes (acknowledged, dropped when refused)."""
    path = tmp_path / "acl"
    path.write_text(ACL)
    broker = await serve(acl_file=str(path))
    port = port_of(broker)

    anon = await session(raw, port, "dev-1")
    got = await anon.request(
        subscribe(
            1,
            ("public/#", 1),
            ("public/news", 0),
            ("anon/x", 2),
            ("alice/#", 0),
            ("devices/dev-1/#", 1),
            ("devices/dev-2/#", 1),
            ("inbox/alice", 0),
            ("#", 0),
        )
    )
    assert got == bytes.fromhex("900a0001" + "01000280018080" + "80")

    alice = await session(raw, port, "dev-a", username="alice")
    got = await alice.request(
        subscribe(
            2,
            ("alice/#", 1),
            ("sensors/+/temp", 1),
            ("public/#", 0),
            ("devices/dev-a/cmd", 1),
            ("inbox/alice", 1),
            ("inbox/bob", 1),
            ("alice/secret", 0),
            ("sensors/alice/x", 0),
        )
    )
    assert got == bytes.fromhex("900a0002" + "010180010180" + "8000")

    async with broker.subscribe("#") as everything:
        pkid = 0
        for client, topics in (
            (
                alice,
                [
                    "alice/x",
                    "alice/secret",
                    "sensors/alice/t",
                    "sensors/bob/t",
                    "devices/dev-a/state",
                    "devices/dev-b/state",
                    "public/x",
                    "inbox/alice",
                ],
            ),
            (anon, ["anon/x", "public/x", "devices/dev-1/s", "devices/dev-a/s", "alice/x"]),
        ):
            for topic in topics:
                pkid += 1
                got = await client.request(publish(topic, b"p", qos=1, pkid=pkid))
                # The publishers also subscribed: skip their own deliveries.
                while got[0] >> 4 == 3:
                    got = frame(await client.recv())
                assert got == ack(0x40, pkid), topic
        await broker.publish("mark", b"")
        topics = []
        while not topics or topics[-1] != "mark":
            m = await asyncio.wait_for(everything.__anext__(), TIMEOUT)
            topics.append(m.topic)
    assert topics == [
        "alice/x",
        "sensors/alice/t",
        "devices/dev-a/state",
        "anon/x",
        "devices/dev-1/s",
        "mark",
    ]


async def test_password_and_acl_files_together(
    serve, raw, tmp_path: Any, password_file: str
) -> None:
    """password_file and acl_file combine: the authenticated user name selects the rules."""
    path = tmp_path / "acl"
    path.write_text(ACL)
    broker = await serve(password_file=password_file, acl_file=str(path))
    port = port_of(broker)
    assert await aconnack(port, "x", username="alice", password=b"nope") == CONNACK_BAD_CREDENTIALS
    alice = await session(raw, port, "dev-a", username="alice", password=b"s3cret")
    got = await alice.request(subscribe(1, ("alice/#", 1), ("public/#", 1), ("devices/dev-a/#", 2)))
    assert got == bytes.fromhex("90050001018002")
    bob = await session(raw, port, "dev-b", username="bob", password=b"p@ss:word")
    got = await bob.request(subscribe(2, ("alice/#", 1), ("devices/dev-b/x", 1)))
    assert got == bytes.fromhex("900400028001")


# --------------------------------------------------------------------------- events


async def test_on_connect_event(serve, raw) -> None:
    """on_connect reports the client id, user name, peer address, clean session flag and
    whether a session was resumed."""
    rec = Recorder()
    broker = await serve(on_connect=rec)
    port = port_of(broker)
    a = raw(port)
    assert await a.connect("ev-1", username="u", password=b"p") == CONNACK_OK
    assert await rec.next() == ConnectEvent(
        ClientInfo("ev-1", "u"), a.c.sock.getsockname(), True, False
    )
    b = raw(port)
    assert await b.connect("ev-2", clean=False) == CONNACK_OK
    assert await rec.next() == ConnectEvent(
        ClientInfo("ev-2", None), b.c.sock.getsockname(), False, False
    )
    b.send(DISCONNECT)
    assert await b.expect_closed() == b""
    c = raw(port)
    assert await c.connect("ev-2", clean=False) == bytes.fromhex("20020100")
    assert await rec.next() == ConnectEvent(
        ClientInfo("ev-2", None), c.c.sock.getsockname(), False, True
    )


@pytest.mark.parametrize("reason", ["clean", "error", "keepalive", "takeover"])
async def test_on_disconnect_reasons(serve, raw, reason: str) -> None:
    """[MQTT-3.14.4-1] [MQTT-3.1.2-24] [MQTT-3.1.4-2] on_disconnect tells why a connection
    ended: "clean" (DISCONNECT), "error" (socket dropped), "keepalive" (1.5 x keepalive
    of silence), "takeover" (the same client id connected again)."""
    rec = Recorder()
    broker = await serve(on_disconnect=rec)
    port = port_of(broker)
    client_id = f"d-{reason}"
    first = await session(raw, port, client_id, keepalive=1 if reason == "keepalive" else 60)
    start = time.monotonic()
    if reason == "clean":
        first.send(DISCONNECT)
    elif reason == "error":
        first.close()
    elif reason == "takeover":
        second = await session(raw, port, client_id)
    assert await rec.next() == DisconnectEvent(client_id, reason)
    if reason == "keepalive":
        assert time.monotonic() - start >= 1.4
    if reason == "takeover":
        assert await first.expect_closed() == b""
        assert await second.request(PINGREQ) == b"\xd0\x00"
    assert rec.events.empty()


async def test_on_subscribe_and_on_unsubscribe_events(serve, raw) -> None:
    """on_subscribe reports every filter with its SUBACK code, 0x80 (128) included, and
    on_unsubscribe the filters removed."""
    subs, unsubs = Recorder(), Recorder()
    rules = Rules(subscribe=lambda c, f, q: f != "deny/x")
    broker = await serve(authorizer=rules, on_subscribe=subs, on_unsubscribe=unsubs)
    c = await session(raw, port_of(broker), "s-1")
    got = await c.request(subscribe(3, ("a/+", 1), ("deny/x", 2), ("b/#", 2), ("bad/#/x", 0)))
    assert got == bytes.fromhex("90060003" + "01800280")
    assert await subs.next() == SubscribeEvent(
        "s-1", [("a/+", 1), ("deny/x", 128), ("b/#", 2), ("bad/#/x", 128)]
    )
    assert await c.request(unsubscribe(4, "a/+", "never/subscribed")) == bytes.fromhex("b0020004")
    assert await unsubs.next() == UnsubscribeEvent("s-1", ["a/+", "never/subscribed"])


async def test_sync_and_async_handlers_on_the_loop_thread(raw) -> None:
    """Handlers registered with the decorators, sync and async alike, get every event on
    the thread of the loop the broker runs on."""
    loop_thread = threading.get_ident()
    broker = pyo3mq.Broker(listeners=[LOOPBACK])
    seen: list[tuple[str, str, int]] = []
    done = asyncio.Event()

    @broker.on_connect
    def sync_connect(event: ConnectEvent) -> None:
        seen.append(("sync", event.client.client_id, threading.get_ident()))

    @broker.on_connect
    async def async_connect(event: ConnectEvent) -> None:
        await asyncio.sleep(0)
        seen.append(("async", event.client.client_id, threading.get_ident()))

    @broker.on_disconnect
    async def async_disconnect(event: DisconnectEvent) -> None:
        seen.append(("disconnect", event.client_id, threading.get_ident()))
        done.set()

    async with broker:
        c = raw(port_of(broker))
        assert await c.connect("h-1") == CONNACK_OK
        c.send(DISCONNECT)
        await asyncio.wait_for(done.wait(), TIMEOUT)
    assert sorted(seen) == sorted(
        [
            ("sync", "h-1", loop_thread),
            ("async", "h-1", loop_thread),
            ("disconnect", "h-1", loop_thread),
        ]
    )


async def test_raising_handler_is_logged_and_broker_keeps_serving(
    serve, raw, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises (sync or async) is logged on "pyo3mq"; later handlers still
    get the event and the broker goes on serving."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")
    rec = Recorder()
    broker = pyo3mq.Broker(listeners=[LOOPBACK])

    @broker.on_connect
    def sync_boom(event: ConnectEvent) -> None:
        raise ValueError("sync handler bug")

    @broker.on_connect
    async def async_boom(event: ConnectEvent) -> None:
        raise KeyError("async handler bug")

    broker.on_connect(rec)
    async with broker:
        port = port_of(broker)
        for n in range(3):
            assert await aconnack(port, f"r-{n}") == CONNACK_OK
            assert (await rec.next()).client.client_id == f"r-{n}"

        def failures(kind: type) -> list[logging.LogRecord]:
            return [
                r
                for r in pyo3mq_errors(caplog, "on_connect handler failed")
                if r.exc_info is not None and isinstance(r.exc_info[1], kind)
            ]

        await wait_until(lambda: len(failures(ValueError)) == 3 and len(failures(KeyError)) == 3)
