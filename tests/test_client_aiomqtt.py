"""pyo3mq.Client as an aiomqtt user meets it: aiomqtt's constructor names, `Topic` and
`Wildcard` with aiomqtt's matching (checked against aiomqtt itself), the exceptions
under one `MqttError` with `.rc`, per-call timeouts, and aiomqtt programs (its README's
examples and the README's porting page) run with only the import changed, against
pyo3mq's broker and Debian's mosquitto, printing what they print under aiomqtt."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import re
import textwrap
from collections.abc import Callable
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import aiomqtt
import pyo3mq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyo3mq import (
    Client,
    MqttCodeError,
    MqttConnectionError,
    MqttError,
    MqttNotAuthorizedError,
    MqttOperationTimeoutError,
    MqttReentrantError,
    MqttSubscribeError,
    ProtocolVersion,
    Topic,
    Wildcard,
    Will,
)
from test_client import (
    accept,
    free_port,
    next_message,
    read_packet,
    scripted_server,
    server,
)

__all__ = ["server"]  # a fixture, imported for its side effect

README = Path(__file__).resolve().parent.parent / "README.md"


# --------------------------------------------------------------------------------------
# Constructor
# --------------------------------------------------------------------------------------


async def test_aiomqtt_constructor_names(server: int) -> None:
    """identifier, clean_session, protocol, keepalive, will, timeout and the queue sizes
    under aiomqtt's names reach the wire: a second connection with the same identifier
    and clean_session=False finds its session."""
    kwargs: dict[str, Any] = {
        "identifier": "aio-names",
        "username": None,
        "password": None,
        "keepalive": 30,
        "will": Will("aio/will", payload="gone"),
        "clean_session": False,
        "protocol": ProtocolVersion.V311,
        "timeout": 5,
        "transport": "tcp",
        "max_inflight_messages": 8,
        "max_queued_incoming_messages": 100,
    }
    client = Client("127.0.0.1", server, **kwargs)
    assert (client.identifier, client.client_id, client.timeout) == ("aio-names", "aio-names", 5)
    async with client:
        assert not client.session_present
        await client.subscribe("aio/names", qos=1)
    async with Client("127.0.0.1", server, **kwargs) as again:
        assert again.session_present
        await again.publish("aio/names", b"kept", qos=1)
        assert (await next_message(again)).payload == b"kept"


async def test_mqtt_31_with_aiomqtt_s_enum(server: int) -> None:
    async with Client("127.0.0.1", server, identifier="aio-v31", protocol=ProtocolVersion.V31) as c:
        await c.subscribe("aio/v31")
        await c.publish("aio/v31", b"x", qos=1)
        assert (await next_message(c)).payload == b"x"


def test_earlier_names_are_aliases_and_conflicts_are_refused() -> None:
    assert Client("127.0.0.1", 1, client_id="old").identifier == "old"
    assert Client("127.0.0.1", 1, client_id="same", identifier="same").identifier == "same"
    with pytest.raises(TypeError, match="identifier and client_id"):
        Client("127.0.0.1", 1, client_id="a", identifier="b")
    with pytest.raises(TypeError, match="max_inflight_messages and max_inflight"):
        Client("127.0.0.1", 1, max_inflight=2, max_inflight_messages=3)
    with pytest.raises(ValueError, match="max_inflight"):
        Client("127.0.0.1", 1, max_inflight_messages=0)
    # "websockets" is supported (tests/test_client_transports.py); paho's "unix" is not.
    with pytest.raises(
        ValueError, match="transport 'unix' is not supported: 'tcp' or 'websockets'"
    ):
        Client("127.0.0.1", 1, transport="unix")
    with pytest.raises(ValueError, match="protocol"):
        Client("127.0.0.1", 1, protocol=6)  # 5 is MQTT 5.0 (tests/test_client_v5.py)
    # tls_context is accepted (tests/test_client_transports.py), as an ssl.SSLContext only.
    with pytest.raises(TypeError, match=r"tls_context must be an ssl\.SSLContext"):
        Client("127.0.0.1", 1, tls_context="TLS")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Topic and Wildcard, against aiomqtt's own
# --------------------------------------------------------------------------------------

LEVELS = st.sampled_from(["a", "b", "", "+", "#", "$SYS", "$share", "g", "ab", "a+", "#b"])


def joined(levels: list[str]) -> str:
    return "/".join(levels)


def outcome(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except ValueError:
        return ValueError
    except TypeError:
        return TypeError


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(LEVELS, min_size=1, max_size=5).map(joined),
    st.lists(LEVELS, min_size=1, max_size=5).map(joined),
)
def test_topic_matches_exactly_as_aiomqtt(topic: str, wildcard: str) -> None:
    """Same verdict, or the same error, as aiomqtt's Topic/Wildcard for any pair built
    from ordinary, empty, wildcard, `$` and `$share` levels."""
    ours = outcome(lambda: Topic(topic).matches(wildcard))
    theirs = outcome(lambda: aiomqtt.Topic(topic).matches(wildcard))
    assert ours == theirs, (topic, wildcard)
    assert outcome(lambda: Wildcard(wildcard).value) == outcome(
        lambda: aiomqtt.Wildcard(wildcard).value
    )
    if ours is not ValueError:
        assert Topic(topic).matches(Wildcard(wildcard)) == ours
        assert Topic(topic).matches(aiomqtt.Wildcard(wildcard)) == ours  # type: ignore[arg-type]


def test_topic_is_a_str_with_aiomqtt_s_attributes() -> None:
    topic = Topic("home/livingroom/temperature")
    assert isinstance(topic, str) and topic == "home/livingroom/temperature"
    assert topic.value == "home/livingroom/temperature" and type(topic.value) is str
    assert str(topic) == "home/livingroom/temperature"
    assert repr(topic) == "Topic(value='home/livingroom/temperature')"
    assert {topic: 1}["home/livingroom/temperature"] == 1
    assert topic.matches("home/+/temperature") and not topic.matches("home/kitchen/#")
    with pytest.raises(TypeError):
        Topic(42)  # type: ignore[arg-type]


async def test_received_messages_have_aiomqtt_s_attributes(server: int) -> None:
    async with Client("127.0.0.1", server, identifier="aio-attrs") as client:
        await client.subscribe("aio/attrs/#", qos=2)
        await client.publish("aio/attrs/one", b"1", qos=1, retain=True)
        await client.publish("aio/attrs/zero", "0", qos=0)
        first, second = await next_message(client), await next_message(client)
        await client.publish("aio/attrs/one", b"", qos=1, retain=True)
    assert isinstance(first.topic, Topic) and first.topic.matches("aio/attrs/+")
    assert (first.topic.value, first.payload, first.qos, first.retain) == (
        "aio/attrs/one",
        b"1",
        1,
        False,
    )
    assert first.mid > 0 and first.mid == first.packet_id
    assert (second.topic, second.payload, second.qos, second.mid) == ("aio/attrs/zero", b"0", 0, 0)
    assert first.properties is None
    # Messages on one topic share one Topic object (made once per run in Rust).
    assert first.topic is not second.topic


async def test_a_run_of_one_topic_shares_its_topic_object(server: int) -> None:
    async with Client("127.0.0.1", server) as client:
        await client.subscribe("aio/same")
        for i in range(5):
            client.publish("aio/same", b"%d" % i)
        await client.publish("aio/same", b"end", qos=1)
        got = [await next_message(client) for _ in range(6)]
    assert all(m.topic == "aio/same" for m in got)
    assert len({id(m.topic) for m in got}) < len(got)


# --------------------------------------------------------------------------------------
# Exceptions
# --------------------------------------------------------------------------------------


def test_exceptions_are_under_mqtt_error_with_rc() -> None:
    for cls in (MqttCodeError, MqttReentrantError, MqttOperationTimeoutError):
        assert issubclass(cls, MqttError)
    assert issubclass(MqttConnectionError, MqttCodeError)
    assert issubclass(MqttSubscribeError, MqttCodeError)
    assert issubclass(MqttOperationTimeoutError, TimeoutError)
    assert not issubclass(MqttReentrantError, MqttCodeError)
    error = MqttCodeError(7, "Unexpected disconnection")  # aiomqtt's signature
    assert (error.rc, str(error)) == (7, "Unexpected disconnection")
    assert MqttConnectionError("not connected").rc == 4
    assert MqttConnectionError("lost", rc=7).rc == 7
    assert MqttNotAuthorizedError(5).rc == 5
    assert MqttSubscribeError([("a", 1)], [0x80]).rc == 0x80


async def refuse_5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_packet(reader)
    writer.write(b"\x20\x02\x00\x05")
    await writer.drain()


async def close_after_connack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await accept(reader, writer)
    await read_packet(reader)  # SUBSCRIBE; then the server goes away


async def test_rc_of_a_refusal_a_loss_and_not_connected() -> None:
    async with scripted_server(refuse_5) as port:
        with pytest.raises(MqttCodeError) as refused:
            async with Client("127.0.0.1", port):
                pass
        assert refused.value.rc == 5 and isinstance(refused.value, MqttNotAuthorizedError)
    async with scripted_server(close_after_connack) as port:
        client = Client("127.0.0.1", port)
        with pytest.raises(MqttError) as lost:
            async with client:
                client.publish("t", b"x")
                await client.subscribe("t")
        assert isinstance(lost.value, MqttCodeError) and lost.value.rc == 7
        with pytest.raises(MqttCodeError) as not_connected:
            client.publish("t", b"x")
        assert not_connected.value.rc == 7  # why it is not connected: the loss
    with pytest.raises(MqttCodeError) as never:
        Client("127.0.0.1", 1).publish("t", b"x")
    assert never.value.rc == 4


async def test_reusable_but_not_reentrant(server: int) -> None:
    client = Client("127.0.0.1", server, identifier="aio-reentrant")
    async with client:
        with pytest.raises(MqttReentrantError, match="not reentrant"):
            async with client:
                pass
        assert client.is_connected
    async with client:  # reusable
        await client.publish("aio/reentrant", b"x", qos=1)


# --------------------------------------------------------------------------------------
# Timeouts
# --------------------------------------------------------------------------------------


async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, then reads everything and acknowledges nothing."""
    await accept(reader, writer)
    while True:
        await read_packet(reader)


async def test_timeouts_bound_calls_without_withdrawing_them() -> None:
    async with scripted_server(deaf) as port:
        async with Client("127.0.0.1", port, timeout=0.3, keepalive=0) as client:
            with pytest.raises(MqttOperationTimeoutError, match="subscribe timed out"):
                await client.subscribe("t")  # the client's timeout
            with pytest.raises(MqttOperationTimeoutError, match="unsubscribe timed out"):
                await client.unsubscribe("t", timeout=0.1)
            with pytest.raises(MqttOperationTimeoutError, match=r"publish timed out after 0\.2"):
                await client.publish("t", b"x", qos=1, timeout=0.2)
            unbounded = client.publish("t", b"y", qos=1)
            forever = asyncio.ensure_future(client.subscribe("u", timeout=math.inf))
            await asyncio.sleep(0.6)
            assert not unbounded.done() and not forever.done()
            forever.cancel()
            await client.publish("t", b"z", qos=0, timeout=0.1)  # handed over at once
        with pytest.raises(MqttConnectionError):
            await unbounded


async def test_timeout_does_not_fire_when_acknowledged_in_time(server: int) -> None:
    async with Client("127.0.0.1", server, timeout=5) as client:
        assert await client.subscribe("aio/t", qos=1, timeout=5) == [1]
        assert await client.publish("aio/t", b"x", qos=2, timeout=5) is None
        assert (await next_message(client)).payload == b"x"
        await client.unsubscribe("aio/t", timeout=5)


# --------------------------------------------------------------------------------------
# aiomqtt programs with only the import changed
# --------------------------------------------------------------------------------------


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


async def run_program(
    source: str, namespace: dict[str, Any], feed: Callable[[], Any], lines: int
) -> list[str]:
    """Runs `source` (whose `asyncio.run(main())` line is left out: the test's loop runs
    `main()`), lets `feed()` publish to it, and returns the first `lines` lines it prints,
    then cancels it."""
    source = source.replace("asyncio.run(main())\n", "")
    exec(compile(source, "<program>", "exec"), namespace)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        task = asyncio.ensure_future(namespace["main"]())
        await asyncio.sleep(0.3)  # subscribed
        await feed()
        for _ in range(100):
            if out.getvalue().count("\n") >= lines or task.done():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return out.getvalue().splitlines()


async def test_readme_porting_page_runs_with_aiomqtt_and_pyo3mq_alike(server: int) -> None:
    """The README's aiomqtt program, verbatim but for its address, prints the same lines
    whether its first import is pyo3mq's (as in the README) or aiomqtt itself."""
    section = README.read_text().split("### Switching from aiomqtt", 1)[1]
    program = python_blocks(section)[0]
    assert "import pyo3mq as aiomqtt  # was: import aiomqtt" in program
    program = program.replace('"127.0.0.1", 1883', f'"127.0.0.1", {server}')

    async def feed() -> None:
        async with Client("127.0.0.1", server) as feeder:
            await feeder.publish("home/livingroom/temperature", b"21.5", qos=1)
            await feeder.publish("home/kitchen/temperature", b"19", qos=1)

    outputs = {}
    for name, source in [
        ("pyo3mq", program),
        ("aiomqtt", program.replace("import pyo3mq as aiomqtt", "import aiomqtt")),
    ]:
        outputs[name] = await run_program(source, {"__name__": "program"}, feed, 2)
    assert outputs["pyo3mq"] == [
        "living room: 21.5",
        "home/kitchen/temperature 19 1",
    ]
    assert outputs["aiomqtt"] == outputs["pyo3mq"]


async def test_aiomqtt_readme_examples_with_only_the_import_changed(server: int) -> None:
    """aiomqtt's own README (from its installed metadata): its publish and subscribe
    examples, run with `Client` imported from pyo3mq, print what they print with aiomqtt.
    The examples are fragments (no imports, top-level `async with`): each becomes the
    body of a coroutine. Their broker, test.mosquitto.org, becomes the test broker (the
    tests do not use the network)."""
    readme = distribution("aiomqtt").read_text("METADATA") or ""
    blocks = python_blocks(readme)
    publish = next(b for b in blocks if "client.publish" in b and "messages" not in b)
    subscribe = next(b for b in blocks if "async for message in client.messages" in b)
    outputs = {}
    for library in ("pyo3mq", "aiomqtt"):
        namespace: dict[str, Any] = {"__name__": "example"}
        exec(f"from {library} import Client", namespace)

        def coroutine(block: str, name: str, namespace: dict[str, Any] = namespace) -> None:
            block = block.replace('"test.mosquitto.org"', f'"127.0.0.1", {server}')
            exec(f"async def {name}():\n{textwrap.indent(block, '    ')}", namespace)

        coroutine(publish, "publish_example")
        coroutine(subscribe, "subscribe_example")
        source = "async def main():\n    await subscribe_example()\n"
        outputs[library] = await run_program(source, namespace, namespace["publish_example"], 1)
    assert outputs["pyo3mq"] == ["b'28.4'"]
    assert outputs["aiomqtt"] == outputs["pyo3mq"]


async def test_aiomqtt_reconnect_idiom(make_broker: Callable[..., pyo3mq.Broker]) -> None:
    """aiomqtt's documented reconnection loop: `async with` inside `while True`, catching
    MqttError. A broker that goes away ends the iteration with a MqttError; the loop
    comes back once the broker does."""
    port = free_port()
    broker = make_broker(listeners=[f"tcp://127.0.0.1:{port}"])
    received: list[bytes] = []
    errors: list[MqttError] = []

    async def program() -> None:
        while True:
            try:
                async with Client("127.0.0.1", port, identifier="aio-idiom") as client:
                    await client.subscribe("aio/idiom")
                    async for message in client.messages:
                        received.append(message.payload)
            except MqttError as error:
                errors.append(error)
                await asyncio.sleep(0.1)

    task = asyncio.ensure_future(program())
    try:
        for payload in (b"before", b"after"):
            for _ in range(100):
                await asyncio.sleep(0.05)
                with contextlib.suppress(MqttError):
                    async with Client("127.0.0.1", port) as feeder:
                        await feeder.publish("aio/idiom", payload, qos=1)
                if payload in received:
                    break
            if payload == b"before":
                await asyncio.to_thread(broker.stop)
                await asyncio.to_thread(broker.start)
        assert received[0] == b"before" and b"after" in received
        assert errors and all(isinstance(e, MqttError) for e in errors)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
