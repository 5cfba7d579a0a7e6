"""The `on_message` interceptor (keep, drop, rewrite, failures, timeouts, batching) and
in-process subscriptions with `flow_control=True` (nothing dropped, publishers of other
topics not slowed), plus `Subscription.next_batch()`.

Brokers run on the test's event loop (`async with Broker(...)`), so the interceptor and
the in-process subscribers do too; every blocking socket call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pyo3mq
import pytest
from pyo3mq import Message, Subscription
from support.mqtt_raw import PINGREQ, Packet, RawClient, ack, publish, subscribe
from support.teardown import closed_at_teardown
from test_hooks import CONNACK_OK, TIMEOUT, Raw, frame, port_of

PUBACK = 0x40
PINGRESP = bytes.fromhex("d000")

Serve = Callable[..., Awaitable[pyo3mq.Broker]]
RawFactory = Callable[[int], Raw]


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def raw() -> Iterator[RawFactory]:
    yield from closed_at_teardown(Raw)


async def client(raw: RawFactory, port: int, client_id: str, *filters: tuple[str, int]) -> Raw:
    """A connected raw client, subscribed to `filters` (each granted as asked)."""
    r = raw(port)
    assert await r.connect(client_id) == CONNACK_OK
    if filters:
        suback = bytes([0x90, 2 + len(filters), 0, 1]) + bytes(q for _, q in filters)
        assert await r.request(subscribe(1, *filters)) == suback
    return r


def fields(p: Packet) -> tuple[str, str, bytes]:
    """(first byte, topic, payload) of a PUBLISH."""
    topic, _, payload = p.publish_fields()
    return hex(p.first), topic, payload


async def nothing_more(r: Raw) -> None:
    """PINGRESP as the next packet: nothing else was pending for this connection."""
    assert (await r.request(PINGREQ)).hex(" ") == PINGRESP.hex(" ")


def pyo3mq_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "pyo3mq" and r.levelno >= logging.ERROR
    ]


# --------------------------------------------------------------------------- interceptor


async def test_interceptor_keeps_drops_and_rewrites(serve: Serve, raw: RawFactory) -> None:
    """[MQTT-3.3.5-2] The verdict decides each message: the message itself or True keeps
    it, None or False drops it (the publisher still gets its PUBACK, a dropped retained
    message is not stored), another Message replaces it (topic, payload, QoS and retain
    all taken from the replacement, the retained rewrite stored). The interceptor sees
    the publisher's client id."""
    seen: list[Message] = []

    def intercept(m: Message) -> Any:
        seen.append(m)
        verdict = m.topic.split("/")[1]
        if verdict == "keep":
            return m
        if verdict == "true":
            return True
        if verdict == "none":
            return None
        if verdict == "false":
            return False
        if verdict == "rewrite":  # QoS 1 -> 0, not retained -> retained, new topic
            return Message("r/new", b"new:" + m.payload, 0, True, m.client_id)
        if verdict == "up":  # QoS 0 -> 2
            return m._replace(topic="r/up", qos=2)
        return m

    broker = await serve(on_message=intercept)
    port = port_of(broker)
    sub = await client(raw, port, "i-sub", ("#", 2))
    pub = await client(raw, port, "i-pub")
    pub.send(
        publish("i/keep", b"k", qos=1, pkid=1, retain=True)
        + publish("i/true", b"t", qos=1, pkid=2)
        + publish("i/none", b"n", qos=1, pkid=3, retain=True)
        + publish("i/false", b"f", qos=1, pkid=4)
        + publish("i/rewrite", b"r", qos=1, pkid=5)
        + publish("i/up", b"u", qos=0)
        + publish("i/marker", b"m", qos=1, pkid=6)
    )
    assert [frame(await pub.recv()) for _ in range(6)] == [ack(PUBACK, i) for i in range(1, 7)]
    got = [fields(p) for p in await sub.publish_until("i/marker")]
    assert got == [
        ("0x32", "i/keep", b"k"),  # live delivery: RETAIN=0 [MQTT-3.3.1-9]
        ("0x32", "i/true", b"t"),
        ("0x30", "r/new", b"new:r"),
        ("0x34", "r/up", b"u"),
        ("0x32", "i/marker", b"m"),
    ]
    assert [(m.topic, m.payload, m.qos, m.retain, m.client_id) for m in seen] == [
        ("i/keep", b"k", 1, True, "i-pub"),
        ("i/true", b"t", 1, False, "i-pub"),
        ("i/none", b"n", 1, True, "i-pub"),
        ("i/false", b"f", 1, False, "i-pub"),
        ("i/rewrite", b"r", 1, False, "i-pub"),
        ("i/up", b"u", 0, False, "i-pub"),
        ("i/marker", b"m", 1, False, "i-pub"),
    ]
    # Retained: the kept one and the rewrite (at its new QoS 0), not the dropped one.
    newcomer = await client(raw, port, "i-new")
    newcomer.send(subscribe(1, ("i/#", 1), ("r/#", 1)))
    assert frame(await newcomer.recv()) == bytes.fromhex("9004000101 01")
    replay = sorted([fields(await newcomer.recv()), fields(await newcomer.recv())])
    assert replay == [("0x31", "r/new", b"new:r"), ("0x33", "i/keep", b"k")]
    await nothing_more(newcomer)


async def test_raising_interceptor_drops_only_that_message(
    serve: Serve, raw: RawFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """[MQTT-3.3.5-2] An interceptor that raises, or returns something that is not a
    verdict, drops that message only (logged on `pyo3mq`); its neighbours in the same
    batch pass, every publish is acknowledged, the connection stays open."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")

    def intercept(m: Message) -> Any:
        if m.topic == "x/boom":
            raise RuntimeError("interceptor bug")
        if m.topic == "x/garbage":
            return 42
        return m

    broker = await serve(on_message=intercept)
    port = port_of(broker)
    sub = await client(raw, port, "x-sub", ("x/#", 0))
    pub = await client(raw, port, "x-pub")
    pub.send(
        publish("x/a", b"a", qos=1, pkid=1)
        + publish("x/boom", b"b", qos=1, pkid=2)
        + publish("x/garbage", b"g", qos=1, pkid=3)
        + publish("x/c", b"c", qos=1, pkid=4)
    )
    assert [frame(await pub.recv()) for _ in range(4)] == [ack(PUBACK, i) for i in range(1, 5)]
    assert (await pub.request(publish("x/marker", b"m", qos=1, pkid=5))) == ack(PUBACK, 5)
    got = [fields(p) for p in await sub.publish_until("x/marker")]
    assert got == [("0x30", "x/a", b"a"), ("0x30", "x/c", b"c"), ("0x30", "x/marker", b"m")]
    errors = pyo3mq_errors(caplog)
    assert len(errors) == 2, errors
    assert "on_message failed: message on 'x/boom' dropped" in errors[0]
    assert "on_message failed: message on 'x/garbage' dropped" in errors[1]
    boom = next(r for r in caplog.records if "x/boom" in r.getMessage())
    assert boom.exc_info is not None and str(boom.exc_info[1]) == "interceptor bug"


async def test_invalid_replacement_drops_only_that_message(
    serve: Serve, raw: RawFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """[MQTT-4.7.3-1] [MQTT-3.3.2-2] A replacement the broker cannot route (a wildcard in
    its topic, an empty topic, QoS 3) is a failed call: that message is dropped and the
    failure logged on `pyo3mq`; the other messages of the same batch pass unchanged."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")

    def intercept(m: Message) -> Message:
        if m.topic == "v/wildcard":
            return m._replace(topic="v/#")
        if m.topic == "v/empty":
            return m._replace(topic="")
        if m.topic == "v/qos3":
            return m._replace(qos=3)
        return m

    broker = await serve(on_message=intercept)
    port = port_of(broker)
    sub = await client(raw, port, "v-sub", ("#", 0))
    pub = await client(raw, port, "v-pub")
    pub.send(
        publish("v/a", b"a", qos=1, pkid=1)
        + publish("v/wildcard", b"w", qos=1, pkid=2)
        + publish("v/empty", b"e", qos=1, pkid=3)
        + publish("v/qos3", b"q", qos=1, pkid=4)
        + publish("v/b", b"b", qos=1, pkid=5)
    )
    assert [frame(await pub.recv()) for _ in range(5)] == [ack(PUBACK, i) for i in range(1, 6)]
    assert (await pub.request(publish("v/marker", b"m", qos=1, pkid=6))) == ack(PUBACK, 6)
    got = [fields(p) for p in await sub.publish_until("v/marker")]
    assert got == [("0x30", "v/a", b"a"), ("0x30", "v/b", b"b"), ("0x30", "v/marker", b"m")]
    assert pyo3mq_errors(caplog), "the refused replacements were not logged"


async def test_refused_replacement_says_which_rule(
    serve: Serve, raw: RawFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refused replacement is logged with the rule it breaks (the one check, in the
    Rust core): a wildcard, an empty topic, QoS 3, a payload that is not bytes,
    properties that are not `MessageProperties`; a bytearray payload is accepted."""
    caplog.set_level(logging.ERROR, logger="pyo3mq")
    rewrites: dict[str, dict[str, Any]] = {
        "w/wildcard": {"topic": "w/+"},
        "w/empty": {"topic": ""},
        "w/qos3": {"qos": 3},
        "w/str": {"payload": "text"},
        "w/props": {"properties": {"content_type": "x"}},
        "w/bytearray": {"payload": bytearray(b"B")},
    }

    def intercept(m: Message) -> Message:
        return m._replace(**rewrites.get(m.topic, {}))

    broker = await serve(on_message=intercept)
    port = port_of(broker)
    sub = await client(raw, port, "w-sub", ("#", 0))
    pub = await client(raw, port, "w-pub")
    for pkid, topic in enumerate(rewrites, start=1):
        assert (await pub.request(publish(topic, b"x", qos=1, pkid=pkid))) == ack(PUBACK, pkid)
    assert (await pub.request(publish("w/marker", b"m", qos=1, pkid=9))) == ack(PUBACK, 9)
    got = [fields(p) for p in await sub.publish_until("w/marker")]
    assert got == [("0x30", "w/bytearray", b"B"), ("0x30", "w/marker", b"m")]
    refusals = [
        str(r.exc_info[1])
        for r in caplog.records
        if r.name == "pyo3mq" and r.exc_info is not None and "dropped" in r.getMessage()
    ]
    assert refusals == [
        "[MQTT-3.3.2-2] the replacement's topic 'w/+' has a wildcard",
        "[MQTT-4.7.3-1] the replacement's topic is empty",
        "the replacement's QoS 3 is not 0, 1 or 2",
        "the replacement's payload is not bytes",
        "the replacement's properties {'content_type': 'x'} are not MessageProperties",
    ]


async def test_async_interceptor(serve: Serve, raw: RawFactory) -> None:
    """An `async def` interceptor is awaited on the broker's loop; its verdicts apply in
    order."""
    loop = asyncio.get_running_loop()
    loops: list[asyncio.AbstractEventLoop] = []

    async def intercept(m: Message) -> Message | None:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0.001)
        if m.payload == b"drop":
            return None
        return m._replace(payload=m.payload.upper())

    broker = await serve(on_message=intercept)
    port = port_of(broker)
    sub = await client(raw, port, "a-sub", ("a/#", 1))
    pub = await client(raw, port, "a-pub")
    pub.send(
        b"".join(
            publish("a/t", p, qos=1, pkid=i + 1)
            for i, p in enumerate([b"one", b"drop", b"two", b"three"])
        )
    )
    assert [frame(await pub.recv()) for _ in range(4)] == [ack(PUBACK, i) for i in range(1, 5)]
    got = []
    for _ in range(3):
        p = await sub.recv()
        got.append(fields(p))
        sub.send(ack(PUBACK, p.publish_fields()[1] or 0))
    assert got == [("0x32", "a/t", b"ONE"), ("0x32", "a/t", b"TWO"), ("0x32", "a/t", b"THREE")]
    await nothing_more(sub)
    assert loops == [loop] * 4


async def test_slow_interceptor_drops_batch_and_broker_keeps_serving(
    serve: Serve, raw: RawFactory
) -> None:
    """An interceptor slower than `auth_timeout` drops its whole batch (even the messages
    it would have kept): the publisher gets its PUBACKs once the time is up, and stays
    connected. Meanwhile other clients publish and receive as usual."""
    release = asyncio.Event()
    entered = asyncio.Event()
    finished = asyncio.Event()

    async def intercept(m: Message) -> Message:
        if m.topic.startswith("slow/"):
            entered.set()
            await release.wait()
        if m.topic == "ok/2":
            finished.set()
        return m

    limit = 1.5
    broker = await serve(on_message=intercept, auth_timeout=limit)
    loop = asyncio.get_running_loop()
    port = port_of(broker)
    sub = await client(raw, port, "s-sub", ("#", 0))
    slow = await client(raw, port, "s-slow")
    fast = await client(raw, port, "s-fast")
    # One read, one batch: two messages it keeps around two it never answers for.
    slow.send(
        publish("ok/1", b"1", qos=1, pkid=1)
        + publish("slow/x", b"x", qos=1, pkid=2)
        + publish("slow/y", b"y", qos=1, pkid=3)
        + publish("ok/2", b"2", qos=1, pkid=4)
    )
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    stalled_at = loop.time()
    # While that batch waits for its verdict, another client is served at once.
    assert await fast.request(publish("fast/1", b"f", qos=1, pkid=1)) == ack(PUBACK, 1)
    assert fields(await sub.recv()) == ("0x30", "fast/1", b"f")
    assert loop.time() - stalled_at < limit, "the other client waited for the slow batch"
    assert not release.is_set()
    acks = [frame(await slow.recv(limit + TIMEOUT)) for _ in range(4)]
    waited = loop.time() - stalled_at
    assert acks == [ack(PUBACK, i) for i in range(1, 5)]
    assert waited >= limit - 0.5, f"PUBACKs after {waited:.2f} s, before auth_timeout"
    release.set()  # too late: the broker has given up on that batch
    await asyncio.wait_for(finished.wait(), TIMEOUT)
    assert await slow.request(publish("ok/3", b"3", qos=1, pkid=5)) == ack(PUBACK, 5)
    assert fields(await sub.recv()) == ("0x30", "ok/3", b"3")  # not ok/1, slow/*, ok/2
    await nothing_more(sub)


async def test_interceptor_is_called_in_batches(serve: Serve, raw: RawFactory) -> None:
    """50 QoS 0 PUBLISHes sent in one write reach the interceptor in one or very few
    hand-offs: the calls happen within at most 3 turns of the event loop (one turn per
    message would be 50), each with the publisher's client id, in order."""
    loop = asyncio.get_running_loop()
    turn = 0

    def tick() -> None:
        nonlocal turn, handle
        turn += 1
        handle = loop.call_soon(tick)

    handle = loop.call_soon(tick)
    calls: list[tuple[int, str, str, bytes]] = []

    def intercept(m: Message) -> bool:
        calls.append((turn, m.client_id, m.topic, m.payload))
        return True

    try:
        broker = await serve(on_message=intercept)
        port = port_of(broker)
        sub = await client(raw, port, "b-sub", ("b/#", 0))
        pub = await client(raw, port, "batcher")
        pub.send(b"".join(publish(f"b/{i}", b"%d" % i) for i in range(50)))
        got = await sub.publish_until("b/49")
    finally:
        handle.cancel()
    assert [fields(p) for p in got] == [("0x30", f"b/{i}", b"%d" % i) for i in range(50)]
    assert [c[1:] for c in calls] == [("batcher", f"b/{i}", b"%d" % i) for i in range(50)]
    turns = sorted({c[0] for c in calls})
    assert len(turns) <= 3, f"50 messages took {len(turns)} loop turns: {turns}"


async def test_interceptor_sees_will_messages(serve: Serve, raw: RawFactory) -> None:
    """[MQTT-3.1.2-8] A will is a message the broker publishes for a client: like every
    published message, it goes through the interceptor (here: dropped), so an
    interceptor's policy cannot be bypassed by putting a message in a will."""
    seen: list[Message] = []

    def intercept(m: Message) -> bool:
        seen.append(m)
        return not m.topic.startswith("forbidden/")

    broker = await serve(on_message=intercept)
    port = port_of(broker)
    sub = await client(raw, port, "w-sub", ("#", 0))
    dying = raw(port)
    assert await dying.connect("w-dying", will=("forbidden/will", b"bypass", 0, False)) == (
        CONNACK_OK
    )
    dying.close()  # no DISCONNECT: the will is published
    # A new connection with the same id is accepted only once the old one has published
    # its will and detached [MQTT-3.1.4-2].
    assert await raw(port).connect("w-dying") == CONNACK_OK
    marker = await client(raw, port, "w-marker")
    assert await marker.request(publish("w/marker", b"m", qos=1, pkid=1)) == ack(PUBACK, 1)
    got = [fields(p) for p in await sub.publish_until("w/marker")]
    assert got == [("0x30", "w/marker", b"m")]
    assert [(m.topic, m.client_id) for m in seen if m.topic != "w/marker"] == [
        ("forbidden/will", "w-dying")
    ]


# --------------------------------------------------------------------------- flow control


def blast(port: int, count: int, topic: str = "fc") -> None:
    """Publishes `count` QoS 0 messages `topic/<i>` and a QoS 0 `topic/end` in one write,
    then waits for a PINGRESP (the broker has read everything)."""
    with RawClient(port, timeout=20.0) as pub:
        pub.connect(f"{topic}-pub")
        data = b"".join(publish(f"{topic}/{i}", b"%d" % i) for i in range(count))
        pub.send(data + publish(f"{topic}/end", b"end") + PINGREQ)
        assert frame(pub.recv()) == PINGRESP


async def consume_slowly(
    sub: Subscription, mode: str, until: str, got: list[Message] | None = None
) -> list[Message]:
    """Everything up to the message on `until`, sleeping 5 ms per 50 messages (about a
    tenth of the broker's speed); appended to `got` as it arrives, when given."""
    if got is None:
        got = []
    if mode == "next_batch":
        while not got or got[-1].topic != until:
            batch = await asyncio.wait_for(sub.next_batch(), TIMEOUT)
            assert isinstance(batch, list) and batch
            got.extend(batch)
            await asyncio.sleep(0.005)
    else:
        while not got or got[-1].topic != until:
            got.append(await asyncio.wait_for(sub.__anext__(), TIMEOUT))
            if len(got) % 50 == 0:
                await asyncio.sleep(0.005)
    return got


LIMITS: dict[str, Any] = {"max_queued_messages": 100, "queue_overflow": "drop_oldest"}
COUNT = 5000


@pytest.mark.parametrize("mode", ["next_batch", "async_for"])
async def test_flow_control_loses_nothing(serve: Serve, mode: str) -> None:
    """With `flow_control=True`, max_queued_messages 100 and max_buffered 50, a raw
    publisher's 5,000 QoS 0 messages all reach a slow Python consumer, in order, none
    dropped: the publisher is slowed instead."""
    broker = await serve(**LIMITS)
    async with broker.subscribe("fc/#", max_buffered=50, flow_control=True) as sub:
        publisher = asyncio.create_task(asyncio.to_thread(blast, port_of(broker), COUNT))
        got = await consume_slowly(sub, mode, "fc/end")
        await asyncio.wait_for(publisher, TIMEOUT)
    assert [m.topic for m in got] == [f"fc/{i}" for i in range(COUNT)] + ["fc/end"]
    assert [m.payload for m in got[:-1]] == [b"%d" % i for i in range(COUNT)]
    assert {(m.qos, m.retain, m.client_id) for m in got} == {(0, False, "fc-pub")}
    assert (broker.dropped_messages, sub.dropped) == (0, 0)


@pytest.mark.parametrize("mode", ["next_batch", "async_for"])
async def test_without_flow_control_slow_consumer_loses_messages(serve: Serve, mode: str) -> None:
    """The contrast that shows the test above can fail: the same limits and consumer
    without flow control drop messages (in the session queue and the Python buffer);
    what arrives is still in order, and every message is either received or counted."""
    broker = await serve(**LIMITS)
    async with broker.subscribe("fc/#", max_buffered=50) as sub:
        publisher = asyncio.create_task(asyncio.to_thread(blast, port_of(broker), COUNT))
        got = await consume_slowly(sub, mode, "fc/end")
        await asyncio.wait_for(publisher, TIMEOUT)
    numbers = [int(m.payload) for m in got[:-1]]
    assert numbers == sorted(set(numbers))
    assert broker.dropped_messages + sub.dropped > 0
    assert len(got) + broker.dropped_messages + sub.dropped == COUNT + 1


async def test_stalled_flow_control_does_not_slow_other_topics(
    serve: Serve, raw: RawFactory
) -> None:
    """While a flow-controlled consumer reads nothing, its publisher is held (its PUBACK
    is not sent), but another client's messages on another topic reach an MQTT
    subscriber as usual. Once the consumer reads, everything arrives and the held
    PUBACK follows."""
    broker = await serve(max_queued_messages=100)
    port = port_of(broker)
    async with broker.subscribe("fc/#", max_buffered=50, flow_control=True) as sub:
        other_sub = await client(raw, port, "o-sub", ("other/#", 1))
        held = await client(raw, port, "fc-pub")
        held.send(
            b"".join(publish(f"fc/{i}", b"%d" % i) for i in range(1000))
            + publish("fc/last", b"last", qos=1, pkid=7)
        )
        first = await asyncio.wait_for(sub.__anext__(), TIMEOUT)  # then the consumer stalls
        other_pub = await client(raw, port, "o-pub")
        for i in range(1, 11):
            assert await other_pub.request(publish("other/t", b"%d" % i, qos=1, pkid=i)) == ack(
                PUBACK, i
            )
            p = await other_sub.recv()
            assert fields(p) == ("0x32", "other/t", b"%d" % i)
            other_sub.send(ack(PUBACK, p.publish_fields()[1] or 0))
        with pytest.raises(TimeoutError):
            await held.recv(0.3)  # still held: the consumer has not caught up
        got = [first] + await consume_slowly(sub, "next_batch", "fc/last")
        assert frame(await held.recv()) == ack(PUBACK, 7)
    assert [m.topic for m in got] == [f"fc/{i}" for i in range(1000)] + ["fc/last"]
    assert (broker.dropped_messages, sub.dropped) == (0, 0)


@pytest.mark.parametrize("mode", ["next_batch", "async_for"])
async def test_python_publisher_is_slowed_by_flow_control(serve: Serve, mode: str) -> None:
    """`await broker.publish()` is a matching publisher too: 5,000 messages published from
    Python, as fast as it can, reach a slow flow-controlled consumer in order, none
    dropped, and the producer is held back: when it finishes, the consumer has already
    read all but about a backlog's worth (50 in the session queue, 50 buffered here).
    Without the wait the producer never yields and finishes before the first read."""
    broker = await serve(**LIMITS)
    got: list[Message] = []
    read_when_done: list[int] = []

    async def produce() -> None:
        for i in range(COUNT):
            await broker.publish(f"fc/{i}", b"%d" % i)
        await broker.publish("fc/end", b"end")
        read_when_done.append(len(got))

    async with broker.subscribe("fc/#", max_buffered=50, flow_control=True) as sub:
        producer = asyncio.create_task(produce())
        await consume_slowly(sub, mode, "fc/end", got)
        await asyncio.wait_for(producer, TIMEOUT)
    assert [m.topic for m in got] == [f"fc/{i}" for i in range(COUNT)] + ["fc/end"]
    assert (broker.dropped_messages, sub.dropped) == (0, 0)
    assert len(read_when_done) == 1
    assert read_when_done[0] >= COUNT - 200, read_when_done


async def test_python_publisher_without_flow_control_is_not_slowed(serve: Serve) -> None:
    """The contrast: the same producer and a subscription without flow control. The
    producer finishes before the consumer reads anything, and the excess is dropped."""
    broker = await serve(**LIMITS)
    async with broker.subscribe("fc/#", max_buffered=50) as sub:
        for i in range(COUNT):
            await broker.publish(f"fc/{i}", b"%d" % i)
        await broker.publish("fc/end", b"end")
        got = await consume_slowly(sub, "next_batch", "fc/end")
    assert len(got) < COUNT
    assert len(got) + broker.dropped_messages + sub.dropped == COUNT + 1


async def test_python_publisher_waits_for_a_stalled_consumer(serve: Serve) -> None:
    """A publish that fills a flow-controlled subscription does not return while its
    consumer reads nothing; it returns once the consumer catches up, and stopping the
    broker releases publishers that are still waiting."""
    broker = await serve()
    async with broker.subscribe("st/#", max_buffered=5, flow_control=True) as sub:
        producer = asyncio.create_task(publish_many(broker, "st/t", 100))
        await asyncio.sleep(0.3)
        assert not producer.done(), "the publisher waits for the stalled consumer"
        got = 0
        while got < 100:
            got += len(await asyncio.wait_for(sub.next_batch(), TIMEOUT))
        await asyncio.wait_for(producer, TIMEOUT)

        stalled = asyncio.create_task(publish_many(broker, "st/t", 100))
        await asyncio.sleep(0.3)
        assert not stalled.done()
        await broker.__aexit__(None, None, None)
        # Released: its waiting publish returned, and its next one finds no broker.
        with pytest.raises(RuntimeError, match="not running"):
            await asyncio.wait_for(stalled, TIMEOUT)


async def publish_many(broker: pyo3mq.Broker, topic: str, count: int) -> None:
    for i in range(count):
        await broker.publish(topic, b"%d" % i)


async def test_next_batch(serve: Serve, raw: RawFactory) -> None:
    """`next_batch()` returns lists, in publish order, at most `max_messages` long; after
    `close()` it returns what is still buffered, then `[]` (at once, every time)."""
    broker = await serve()
    port = port_of(broker)
    pub = await client(raw, port, "nb-pub")
    async with broker.subscribe("nb/#") as sub:
        pub.send(b"".join(publish("nb/t", b"%d" % i) for i in range(20)) + PINGREQ)
        assert frame(await pub.recv()) == PINGRESP
        got: list[Message] = []
        while len(got) < 20:
            batch = await asyncio.wait_for(sub.next_batch(max_messages=3), TIMEOUT)
            assert type(batch) is list and 1 <= len(batch) <= 3
            got.extend(batch)
        assert [m.payload for m in got] == [b"%d" % i for i in range(20)]
        assert all(isinstance(m, Message) for m in got)

    # Retained messages replayed on subscribe arrive in one hand-off: three buffered.
    for i in range(3):
        await broker.publish(f"nbr/{i}", b"r%d" % i, retain=True)
    sub = broker.subscribe("nbr/#")
    first = await asyncio.wait_for(sub.next_batch(max_messages=1), TIMEOUT)
    assert len(first) == 1
    sub.close()
    rest = await asyncio.wait_for(sub.next_batch(), TIMEOUT)
    assert sorted(m.topic for m in first + rest) == ["nbr/0", "nbr/1", "nbr/2"]
    assert all(m.retain for m in first + rest)
    await broker.publish("nbr/0", b"after close")
    for _ in range(2):
        assert await asyncio.wait_for(sub.next_batch(), TIMEOUT) == []
