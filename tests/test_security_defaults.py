"""Secure defaults, as Mosquitto 2.0 has them: loopback unless told otherwise, no anonymous
clients on a listener the network can reach unless allowed, and a packet size limit whose
refusal says which setting to raise. Real brokers, raw sockets, exact CONNACK bytes.

The "network" listeners here bind 0.0.0.0 on a random port; the tests only ever connect
to them through 127.0.0.1.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyo3mq
import pytest
from support.mqtt_raw import DISCONNECT, RawClient, connect, publish, remaining_length, subscribe
from support.stderr_capture import captured_stderr

NETWORK = "tcp://0.0.0.0:0"
LOOPBACK = "tcp://127.0.0.1:0"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"

CONNACK_OK = bytes.fromhex("20020000")
CONNACK_BAD_CREDENTIALS = bytes.fromhex("20020004")
CONNACK_NOT_AUTHORIZED = bytes.fromhex("20020005")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

MakeBroker = Callable[..., pyo3mq.Broker]


def connack(port: int, client_id: str, **kwargs: Any) -> bytes:
    """Connects; returns the CONNACK's bytes. A refused client must then be closed by the
    broker with nothing more sent [MQTT-3.2.2-5]; an accepted one leaves with DISCONNECT."""
    with RawClient(port) as c:
        c.send(connect(client_id, **kwargs))
        p = c.recv()
        got = bytes([p.first]) + remaining_length(len(p.body)) + p.body
        if got == CONNACK_OK:
            c.send(DISCONNECT)
        else:
            assert c.expect_closed() == b""
        return got


def broker_log() -> str:
    return _ANSI.sub("", captured_stderr())


def wait_for_log(*texts: str, timeout: float = 5.0) -> str:
    """The first broker log line containing every one of `texts`, waiting for it."""
    deadline = time.monotonic() + timeout
    while True:
        for line in broker_log().splitlines():
            if all(text in line for text in texts):
                return line
        if time.monotonic() > deadline:
            pytest.fail(f"no broker log line with all of {texts!r}")
        time.sleep(0.02)


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    """A mosquitto_passwd file with alice/s3cret."""
    path = str(tmp_path / "passwd")
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", path, "alice", "s3cret"], check=True)
    return path


# -- where it listens --------------------------------------------------------------------


def test_default_listener_is_loopback_only() -> None:
    """With no listener configured the broker listens on 127.0.0.1:1883 only (Mosquitto 2.0
    does the same): reaching it from the network takes a listener someone wrote down."""
    assert pyo3mq.BrokerConfig().listeners == ["tcp://127.0.0.1:1883"]
    assert pyo3mq.BrokerConfig().allow_anonymous is None


# -- anonymous clients -------------------------------------------------------------------


def test_network_listener_refuses_anonymous_clients_by_default(
    make_broker: MakeBroker, capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-3.2.2-5] A listener on 0.0.0.0 with no password file, no authenticator and no
    `allow_anonymous = true` answers a client without a username with CONNACK 0x05 (not
    authorized) and closes; the broker said at start how to allow them, and logs each
    refusal with the setting's name."""
    port = make_broker(listeners=[NETWORK]).addresses[0][1]
    warning = wait_for_log(f"listener 0.0.0.0:{port} is not on loopback")
    assert "WARN" in warning
    assert "allow_anonymous = true" in warning
    assert "password_file or authenticator" in warning
    assert connack(port, "anon") == CONNACK_NOT_AUTHORIZED
    assert connack(port, "anon31", protocol=(b"MQIsdp", 3)) == CONNACK_NOT_AUTHORIZED
    refusal = wait_for_log("refusing connection: no username")
    assert "client_id=anon" in refusal
    assert "allow_anonymous" in refusal
    # allow_anonymous is about clients without a username, as in Mosquitto.
    assert connack(port, "named", username="someone") == CONNACK_OK


def test_loopback_listener_allows_anonymous_clients_by_default(
    make_broker: MakeBroker, capfd: pytest.CaptureFixture[str]
) -> None:
    """One broker, two listeners: the loopback one admits anonymous clients, the one on
    0.0.0.0 refuses them; only the latter gets the start-up warning."""
    broker = make_broker(listeners=[LOOPBACK, NETWORK])
    (_, local), (_, network) = broker.addresses
    assert connack(local, "anon-local") == CONNACK_OK
    assert connack(network, "anon-net") == CONNACK_NOT_AUTHORIZED
    log = broker_log()
    assert f"listener 0.0.0.0:{network} is not on loopback" in log
    assert f"listener 127.0.0.1:{local} is not on loopback" not in log


def test_allow_anonymous_true_opens_a_network_listener(make_broker: MakeBroker) -> None:
    """`allow_anonymous = true` is the explicit way to run an open broker on the network."""
    port = make_broker(listeners=[NETWORK], allow_anonymous=True).addresses[0][1]
    assert connack(port, "anon") == CONNACK_OK
    assert connack(port, "named", username="someone") == CONNACK_OK


def test_allow_anonymous_false_refuses_them_on_loopback_too(make_broker: MakeBroker) -> None:
    """[MQTT-3.2.2-5] `allow_anonymous = false` refuses clients without a username on every
    listener, loopback included; a client with one is admitted (no password file)."""
    port = make_broker(listeners=[LOOPBACK], allow_anonymous=False).addresses[0][1]
    assert connack(port, "anon") == CONNACK_NOT_AUTHORIZED
    assert connack(port, "named", username="someone") == CONNACK_OK


def test_password_file_decides_when_allow_anonymous_is_unset(
    make_broker: MakeBroker, password_file: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-3.2.2-5] With a password file, a network listener needs no `allow_anonymous`:
    the file decides for everyone (anonymous clients get 0x04, as from the file alone) and
    there is no warning about anonymous clients."""
    port = make_broker(listeners=[NETWORK], password_file=password_file).addresses[0][1]
    assert connack(port, "anon") == CONNACK_BAD_CREDENTIALS
    assert connack(port, "a", username="alice", password=b"s3cret") == CONNACK_OK
    assert connack(port, "b", username="alice", password=b"wrong") == CONNACK_BAD_CREDENTIALS
    assert "is not on loopback" not in broker_log()


def test_allow_anonymous_true_with_password_file(
    make_broker: MakeBroker, password_file: str
) -> None:
    """Mosquitto's mixed mode: `allow_anonymous = true` with a password file admits clients
    without a username, while a client naming a user must still give its password."""
    port = make_broker(
        listeners=[NETWORK], password_file=password_file, allow_anonymous=True
    ).addresses[0][1]
    assert connack(port, "anon") == CONNACK_OK
    assert connack(port, "a", username="alice", password=b"s3cret") == CONNACK_OK
    assert connack(port, "b", username="alice", password=b"wrong") == CONNACK_BAD_CREDENTIALS
    assert connack(port, "c", username="mallory") == CONNACK_BAD_CREDENTIALS


def test_authenticator_decides_when_allow_anonymous_is_unset(make_broker: MakeBroker) -> None:
    """An authenticator on a network listener sees anonymous clients too (username None)
    and decides for them."""
    calls: list[tuple[str, str | None]] = []

    def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        calls.append((client_id, username))
        return client_id == "welcome"

    port = make_broker(listeners=[NETWORK], authenticator=authenticate).addresses[0][1]
    assert connack(port, "welcome") == CONNACK_OK
    assert connack(port, "stranger") == CONNACK_BAD_CREDENTIALS
    assert calls == [("welcome", None), ("stranger", None)]


def test_allow_anonymous_false_refuses_before_the_authenticator(
    make_broker: MakeBroker,
) -> None:
    """[MQTT-3.2.2-5] `allow_anonymous = false` refuses clients without a username before
    any hook runs; clients with one still go to the authenticator."""
    calls: list[tuple[str, str | None]] = []

    def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        calls.append((client_id, username))
        return True

    port = make_broker(
        listeners=[LOOPBACK], authenticator=authenticate, allow_anonymous=False
    ).addresses[0][1]
    assert connack(port, "anon") == CONNACK_NOT_AUTHORIZED
    assert connack(port, "named", username="u") == CONNACK_OK
    assert calls == [("named", "u")]


@pytest.mark.parametrize("value", ["yes", 1, 0.0])
def test_allow_anonymous_must_be_a_bool(value: object) -> None:
    """`allow_anonymous` is true, false or unset: anything else is refused, naming it."""
    with pytest.raises(ValueError, match="allow_anonymous"):
        pyo3mq.BrokerConfig(allow_anonymous=value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allow_anonymous"):
        pyo3mq.Broker(listeners=[LOOPBACK], allow_anonymous=value)


# -- max_packet_size ---------------------------------------------------------------------


def test_default_max_packet_size_refusal_names_the_setting(
    make_broker: MakeBroker, capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-4.8.0-1] The default limit (1 MiB, fixed header included) protects memory, so a
    PUBLISH with a 1 MiB payload closes its connection; the log line says which setting to
    raise. Raised to 2 MiB, the same PUBLISH is delivered whole."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    big = publish("big/t", payload, qos=1, pkid=1)
    port = make_broker().addresses[0][1]
    with RawClient(port) as c:
        c.send(connect("big"))
        assert c.recv().body == b"\x00\x00"
        peer = c.sock.getsockname()[1]
        try:
            c.send(big)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed from the fixed header, before the body was all sent
        assert c.expect_closed() == b""
    line = wait_for_log(
        f"peer=127.0.0.1:{peer}", f"exceeds the maximum packet size of {1024 * 1024} bytes"
    )
    assert f"packet of {len(big)} bytes" in line
    assert "raise max_packet_size to accept it" in line

    port = make_broker(max_packet_size=2 * 1024 * 1024).addresses[0][1]
    with RawClient(port) as sub, RawClient(port) as pub:
        assert sub.connect("sub").body == b"\x00\x00"
        sub.send(subscribe(1, ("big/#", 1)))
        assert sub.recv().body == b"\x00\x01\x01"
        assert pub.connect("pub").body == b"\x00\x00"
        pub.send(big)
        puback = pub.recv()
        assert (puback.first, puback.body) == (0x40, b"\x00\x01")
        got = sub.recv()
        topic, _pkid, body = got.publish_fields()
        assert (topic, body) == ("big/t", payload)
