"""MQTT 5.0 enhanced authentication (spec 4.12) in pyo3mq's client library:
`Client(protocol=5, auth_method=, auth_data=, on_auth=)` and `reauthenticate()`, end to
end against pyo3mq's broker with the SCRAM-SHA-256 hook of examples/scram_auth.py (the
client proves the password, then checks the broker's signature), refusals as typed
errors, the blocking `SyncClient`, and a scripted server for what the client sends on
the wire and how it answers a server that breaks the exchange."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable

import pyo3mq
import pytest
from pyo3mq import (
    AuthChallenge,
    Client,
    MqttConnectRefusedError,
    MqttDisconnectError,
    MqttNotAuthorizedError,
    MqttProtocolError,
    ProtocolVersion,
    SyncClient,
)
from support.mqtt_raw import packet, s
from test_client import read_packet, scripted_server
from test_client_v5 import connack5, read_connect5
from test_examples import load
from test_mqtt5 import props, read_props

METHOD = "SCRAM-SHA-256"
V5 = ProtocolVersion.V5
scram = load("scram_auth")


class ScramAuth:
    """The client's half of SCRAM-SHA-256 (RFC 5802) as an `on_auth` callback: `first()`
    makes the client-first message (the CONNECT's or AUTH 0x19's data), the callback
    answers the server-first with the proof, `verify()` checks the server's signature
    (the CONNACK's or AUTH 0x00's data)."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.seen: list[AuthChallenge] = []
        self._bare = ""
        self._expected = b""

    def first(self) -> bytes:
        self._bare = f"n={self.user},r={secrets.token_urlsafe(18)}"
        return f"n,,{self._bare}".encode()

    def __call__(self, challenge: AuthChallenge) -> bytes:
        self.seen.append(challenge)
        server_first = (challenge.data or b"").decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
        )
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{self._bare},{server_first},{without_proof}".encode()
        signature = hmac.new(
            hashlib.sha256(client_key).digest(), auth_message, hashlib.sha256
        ).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature)))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self._expected = b"v=" + base64.b64encode(
            hmac.new(server_key, auth_message, hashlib.sha256).digest()
        )
        return f"{without_proof},p=".encode() + proof

    def verify(self, final: bytes | None) -> bool:
        return final is not None and hmac.compare_digest(final, self._expected)


class AsyncScramAuth(ScramAuth):
    """The same, as a coroutine function (the asyncio client awaits it)."""

    async def __call__(self, challenge: AuthChallenge) -> bytes:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().__call__(challenge)


@pytest.fixture
def scram_port(make_broker: Callable[..., pyo3mq.Broker]) -> int:
    """A pyo3mq broker with the SCRAM example's hook (users alice and bob)."""
    broker = make_broker(enhanced_auth={METHOD: scram.ScramServer(scram.USERS)})
    return broker.addresses[0][1]


def scram_client(port: int, auth: ScramAuth, identifier: str) -> Client:
    return Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        protocol=V5,
        auth_method=METHOD,
        auth_data=auth.first(),
        on_auth=auth,
    )


async def test_scram_login_round_trip_and_reauthentication(scram_port: int) -> None:
    """[MQTT-4.12.0-3] [MQTT-4.12.0-5] [MQTT-4.12.1-1] [MQTT-3.15.2-1] The client logs
    in with SCRAM-SHA-256 through an async `on_auth`: the broker's AUTH 0x18 reaches the
    callback, whose proof goes back in AUTH 0x18; the CONNACK names the method and its
    data is the broker's signature, which verifies. The connection works; then
    `reauthenticate` (AUTH 0x19, a fresh client-first) runs the exchange again with
    `reauth=True` and returns the AUTH 0x00 data, which verifies too."""
    auth = AsyncScramAuth("alice", scram.USERS["alice"])
    async with scram_client(scram_port, auth, "alice-1") as c:
        assert c.connack is not None
        assert c.connack.authentication_method == METHOD
        assert auth.verify(c.connack.authentication_data), "the broker knows the password"
        assert [(x.method, x.reauth) for x in auth.seen] == [(METHOD, False)]
        await c.subscribe("scram/t", qos=1)
        await c.publish("scram/t", b"hi", qos=1)
        message = await asyncio.wait_for(c.messages.__anext__(), 5)
        assert message.payload == b"hi"

        final = await c.reauthenticate(auth.first())
        assert auth.verify(final), "AUTH 0x00 carries the new signature"
        assert [x.reauth for x in auth.seen] == [False, True]
        # Still connected and serving after re-authentication.
        await c.publish("scram/t", b"again", qos=1)
        message = await asyncio.wait_for(c.messages.__anext__(), 5)
        assert message.payload == b"again"


async def test_wrong_password_is_connack_0x87(scram_port: int) -> None:
    """A wrong password: the broker's CONNACK 0x87 raises MqttNotAuthorizedError with
    the reason code; the client is closed."""
    auth = ScramAuth("alice", "not-the-password")
    c = scram_client(scram_port, auth, "alice-wrong")
    with pytest.raises(MqttNotAuthorizedError) as info:
        await c.connect()
    assert info.value.reason_code == 0x87
    assert len(auth.seen) == 1, "the callback answered the challenge"
    assert c.state is pyo3mq.ConnectionState.CLOSED


async def test_unknown_method_is_connack_0x8c(scram_port: int) -> None:
    """A method the broker has no hook for is CONNACK 0x8C (bad authentication
    method): MqttConnectRefusedError with that reason code; the callback never runs."""
    seen: list[AuthChallenge] = []
    c = Client(
        "127.0.0.1",
        scram_port,
        protocol=V5,
        auth_method="X-NOPE",
        on_auth=lambda ch: seen.append(ch) or b"",
    )
    with pytest.raises(MqttConnectRefusedError) as info:
        await c.connect()
    assert info.value.reason_code == 0x8C
    assert seen == []


async def test_failed_reauthentication_is_disconnect_0x87(scram_port: int) -> None:
    """[MQTT-4.12.1-2] A re-authentication with a wrong proof is refused with DISCONNECT
    0x87: `reauthenticate` raises MqttDisconnectError with that reason code, and the
    connection is over."""
    auth = ScramAuth("bob", scram.USERS["bob"])
    c = scram_client(scram_port, auth, "bob-1")
    await c.connect()
    auth.password = "forgotten"
    with pytest.raises(MqttDisconnectError) as info:
        await c.reauthenticate(auth.first())
    assert info.value.reason_code == 0x87
    await asyncio.wait_for(c.wait_for_state(pyo3mq.ConnectionState.CLOSED), 5)


async def test_on_auth_raising_fails_connect(scram_port: int) -> None:
    """`on_auth` raising ends the exchange: `connect` raises that exception and the
    client closes."""

    class Boom(Exception):
        pass

    def refuse(challenge: AuthChallenge) -> bytes:
        raise Boom("no answer")

    c = Client(
        "127.0.0.1",
        scram_port,
        protocol=V5,
        auth_method=METHOD,
        auth_data=ScramAuth("alice", "x").first(),
        on_auth=refuse,
    )
    with pytest.raises(Boom):
        await c.connect()
    await asyncio.wait_for(c.wait_for_state(pyo3mq.ConnectionState.CLOSED), 5)


def test_sync_client_scram_login_and_reauthentication(scram_port: int) -> None:
    """The blocking SyncClient: the same SCRAM login with a plain `on_auth`, then
    `reauthenticate`; a wrong password raises MqttNotAuthorizedError (0x87)."""
    auth = ScramAuth("alice", scram.USERS["alice"])
    with SyncClient(
        "127.0.0.1",
        scram_port,
        identifier="sync-alice",
        protocol=V5,
        auth_method=METHOD,
        auth_data=auth.first(),
        on_auth=auth,
    ) as c:
        assert auth.verify(c._core.connack.authentication_data)  # type: ignore[union-attr]
        assert auth.verify(c.reauthenticate(auth.first()))
        assert [x.reauth for x in auth.seen] == [False, True]
        assert c.subscribe("sync/t", 1) == [1]
    wrong = ScramAuth("alice", "nope")
    bad = SyncClient(
        "127.0.0.1",
        scram_port,
        protocol=V5,
        auth_method=METHOD,
        auth_data=wrong.first(),
        on_auth=wrong,
    )
    with pytest.raises(MqttNotAuthorizedError) as info:
        bad.connect()
    assert info.value.reason_code == 0x87


def auth5(reason: int, method: str, data: bytes | None = None) -> bytes:
    items = [b"\x15" + s(method)] + ([b"\x16" + s(data)] if data is not None else [])
    return packet(0xF0, bytes([reason]) + props(*items))


def auth_fields(first: int, body: bytes) -> tuple[int, dict[int, object]]:
    assert first == 0xF0, f"expected AUTH, got {first:#x}"
    properties, rest = read_props(body[1:])
    assert rest == b""
    return body[0], properties


async def test_the_exchange_on_the_wire() -> None:
    """[MQTT-4.12.0-3] [MQTT-4.12.0-5] [MQTT-4.12.1-1] [MQTT-3.15.2-1] [MQTT-3.1.2-30]
    What the client sends, read by a scripted server: CONNECT with the method and data;
    each answer to AUTH 0x18 is AUTH 0x18 with the same method (nothing else before
    CONNACK, though the application publishes meanwhile); a re-authentication starts
    with AUTH 0x19 and the same method."""
    log: list[tuple[int, dict[int, object]]] = []
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_connect5(reader)
        assert b"\x15" + s("X-STEPS") in body and b"\x16" + s(b"hello") in body
        for n in (1, 2):
            writer.write(auth5(0x18, "X-STEPS", f"c{n}".encode()))
            log.append(auth_fields(*await read_packet(reader)))
        writer.write(connack5(b"\x15" + s("X-STEPS"), b"\x16" + s(b"ok")))
        first, _ = await read_packet(reader)
        assert first & 0xF0 == 0x30, "the publish made while authenticating comes after"
        log.append(auth_fields(*await read_packet(reader)))  # AUTH 0x19
        writer.write(auth5(0x18, "X-STEPS", b"r1"))
        log.append(auth_fields(*await read_packet(reader)))
        writer.write(auth5(0x00, "X-STEPS", b"again"))
        await done

    answers: list[tuple[bytes | None, bool]] = []
    challenged = asyncio.Event()

    def answer(challenge: AuthChallenge) -> bytes:
        answers.append((challenge.data, challenge.reauth))
        challenged.set()
        return b"a" + (challenge.data or b"")

    async with scripted_server(script) as port:
        c = Client(
            "127.0.0.1",
            port,
            protocol=V5,
            auth_method="X-STEPS",
            auth_data=b"hello",
            on_auth=answer,
        )
        connecting = asyncio.ensure_future(c.connect())
        await asyncio.wait_for(challenged.wait(), 5)
        publish = c.publish("t", b"queued")  # buffered until CONNACK [MQTT-3.1.2-30]
        await asyncio.wait_for(connecting, 5)
        await asyncio.wait_for(publish, 5)
        assert c.connack is not None and c.connack.authentication_data == b"ok"
        assert await asyncio.wait_for(c.reauthenticate(b"again-please"), 5) == b"again"
        done.set_result(None)
        await c.disconnect()
    method = {0x15: b"X-STEPS"}
    assert log == [
        (0x18, {**method, 0x16: b"ac1"}),
        (0x18, {**method, 0x16: b"ac2"}),
        (0x19, {**method, 0x16: b"again-please"}),
        (0x18, {**method, 0x16: b"ar1"}),
    ]
    assert answers == [(b"c1", False), (b"c2", False), (b"r1", True)]


async def test_a_server_auth_with_another_method_is_disconnect_0x82() -> None:
    """[MQTT-4.12.0-5] The server's AUTH must carry the CONNECT's method: another one is
    a protocol error the client answers with DISCONNECT 0x82 before it closes; the
    callback never sees it."""
    closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_connect5(reader)
        writer.write(auth5(0x18, "OTHER", b"x"))
        first, body = await read_packet(reader)
        closed.set_result(bytes([first]) + body)

    seen: list[AuthChallenge] = []
    async with scripted_server(script) as port:
        c = Client(
            "127.0.0.1",
            port,
            protocol=V5,
            auth_method="X-STEPS",
            on_auth=lambda ch: seen.append(ch) or b"",
        )
        with pytest.raises(MqttProtocolError):
            await c.connect()
        assert await asyncio.wait_for(closed, 5) == b"\xe0\x82", "DISCONNECT 0x82"
    assert seen == []


async def test_auth_without_a_method_is_disconnect_0x82() -> None:
    """The server may send AUTH only to a client whose CONNECT named a method (spec
    4.12): an AUTH 0x18 on a plain connection is answered with DISCONNECT 0x82."""
    closed: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await read_connect5(reader)
        assert b"\x15" not in body[10:12]
        writer.write(connack5())
        writer.write(auth5(0x18, "X", b"?"))
        first, rest = await read_packet(reader)
        closed.set_result(bytes([first]) + rest)

    async with scripted_server(script) as port:
        c = Client("127.0.0.1", port, protocol=V5)
        await c.connect()
        assert await asyncio.wait_for(closed, 5) == b"\xe0\x82", "DISCONNECT 0x82"
        await asyncio.wait_for(c.wait_for_state(pyo3mq.ConnectionState.CLOSED), 5)
        with pytest.raises(ValueError, match=r"MQTT-4\.12\.1-1"):
            await c.reauthenticate()


def test_auth_settings_are_checked() -> None:
    """auth_method and on_auth come together; auth_data needs a method; all need 5.0."""
    with pytest.raises(ValueError, match="both auth_method and on_auth"):
        Client("127.0.0.1", 1883, protocol=V5, auth_method="X")
    with pytest.raises(ValueError, match="auth_data needs auth_method"):
        Client("127.0.0.1", 1883, protocol=V5, auth_data=b"x")
    with pytest.raises(ValueError, match=r"MQTT 5\.0"):
        Client("127.0.0.1", 1883, auth_method="X", on_auth=lambda ch: None)
