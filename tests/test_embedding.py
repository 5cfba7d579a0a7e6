"""Embedding the broker in a Python program: life cycle (`async with`, `serve_forever`,
sync `start`/`stop`), in-process publish and subscribe, and settings validation.

In-process subscriptions are fed on the test's event loop, so blocking client calls run
in worker threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import queue
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import aiomqtt
import pyo3mq
import pytest
from pyo3mq import Broker, BrokerConfig, Message, Subscription
from pyo3mq.cli import load_config
from support.mqtt_raw import DISCONNECT, RawClient, connect
from test_hooks import (
    CONNACK_BAD_CREDENTIALS,
    CONNACK_OK,
    LOOPBACK,
    TIMEOUT,
    PahoPool,
    connack,
    frame,
    port_of,
    wait_until,
)

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def paho() -> Iterator[PahoPool]:
    pool = PahoPool()
    yield pool
    pool.close_all()


async def next_msg(sub: Subscription, timeout: float = TIMEOUT) -> Message:
    return await asyncio.wait_for(sub.__anext__(), timeout)


async def until(sub: Subscription, stop_topic: str) -> list[str]:
    """Topics received up to and including `stop_topic`."""
    topics: list[str] = []
    while not topics or topics[-1] != stop_topic:
        topics.append((await next_msg(sub)).topic)
    return topics


# --------------------------------------------------------------------------- life cycle


async def test_serve_forever_cancelled_stops_the_broker() -> None:
    """Cancelling `serve_forever()` stops the broker: connected clients are closed and
    the port no longer accepts connections."""
    async with Broker(listeners=[LOOPBACK]) as broker:
        port = port_of(broker)
        with RawClient(port) as c:
            assert (await asyncio.to_thread(c.connect, "stay")).body == b"\x00\x00"
            task = asyncio.create_task(broker.serve_forever())
            await asyncio.sleep(0.05)
            assert not task.done() and broker.running
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, TIMEOUT)
            assert not broker.running
            assert await asyncio.to_thread(c.expect_closed) == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_serve_forever_returns_when_stopped() -> None:
    """`serve_forever()` returns once `stop()` is called elsewhere, and refuses to run on
    a broker that was never started."""
    broker = Broker(listeners=[LOOPBACK])
    with pytest.raises(RuntimeError):
        await broker.serve_forever()
    async with broker:
        task = asyncio.create_task(broker.serve_forever())
        await asyncio.sleep(0.05)
        await asyncio.to_thread(broker.stop)
        assert await asyncio.wait_for(task, TIMEOUT) is None
        assert not broker.running


def test_sync_start_stop_runs_python_hooks() -> None:
    """A broker started with `start()` (no running loop) runs its Python hooks on a private
    loop thread: authentication off that thread, events on it; `stop()` ends the thread
    and a second `start()` works the same way."""
    events: queue.Queue[tuple[str, ...]] = queue.Queue()
    auth_threads: list[str] = []

    def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        auth_threads.append(threading.current_thread().name)
        return password == b"pw"

    def on_connect(event: pyo3mq.ConnectEvent) -> None:
        events.put(("connect", event.client.client_id, threading.current_thread().name))

    async def on_disconnect(event: pyo3mq.DisconnectEvent) -> None:
        events.put(("disconnect", event.client_id, event.reason, threading.current_thread().name))

    broker = Broker(
        listeners=[LOOPBACK],
        authenticator=authenticate,
        on_connect=on_connect,
        on_disconnect=on_disconnect,
    )
    for round_ in range(2):
        broker.start()
        try:
            port = port_of(broker)
            cid = f"s-{round_}"
            assert connack(port, cid, username="u", password=b"pw") == CONNACK_OK
            assert (
                connack(port, "intruder", username="u", password=b"no") == CONNACK_BAD_CREDENTIALS
            )
            assert events.get(timeout=TIMEOUT) == ("connect", cid, "pyo3mq-hooks")
            assert events.get(timeout=TIMEOUT) == ("disconnect", cid, "clean", "pyo3mq-hooks")
        finally:
            broker.stop()
        assert not broker.running
        assert "pyo3mq-hooks" not in {t.name for t in threading.enumerate()}
    assert len(auth_threads) == 4
    assert not {"pyo3mq-hooks", "MainThread"} & set(auth_threads)


def test_sync_context_manager_with_hooks() -> None:
    """`with Broker(...)` serves with hooks inside the block and stops at its end."""
    seen: queue.Queue[str] = queue.Queue()
    with Broker(
        listeners=[LOOPBACK], authenticator=lambda cid, u, p: u == "ok", on_connect=seen.put
    ) as broker:
        port = port_of(broker)
        assert connack(port, "w", username="ok") == CONNACK_OK
        assert connack(port, "w", username="ko") == CONNACK_BAD_CREDENTIALS
        event = seen.get(timeout=TIMEOUT)
        assert isinstance(event, pyo3mq.ConnectEvent) and event.client.client_id == "w"
    assert not broker.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# --------------------------------------------------------------------------- in-process pub/sub


async def test_subscribe_receives_from_mqtt_publishers(paho) -> None:
    """[MQTT-3.8.4-6] An in-process subscription gets what MQTT clients publish: topic,
    payload, QoS min(published, granted) and the publisher's client id."""
    async with Broker(listeners=[LOOPBACK]) as broker:
        port = port_of(broker)
        async with (
            broker.subscribe("sensors/#", qos=2) as full,
            broker.subscribe("sensors/+", qos=1) as capped,
        ):
            pub = await asyncio.to_thread(paho, port, "pub-1")
            for topic, payload, qos in (
                ("sensors/a", b"zero", 0),
                ("sensors/b", b"one", 1),
                ("sensors/c", b"\x00two\xff", 2),
                ("other/x", b"no", 1),
                ("sensors/mark", b"", 1),
            ):
                await asyncio.to_thread(pub.publish, topic, payload, qos)
            assert [await next_msg(full) for _ in range(4)] == [
                Message("sensors/a", b"zero", 0, False, "pub-1"),
                Message("sensors/b", b"one", 1, False, "pub-1"),
                Message("sensors/c", b"\x00two\xff", 2, False, "pub-1"),
                Message("sensors/mark", b"", 1, False, "pub-1"),
            ]
            got = [await next_msg(capped) for _ in range(4)]
            assert [(m.topic, m.qos) for m in got] == [
                ("sensors/a", 0),
                ("sensors/b", 1),
                ("sensors/c", 1),
                ("sensors/mark", 1),
            ]
        paho.close_all()


async def test_subscribe_retain_flag(paho) -> None:
    """[MQTT-3.3.1-9] [MQTT-3.3.1-8] A retained message published while an in-process
    subscription exists reaches it with RETAIN 0; a subscription made later gets it
    replayed with RETAIN 1."""
    async with Broker(listeners=[LOOPBACK]) as broker:
        pub = await asyncio.to_thread(paho, port_of(broker), "pub-r")
        async with broker.subscribe("state/#", qos=2) as live:
            await asyncio.to_thread(pub.publish, "state/door", b"open", 1, True)
            assert await next_msg(live) == Message("state/door", b"open", 1, False, "pub-r")
        async with broker.subscribe("state/#", qos=2) as late:
            assert await next_msg(late) == Message("state/door", b"open", 1, True, "pub-r")
        paho.close_all()


async def test_subscribe_receives_broker_publish() -> None:
    """`broker.publish` reaches in-process subscribers, with an empty publisher id; str
    payloads are sent as UTF-8."""
    async with Broker(listeners=[LOOPBACK]) as broker, broker.subscribe("local/#", qos=2) as sub:
        await broker.publish("local/a", "héllo", qos=1)
        await broker.publish("local/b", b"\x00\x01", qos=2)
        await broker.publish("local/c")
        assert [await next_msg(sub) for _ in range(3)] == [
            Message("local/a", "héllo".encode(), 1, False, ""),
            Message("local/b", b"\x00\x01", 2, False, ""),
            Message("local/c", b"", 0, False, ""),
        ]


async def test_broker_publish_reaches_mqtt_subscribers() -> None:
    """[MQTT-3.8.4-6] `broker.publish` reaches an aiomqtt subscriber at QoS 0, 1 and 2."""
    async with Broker(listeners=[LOOPBACK]) as broker:
        port = port_of(broker)
        async with aiomqtt.Client("127.0.0.1", port, identifier="aio-sub") as client:
            await client.subscribe("out/#", qos=2)
            for qos in (0, 1, 2):
                await broker.publish(f"out/{qos}", f"p{qos}".encode(), qos=qos)
            got = []
            for _ in range(3):
                m = await asyncio.wait_for(client.messages.__anext__(), TIMEOUT)
                got.append((m.topic.value, m.payload, m.qos, m.retain))
            assert sorted(got) == [
                ("out/0", b"p0", 0, False),
                ("out/1", b"p1", 1, False),
                ("out/2", b"p2", 2, False),
            ]


async def test_broker_publish_retained(paho) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-8] [MQTT-3.3.1-10] A retained `broker.publish` is
    replayed to a later MQTT subscriber with RETAIN 1; an empty retained payload clears
    it."""
    async with Broker(listeners=[LOOPBACK]) as broker:
        port = port_of(broker)
        await broker.publish("state/door", b"open", qos=1, retain=True)
        late = await asyncio.to_thread(paho, port, "late")
        assert await asyncio.to_thread(late.subscribe, ("state/#", 2)) == [2]
        m = await asyncio.to_thread(late.next_msg)
        assert (m.topic, m.payload, m.qos, bool(m.retain)) == ("state/door", b"open", 1, True)

        await broker.publish("state/door", b"", retain=True)
        later = await asyncio.to_thread(paho, port, "later")
        assert await asyncio.to_thread(later.subscribe, ("state/#", 0)) == [0]
        await broker.publish("state/mark", b"m")
        m = await asyncio.to_thread(later.next_msg)
        assert (m.topic, bool(m.retain)) == ("state/mark", False)
        paho.close_all()


async def test_wildcard_filters() -> None:
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.2-1] In-process filters follow the topic
    rules: `+` one level (empty included), `#` the parent and every level below, and no
    leading wildcard matches a `$` topic."""
    topics = [
        "$dev/broker/x",
        "home/kitchen/temp",
        "home/temp",
        "garden/temp",
        "home",
        "office/x/temp",
        "/temp",
    ]
    markers = ["$dev/m", "m/temp", "home/m/temp"]
    expected = {
        "+/temp": ["home/temp", "garden/temp", "/temp", "m/temp"],
        "home/#": ["home/kitchen/temp", "home/temp", "home", "home/m/temp"],
        "home/+/temp": ["home/kitchen/temp", "home/m/temp"],
        "#": [
            "home/kitchen/temp",
            "home/temp",
            "garden/temp",
            "home",
            "office/x/temp",
            "/temp",
            "m/temp",
            "home/m/temp",
        ],
        "$dev/#": ["$dev/broker/x", "$dev/m"],
    }
    async with Broker(listeners=[LOOPBACK]) as broker:
        subs = {f: broker.subscribe(f) for f in expected}
        try:
            for topic in topics + markers:
                await broker.publish(topic, topic.encode())
            for f, want in expected.items():
                assert await until(subs[f], want[-1]) == want, f
        finally:
            for sub in subs.values():
                sub.close()


async def test_leaving_subscription_unsubscribes() -> None:
    """[MQTT-3.10.4-2] Leaving `async with sub` unsubscribes: later messages go to the
    other subscriptions only, and iterating the closed one ends at once."""
    async with Broker(listeners=[LOOPBACK]) as broker, broker.subscribe("t/#") as stays:
        async with broker.subscribe("t/#") as leaves:
            await broker.publish("t/1", b"1")
            assert (await next_msg(leaves)).topic == "t/1"
            assert (await next_msg(stays)).topic == "t/1"
        await broker.publish("t/2", b"2")
        await broker.publish("t/mark", b"")
        assert await until(stays, "t/mark") == ["t/2", "t/mark"]
        assert [m async for m in leaves] == []


async def test_subscription_ends_when_the_broker_stops() -> None:
    """An `async for` over a subscription ends (rather than hangs) when the broker stops."""
    got: list[Message] = []
    async with Broker(listeners=[LOOPBACK]) as broker:
        sub = broker.subscribe("x/#")

        async def consume() -> None:
            async for m in sub:
                got.append(m)

        task = asyncio.create_task(consume())
        await broker.publish("x/1", b"1")
        await wait_until(lambda: len(got) == 1)
    await asyncio.wait_for(task, TIMEOUT)
    assert got == [Message("x/1", b"1", 0, False, "")]
    with pytest.raises(RuntimeError):
        broker.subscribe("x/#")


async def test_max_buffered_keeps_the_newest() -> None:
    """A subscription that is not read keeps at most `max_buffered` messages, the newest,
    and counts the rest in `dropped`."""
    async with Broker(listeners=[LOOPBACK]) as broker:
        async with broker.subscribe("f/#", max_buffered=5) as sub:
            for i in range(20):
                await broker.publish("f/n", str(i).encode())
            await wait_until(lambda: sub.dropped >= 15)
            await asyncio.sleep(0.1)
            assert sub.dropped == 15
            got = [(await next_msg(sub)).payload for _ in range(5)]
            assert got == [str(i).encode() for i in range(15, 20)]
            await broker.publish("f/n", b"next")
            assert (await next_msg(sub)).payload == b"next"
            assert sub.dropped == 15


@pytest.mark.parametrize("topic", ["a/+", "a/#", "#", "+", "", "a\x00b"])
async def test_publish_invalid_topic_is_a_value_error(topic: str) -> None:
    """[MQTT-4.7.1-1] [MQTT-4.7.3-1] [MQTT-4.7.3-2] `broker.publish` refuses topic names
    with wildcards, empty ones and ones with U+0000, with ValueError."""
    async with Broker(listeners=[LOOPBACK]) as broker, broker.subscribe("#") as sub:
        with pytest.raises(ValueError):
            await broker.publish(topic, b"x")
        await broker.publish("ok", b"")
        assert (await next_msg(sub)).topic == "ok"


async def test_publish_and_subscribe_reject_bad_arguments() -> None:
    """[MQTT-4.7.1-2] QoS other than 0-2 and invalid filters are ValueErrors."""
    async with Broker(listeners=[LOOPBACK]) as broker:
        with pytest.raises(ValueError):
            await broker.publish("a", b"x", qos=3)
        for bad in ("a/#/b", "a#", "a/b+", ""):
            with pytest.raises(ValueError):
                broker.subscribe(bad)
        with pytest.raises(ValueError):
            broker.subscribe("a", qos=3)


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("listeners", "tcp://127.0.0.1:0"),
        ("listeners", []),
        ("max_packet_size", 1),
        ("max_packet_size", "1024"),
        ("max_connections", 0),
        ("max_inflight", 0),
        ("max_inflight", 65_536),
        ("max_inflight", True),
        ("max_queued_messages", -1),
        ("queue_overflow", "drop_all"),
        ("queue_qos0_offline", "yes"),
        ("connect_timeout", 0),
        ("max_client_id_len", 22),
        ("allow_zero_length_client_id", 1),
        ("worker_threads", -1),
        ("auth_timeout", -1.0),
        ("auth_timeout", float("nan")),
        ("acl_cache_ttl", float("inf")),
        ("acl_cache_ttl", "60"),
        ("password_file", 42),
        ("acl_file", b"acl"),
    ],
)
def test_config_errors_name_the_setting(name: str, value: Any) -> None:
    """A bad value is a ValueError whose message names the setting, from `BrokerConfig`
    and from `Broker(**settings)` alike."""
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        BrokerConfig(**{name: value})
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        Broker(**{name: value})


def test_unknown_setting_and_mixed_arguments() -> None:
    """An unknown keyword is a ValueError naming it; a config plus keywords a TypeError."""
    with pytest.raises(ValueError, match="max_inflights"):
        Broker(listeners=[LOOPBACK], max_inflights=3)
    with pytest.raises(TypeError):
        Broker(BrokerConfig(listeners=[LOOPBACK]), max_inflight=3)


def test_start_errors_name_the_file_or_listener(tmp_path: Path) -> None:
    """Problems found only at start (an unreadable password file, a malformed ACL line,
    an unsupported listener) are ValueErrors naming the culprit."""
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match=re.escape(missing)):
        Broker(listeners=[LOOPBACK], password_file=missing).start()
    acl = tmp_path / "acl"
    acl.write_text("topic read ok/#\nfrobnicate x\n")
    with pytest.raises(ValueError, match="line 2"):
        Broker(listeners=[LOOPBACK], acl_file=str(acl)).start()
    with pytest.raises(ValueError, match=re.escape("udp://127.0.0.1:0")):
        Broker(listeners=["udp://127.0.0.1:0"]).start()


NON_DEFAULT: dict[str, Any] = {
    "listeners": ["tcp://127.0.0.1:0", "tcp://[::1]:0"],
    "max_packet_size": 4096,
    "max_connections": 10,
    "max_inflight": 7,
    "max_queued_messages": 99,
    "queue_overflow": "drop_oldest",
    "queue_qos0_offline": True,
    "connect_timeout": 2.5,
    "max_client_id_len": 64,
    "allow_zero_length_client_id": False,
    "worker_threads": 2,
    "auth_timeout": 0.75,
    "acl_cache_ttl": 0.0,
    "password_file": "/etc/pyo3mq/passwd",
    "acl_file": "/etc/pyo3mq/acl",
    "allow_anonymous": True,
    "persist_interval": 3.0,
    "certfile": "/etc/pyo3mq/server.pem",
    "keyfile": "/etc/pyo3mq/server.key",
    "cafile": "/etc/pyo3mq/ca.pem",
    "persistent_client_expiration": "2d",
    "cluster": "nats://127.0.0.1:4222,nats://127.0.0.1:4223",
    "cluster_node": "node-1",
    "cluster_replicas": 3,
    "cluster_user": "mqtt",
    "cluster_password": "secret",
    "cluster_token": "t0ken",
    "cluster_creds": "/etc/pyo3mq/node.creds",
    "cluster_cafile": "/etc/pyo3mq/nats-ca.pem",
    "cluster_certfile": "/etc/pyo3mq/nats.pem",
    "cluster_keyfile": "/etc/pyo3mq/nats.key",
    "metrics_listener": "http://127.0.0.1:9234",
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value + '"'
    return repr(value)


def every_setting(tmp_path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields(BrokerConfig):
        if f.name == "session_store":
            values[f.name] = f"sqlite:{tmp_path / 'sessions.db'}"
        elif f.name in NON_DEFAULT:
            values[f.name] = NON_DEFAULT[f.name]
        else:  # a setting added since this test was written: its default still counts
            values[f.name] = getattr(BrokerConfig(), f.name)
    return values


@pytest.mark.parametrize("table", [False, True])
def test_keyword_settings_are_the_config_file_names(tmp_path: Path, table: bool) -> None:
    """Every `Broker()` keyword setting is read under the same name from a config file
    (top level or a [broker] table), giving an equal `BrokerConfig`."""
    values = every_setting(tmp_path)
    lines = ["[broker]"] if table else []
    lines += [f"{name} = {toml_value(value)}" for name, value in values.items()]
    path = tmp_path / "pyo3mq.toml"
    path.write_text("\n".join(lines) + "\n")
    from_file = load_config(str(path), None, None)
    assert from_file == BrokerConfig(**values)
    assert Broker(**values).config == from_file
    assert {f.name for f in fields(from_file)} == set(values)


def test_readme_documents_every_setting() -> None:
    """The README's configuration table lists every setting by its keyword name."""
    text = README.read_text()
    missing = [f.name for f in fields(BrokerConfig) if f"| `{f.name}` |" not in text]
    assert missing == []


def test_sync_broker_without_hooks_serves() -> None:
    """A broker started synchronously without hooks serves from its own threads."""
    broker = Broker(listeners=[LOOPBACK])
    broker.start()
    try:
        with RawClient(port_of(broker)) as c:
            c.send(connect("plain"))
            assert frame(c.recv()) == CONNACK_OK
            c.send(DISCONNECT)
            assert c.expect_closed() == b""
    finally:
        broker.stop()
    assert not broker.running


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("authenticator", "yes"),
        ("authorizer", lambda client, topic: True),
        ("on_connect", 42),
        ("on_disconnect", "print"),
        ("on_subscribe", object()),
        ("on_unsubscribe", 1.5),
        ("on_message", b"x"),
    ],
)
def test_hooks_of_the_wrong_kind_are_refused(argument: str, value: Any) -> None:
    """A hook that cannot work is a TypeError naming the argument when the broker is
    made, instead of every client being denied at run time."""
    with pytest.raises(TypeError, match=rf"\b{argument}\b"):
        Broker(listeners=[LOOPBACK], **{argument: value})


def test_a_dict_config_says_how_to_pass_settings() -> None:
    with pytest.raises(TypeError, match="keywords"):
        Broker({"max_inflight": 3})  # type: ignore[arg-type]
