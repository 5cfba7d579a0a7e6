"""pyo3mq.Client against two real brokers (pyo3mq's and Debian's mosquitto), a TCP proxy
that can cut or blackhole connections, and scripted servers that misbehave."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pyo3mq
import pytest
from pyo3mq import (
    Client,
    ClientMessage,
    ConnectionState,
    MqttConnectionError,
    MqttConnectRefusedError,
    MqttIdentifierRejectedError,
    MqttNotAuthorizedError,
    MqttProtocolError,
    MqttSubscribeError,
    MqttTimeoutError,
    MqttUnacceptableProtocolVersionError,
    Reconnect,
    StateChange,
    Will,
)
from support.mosquitto import MOSQUITTO_PASSWD, free_port
from support.mqtt_raw import packet

# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(params=["pyo3mq", "mosquitto"])
def server(
    request: pytest.FixtureRequest,
    make_broker: Callable[..., pyo3mq.Broker],
    mosquitto: Callable[..., int],
) -> int:
    """The port of a fresh broker: the pyo3mq broker or mosquitto.

    Neither broker limits its per-client queue here: these tests are about the client,
    and a burst from one client to another in the same process can outrun the
    subscriber's connection for a few milliseconds, which a default queue of 1000 turns
    into drops (correct broker behaviour, tested in test_sessions.py, but not what
    these tests measure)."""
    if request.param == "pyo3mq":
        return make_broker(max_queued_messages=1_000_000).addresses[0][1]
    return mosquitto("allow_anonymous true", "max_queued_messages 0")


async def next_message(client: Client, timeout: float = 5.0) -> ClientMessage:
    return await asyncio.wait_for(client.messages.__anext__(), timeout)


async def no_message(client: Client, wait: float = 0.3) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await next_message(client, wait)


class Proxy:
    """A TCP proxy on loopback: `paused` blackholes server-to-client bytes (acks get
    lost), `paused_up` client-to-server bytes (the server never sees them), `cut()`
    aborts every connection (no DISCONNECT: the broker sees a dead peer)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.paused = False
        self.paused_up = False
        self.refuse = False
        self.conns: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if self.refuse:
            cw.transport.abort()
            return
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            cw.transport.abort()
            return
        self.conns.append((cw, sw))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, downstream: bool) -> None:
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    if self.paused if downstream else self.paused_up:
                        continue
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(cr, sw, False), pipe(sr, cw, True))

    def cut(self) -> None:
        for cw, sw in self.conns:
            cw.transport.abort()
            sw.transport.abort()
        self.conns.clear()
        self.paused = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[Proxy]:
    proxy = await Proxy(port).start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[int]:
    """A server that runs `script` per connection (after nothing: it reads CONNECT)."""
    tasks: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await script(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


CONNACK_OK = b"\x20\x02\x00\x00"


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    first, _ = await read_packet(reader)
    assert first == 0x10
    writer.write(CONNACK_OK)
    await writer.drain()


# --------------------------------------------------------------------------------------
# Publish / subscribe on both brokers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_publish_subscribe_each_qos(server: int, qos: int) -> None:
    async with Client("127.0.0.1", server, client_id=f"pubsub-{qos}") as client:
        assert client.state is ConnectionState.CONNECTED
        assert await client.subscribe("pubsub/#", qos=2) == [2]
        result = await client.publish("pubsub/a", b"bytes", qos=qos)
        assert result is None
        await client.publish("pubsub/b", "text é", qos=qos)
        await client.publish("pubsub/c", 42, qos=qos)
        await client.publish("pubsub/d", None, qos=qos)
        got = [await next_message(client) for _ in range(4)]
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("pubsub/a", b"bytes", qos),
        ("pubsub/b", "text é".encode(), qos),
        ("pubsub/c", b"42", qos),
        ("pubsub/d", b"", qos),
    ]
    assert all(not m.retain for m in got)
    assert got[0].matches("pubsub/+") and not got[0].matches("other/#")
    assert client.state is ConnectionState.CLOSED


async def test_delivery_qos_is_min_of_publish_and_grant(server: int) -> None:
    async with Client("127.0.0.1", server) as client:
        assert await client.subscribe([("grant/zero", 0), ("grant/one", 1)]) == [0, 1]
        await client.publish("grant/zero", b"a", qos=2)
        await client.publish("grant/one", b"b", qos=2)
        got = {m.topic: m.qos for m in [await next_message(client) for _ in range(2)]}
    assert got == {"grant/zero": 0, "grant/one": 1}


async def test_many_concurrent_publishes_complete_in_order(server: int) -> None:
    """Thousands of QoS 1/2 publishes in flight at once, window 16: every future
    completes, and the messages come back in order (this also guards the wake-up
    hand-off against lost wakes, which showed up as stalls in exactly this pattern)."""
    sub = Client("127.0.0.1", server, client_id="many-sub", max_inflight=16)
    pub = Client("127.0.0.1", server, client_id="many-pub", max_inflight=16)
    async with sub, pub:
        await sub.subscribe("many/t", qos=1)
        n = 0
        for rnd in range(10):
            qos = 1 if rnd % 2 else 2
            futures = [pub.publish("many/t", b"%d" % (n + i), qos=qos) for i in range(300)]
            n += 300
            await asyncio.wait_for(asyncio.gather(*futures), 20)
        payloads = [int((await next_message(sub)).payload) for _ in range(n)]
    assert payloads == list(range(n))


async def test_messages_cross_in_batches(server: int) -> None:
    """A burst of messages reaches Python in far fewer hand-offs than messages."""
    async with Client("127.0.0.1", server, client_id="batch-pub") as pub:
        sub = Client("127.0.0.1", server, client_id="batch-sub")
        wakes = 0
        original = sub._on_wake

        def counting(core: pyo3mq._pyo3mq.ClientCore) -> None:
            nonlocal wakes
            wakes += 1
            original(core)

        sub._on_wake = counting  # type: ignore[method-assign]
        async with sub:
            await sub.subscribe("batch/t", qos=0)
            # Fewer than the brokers' per-session queue (1000) so that none is dropped.
            for i in range(900):
                pub.publish("batch/t", b"%d" % i)
            await pub.publish("batch/t", b"end", qos=1)
            await asyncio.sleep(0.2)  # let them pile up on the Rust side
            payloads = [(await next_message(sub)).payload for _ in range(901)]
    assert payloads[-1] == b"end"
    assert wakes < 100, wakes


async def test_iterating_a_batch_makes_no_trip_through_the_event_loop(server: int) -> None:
    """Messages queued in Rust are iterated a batch per call into Rust: consuming 3000 of
    them lets the event loop turn a handful of times, not once per message."""
    async with Client("127.0.0.1", server, client_id="batch-iter") as client:
        await client.subscribe("batch/iter")
        for i in range(2999):
            client.publish("batch/iter", b"%d" % i)
        await client.publish("batch/iter", b"end", qos=1)
        for _ in range(200):
            if len(client.messages) == 3000:
                break
            await asyncio.sleep(0.02)
        assert len(client.messages) == 3000
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        start = turns
        payloads = []
        async for message in client.messages:
            payloads.append(message.payload)
            if message.payload == b"end":
                break
        used = turns - start
        task.cancel()
    assert payloads == [b"%d" % i for i in range(2999)] + [b"end"]
    assert used <= 3, used


async def test_retained_messages(server: int) -> None:
    async with Client("127.0.0.1", server, client_id="ret-pub") as pub:
        await pub.publish("ret/a", b"kept", qos=1, retain=True)
        async with Client("127.0.0.1", server, client_id="ret-sub1") as sub:
            await sub.subscribe("ret/#", qos=1)
            message = await next_message(sub)
            assert (message.topic, message.payload, message.retain) == ("ret/a", b"kept", True)
            await pub.publish("ret/a", b"live", qos=1, retain=True)
            live = await next_message(sub)
            assert (live.payload, live.retain) == (b"live", False)
        await pub.publish("ret/a", b"", qos=1, retain=True)  # deletes it
        async with Client("127.0.0.1", server, client_id="ret-sub2") as sub:
            await sub.subscribe("ret/#", qos=1)
            await no_message(sub)


async def test_unsubscribe_stops_delivery(server: int) -> None:
    async with Client("127.0.0.1", server) as client:
        await client.subscribe(["unsub/a", "unsub/b"], qos=1)
        await client.unsubscribe("unsub/a")
        await client.publish("unsub/a", b"x", qos=1)
        await client.publish("unsub/b", b"y", qos=1)
        message = await next_message(client)
        assert message.topic == "unsub/b"
        await no_message(client)


async def test_will_is_published_on_abrupt_loss_only(server: int) -> None:
    async with Client("127.0.0.1", server, client_id="will-watch") as watcher:
        await watcher.subscribe("will/#", qos=1)
        async with proxy_to(server) as proxy:
            will = Will("will/gone", b"bye", qos=1, retain=False)
            client = Client("127.0.0.1", proxy.port, client_id="will-1", will=will)
            await client.connect()
            proxy.cut()  # the broker sees the connection die without DISCONNECT
            message = await next_message(watcher)
            assert (message.topic, message.payload, message.qos) == ("will/gone", b"bye", 1)
            with pytest.raises(MqttConnectionError):
                await client.publish("x", b"", qos=1)
            assert client.state is ConnectionState.CLOSED

            polite = Client("127.0.0.1", proxy.port, client_id="will-2", will=will)
            async with polite:
                pass  # DISCONNECT discards the will
            await no_message(watcher, 0.5)


async def test_keepalive_pings_keep_an_idle_connection(server: int) -> None:
    async with Client("127.0.0.1", server, client_id="ka", keepalive=1) as client:
        await client.subscribe("ka/t", qos=1)
        await asyncio.sleep(3.2)  # the broker drops a silent client after 1.5 s
        assert client.state is ConnectionState.CONNECTED
        await client.publish("ka/t", b"alive", qos=1)
        assert (await next_message(client)).payload == b"alive"


async def test_slow_consumer_applies_back_pressure_without_loss(server: int) -> None:
    """With max_queued_incoming=10 the client stops reading the socket while the
    application does not iterate; the broker holds the rest; nothing is lost."""
    sub = Client("127.0.0.1", server, client_id="slow-sub", max_queued_incoming=10)
    async with sub, Client("127.0.0.1", server, client_id="slow-pub") as pub:
        await sub.subscribe("slow/t", qos=1)
        await asyncio.gather(*[pub.publish("slow/t", b"%d" % i, qos=1) for i in range(300)])
        await asyncio.sleep(0.3)
        # One read past the limit at most: far fewer than 300 wait on the client side.
        assert len(sub.messages) < 100
        payloads = [int((await next_message(sub)).payload) for _ in range(300)]
    assert payloads == list(range(300))


async def test_keepalive_sends_pingreq_and_reads_pingresp() -> None:
    pings = 0

    async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal pings
        await accept(reader, writer)
        while True:
            first, _ = await read_packet(reader)
            if first == 0xC0:
                pings += 1
                writer.write(b"\xd0\x00")
                await writer.drain()

    async with scripted_server(pong) as port:
        async with Client("127.0.0.1", port, keepalive=1) as client:
            await asyncio.sleep(2.6)
            assert client.state is ConnectionState.CONNECTED
    assert 2 <= pings <= 5


async def test_mqtt_v31(server: int) -> None:
    async with Client("127.0.0.1", server, protocol=pyo3mq.MQTTv31) as client:
        assert 0 < len(client.client_id) <= 23
        await client.subscribe("v31/t", qos=2)
        await client.publish("v31/t", b"old", qos=2)
        assert (await next_message(client)).payload == b"old"


async def test_clean_session_false_resumes_subscriptions_and_queue(server: int) -> None:
    sub = Client("127.0.0.1", server, client_id="resume-sub", clean_session=False)
    async with sub:
        assert not sub.session_present
        await sub.subscribe("resume/t", qos=1)
    async with Client("127.0.0.1", server, client_id="resume-pub") as pub:
        for i in range(3):
            await pub.publish("resume/t", b"%d" % i, qos=1)
    async with sub:  # the same object connects again
        assert sub.session_present
        payloads = [(await next_message(sub)).payload for _ in range(3)]
    assert payloads == [b"0", b"1", b"2"]
    # Clean up the stored session.
    async with Client("127.0.0.1", server, client_id="resume-sub", clean_session=True):
        pass


# --------------------------------------------------------------------------------------
# Reconnect
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
async def test_reconnect_resumes_session_and_resends_unacknowledged(server: int, qos: int) -> None:
    changes: list[StateChange] = []
    async with Client("127.0.0.1", server, client_id=f"rc-watch-{qos}") as watcher:
        await watcher.subscribe("rc/#", qos=2)
        async with proxy_to(server) as proxy:
            client = Client(
                "127.0.0.1",
                proxy.port,
                client_id=f"rc-{qos}",
                clean_session=False,
                reconnect=Reconnect(initial_delay=0.05, max_delay=0.2),
                on_state_change=changes.append,
            )
            async with client:
                proxy.paused = True  # the broker gets the PUBLISH, its ack is lost
                future = client.publish("rc/t", b"once", qos=qos)
                if qos == 1:
                    assert (await next_message(watcher)).payload == b"once"
                else:
                    # mosquitto forwards a QoS 2 message on PUBREL, pyo3mq on PUBLISH.
                    await asyncio.sleep(0.3)
                assert not future.done()
                proxy.cut()
                await asyncio.wait_for(future, 10)  # resent with DUP=1 and acknowledged
                assert client.state is ConnectionState.CONNECTED
                assert client.session_present
        if qos == 2:  # exactly once despite the resend
            assert (await next_message(watcher)).payload == b"once"
            await no_message(watcher, 0.5)
    states = [c.state for c in changes]
    assert states == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.RECONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.CLOSED,
    ]
    assert isinstance(changes[2].error, MqttConnectionError)
    assert changes[3].session_present and changes[4].error is None


async def test_reconnect_with_clean_session_restores_subscriptions(server: int) -> None:
    async with proxy_to(server) as proxy:
        client = Client(
            "127.0.0.1",
            proxy.port,
            client_id="rc-clean",
            reconnect=Reconnect(initial_delay=0.05, max_delay=0.2),
        )
        async with client, Client("127.0.0.1", server, client_id="rc-clean-pub") as pub:
            await client.subscribe("rcc/t", qos=1)
            proxy.cut()
            await asyncio.wait_for(client.wait_for_state(ConnectionState.RECONNECTING), 5)
            await asyncio.wait_for(client.wait_for_state(ConnectionState.CONNECTED), 5)
            assert not client.session_present
            # The SUBSCRIBE restoring the filter goes out right after CONNACK; give it a
            # moment, then messages flow again.
            for _ in range(50):
                await pub.publish("rcc/t", b"back", qos=1)
                with contextlib.suppress(asyncio.TimeoutError):
                    if (await next_message(client, 0.1)).payload == b"back":
                        break
            else:
                pytest.fail("no message after the reconnect")


async def test_publishes_while_broker_is_down_are_sent_after_restart(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    port = free_port()
    broker = make_broker(listeners=[f"tcp://127.0.0.1:{port}"])
    changes: list[ConnectionState] = []
    client = Client(
        "127.0.0.1",
        port,
        client_id="restart",
        clean_session=False,
        reconnect=Reconnect(initial_delay=0.05, max_delay=0.3),
        on_state_change=lambda c: changes.append(c.state),
    )
    async with client:
        await client.subscribe("restart/t", qos=1)
        await asyncio.get_running_loop().run_in_executor(None, broker.stop)
        await asyncio.wait_for(client.wait_for_state(ConnectionState.RECONNECTING), 5)
        future = client.publish("restart/t", b"queued", qos=1)
        await asyncio.sleep(0.3)
        assert not future.done()
        broker.start()
        await asyncio.wait_for(future, 10)
        assert client.session_present
        assert (await next_message(client)).payload == b"queued"
    assert ConnectionState.RECONNECTING in changes


async def test_reconnect_gives_up_after_max_attempts() -> None:
    async def accept_and_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        await reader.read()

    async with scripted_server(accept_and_hold) as port, proxy_to(port) as proxy:
        client = Client(
            "127.0.0.1",
            proxy.port,
            reconnect=Reconnect(initial_delay=0.01, max_delay=0.02, max_attempts=3),
        )
        await client.connect()
        future = client.publish("t", b"x", qos=1)
        proxy.refuse = True
        proxy.cut()
        with pytest.raises(MqttConnectionError):
            await asyncio.wait_for(future, 5)
        assert client.state is ConnectionState.CLOSED
        with pytest.raises(MqttConnectionError):
            await next_message(client)


async def test_publish_while_reconnecting_reaches_own_subscription(server: int) -> None:
    """A QoS 1 publish made while reconnecting, to one of the client's own subscriptions,
    comes back to it: the subscriptions are restored before queued publishes are sent.
    (It used to go out before the re-SUBSCRIBE, and the broker had nobody to route it to.)
    """
    async with proxy_to(server) as proxy:
        client = Client(
            "127.0.0.1",
            proxy.port,
            client_id="rc-own",
            reconnect=Reconnect(initial_delay=0.05, max_delay=0.2),
        )
        async with client:
            await client.subscribe("rcown/t", qos=1)
            proxy.refuse = True
            proxy.cut()
            await asyncio.wait_for(client.wait_for_state(ConnectionState.RECONNECTING), 5)
            future = client.publish("rcown/t", b"mine", qos=1)
            zero = client.publish("rcown/t", b"zero", qos=0)
            proxy.refuse = False
            await asyncio.wait_for(future, 10)
            await zero
            assert client.state is ConnectionState.CONNECTED
            assert not client.session_present
            got = [await next_message(client) for _ in range(2)]
            assert [(m.topic, m.payload) for m in got] == [
                ("rcown/t", b"mine"),
                ("rcown/t", b"zero"),
            ]


async def test_first_connect_is_retried_with_reconnect(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    """With `reconnect`, a first connect that finds nothing listening is retried with the
    reconnect backoff (it used to fail at once) and returns once the server is up."""
    port = free_port()
    changes: list[ConnectionState] = []
    client = Client(
        "127.0.0.1",
        port,
        client_id="first-retry",
        reconnect=Reconnect(initial_delay=0.05, max_delay=0.2),
        on_state_change=lambda c: changes.append(c.state),
    )
    connecting = asyncio.ensure_future(client.connect())
    await asyncio.sleep(0.5)
    assert not connecting.done(), "still retrying"
    assert client.state is ConnectionState.CONNECTING
    make_broker(listeners=[f"tcp://127.0.0.1:{port}"])
    await asyncio.wait_for(connecting, 10)
    assert client.is_connected
    await client.subscribe("first/t", qos=1)
    await client.publish("first/t", b"up", qos=1)
    assert (await next_message(client)).payload == b"up"
    await client.disconnect()
    assert changes == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.CLOSED,
    ]


async def test_first_connect_gives_up_after_max_attempts() -> None:
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await read_packet(reader)  # CONNECT; then the connection closes without CONNACK

    async with scripted_server(hang_up) as port:
        client = Client(
            "127.0.0.1",
            port,
            reconnect=Reconnect(initial_delay=0.01, max_delay=0.02, max_attempts=3),
        )
        with pytest.raises(MqttConnectionError, match="connection lost"):
            await asyncio.wait_for(client.connect(), 10)
    assert attempts == 4, "the first attempt and max_attempts retries"
    assert client.state is ConnectionState.CLOSED


async def test_first_connect_is_not_retried_after_a_refusal_retrying_cannot_fix() -> None:
    attempts = 0

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await read_packet(reader)
        writer.write(b"\x20\x02\x00\x05")
        await writer.drain()
        await reader.read()

    async with scripted_server(refuse) as port:
        client = Client("127.0.0.1", port, reconnect=Reconnect(initial_delay=0.01))
        with pytest.raises(MqttNotAuthorizedError):
            await asyncio.wait_for(client.connect(), 10)
    assert attempts == 1


async def test_cancelling_a_retrying_first_connect_closes_the_client() -> None:
    client = Client("127.0.0.1", free_port(), reconnect=Reconnect(initial_delay=0.05))
    connecting = asyncio.ensure_future(client.connect())
    await asyncio.sleep(0.2)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    await asyncio.wait_for(client.wait_for_state(ConnectionState.CLOSED), 5)
    with pytest.raises(MqttConnectionError):
        client.publish("t", b"x")


# --------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------


@pytest.fixture
def mosquitto_with_password(mosquitto: Callable[..., int], tmp_path: Path) -> int:
    """mosquitto that knows only alice/secret and refuses anonymous clients."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        [MOSQUITTO_PASSWD, "-b", "-c", str(passwd), "alice", "secret"],
        check=True,
        capture_output=True,
    )
    return mosquitto("allow_anonymous false", f"password_file {passwd}")


async def test_mosquitto_refuses_bad_credentials_with_code_5(mosquitto_with_password: int) -> None:
    port = mosquitto_with_password
    for kwargs in ({}, {"username": "alice", "password": "wrong"}):
        client = Client("127.0.0.1", port, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(MqttNotAuthorizedError) as info:
            await client.connect()
        assert info.value.return_code == 5
        assert isinstance(info.value, MqttConnectRefusedError)
        assert "return code 5" in str(info.value)
        assert client.state is ConnectionState.CLOSED
    async with Client("127.0.0.1", port, username="alice", password=b"secret") as client:
        assert client.is_connected


async def test_pyo3mq_refuses_long_client_id_with_code_2(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    port = make_broker(max_client_id_len=23).addresses[0][1]
    with pytest.raises(MqttIdentifierRejectedError) as info:
        await Client("127.0.0.1", port, client_id="x" * 40).connect()
    assert info.value.return_code == 2


async def test_unacceptable_protocol_version_code_1() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first, body = await read_packet(reader)
        assert first == 0x10 and body[2:6] == b"MQTT" and body[6] == 4
        writer.write(b"\x20\x02\x00\x01")
        await writer.drain()
        await reader.read()

    async with scripted_server(refuse) as port:
        with pytest.raises(MqttUnacceptableProtocolVersionError) as info:
            await Client("127.0.0.1", port).connect()
    assert info.value.return_code == 1


async def test_nothing_listening_raises_connection_error() -> None:
    with pytest.raises(MqttConnectionError) as info:
        await Client("127.0.0.1", free_port()).connect()
    assert not isinstance(info.value, MqttConnectRefusedError)


async def test_no_connack_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with scripted_server(silent) as port:
        started = time.monotonic()
        with pytest.raises(MqttTimeoutError):
            await Client("127.0.0.1", port, timeout=0.3).connect()
        assert time.monotonic() - started < 3


# --------------------------------------------------------------------------------------
# Bad servers
# --------------------------------------------------------------------------------------


async def test_malformed_packet_closes_with_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        first, _ = await read_packet(reader)  # the client's PUBLISH
        assert first >> 4 == 3
        writer.write(b"\xf0\x00")  # packet type 15 is reserved
        await writer.drain()
        await reader.read()

    async with scripted_server(garbage) as port:
        client = Client("127.0.0.1", port)
        await client.connect()
        with pytest.raises(MqttProtocolError, match="reserved"):
            await asyncio.wait_for(client.publish("t", b"x", qos=1), 5)
        assert client.state is ConnectionState.CLOSED
        with pytest.raises(MqttProtocolError):
            await next_message(client)
        with pytest.raises(MqttProtocolError):
            client.publish("t", b"again")


async def test_malformed_connack_is_a_protocol_error() -> None:
    async def bad_connack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_packet(reader)
        writer.write(b"\x20\x02\x00\x09")  # return code 9 is undefined
        await writer.drain()
        await reader.read()

    async with scripted_server(bad_connack) as port:
        with pytest.raises(MqttProtocolError, match="return code 9"):
            await Client("127.0.0.1", port).connect()


async def test_server_only_packet_is_a_protocol_error() -> None:
    async def sends_subscribe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        writer.write(packet(0x82, struct.pack("!H", 1) + b"\x00\x01a\x00"))
        await writer.drain()
        await reader.read()

    async with scripted_server(sends_subscribe) as port:
        client = Client("127.0.0.1", port)
        await client.connect()
        with pytest.raises(MqttProtocolError, match="SUBSCRIBE"):
            await next_message(client)


async def test_vanished_server_fails_pending_awaits_via_keepalive() -> None:
    async def vanish(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        while await reader.read(65536):
            pass  # reads everything, answers nothing, never closes

    async with scripted_server(vanish) as port:
        client = Client("127.0.0.1", port, keepalive=1)
        await client.connect()
        started = time.monotonic()
        with pytest.raises(MqttTimeoutError, match="PINGRESP"):
            await asyncio.wait_for(client.publish("t", b"x", qos=1), 10)
        assert time.monotonic() - started < 4
        assert client.state is ConnectionState.CLOSED


async def test_server_closing_fails_pending_awaits() -> None:
    async def close_after_publish(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await accept(reader, writer)
        await read_packet(reader)

    async with scripted_server(close_after_publish) as port:
        client = Client("127.0.0.1", port)
        await client.connect()
        with pytest.raises(MqttConnectionError, match="connection lost"):
            await asyncio.wait_for(client.publish("t", b"x", qos=2), 5)
        with pytest.raises(MqttConnectionError):
            await asyncio.wait_for(client.subscribe("t"), 5)


async def test_suback_failure_raises_with_codes() -> None:
    async def refuse_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept(reader, writer)
        first, body = await read_packet(reader)
        assert first == 0x82
        writer.write(packet(0x90, body[:2] + b"\x01\x80"))
        await writer.drain()
        await reader.read()

    async with scripted_server(refuse_second) as port, Client("127.0.0.1", port) as client:
        with pytest.raises(MqttSubscribeError) as info:
            await client.subscribe([("ok/#", 1), ("denied/#", 1)])
    assert info.value.return_codes == [1, 0x80]
    assert "denied/#" in str(info.value)


# --------------------------------------------------------------------------------------
# The Python API
# --------------------------------------------------------------------------------------


async def test_back_pressure_when_the_write_buffer_is_full(server: int) -> None:
    sub = Client("127.0.0.1", server, client_id="bp-sub")
    pub = Client("127.0.0.1", server, client_id="bp-pub", max_buffered_bytes=2048, max_inflight=8)
    async with sub, pub:
        await sub.subscribe("bp/t", qos=1)

        # The subscriber reads while the publisher runs, as an application would: a
        # subscriber that reads nothing until the end would only measure the broker's
        # queue limits (max_queued_messages drops the excess by design).
        async def receive(n: int) -> list[int]:
            return [int((await next_message(sub)).payload) for _ in range(n)]

        received = asyncio.ensure_future(receive(2000))
        futures = [pub.publish("bp/t", b"%05d" % i, qos=1) for i in range(2000)]
        assert pub._backlog, "the buffer filled and publishes waited in order"
        await asyncio.wait_for(asyncio.gather(*futures), 20)
        assert await asyncio.wait_for(received, 20) == list(range(2000))
        # QoS 0 keeps its place behind QoS 1 waiting for the window, and waits for room
        # too; a QoS 1 publish behind them all proves they all left.
        futures = [pub.publish("bp/zero", b"%05d" % i, qos=1) for i in range(50)]
        futures += [pub.publish("bp/zero", b"%05d" % i) for i in range(5000)]
        assert pub._backlog
        await asyncio.wait_for(pub.publish("bp/zero", b"end", qos=1), 20)
        assert all(f.done() for f in futures)


async def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"3\.1\.3-7"):
        Client("127.0.0.1", 1, clean_session=False)
    with pytest.raises(ValueError, match="protocol"):
        Client("127.0.0.1", 1, protocol=6)  # 5 is MQTT 5.0 (tests/test_client_v5.py)
    with pytest.raises(ValueError, match="will topic"):
        Client("127.0.0.1", 1, will=Will("a/#"))
    with pytest.raises(ValueError, match="max_inflight"):
        Client("127.0.0.1", 1, max_inflight=0)
    client = Client("127.0.0.1", 1)
    with pytest.raises(MqttConnectionError, match="not connected"):
        client.publish("t", b"x")
    with pytest.raises(MqttConnectionError, match="not connected"):
        await client.messages.__anext__()
    await client.disconnect()  # no-op


async def test_bad_arguments_when_connected(server: int) -> None:
    async with Client("127.0.0.1", server) as client:
        with pytest.raises(ValueError, match="wildcard"):
            client.publish("a/+", b"x")
        with pytest.raises(ValueError, match="empty"):
            client.publish("", b"x")
        with pytest.raises(ValueError, match="qos"):
            client.publish("a", b"x", qos=3)
        with pytest.raises(TypeError, match="payload"):
            client.publish("a", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"4\.7\.1-2"):
            await client.subscribe("a/#/b")
        with pytest.raises(pyo3mq.MqttError, match="already"):
            await client.connect()
        assert await client.subscribe("still/fine") == [0]


async def test_reconnect_after_close_and_messages_end_on_disconnect(server: int) -> None:
    client = Client("127.0.0.1", server, client_id="again")
    for _ in range(2):
        async with client:
            await client.subscribe("again/t")
            await client.publish("again/t", b"x", qos=1)
            assert (await next_message(client)).payload == b"x"
        with pytest.raises(MqttConnectionError):
            client.publish("again/t", b"closed")
    async with client:
        task = asyncio.ensure_future(client.messages.__anext__())
        await asyncio.sleep(0.05)
    with pytest.raises(StopAsyncIteration):
        await task


async def test_exceptions_hierarchy() -> None:
    assert issubclass(MqttTimeoutError, TimeoutError)
    assert issubclass(MqttTimeoutError, pyo3mq.MqttError)
    assert issubclass(MqttProtocolError, MqttConnectionError)
    assert issubclass(MqttNotAuthorizedError, MqttConnectRefusedError)
    message = ClientMessage("a/b", "x", qos=1, retain=True)
    assert (message.topic, message.payload, message.qos, message.retain) == (
        "a/b",
        b"x",
        1,
        True,
    )
    assert "a/b" in repr(message)


async def test_exceptions_and_messages_made_in_rust() -> None:
    """The exception classes come from the Rust core, keep the public names, hierarchy and
    constructors, and are what pyo3mq exports."""
    assert pyo3mq.MqttConnectionError is pyo3mq._pyo3mq.MqttConnectionError
    assert pyo3mq.client.MqttTimeoutError is MqttTimeoutError
    refused = MqttNotAuthorizedError(5)
    assert refused.return_code == 5
    assert str(refused) == "connection refused: CONNACK return code 5"
    assert str(MqttConnectRefusedError(3, "custom")) == "custom"
    error = MqttSubscribeError([("a/#", 1), ("b/#", 2)], [1, 0x80])
    assert (error.filters, error.return_codes) == ([("a/#", 1), ("b/#", 2)], [1, 0x80])
    assert str(error) == "the server refused the subscription to b/#"
    with pytest.raises(pyo3mq.MqttError):
        raise MqttProtocolError("[MQTT-x] broken")
    message = ClientMessage("a/b", b"x", 1, False, True, 7)
    assert (message.packet_id, message.mid, message.dup) == (7, 7, True)
