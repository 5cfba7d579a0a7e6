"""`pyo3mq.Client` and `SyncClient` over TLS, WebSocket and secure WebSocket: against
pyo3mq's broker on all four transports, against Debian's mosquitto over TLS (also with
a required client certificate), with aiomqtt's `tls_params` and `tls_context`, and
against a raw WebSocket server in this file for what no broker does on purpose (packets
split across frames, several packets in one frame, pings, text frames).

Certificates come from test_transports' `pki` fixture (made per module with the
`cryptography` package; no private key is committed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl
import struct
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiomqtt
import pyo3mq
import pytest
import test_transports
from cryptography.hazmat.primitives import serialization
from pyo3mq import (
    Client,
    ConnectionState,
    MqttConnectionError,
    Reconnect,
    StateChange,
    SyncClient,
    TLSParameters,
)
from test_transports import Pki, tls_settings

#: test_transports' certificates (a module-scoped fixture), shared rather than copied.
pki = test_transports.pki

TIMEOUT = 10.0
SCHEMES = ["mqtt", "mqtts", "ws", "wss"]


def url(broker: pyo3mq.Broker, scheme: str) -> str:
    """The URL of `broker`'s listener for `scheme` (listeners are made in SCHEMES order)."""
    host, port = broker.addresses[SCHEMES.index(scheme)][:2]
    return f"{scheme}://{host}:{port}"


@pytest.fixture
def four(make_broker: Callable[..., pyo3mq.Broker], pki: Pki) -> pyo3mq.Broker:
    """A broker listening on plain TCP, TLS, WebSocket and secure WebSocket."""
    return make_broker(
        listeners=[
            "tcp://127.0.0.1:0",
            "tls://127.0.0.1:0",
            "ws://127.0.0.1:0/mqtt",
            "wss://127.0.0.1:0/mqtt",
        ],
        **tls_settings(pki),
    )


def trust(pki: Pki, scheme: str) -> dict[str, Any]:
    return {"cafile": str(pki.ca)} if scheme in ("mqtts", "wss") else {}


# --------------------------------------------------------------------------------------
# All four transports against pyo3mq's broker
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_client_round_trips_on_every_transport(
    four: pyo3mq.Broker, pki: Pki, scheme: str
) -> None:
    # 200 kB: more than one TLS record, and more than one read on every transport.
    big = bytes(range(256)) * 800
    async with Client(url(four, scheme), timeout=TIMEOUT, **trust(pki, scheme)) as client:
        assert client.is_connected
        assert await client.subscribe("t/#", qos=1) == [1]
        await client.publish("t/small", b"hello", qos=1)
        await client.publish("t/big", big, qos=1)
        await client.publish("t/two", b"x", qos=2)
        got = []
        async for message in client.messages:
            got.append((message.topic, message.payload, message.qos))
            if len(got) == 3:
                break
    assert got == [("t/small", b"hello", 1), ("t/big", big, 1), ("t/two", b"x", 1)]
    assert client.state is ConnectionState.CLOSED


@pytest.mark.parametrize("scheme", SCHEMES)
def test_sync_client_round_trips_on_every_transport(
    four: pyo3mq.Broker, pki: Pki, scheme: str
) -> None:
    with SyncClient(url(four, scheme), timeout=TIMEOUT, **trust(pki, scheme)) as client:
        client.subscribe("s/#", qos=1)
        handle = client.publish("s/1", b"sync", qos=1)
        handle.wait_for_publish(TIMEOUT)
        assert handle.is_published()
        message = next(iter(client.messages(timeout=TIMEOUT)))
        assert (message.topic, message.payload) == ("s/1", b"sync")


async def test_keywords_select_the_same_transports_as_urls(four: pyo3mq.Broker, pki: Pki) -> None:
    """aiomqtt's keywords: `transport="websockets"`, `tls_params`, `websocket_path`."""
    tls_port = four.addresses[1][1]
    ws_port = four.addresses[2][1]
    wss_port = four.addresses[3][1]
    clients = [
        Client("127.0.0.1", tls_port, tls=True, cafile=pki.ca, timeout=TIMEOUT),
        Client("127.0.0.1", ws_port, transport="websockets", timeout=TIMEOUT),
        Client(
            "127.0.0.1",
            wss_port,
            transport="websockets",
            websocket_path="/mqtt",
            tls_params=TLSParameters(ca_certs=str(pki.ca)),
            timeout=TIMEOUT,
        ),
    ]
    for client in clients:
        async with client:
            await client.publish("k", b"1", qos=1)
    # The defaults of a URL without a port are the scheme's.
    assert Client("mqtts://broker.example").port == 8883
    assert Client("wss://broker.example").port == 443
    assert Client("ws://broker.example").port == 80
    assert Client("broker.example", tls=True).port == 8883
    assert Client("broker.example").port == 1883
    assert Client("mqtt://[::1]:1999").hostname == "::1"


async def test_websocket_path_must_match_the_listener(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    broker = make_broker(listeners=["ws://127.0.0.1:0/custom/path"])
    port = broker.addresses[0][1]
    async with Client(f"ws://127.0.0.1:{port}/custom/path", timeout=TIMEOUT) as client:
        await client.publish("p", b"1", qos=1)
    async with Client(
        "127.0.0.1", port, transport="websockets", websocket_path="/custom/path", timeout=TIMEOUT
    ) as client:
        await client.publish("p", b"1", qos=1)
    with pytest.raises(MqttConnectionError, match="HTTP 404"):
        async with Client(f"ws://127.0.0.1:{port}/mqtt", timeout=TIMEOUT):
            pass


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


async def test_untrusted_server_certificate_is_refused(four: pyo3mq.Broker, pki: Pki) -> None:
    # Default: the system's roots, which do not hold the test CA.
    for scheme in ("mqtts", "wss"):
        with pytest.raises(MqttConnectionError, match=r"UnknownIssuer.*cafile=") as info:
            async with Client(url(four, scheme), timeout=TIMEOUT):
                pass
        assert info.value.rc == 4
    # Another CA than the one that issued the server's certificate.
    rogue_ca = pki.ca.parent / "rogue-ca.pem"
    with pytest.raises(MqttConnectionError, match="UnknownIssuer"):
        async with Client(url(four, "mqtts"), cafile=rogue_ca, timeout=TIMEOUT):
            pass
    with pytest.raises(MqttConnectionError, match="UnknownIssuer"):
        with SyncClient(url(four, "mqtts"), timeout=TIMEOUT):
            pass


async def test_a_refused_certificate_is_not_retried(four: pyo3mq.Broker) -> None:
    """A reconnect policy does not retry what retrying cannot fix."""
    client = Client(url(four, "mqtts"), reconnect=Reconnect(0.01, 0.05), timeout=TIMEOUT)
    with pytest.raises(MqttConnectionError, match="UnknownIssuer"):
        await asyncio.wait_for(client.connect(), TIMEOUT)
    assert client.state is ConnectionState.CLOSED


async def test_wrong_hostname_is_refused(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki
) -> None:
    """The server's certificate holds localhost and 127.0.0.1; 127.0.0.2 is another name
    for the same machine, and not in it."""
    broker = make_broker(listeners=["tls://127.0.0.2:0"], **tls_settings(pki))
    port = broker.addresses[0][1]
    with pytest.raises(MqttConnectionError, match=r"not valid for name.*server_hostname="):
        async with Client(f"mqtts://127.0.0.2:{port}", cafile=pki.ca, timeout=TIMEOUT):
            pass
    # The name checked can be given ...
    async with Client(
        f"mqtts://127.0.0.2:{port}", cafile=pki.ca, server_hostname="localhost", timeout=TIMEOUT
    ) as client:
        await client.publish("n", b"1", qos=1)
    # ... and a name that is not in it is refused even when the address is.
    with pytest.raises(MqttConnectionError, match="not valid for name"):
        async with Client(
            f"mqtts://127.0.0.2:{port}", cafile=pki.ca, server_hostname="elsewhere.example"
        ):
            pass
    # tls_insecure skips the name check, not the chain.
    async with Client(
        f"mqtts://127.0.0.2:{port}", cafile=pki.ca, tls_insecure=True, timeout=TIMEOUT
    ) as client:
        await client.publish("n", b"1", qos=1)
    with pytest.raises(MqttConnectionError, match="UnknownIssuer"):
        async with Client(f"mqtts://127.0.0.2:{port}", tls_insecure=True, timeout=TIMEOUT):
            pass


async def test_verify_false_accepts_any_certificate_only_when_asked(
    four: pyo3mq.Broker,
) -> None:
    for scheme in ("mqtts", "wss"):
        async with Client(url(four, scheme), verify=False, timeout=TIMEOUT) as client:
            await client.publish("v", b"1", qos=1)
    params = TLSParameters(cert_reqs=ssl.CERT_NONE)
    port = four.addresses[1][1]
    async with Client("127.0.0.1", port, tls_params=params, timeout=TIMEOUT) as client:
        await client.publish("v", b"1", qos=1)
    with SyncClient(url(four, "mqtts"), verify=False, timeout=TIMEOUT) as sync:
        sync.publish("v", b"1", qos=1).wait_for_publish(TIMEOUT)


def test_verification_settings_need_tls_and_unsupported_ones_are_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match="apply to TLS"):
        Client("127.0.0.1", verify=False)
    with pytest.raises(ValueError, match="mqtt:// has no TLS"):
        Client("mqtt://127.0.0.1", cafile=pki.ca)
    with pytest.raises(ValueError, match="tls=False"):
        Client("mqtts://127.0.0.1", tls=False)
    with pytest.raises(ValueError, match="ciphers"):
        Client("127.0.0.1", tls_params=TLSParameters(ciphers="HIGH"))
    with pytest.raises(ValueError, match=r"TLS 1\.2 and 1\.3"):
        Client("127.0.0.1", tls_params=TLSParameters(tls_version=ssl.TLSVersion.TLSv1_1))
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1", tls_params=TLSParameters(), tls_context=ssl.create_default_context())
    with pytest.raises(ValueError, match="transport 'unix'"):
        Client("127.0.0.1", transport="unix")
    with pytest.raises(ValueError, match="unknown scheme"):
        Client("http://127.0.0.1")


def test_missing_or_malformed_files_are_named(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cafile": missing}, f"cafile {missing}: No such file"),
        ({"cafile": garbage}, f"cafile {garbage}: no PEM certificate"),
        ({"cafile": pki.ca, "certfile": missing}, f"certfile {missing}: No such file"),
        (
            {"cafile": pki.ca, "certfile": pki.alice.cert, "keyfile": garbage},
            f"keyfile {garbage}: no PEM private key",
        ),
        # Without a keyfile the key is looked for in the certfile.
        (
            {"cafile": pki.ca, "certfile": pki.alice.cert},
            f"keyfile {pki.alice.cert}: no PEM private key",
        ),
        # A key that is not the certificate's.
        (
            {"cafile": pki.ca, "certfile": pki.alice.cert, "keyfile": pki.server.key},
            f"certfile {pki.alice.cert} with keyfile {pki.server.key}",
        ),
    ]
    for settings, message in cases:
        for make in (Client, SyncClient):
            with pytest.raises(ValueError, match=message):
                make("mqtts://127.0.0.1", **settings)


# --------------------------------------------------------------------------------------
# Mutual TLS
# --------------------------------------------------------------------------------------


async def test_mutual_tls_with_pyo3mq(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, tmp_path: Path
) -> None:
    broker = make_broker(
        listeners=["tls://127.0.0.1:0", "wss://127.0.0.1:0/mqtt"],
        use_identity_as_username=True,
        **tls_settings(pki, cafile=str(pki.ca), require_certificate=True),
    )
    tls_url = f"mqtts://127.0.0.1:{broker.addresses[0][1]}"
    wss_url = f"wss://127.0.0.1:{broker.addresses[1][1]}"
    for address in (tls_url, wss_url):
        async with Client(
            address,
            cafile=pki.ca,
            certfile=pki.alice.cert,
            keyfile=pki.alice.key,
            timeout=TIMEOUT,
        ) as client:
            await client.publish("m", b"1", qos=1)
        with pytest.raises(MqttConnectionError, match="certfile= and keyfile="):
            async with Client(address, cafile=pki.ca, timeout=TIMEOUT):
                pass
        # A certificate from a CA the broker does not trust.
        with pytest.raises(MqttConnectionError, match="TLS"):
            async with Client(
                address,
                cafile=pki.ca,
                certfile=pki.rogue.cert,
                keyfile=pki.rogue.key,
                timeout=TIMEOUT,
            ):
                pass

    # aiomqtt's keyfile_password: an encrypted key is decrypted for rustls.
    encrypted = tmp_path / "alice-encrypted.key"
    key = serialization.load_pem_private_key(pki.alice.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"sesame"),
        )
    )
    params = TLSParameters(
        ca_certs=str(pki.ca),
        certfile=str(pki.alice.cert),
        keyfile=str(encrypted),
        keyfile_password="sesame",
    )
    async with Client(tls_url, tls_params=params, timeout=TIMEOUT) as client:
        await client.publish("m", b"1", qos=1)
    wrong = TLSParameters(
        ca_certs=str(pki.ca),
        certfile=str(pki.alice.cert),
        keyfile=str(encrypted),
        keyfile_password="wrong",
    )
    with pytest.raises(ValueError, match=f"keyfile {encrypted}: cannot decrypt"):
        Client(tls_url, tls_params=wrong)

    # SyncClient, paho's way.
    sync = SyncClient("127.0.0.1", broker.addresses[0][1], timeout=TIMEOUT)
    sync.tls_set(ca_certs=str(pki.ca), certfile=str(pki.alice.cert), keyfile=str(pki.alice.key))
    with sync:
        sync.publish("m", b"1", qos=1).wait_for_publish(TIMEOUT)
    with pytest.raises(ValueError, match="before connect"):
        sync.tls_insecure_set(True)


# --------------------------------------------------------------------------------------
# Mosquitto over TLS
# --------------------------------------------------------------------------------------


def mosquitto_tls(pki: Pki, *more: str) -> tuple[str, ...]:
    return (
        "allow_anonymous true",
        f"certfile {pki.server.cert}",
        f"keyfile {pki.server.key}",
        *more,
    )


async def test_tls_against_mosquitto(mosquitto: Callable[..., int], pki: Pki) -> None:
    port = mosquitto(*mosquitto_tls(pki))
    async with Client(f"mqtts://127.0.0.1:{port}", cafile=pki.ca, timeout=TIMEOUT) as client:
        await client.subscribe("m/#", qos=1)
        await client.publish("m/1", b"through mosquitto", qos=1)
        message = await anext_message(client)
        assert (message.topic, message.payload) == ("m/1", b"through mosquitto")
    with pytest.raises(MqttConnectionError, match="UnknownIssuer"):
        async with Client(f"mqtts://127.0.0.1:{port}", timeout=TIMEOUT):
            pass
    with SyncClient("localhost", port, cafile=pki.ca, timeout=TIMEOUT) as sync:
        sync.publish("m/2", b"1", qos=1).wait_for_publish(TIMEOUT)


async def test_mutual_tls_against_mosquitto(mosquitto: Callable[..., int], pki: Pki) -> None:
    port = mosquitto(*mosquitto_tls(pki, f"cafile {pki.ca}", "require_certificate true"))
    address = f"mqtts://127.0.0.1:{port}"
    async with Client(
        address, cafile=pki.ca, certfile=pki.alice.cert, keyfile=pki.alice.key, timeout=TIMEOUT
    ) as client:
        await client.publish("m", b"1", qos=1)
    with pytest.raises(MqttConnectionError, match="certfile= and keyfile="):
        async with Client(address, cafile=pki.ca, timeout=TIMEOUT):
            pass


async def anext_message(client: Client) -> pyo3mq.ClientMessage:
    async for message in client.messages:
        return message
    raise AssertionError("the messages ended")


# --------------------------------------------------------------------------------------
# aiomqtt's tls_params and tls_context
# --------------------------------------------------------------------------------------


async def aiomqtt_program(mqtt: ModuleType, port: int, ca: str) -> list[tuple[str, bytes]]:
    """An aiomqtt program as its README writes it; run with `mqtt` = aiomqtt or pyo3mq."""
    tls_params = mqtt.TLSParameters(
        ca_certs=ca,
        certfile=None,
        keyfile=None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
        ciphers=None,
    )
    received = []
    async with mqtt.Client("localhost", port=port, tls_params=tls_params) as client:
        await client.subscribe("temperature/#", qos=1)
        await client.publish("temperature/outside", payload=28.4, qos=1)
        async for message in client.messages:
            if message.topic.matches("temperature/+"):
                received.append((str(message.topic), bytes(message.payload)))
                break
    return received


@pytest.mark.parametrize("mqtt", [aiomqtt, pyo3mq], ids=["aiomqtt", "pyo3mq"])
async def test_aiomqtt_tls_params_program_runs_with_only_the_import_changed(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, mqtt: ModuleType
) -> None:
    broker = make_broker(listeners=["tls://127.0.0.1:0"], **tls_settings(pki))
    received = await aiomqtt_program(mqtt, broker.addresses[0][1], str(pki.ca))
    assert received == [("temperature/outside", b"28.4")]


async def test_tls_context_is_honoured(make_broker: Callable[..., pyo3mq.Broker], pki: Pki) -> None:
    broker = make_broker(
        listeners=["tls://127.0.0.1:0"],
        **tls_settings(pki, cafile=str(pki.ca), require_certificate=True),
    )
    port = broker.addresses[0][1]
    mine = {"certfile": pki.alice.cert, "keyfile": pki.alice.key, "timeout": TIMEOUT}
    # Its CA certificates are trusted.
    context = ssl.create_default_context(cafile=str(pki.ca))
    async with Client("127.0.0.1", port, tls_context=context, **mine) as client:
        await client.publish("c", b"1", qos=1)
    # A context that trusts nothing of ours refuses, as ssl would.
    with pytest.raises(MqttConnectionError, match="UnknownIssuer"):
        async with Client("127.0.0.1", port, tls_context=ssl.create_default_context(), **mine):
            pass
    # check_hostname=False: the chain is checked, the name is not.
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    async with Client("127.0.0.1", port, tls_context=context, server_hostname="x.example", **mine):
        pass
    # CERT_NONE: nothing is checked.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with Client("127.0.0.1", port, tls_context=context, **mine):
        pass
    # Its version bounds apply.
    context = ssl.create_default_context(cafile=str(pki.ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # what the test is about
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ValueError, match="TLSv1_1"):
        Client("127.0.0.1", port, tls_context=context)
    # A certificate loaded into a context cannot be read back: the refusal says what to
    # pass instead.
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.alice.cert), str(pki.alice.key))
    with pytest.raises(MqttConnectionError, match=r"TLSParameters\(certfile=, keyfile=\)"):
        async with Client("127.0.0.1", port, tls_context=context, timeout=TIMEOUT):
            pass


# --------------------------------------------------------------------------------------
# QoS 1 and reconnect over TLS
# --------------------------------------------------------------------------------------


async def test_qos1_survives_a_broker_restart_over_tls(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki
) -> None:
    from support.mosquitto import free_port

    port = free_port()
    broker = make_broker(listeners=[f"tls://127.0.0.1:{port}"], **tls_settings(pki))
    states: list[ConnectionState] = []
    reconnected = asyncio.Event()
    lost = asyncio.Event()

    def on_state(change: StateChange) -> None:
        states.append(change.state)
        if change.state is ConnectionState.RECONNECTING:
            lost.set()
        if change.state is ConnectionState.CONNECTED and ConnectionState.RECONNECTING in states:
            reconnected.set()

    async with Client(
        f"mqtts://127.0.0.1:{port}",
        cafile=pki.ca,
        reconnect=Reconnect(initial_delay=0.02, max_delay=0.2),
        on_state_change=on_state,
        timeout=TIMEOUT,
    ) as client:
        await client.subscribe("r/#", qos=1)
        await client.publish("r/before", b"1", qos=1)
        assert (await anext_message(client)).topic == "r/before"
        broker.stop()
        await asyncio.wait_for(lost.wait(), TIMEOUT)
        # Published while the broker is away: held, then sent after the reconnect.
        pending = client.publish("r/during", b"2", qos=1)
        broker.start()
        await asyncio.wait_for(reconnected.wait(), TIMEOUT)
        await asyncio.wait_for(pending, TIMEOUT)
        message = await asyncio.wait_for(anext_message(client), TIMEOUT)
        assert (message.topic, message.payload, message.qos) == ("r/during", b"2", 1)


# --------------------------------------------------------------------------------------
# WebSocket framing, against a raw server
# --------------------------------------------------------------------------------------

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        return head + bytes([len(payload)]) + payload
    return head + bytes([126]) + struct.pack("!H", len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(opcode, masked, payload) of a client frame."""
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    masked = bool(b1 & 0x80)
    mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
    data = await reader.readexactly(length)
    return b0 & 0x0F, masked, bytes(c ^ mask[i % 4] for i, c in enumerate(data))


async def accept_upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: bytes | None
) -> tuple[str, dict[str, str]]:
    """Reads an upgrade request and accepts it, answering `protocol` as the subprotocol
    (None: none). Returns the request line and the headers (names in lower case)."""
    request = await reader.readuntil(b"\r\n\r\n")
    lines = request.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
    chosen = b"Sec-WebSocket-Protocol: " + protocol + b"\r\n" if protocol else b""
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + chosen + b"\r\n"
    )
    await writer.drain()
    return lines[0], headers


@contextlib.asynccontextmanager
async def raw_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A loopback server running `serve` per connection; yields its port."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def publish_packet(topic: bytes, payload: bytes) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


async def test_websocket_framing_against_a_raw_server() -> None:
    seen: dict[str, Any] = {"frames": []}
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["request_line"], seen["headers"] = await accept_upgrade(reader, writer, b"mqtt")
        seen["frames"].append(await read_frame(reader))  # CONNECT
        # CONNACK split across two frames.
        writer.write(frame(0x2, b"\x20") + frame(0x2, b"\x02\x00\x00"))
        # One PUBLISH across three frames, then two PUBLISHes in one frame.
        first = publish_packet(b"w/1", b"spanning")
        writer.write(frame(0x2, first[:3]) + frame(0x2, first[3:7]) + frame(0x2, first[7:]))
        writer.write(frame(0x2, publish_packet(b"w/2", b"a") + publish_packet(b"w/3", b"b")))
        # A ping: the client answers with a pong carrying the same data.
        writer.write(frame(0x9, b"are you there"))
        await writer.drain()
        while True:
            opcode, masked, data = await read_frame(reader)
            seen["frames"].append((opcode, masked, data))
            if opcode == 0xA:
                break
        # Then a text frame, which MQTT over WebSocket does not allow.
        writer.write(frame(0x1, b"hello"))
        await writer.drain()
        await done.wait()
        writer.close()

    async with raw_server(serve) as port:
        client = Client(
            f"ws://127.0.0.1:{port}/some/path",
            websocket_headers={"Authorization": "Bearer token-1"},
            timeout=TIMEOUT,
        )
        await client.connect()
        received = []
        with pytest.raises(MqttConnectionError, match=r"MQTT-6\.0\.0-1.*text frame"):
            async for message in client.messages:
                received.append((message.topic, message.payload))
        assert received == [("w/1", b"spanning"), ("w/2", b"a"), ("w/3", b"b")]
        done.set()

    assert seen["request_line"] == "GET /some/path HTTP/1.1"
    assert seen["headers"]["sec-websocket-protocol"] == "mqtt"
    assert seen["headers"]["authorization"] == "Bearer token-1"
    frames = seen["frames"]
    assert frames[0][0] == 0x2 and frames[0][2][0] == 0x10, "CONNECT in a binary frame"
    assert all(masked for _, masked, _ in frames), "client frames are masked"
    assert frames[-1] == (0xA, True, b"are you there")
    assert all(opcode in (0x2, 0xA) for opcode, _, _ in frames)


async def test_websocket_upgrade_without_the_mqtt_subprotocol_is_refused() -> None:
    """[MQTT-6.0.0-3]: the server must answer with the subprotocol asked for."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_upgrade(reader, writer, None)
        await reader.read()
        writer.close()

    async with raw_server(serve) as port:
        with pytest.raises(MqttConnectionError, match=r"WebSocket upgrade failed.*(?i:protocol)"):
            async with Client(f"ws://127.0.0.1:{port}", timeout=TIMEOUT):
                pass


def test_sync_client_websocket_headers_and_threads(four: pyo3mq.Broker) -> None:
    """SyncClient over WebSocket from several threads at once."""
    errors: list[BaseException] = []
    with SyncClient(url(four, "ws"), websocket_headers={"X-Test": "1"}, timeout=TIMEOUT) as c:
        c.subscribe("th/#", qos=1)

        def work(n: int) -> None:
            try:
                for i in range(20):
                    c.publish(f"th/{n}", str(i), qos=1).wait_for_publish(TIMEOUT)
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        got = [m for _, m in zip(range(80), c.messages(timeout=TIMEOUT))]
    assert not errors
    assert len(got) == 80
