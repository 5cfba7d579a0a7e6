"""MQTT 5.0 enhanced authentication (spec 4.12) with real sockets: the SCRAM-SHA-256
example end to end, a multi-step exchange checked byte by byte, the wrong method, a
refusal, a hook that raises or is too slow (a denial), and re-authentication.

paho-mqtt cannot answer a broker's AUTH packets, so the clients here are raw sockets:
the example's own `ScramClient`, and the hand-written 5.0 bytes of tests/test_mqtt5.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyo3mq
import pytest
from pyo3mq import AuthResult, EnhancedAuthRequest
from support.mqtt_raw import Packet, RawClient, packet, s
from test_examples import Script, load
from test_mqtt5 import connack5, connect5, expect_disconnect, props, read_props, subscribe5

METHOD = "SCRAM-SHA-256"
TEST_METHOD = "X-STEPS"
scram = load("scram_auth")


@pytest.fixture
def clients() -> Iterator[list[Any]]:
    """Raw and SCRAM clients a test opened, closed after it."""
    made: list[Any] = []
    yield made
    for c in made:
        c.close()


def auth_props(method: str | None, data: bytes | None = None) -> bytes:
    items = []
    if method is not None:
        items.append(b"\x15" + s(method))
    if data is not None:
        items.append(b"\x16" + s(data))
    return props(*items)


def auth5(reason: int, method: str | None, data: bytes | None = None) -> bytes:
    return packet(0xF0, bytes([reason]) + auth_props(method, data))


def auth_fields(pkt: Packet) -> tuple[int, dict[int, Any]]:
    """(reason, properties) of an AUTH from the broker (flags 0000 [MQTT-3.15.1-1])."""
    assert pkt.first == 0xF0, f"expected AUTH, got {pkt.first:#x}"
    properties, rest = read_props(pkt.body[1:])
    assert rest == b""
    return pkt.body[0], properties


class Steps:
    """A test method of `rounds` challenges: the client must answer challenge "cN" with
    "aN"; the state counts the steps. Records every request it sees."""

    def __init__(self, rounds: int = 3) -> None:
        self.rounds = rounds
        self.seen: list[EnhancedAuthRequest] = []
        self.lock = threading.Lock()

    async def __call__(self, request: EnhancedAuthRequest) -> AuthResult:
        with self.lock:
            self.seen.append(request)
        step = 0 if request.state is None else request.state
        expected = b"hello" if step == 0 else f"a{step}".encode()
        if request.data != expected:
            return AuthResult.failure()
        if step == self.rounds:
            return AuthResult.success(b"done" + (b"-again" if request.reauth else b""))
        return AuthResult.continue_with(f"c{step + 1}".encode(), step + 1)


def steps_login(c: RawClient, rounds: int, client_id: str = "steps") -> dict[int, Any]:
    """The Steps exchange from CONNECT to CONNACK 0x00; the CONNACK's properties."""
    c.send(connect5(client_id, properties=auth_props(TEST_METHOD, b"hello")))
    for n in range(1, rounds + 1):
        # [MQTT-4.12.0-2]: the broker asks for more with AUTH 0x18, naming the method
        # [MQTT-4.12.0-5].
        reason, properties = auth_fields(c.recv())
        assert reason == 0x18
        assert properties == {0x15: TEST_METHOD.encode(), 0x16: f"c{n}".encode()}
        c.send(auth5(0x18, TEST_METHOD, f"a{n}".encode()))
    present, reason, properties = connack5(c.recv())
    assert (present, reason) == (0, 0)
    return properties


# --------------------------------------------------------------------------- the example


def test_scram_example_end_to_end(make_broker: Callable[..., pyo3mq.Broker], clients) -> None:
    """examples/scram_auth.py: a user logs in with SCRAM-SHA-256 (the broker proves it
    knows the password in the CONNACK), works, and re-authenticates; a wrong password
    is CONNACK 0x87 and the close."""
    broker = make_broker(enhanced_auth={METHOD: scram.ScramServer(scram.USERS)})
    port = broker.addresses[0][1]

    alice = scram.ScramClient("127.0.0.1", port, "alice", scram.USERS["alice"])
    clients.append(alice)
    properties = alice.connect("alice-1")
    # The CONNACK names the method [MQTT-4.12.0-5]; its data (the server signature) was
    # verified by the client.
    assert properties[0x15] == METHOD.encode()
    assert properties[0x16].startswith(b"v=")
    # The connection works once authenticated.
    alice.send(0x82, b"\x00\x07\x00" + s("t/#") + b"\x00")
    assert alice.read_packet() == (0x90, b"\x00\x07\x00\x00")
    # Re-authentication: AUTH 0x19 -> AUTH 0x18 -> AUTH 0x18 -> AUTH 0x00 [MQTT-3.15.2-1].
    again = alice.reauthenticate()
    assert again[0x15] == METHOD.encode()
    # Still connected and serving.
    alice.send(0xC0, b"")
    assert alice.read_packet() == (0xD0, b"")

    mallory = scram.ScramClient("127.0.0.1", port, "alice", "not the password")
    clients.append(mallory)
    with pytest.raises(scram.AuthFailed) as refused:
        mallory.connect("alice-2")
    assert refused.value.code == 0x87
    # [MQTT-4.12.0-4]: closed after the refusal.
    assert mallory.sock.recv(1) == b""

    nobody = scram.ScramClient("127.0.0.1", port, "nobody", "x")
    clients.append(nobody)
    with pytest.raises(scram.AuthFailed) as refused:
        nobody.connect("nobody")
    assert refused.value.code == 0x87


def test_scram_server_checks_the_proof() -> None:
    """The example's server half alone: the nonce must be its own, and a proof from
    another password fails; a correct one succeeds with the server signature."""
    server = scram.ScramServer({"bob": "builder"})
    client_info = pyo3mq.ClientInfo("c", None, None)

    def request(data: bytes, state: Any = None) -> EnhancedAuthRequest:
        return EnhancedAuthRequest(client_info, METHOD, data, False, state, ("127.0.0.1", 1))

    first = asyncio.run(server(request(b"n,,n=bob,r=abc")))
    assert first.outcome == "continue"
    assert first.data is not None and first.data.startswith(b"r=abc")
    assert asyncio.run(server(request(b"y,,n=bob,r=abc"))).outcome == "failure"
    wrong_nonce = asyncio.run(server(request(b"c=biws,r=abcX,p=AAAA", first.state)))
    assert wrong_nonce.outcome == "failure"


def test_scram_example_script(make_broker: Callable[..., pyo3mq.Broker], capsys) -> None:
    """`--login USER PASSWORD` logs in to a running broker and says so; exit 1 when
    refused."""
    broker = make_broker(enhanced_auth={METHOD: scram.ScramServer(scram.USERS)})
    port = str(broker.addresses[0][1])
    assert scram.main(["--port", port, "--login", "bob", "builder"]) == 0
    assert "logged in" in capsys.readouterr().out
    assert scram.main(["--port", port, "--login", "bob", "wrong"]) == 1
    assert "0x87" in capsys.readouterr().err


def test_scram_example_serves_as_a_script() -> None:
    """`python examples/scram_auth.py --port 0` serves its USERS with SCRAM-SHA-256 and
    exits 0 on SIGTERM."""
    s = Script("scram_auth", "--port", "0", "--duration", "30")
    try:
        port = s.port()
        bob = scram.ScramClient("127.0.0.1", port, "bob", scram.USERS["bob"])
        try:
            assert bob.connect("bob")[0x15] == METHOD.encode()
        finally:
            bob.close()
        assert s.terminate() == 0
    finally:
        s.close()


# --------------------------------------------------------------------------- the exchange


def test_multi_step_exchange(make_broker: Callable[..., pyo3mq.Broker], clients) -> None:
    """Three challenges and answers, then CONNACK 0x00 with the method and the final
    data; the hook sees the client, the method, each step's data and its own state."""
    hook = Steps(rounds=3)
    broker = make_broker(enhanced_auth={TEST_METHOD: hook})
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    properties = steps_login(c, 3, "multi")
    assert properties[0x15] == TEST_METHOD.encode()
    assert properties[0x16] == b"done"
    assert [r.data for r in hook.seen] == [b"hello", b"a1", b"a2", b"a3"]
    assert [r.state for r in hook.seen] == [None, 1, 2, 3]
    assert {(r.client.client_id, r.method, r.reauth) for r in hook.seen} == {
        ("multi", TEST_METHOD, False)
    }
    assert hook.seen[0].peer[0] == "127.0.0.1"
    # Serving after the exchange.
    c.send(subscribe5(3, ("a/b", 1)))
    assert c.recv().body == b"\x00\x03\x00\x01"


def test_sync_hook_runs_too(make_broker: Callable[..., pyo3mq.Broker], clients) -> None:
    """A plain function works as a hook (run off the loop, in the executor)."""

    def once(request: EnhancedAuthRequest) -> AuthResult:
        return AuthResult.success() if request.data == b"ok" else AuthResult.failure()

    broker = make_broker(enhanced_auth={"X-ONCE": once, "X-TWICE": once})
    for method, data, want in (
        ("X-ONCE", b"ok", 0),
        ("X-TWICE", b"ok", 0),
        ("X-ONCE", b"no", 0x87),
    ):
        c = RawClient(broker.addresses[0][1])
        clients.append(c)
        c.send(connect5("sync", properties=auth_props(method, data)))
        _, reason, properties = connack5(c.recv())
        assert reason == want
        if want == 0:
            assert properties[0x15] == method.encode()
            assert 0x16 not in properties
        else:
            assert c.expect_closed() == b""


def test_unknown_method_is_0x8c(make_broker: Callable[..., pyo3mq.Broker], clients) -> None:
    """A method no hook is registered for: CONNACK 0x8C and the close [MQTT-4.12.0-1];
    the hook is not called."""
    hook = Steps()
    broker = make_broker(enhanced_auth={TEST_METHOD: hook})
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    c.send(connect5("other", properties=auth_props("PLAIN", b"\x00u\x00p")))
    assert connack5(c.recv())[:2] == (0, 0x8C)
    assert c.expect_closed() == b""
    assert hook.seen == []


def test_plain_connect_beside_enhanced_auth(
    make_broker: Callable[..., pyo3mq.Broker], clients
) -> None:
    """Without a method the broker sends no AUTH and no method in CONNACK
    [MQTT-4.12.0-6]; an AUTH from that client is DISCONNECT 0x82 [MQTT-4.12.0-7]."""
    broker = make_broker(enhanced_auth={TEST_METHOD: Steps()})
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    c.send(connect5("plain"))
    pkt = c.recv()
    assert pkt.first == 0x20
    _, reason, properties = connack5(pkt)
    assert reason == 0
    assert 0x15 not in properties and 0x16 not in properties
    c.send(auth5(0x19, TEST_METHOD, b"hello"))
    expect_disconnect(c, 0x82)


def test_other_method_or_packet_during_the_exchange(
    make_broker: Callable[..., pyo3mq.Broker], clients
) -> None:
    """Before CONNACK the client answers with AUTH 0x18 naming the CONNECT's method
    [MQTT-4.12.0-5] and sends nothing but AUTH or DISCONNECT [MQTT-3.1.2-30]: anything
    else is CONNACK 0x82 and the close."""
    broker = make_broker(enhanced_auth={TEST_METHOD: Steps()})
    port = broker.addresses[0][1]
    for wrong in (
        auth5(0x18, "PLAIN", b"a1"),
        auth5(0x18, None),
        auth5(0x19, TEST_METHOD, b"a1"),
        packet(0xC0, b""),  # PINGREQ
    ):
        c = RawClient(port)
        clients.append(c)
        c.send(connect5("wrong", properties=auth_props(TEST_METHOD, b"hello")))
        assert auth_fields(c.recv())[0] == 0x18
        c.send(wrong)
        assert connack5(c.recv())[:2] == (0, 0x82), wrong
        assert c.expect_closed() == b""


def test_refusal_is_0x87(make_broker: Callable[..., pyo3mq.Broker], clients) -> None:
    """A wrong answer at any step: CONNACK 0x87 and the close [MQTT-4.12.0-4]; the
    session was never created (a later plain connect finds none)."""
    broker = make_broker(enhanced_auth={TEST_METHOD: Steps(rounds=2)})
    port = broker.addresses[0][1]
    c = RawClient(port)
    clients.append(c)
    c.send(connect5("refused", clean=False, properties=auth_props(TEST_METHOD, b"hello")))
    assert auth_fields(c.recv()) == (0x18, {0x15: TEST_METHOD.encode(), 0x16: b"c1"})
    c.send(auth5(0x18, TEST_METHOD, b"wrong"))
    assert connack5(c.recv())[:2] == (0, 0x87)
    assert c.expect_closed() == b""
    # The first step may refuse too.
    c = RawClient(port)
    clients.append(c)
    c.send(connect5("refused", properties=auth_props(TEST_METHOD, b"nope")))
    assert connack5(c.recv())[:2] == (0, 0x87)
    assert c.expect_closed() == b""
    c = RawClient(port)
    clients.append(c)
    c.send(connect5("refused", clean=False))
    assert connack5(c.recv())[:2] == (0, 0)


@pytest.mark.parametrize("fault", ["raises", "too slow", "wrong type", "bad data", "bad outcome"])
def test_hook_fault_is_a_denial(
    make_broker: Callable[..., pyo3mq.Broker], clients, fault: str, caplog, capfd
) -> None:
    """A hook that raises, answers after `auth_timeout`, or answers something else than
    an AuthResult denies (CONNACK 0x87, then the close), with a log line; the broker
    goes on serving."""

    async def hook(request: EnhancedAuthRequest) -> Any:
        if fault == "raises":
            raise RuntimeError("the user database is down")
        if fault == "too slow":
            await asyncio.sleep(5)
        if fault == "wrong type":
            return True
        if fault == "bad outcome":
            return AuthResult("maybe")  # type: ignore[arg-type]
        return AuthResult("success", "not bytes")  # type: ignore[arg-type]

    broker = make_broker(enhanced_auth={TEST_METHOD: hook}, auth_timeout=0.3)
    port = broker.addresses[0][1]
    c = RawClient(port)
    clients.append(c)
    caplog.set_level(logging.INFO, logger="pyo3mq")
    c.send(connect5("faulty", properties=auth_props(TEST_METHOD, b"hello")))
    assert connack5(c.recv())[:2] == (0, 0x87)
    assert c.expect_closed() == b""
    logged = caplog.text + capfd.readouterr().err
    if fault == "too slow":
        assert "enhanced authentication (X-STEPS) timed out" in logged
    else:
        assert "enhanced authentication 'X-STEPS'" in logged and "failed: denied" in logged
    # Still serving.
    ok = RawClient(port)
    clients.append(ok)
    ok.send(connect5("after"))
    assert connack5(ok.recv())[1] == 0


def test_enhanced_auth_replaces_the_password_check(
    make_broker: Callable[..., pyo3mq.Broker], clients
) -> None:
    """A client authenticated by its method is not asked for a password too: the
    username/password authenticator still refuses plain CONNECTs."""
    broker = make_broker(
        enhanced_auth={TEST_METHOD: Steps(rounds=1)}, authenticator=lambda *_: False
    )
    port = broker.addresses[0][1]
    c = RawClient(port)
    clients.append(c)
    steps_login(c, 1, "enhanced")
    c = RawClient(port)
    clients.append(c)
    c.send(connect5("plain"))
    assert connack5(c.recv())[1] == 0x86


def test_broker_argument_checks() -> None:
    with pytest.raises(TypeError, match="enhanced_auth"):
        pyo3mq.Broker(enhanced_auth={TEST_METHOD: "not callable"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="enhanced_auth"):
        pyo3mq.Broker(enhanced_auth=[TEST_METHOD])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- re-authentication


def test_reauthentication(make_broker: Callable[..., pyo3mq.Broker], clients) -> None:
    """AUTH 0x19 with the CONNECT's method starts a new exchange (fresh state, `reauth`
    set) that ends with AUTH 0x00 naming the method [MQTT-3.15.2-1] [MQTT-4.12.0-5];
    the connection serves in between and after, under its earlier authentication, and
    a second re-authentication works the same."""
    hook = Steps(rounds=2)
    broker = make_broker(enhanced_auth={TEST_METHOD: hook})
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    steps_login(c, 2, "reauth")
    for _ in range(2):
        before = len(hook.seen)
        c.send(auth5(0x19, TEST_METHOD, b"hello"))
        assert auth_fields(c.recv()) == (0x18, {0x15: TEST_METHOD.encode(), 0x16: b"c1"})
        # Other packets are served during the exchange.
        c.send(packet(0xC0, b""))
        assert c.recv().first == 0xD0
        c.send(auth5(0x18, TEST_METHOD, b"a1"))
        assert auth_fields(c.recv()) == (0x18, {0x15: TEST_METHOD.encode(), 0x16: b"c2"})
        c.send(auth5(0x18, TEST_METHOD, b"a2"))
        assert auth_fields(c.recv()) == (
            0x00,
            {0x15: TEST_METHOD.encode(), 0x16: b"done-again"},
        )
        again = hook.seen[before:]
        assert [r.state for r in again] == [None, 1, 2]
        assert all(r.reauth for r in again)
    c.send(packet(0xC0, b""))
    assert c.recv().first == 0xD0


def test_failed_reauthentication_is_disconnect_0x87(
    make_broker: Callable[..., pyo3mq.Broker], clients
) -> None:
    """A refused re-authentication: DISCONNECT 0x87 and the close [MQTT-4.12.1-2]."""
    broker = make_broker(enhanced_auth={TEST_METHOD: Steps(rounds=1)})
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    steps_login(c, 1, "reauth-fail")
    c.send(auth5(0x19, TEST_METHOD, b"hello"))
    assert auth_fields(c.recv())[0] == 0x18
    c.send(auth5(0x18, TEST_METHOD, b"wrong"))
    expect_disconnect(c, 0x87)


@pytest.mark.parametrize(
    "wrong",
    [
        auth5(0x19, "PLAIN", b"hello"),  # [MQTT-4.12.1-1]: another method
        auth5(0x19, None),  # no method [MQTT-4.12.0-5]
        auth5(0x18, TEST_METHOD, b"a1"),  # nothing to continue
        auth5(0x00, TEST_METHOD),  # a client never sends Success
    ],
    ids=["other-method", "no-method", "continue-out-of-turn", "success-from-client"],
)
def test_reauthentication_protocol_errors(
    make_broker: Callable[..., pyo3mq.Broker], clients, wrong: bytes
) -> None:
    """An AUTH after CONNACK that is not a re-authentication with the CONNECT's method,
    nor the answer to a challenge, is DISCONNECT 0x82 and the close."""
    broker = make_broker(enhanced_auth={TEST_METHOD: Steps(rounds=1)})
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    steps_login(c, 1, "reauth-bad")
    c.send(wrong)
    expect_disconnect(c, 0x82)


def test_reauthentication_timeout_is_disconnect_0x87(
    make_broker: Callable[..., pyo3mq.Broker], clients
) -> None:
    """A hook too slow in a re-authentication denies it: DISCONNECT 0x87."""
    calls = []

    async def slow_later(request: EnhancedAuthRequest) -> AuthResult:
        calls.append(request.reauth)
        if request.reauth:
            await asyncio.sleep(5)
        return AuthResult.success()

    broker = make_broker(enhanced_auth={TEST_METHOD: slow_later}, auth_timeout=0.3)
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    c.send(connect5("slow", properties=auth_props(TEST_METHOD, b"x")))
    assert connack5(c.recv())[1] == 0
    started = time.monotonic()
    c.send(auth5(0x19, TEST_METHOD, b"x"))
    expect_disconnect(c, 0x87)
    assert time.monotonic() - started < 4.5  # bounded by auth_timeout, not the hook
    assert calls == [False, True]


def test_readme_example_runs(make_broker: Callable[..., pyo3mq.Broker], clients) -> None:
    """The README's enhanced authentication example, as written: its hook admits the
    token and refuses anything else."""
    from test_docs import python_block

    namespace: dict[str, Any] = {}
    exec(python_block("## Enhanced authentication (MQTT 5.0)"), namespace)
    assert namespace["broker"].enhanced_auth.keys() == {"X-TOKEN"}
    broker = make_broker(enhanced_auth=namespace["broker"].enhanced_auth)
    for data, want in ((b"let me in", 0), (b"guess", 0x87)):
        c = RawClient(broker.addresses[0][1])
        clients.append(c)
        c.send(connect5("readme", properties=auth_props("X-TOKEN", data)))
        assert connack5(c.recv())[1] == want


def test_shutdown_ends_a_waiting_exchange(
    make_broker: Callable[..., pyo3mq.Broker], clients
) -> None:
    """A client that never answers the challenge does not hold a stopping broker for
    `connect_timeout`: the exchange ends at once, without a CONNACK."""
    broker = make_broker(enhanced_auth={TEST_METHOD: Steps()}, connect_timeout=60)
    c = RawClient(broker.addresses[0][1])
    clients.append(c)
    c.send(connect5("silent", properties=auth_props(TEST_METHOD, b"hello")))
    assert auth_fields(c.recv())[0] == 0x18
    started = time.monotonic()
    broker.stop()
    # Well inside stop()'s own 10 s wait for connections, which a stuck exchange would use up.
    assert time.monotonic() - started < 8
    assert c.expect_closed() == b""
