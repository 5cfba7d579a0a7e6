"""TLS, WebSocket and secure WebSocket listeners, against real peers: Debian's
mosquitto_pub/mosquitto_sub with certificates, paho-mqtt over `ws://` and `wss://`,
aiomqtt over TLS, Python's ssl module, and raw WebSocket frames for what no client sends
on purpose (packets across frames, text frames, pings, the close handshake).

Certificates are made per test module with the `cryptography` package: a CA, a server
certificate for 127.0.0.1/localhost, client certificates from that CA and from a CA the
broker does not trust. No private key is ever committed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pyo3mq
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from support.mqtt_raw import PINGREQ, Closed, Packet, RawClient, connect, publish, subscribe
from support.stderr_capture import captured_stderr

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
TIMEOUT = 10.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# --------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Issued
    #: Another server certificate from the same CA (CN "pyo3mq second"), for reloads.
    server2: Issued
    alice: Issued
    #: A client certificate without a Common Name.
    nameless: Issued
    #: From a CA the broker does not trust.
    rogue: Issued


def _name(cn: str | None, org: str = "pyo3mq tests") -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if cn is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attributes)


def _issue(
    directory: Path,
    stem: str,
    subject: x509.Name,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Issued]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if ca:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert, key, Issued(cert_path, key_path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key, ca = _issue(d, "ca", _name("pyo3mq test CA"), None, ca=True)
    rogue_cert, rogue_key, _ = _issue(d, "rogue-ca", _name("rogue CA", "elsewhere"), None, ca=True)
    issuer = (ca_cert, ca_key)
    server = _issue(d, "server", _name("pyo3mq server"), issuer, server=True)[2]
    server2 = _issue(d, "server2", _name("pyo3mq second"), issuer, server=True)[2]
    alice = _issue(d, "alice", _name("alice"), issuer)[2]
    nameless = _issue(d, "nameless", _name(None), issuer)[2]
    rogue = _issue(d, "rogue", _name("alice", "elsewhere"), (rogue_cert, rogue_key))[2]
    return Pki(ca.cert, server, server2, alice, nameless, rogue)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def tls_settings(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"certfile": str(pki.server.cert), "keyfile": str(pki.server.key), **more}


def port_of(broker: pyo3mq.Broker, index: int = 0) -> int:
    return broker.addresses[index][1]


def client_context(pki: Pki, cert: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def tls_raw(port: int, context: ssl.SSLContext) -> RawClient:
    """A raw MQTT client whose socket is wrapped in TLS."""
    client = RawClient(port)
    client.sock = context.wrap_socket(client.sock, server_hostname="localhost")
    return client


def peer_subject(port: int, pki: Pki) -> str:
    """The Common Name of the certificate the server presents on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        context = client_context(pki)
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)


def log_lines(pattern: str) -> list[str]:
    return [
        line for line in _ANSI.sub("", captured_stderr()).splitlines() if re.search(pattern, line)
    ]


def about(port: int, text: str = "") -> str:
    """A pattern for a log line about the connection from local port `port`."""
    return rf"(?=.*peer=127\.0\.0\.1:{port}(?!\d)).*{text}"


def wait_log(pattern: str, count: int = 1) -> str:
    """Waits for `count` log lines matching `pattern` (log lines are written after the
    counters move); returns the first."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        lines = log_lines(pattern)
        if len(lines) >= count:
            return lines[0]
        if time.monotonic() > deadline:
            pytest.fail(f"{len(lines)} of {count} broker log lines match {pattern!r}")
        time.sleep(0.02)


def mosquitto(tool: str, port: int, pki: Pki, *args: str, cert: Issued | None = None) -> list[str]:
    """A mosquitto_pub/sub command line for the TLS listener on `port`."""
    command = [tool, "-h", "127.0.0.1", "-p", str(port), "--cafile", str(pki.ca), *args]
    if cert is not None:
        command += ["--cert", str(cert.cert), "--key", str(cert.key)]
    return command


def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def wait_stat(broker: pyo3mq.Broker, name: str, at_least: int) -> int:
    deadline = time.monotonic() + TIMEOUT
    while broker.stats().get(name, 0) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return broker.stats()[name]


@pytest.fixture
def subscribers() -> Iterator[Callable[[list[str]], subprocess.Popen[str]]]:
    """Starts mosquitto_sub processes; each is ended at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(command: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def sub_ready(broker: pyo3mq.Broker, count: int) -> None:
    """Waits until the broker has `count` subscriptions."""
    deadline = time.monotonic() + TIMEOUT
    while broker.stats()["subscriptions_count"] < count:
        assert time.monotonic() < deadline, "the subscriber did not subscribe"
        time.sleep(0.02)


# --------------------------------------------------------------------------------------
# TLS with mosquitto_pub / mosquitto_sub
# --------------------------------------------------------------------------------------


def test_mosquitto_clients_over_tls(
    make_broker: Callable[..., pyo3mq.Broker],
    pki: Pki,
    subscribers: Callable[[list[str]], subprocess.Popen[str]],
) -> None:
    broker = make_broker(listeners=["tls://127.0.0.1:0"], **tls_settings(pki))
    port = port_of(broker)
    sub = subscribers(mosquitto(MOSQUITTO_SUB, port, pki, "-t", "tls/t", "-C", "1", "-q", "1"))
    sub_ready(broker, 1)
    pub = run(mosquitto(MOSQUITTO_PUB, port, pki, "-t", "tls/t", "-m", "over tls", "-q", "1"))
    assert pub.returncode == 0, pub.stderr
    out, err = sub.communicate(timeout=TIMEOUT)
    assert sub.returncode == 0, err
    assert out == "over tls\n"
    assert broker.stats()["tls_handshakes"] >= 2
    # The same client without the CA refuses the broker's certificate: TLS is real.
    untrusting = run(
        [
            MOSQUITTO_PUB,
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            "x",
            "-m",
            "x",
            "--cafile",
            str(pki.rogue.cert),
        ]
    )
    assert untrusting.returncode != 0


def test_mutual_tls_refuses_untrusted_and_missing_client_certificates(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    broker = make_broker(
        listeners=["tls://127.0.0.1:0"],
        **tls_settings(pki, cafile=str(pki.ca), require_certificate=True),
    )
    port = port_of(broker)
    trusted = run(mosquitto(MOSQUITTO_PUB, port, pki, "-t", "m/t", "-m", "x", cert=pki.alice))
    assert trusted.returncode == 0, trusted.stderr
    rogue = run(mosquitto(MOSQUITTO_PUB, port, pki, "-t", "m/t", "-m", "x", cert=pki.rogue))
    assert rogue.returncode != 0
    missing = run(mosquitto(MOSQUITTO_PUB, port, pki, "-t", "m/t", "-m", "x"))
    assert missing.returncode != 0
    assert broker.stats()["messages_received"] == 1
    assert wait_stat(broker, "tls_handshakes_failed", 2) == 2
    assert broker.stats()["tls_handshakes"] == 1
    wait_log(r"TLS handshake failed: .*(UnknownIssuer|unknown issuer|invalid peer certificate)")
    wait_log(r"TLS handshake failed: peer sent no certificates")


def test_use_identity_as_username_with_an_acl(
    make_broker: Callable[..., pyo3mq.Broker],
    pki: Pki,
    tmp_path: Path,
    subscribers: Callable[[list[str]], subprocess.Popen[str]],
) -> None:
    """On the TLS listener (a [[listener]] table) alice's certificate CN is her username,
    whatever her CONNECT says, and the ACL file applies to it; the plain listener keeps
    CONNECT usernames."""
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite alice/#\n\nuser admin\ntopic read #\n")
    connected: list[pyo3mq.ConnectEvent] = []
    tls_uri = "tls://127.0.0.1:0"
    broker = make_broker(
        listeners=["tcp://127.0.0.1:0", tls_uri],
        listener=[
            {
                "uri": tls_uri,
                "cafile": str(pki.ca),
                "require_certificate": True,
                "use_identity_as_username": True,
            }
        ],
        acl_file=str(acl),
        on_connect=connected.append,
        **tls_settings(pki),
    )
    plain, tls = port_of(broker, 0), port_of(broker, 1)
    admin = subscribers(
        [MOSQUITTO_SUB, "-p", str(plain), "-u", "admin", "-t", "#", "-v", "-C", "1"]
    )
    sub_ready(broker, 1)
    for topic in ("bob/x", "alice/in"):
        res = run(
            [
                *mosquitto(
                    MOSQUITTO_PUB, tls, pki, "-u", "bob", "-t", topic, "-m", topic, "-q", "1"
                ),
                "--cert",
                str(pki.alice.cert),
                "--key",
                str(pki.alice.key),
            ]
        )
        assert res.returncode == 0, res.stderr
    out, _ = admin.communicate(timeout=TIMEOUT)
    # bob/x was refused (alice may write only alice/#): the first message is alice/in.
    assert out == "alice/in alice/in\n"
    tls_clients = [e.client for e in connected if e.client.certificate_subject is not None]
    assert tls_clients, connected
    assert {c.username for c in tls_clients} == {"alice"}
    assert {c.certificate_subject for c in tls_clients} == {"CN=alice,O=pyo3mq tests"}
    admins = [e.client for e in connected if e.client.username == "admin"]
    assert admins and admins[0].certificate_subject is None


def test_use_identity_as_username_refuses_a_certificate_without_a_common_name(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    broker = make_broker(
        listeners=["tls://127.0.0.1:0"],
        **tls_settings(
            pki, cafile=str(pki.ca), require_certificate=True, use_identity_as_username=True
        ),
    )
    with tls_raw(port_of(broker), client_context(pki, pki.nameless)) as client:
        client.send(connect("nameless", username="someone"))
        assert client.recv().body == b"\x00\x05"  # CONNACK 0x05 not authorized
    wait_log("the client certificate has no Common Name")


def test_python_hooks_see_the_certificate_subject(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki
) -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    def authenticate(
        client_id: str,
        username: str | None,
        password: bytes | None,
        certificate_subject: str | None,
    ) -> bool:
        seen.append((client_id, username, certificate_subject))
        return certificate_subject == "CN=alice,O=pyo3mq tests"

    class Authorizer:
        def authorize_subscribe(self, client: pyo3mq.ClientInfo, filter: str, qos: int) -> bool:
            return client.certificate_subject is not None and filter.startswith("alice/")

        def authorize_publish(self, client: pyo3mq.ClientInfo, topic: str) -> bool:
            return True

    broker = make_broker(
        listeners=["tls://127.0.0.1:0"],
        authenticator=authenticate,
        authorizer=Authorizer(),
        **tls_settings(pki, cafile=str(pki.ca)),
    )
    port = port_of(broker)
    with tls_raw(port, client_context(pki, pki.alice)) as alice:
        assert alice.connect("a1", username="u").body == b"\x00\x00"
        alice.send(subscribe(1, ("alice/t", 1), ("bob/t", 1)))
        assert alice.recv().body == b"\x00\x01\x01\x80"
    # A certificate is asked for but not required here: without one, the authenticator
    # sees None and refuses.
    with tls_raw(port, client_context(pki)) as anonymous:
        assert anonymous.connect("a2").body == b"\x00\x04"
    assert seen == [("a1", "u", "CN=alice,O=pyo3mq tests"), ("a2", None, None)]


# --------------------------------------------------------------------------------------
# TLS: settings, limits, bad input
# --------------------------------------------------------------------------------------


def test_tls_version_minimum_13_refuses_a_12_client(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki
) -> None:
    broker = make_broker(
        listeners=["tls://127.0.0.1:0"], **tls_settings(pki, tls_version="tlsv1.3")
    )
    port = port_of(broker)
    old = client_context(pki)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_raw(port, old).close()
    with tls_raw(port, client_context(pki)) as modern:
        assert modern.sock.version() == "TLSv1.3"  # type: ignore[attr-defined]
        assert modern.connect("v13").body == b"\x00\x00"
    default = make_broker(listeners=["tls://127.0.0.1:0"], **tls_settings(pki))
    with tls_raw(port_of(default), old) as tls12:
        assert tls12.sock.version() == "TLSv1.2"  # type: ignore[attr-defined]
        assert tls12.connect("v12").body == b"\x00\x00"


def test_listener_tables_give_listeners_their_own_certificates(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki
) -> None:
    second = "tls://127.0.0.1:0"
    broker = make_broker(
        listeners=["tls://[::1]:0" if socket.has_ipv6 else "mqtts://127.0.0.1:0", second],
        listener=[
            {"uri": second, "certfile": str(pki.server2.cert), "keyfile": str(pki.server2.key)}
        ],
        **tls_settings(pki),
    )
    assert peer_subject(port_of(broker, 1), pki) == "pyo3mq second"
    if not socket.has_ipv6:
        assert peer_subject(port_of(broker, 0), pki) == "pyo3mq server"


def test_bad_certificate_files_fail_the_start_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ({"certfile": str(missing), "keyfile": str(pki.server.key)}, f"certfile {missing}"),
        ({"certfile": str(garbage), "keyfile": str(pki.server.key)}, f"certfile {garbage}"),
        ({"certfile": str(pki.server.cert), "keyfile": str(garbage)}, f"keyfile {garbage}"),
        ({"certfile": str(pki.server.cert), "keyfile": str(pki.alice.key)}, "keyfile"),
        (
            {**tls_settings(pki), "cafile": str(missing), "require_certificate": True},
            f"cafile {missing}",
        ),
    ]
    for settings, needle in cases:
        broker = pyo3mq.Broker(listeners=["tls://127.0.0.1:0"], **settings)
        with pytest.raises(ValueError, match=re.escape(needle)):
            broker.start()
        assert not broker.running
    with pytest.raises(ValueError, match="needs a certfile"):
        pyo3mq.Broker(listeners=["wss://127.0.0.1:0"])
    with pytest.raises(ValueError, match="require_certificate needs a cafile"):
        pyo3mq.Broker(
            listeners=["tls://127.0.0.1:0"], require_certificate=True, **tls_settings(pki)
        )


def test_reload_tls_keeps_connections_and_serves_the_new_certificate(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, tmp_path: Path
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    broker = make_broker(listeners=["tls://127.0.0.1:0"], certfile=str(cert), keyfile=str(key))
    port = port_of(broker)
    assert peer_subject(port, pki) == "pyo3mq server"
    with tls_raw(port, client_context(pki)) as kept:
        assert kept.connect("kept").body == b"\x00\x00"
        kept.send(subscribe(1, ("r/t", 0)))
        assert kept.recv().type == 9
        shutil.copy(pki.server2.cert, cert)
        shutil.copy(pki.server2.key, key)
        assert broker.reload_tls() == 1
        assert peer_subject(port, pki) == "pyo3mq second"
        # The connection made before the reload goes on.
        kept.send(publish("r/t", b"after reload"))
        assert kept.recv().publish_fields() == ("r/t", None, b"after reload")
        # A broken file is refused whole: the listener keeps the last good certificate.
        key.write_text("broken\n")
        with pytest.raises(ValueError, match=f"keyfile {re.escape(str(key))}"):
            broker.reload_tls()
        assert peer_subject(port, pki) == "pyo3mq second"
        kept.send(PINGREQ)
        assert kept.recv().type == 13
    plain = make_broker()
    assert plain.reload_tls() == 0


def test_tls_handshake_that_never_completes_is_closed_at_connect_timeout(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    broker = make_broker(listeners=["tls://127.0.0.1:0"], connect_timeout=0.5, **tls_settings(pki))
    port = port_of(broker)
    # A silent client, and one that stops halfway through its ClientHello.
    silent = RawClient(port)
    partial = RawClient(port)
    partial.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    start = time.monotonic()
    for client in (silent, partial):
        with client:
            assert client.expect_closed(timeout=TIMEOUT) == b""
    assert time.monotonic() - start < TIMEOUT
    assert wait_stat(broker, "tls_handshakes_failed", 2) == 2
    wait_log("TLS handshake not complete within 500ms", count=2)
    assert len(log_lines("TLS handshake not complete within 500ms")) == 2


def test_plain_mqtt_on_a_tls_port_and_tls_on_a_plain_port(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, capfd: pytest.CaptureFixture[str]
) -> None:
    broker = make_broker(listeners=["tcp://127.0.0.1:0", "tls://127.0.0.1:0"], **tls_settings(pki))
    plain, tls = port_of(broker, 0), port_of(broker, 1)
    with RawClient(tls) as client:
        client.send(connect("plain-on-tls"))
        local = client.sock.getsockname()[1]
        client.expect_closed()
    line = wait_log(about(local, r"not a TLS handshake"))
    assert "plain MQTT on a TLS port" in line
    context = client_context(pki)
    with socket.create_connection(("127.0.0.1", plain), timeout=TIMEOUT) as sock:
        local = sock.getsockname()[1]
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            context.wrap_socket(sock, server_hostname="localhost")
    wait_log(about(local, r"closing connection"))
    assert len(log_lines(about(local))) == 1
    assert broker.stats()["tls_handshakes_failed"] == 1


async def test_aiomqtt_over_tls(make_broker: Callable[..., pyo3mq.Broker], pki: Pki) -> None:
    broker = make_broker(listeners=["tls://127.0.0.1:0"], **tls_settings(pki))
    params = aiomqtt.TLSParameters(ca_certs=str(pki.ca))
    async with aiomqtt.Client(
        "127.0.0.1", port_of(broker), identifier="aio-tls", tls_params=params
    ) as client:
        await client.subscribe("aio/#", qos=2)
        for qos in (0, 1, 2):
            await client.publish(f"aio/{qos}", b"x" * (70_000 * qos + 1), qos=qos)
        received = []
        async with asyncio.timeout(TIMEOUT):
            async for message in client.messages:
                received.append((str(message.topic), len(bytes(message.payload))))  # type: ignore[arg-type]
                if len(received) == 3:
                    break
    assert received == [("aio/0", 1), ("aio/1", 70_001), ("aio/2", 140_001)]


# --------------------------------------------------------------------------------------
# WebSockets with paho-mqtt
# --------------------------------------------------------------------------------------


class PahoWs:
    """A paho-mqtt 3.1.1 client over WebSocket whose messages land in a list."""

    def __init__(self, port: int, client_id: str, ca: Path | None = None) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, transport="websockets"
        )
        self.client.ws_set_options(path="/mqtt")
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        self.client.on_message = lambda _c, _u, m: self.messages.append(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def wait(self, count: int) -> list[paho.MQTTMessage]:
        deadline = time.monotonic() + TIMEOUT
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"{len(self.messages)} of {count} messages"
            time.sleep(0.01)
        return self.messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_paho_over_websockets(
    make_broker: Callable[..., pyo3mq.Broker], pki: Pki, secure: bool
) -> None:
    scheme = "wss" if secure else "ws"
    broker = make_broker(listeners=[f"{scheme}://127.0.0.1:0/mqtt"], **tls_settings(pki))
    port = port_of(broker)
    ca = pki.ca if secure else None
    sub = PahoWs(port, f"{scheme}-sub", ca)
    pub = PahoWs(port, f"{scheme}-pub", ca)
    try:
        sub.client.subscribe("ws/#", qos=1)
        sub_ready(broker, 1)
        sizes = [0, 1, 125, 126, 65_535, 65_536, 300_000]
        for size in sizes:
            pub.client.publish("ws/t", bytes(i % 251 for i in range(size)), qos=1)
        messages = sub.wait(len(sizes))
        assert [len(m.payload) for m in messages] == sizes
        assert messages[-1].payload == bytes(i % 251 for i in range(300_000))
    finally:
        sub.close()
        pub.close()
    stats = broker.stats()
    assert stats["websockets_upgrades"] == 2 and stats["websockets_upgrades_failed"] == 0
    if secure:
        assert stats["tls_handshakes"] == 2


# --------------------------------------------------------------------------------------
# WebSockets with raw frames
# --------------------------------------------------------------------------------------


class WsClient:
    """A WebSocket client that sends frames exactly as told (masked, as RFC 6455 5.1
    requires of clients, unless asked not to)."""

    def __init__(
        self,
        port: int,
        *,
        path: str = "/mqtt",
        protocols: str | None = "mqtt",
        context: ssl.SSLContext | None = None,
        extra: str = "",
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock: socket.socket = (
            context.wrap_socket(sock, server_hostname="localhost") if context else sock
        )
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        if protocols is not None:
            request += f"Sec-WebSocket-Protocol: {protocols}\r\n"
        self.sock.sendall((request + extra + "\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        self.status = lines[0]
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])
        }

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed("closed by the broker")
        self.buf += chunk

    def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True
    ) -> None:
        first = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            header = bytes([first, (0x80 if masked else 0) | n])
        elif n < 65536:
            header = bytes([first, (0x80 if masked else 0) | 126]) + struct.pack("!H", n)
        else:
            header = bytes([first, (0x80 if masked else 0) | 127]) + struct.pack("!Q", n)
        if masked:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            header += mask
        self.sock.sendall(header + payload)

    def recv_frame(self) -> tuple[int, bytes]:
        while len(self.buf) < 2:
            self._fill()
        first, second = self.buf[0], self.buf[1]
        assert second & 0x80 == 0, "server frames are not masked"
        n, at = second & 0x7F, 2
        if n == 126:
            while len(self.buf) < 4:
                self._fill()
            (n,), at = struct.unpack("!H", self.buf[2:4]), 4
        elif n == 127:
            while len(self.buf) < 10:
                self._fill()
            (n,), at = struct.unpack("!Q", self.buf[2:10]), 10
        while len(self.buf) < at + n:
            self._fill()
        payload, self.buf = self.buf[at : at + n], self.buf[at + n :]
        assert first & 0x80, "the broker sends unfragmented frames"
        return first & 0x0F, payload

    def recv_packets(self, count: int) -> list[Packet]:
        """MQTT packets from binary frames, wherever their boundaries fall."""
        stream = b""
        packets: list[Packet] = []
        while len(packets) < count:
            opcode, payload = self.recv_frame()
            assert opcode == 2, f"opcode {opcode}"
            stream += payload
            while len(stream) >= 2:
                length, mult, i = 0, 1, 1
                while stream[i] & 0x80:
                    length += (stream[i] & 0x7F) * mult
                    mult *= 128
                    i += 1
                length += stream[i] * mult
                if len(stream) < i + 1 + length:
                    break
                packets.append(Packet(stream[0], stream[i + 1 : i + 1 + length]))
                stream = stream[i + 1 + length :]
        assert stream == b""
        return packets

    def expect_eof(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
        pytest.fail("the broker did not close the connection")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ws_broker(make_broker: Callable[..., pyo3mq.Broker], pki: Pki) -> pyo3mq.Broker:
    return make_broker(
        listeners=["ws://127.0.0.1:0", "wss://127.0.0.1:0/mqtt/secure"],
        connect_timeout=1.0,
        **tls_settings(pki),
    )


def test_ws_subprotocol_negotiation(ws_broker: pyo3mq.Broker) -> None:
    """[MQTT-6.0.0-4] the server answers with "mqtt"; MQTT 3.1 clients' "mqttv3.1" is
    accepted; a list without either is refused."""
    port = port_of(ws_broker)
    for offered, chosen in [
        ("mqtt", "mqtt"),
        ("wamp, mqtt", "mqtt"),
        ("mqttv3.1", "mqttv3.1"),
        (None, None),
    ]:
        client = WsClient(port, protocols=offered)
        try:
            assert client.status == "HTTP/1.1 101 Switching Protocols"
            assert client.headers.get("sec-websocket-protocol") == chosen
        finally:
            client.close()
    refused = WsClient(port, protocols="wamp")
    try:
        assert refused.status.startswith("HTTP/1.1 400")
        refused.expect_eof()
    finally:
        refused.close()


def test_ws_packets_across_frames_and_frames_with_several_packets(
    ws_broker: pyo3mq.Broker,
) -> None:
    """[MQTT-6.0.0-2]: CONNECT split over three frames (one a fragmented message with a
    ping between its fragments), SUBSCRIBE + PUBLISH + PINGREQ in one frame."""
    client = WsClient(port_of(ws_broker))
    try:
        hello = connect("frames", keepalive=30)
        client.send_frame(2, hello[:3])
        client.send_frame(2, hello[3:9], fin=False)
        client.send_frame(9, b"are you there")  # a ping between fragments
        client.send_frame(0, hello[9:])
        assert client.recv_frame() == (10, b"are you there")
        assert client.recv_packets(1)[0].body == b"\x00\x00"
        client.send_frame(2, subscribe(1, ("f/t", 0)) + publish("f/t", b"one frame") + PINGREQ)
        answers = {p.type: p for p in client.recv_packets(3)}
        assert sorted(answers) == [3, 9, 13]  # PUBLISH, SUBACK, PINGRESP
        assert answers[3].publish_fields() == ("f/t", None, b"one frame")
        # A packet larger than one frame's 16-bit length, split across frames at odd places.
        big = publish("f/t", bytes(range(256)) * 400)
        for start in range(0, len(big), 33_333):
            client.send_frame(2, big[start : start + 33_333])
        assert client.recv_packets(1)[0].publish_fields()[2] == bytes(range(256)) * 400
    finally:
        client.close()


def test_ws_text_frame_closes_the_connection(
    ws_broker: pyo3mq.Broker, capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-6.0.0-1]: a text frame closes the connection (close status 1003)."""
    client = WsClient(port_of(ws_broker))
    try:
        client.send_frame(2, connect("texter"))
        assert client.recv_packets(1)[0].body == b"\x00\x00"
        local = client.sock.getsockname()[1]
        client.send_frame(1, b"hello")
        assert client.recv_frame() == (8, struct.pack("!H", 1003))
        client.send_frame(8, struct.pack("!H", 1003))
        client.expect_eof()
    finally:
        client.close()
    wait_log(about(local, r"\[MQTT-6\.0\.0-1\]"))


def test_ws_unmasked_frame_is_a_protocol_error(ws_broker: pyo3mq.Broker) -> None:
    client = WsClient(port_of(ws_broker))
    try:
        client.send_frame(2, connect("unmasked"), masked=False)
        assert client.recv_frame() == (8, struct.pack("!H", 1002))
        client.expect_eof()
    finally:
        client.close()


def test_ws_close_handshake_both_ways(ws_broker: pyo3mq.Broker) -> None:
    # The client closes: the broker echoes the status, then closes TCP.
    client = WsClient(port_of(ws_broker))
    try:
        client.send_frame(2, connect("closer", will=("w/t", b"gone", 0, False)))
        assert client.recv_packets(1)[0].body == b"\x00\x00"
        client.send_frame(8, struct.pack("!H", 1000) + b"bye")
        assert client.recv_frame() == (8, struct.pack("!H", 1000))
        client.expect_eof()
    finally:
        client.close()
    # The broker closes (a second connection takes the client id over): its close frame
    # comes first, and it waits for ours.
    first = WsClient(port_of(ws_broker))
    second = WsClient(port_of(ws_broker))
    try:
        first.send_frame(2, connect("taken"))
        assert first.recv_packets(1)[0].body == b"\x00\x00"
        second.send_frame(2, connect("taken"))
        assert first.recv_frame() == (8, struct.pack("!H", 1000))
        first.send_frame(8, struct.pack("!H", 1000))
        first.expect_eof()
        assert second.recv_packets(1)[0].body == b"\x00\x00"
    finally:
        first.close()
        second.close()


def test_wss_with_raw_frames_on_its_own_path(ws_broker: pyo3mq.Broker, pki: Pki) -> None:
    port = port_of(ws_broker, 1)
    wrong = WsClient(port, context=client_context(pki))
    try:
        assert wrong.status.startswith("HTTP/1.1 404")
    finally:
        wrong.close()
    client = WsClient(port, path="/mqtt/secure", context=client_context(pki))
    try:
        client.send_frame(2, connect("secure") + subscribe(1, ("s/t", 1)))
        connack, suback = client.recv_packets(2)
        assert connack.body == b"\x00\x00" and suback.body == b"\x00\x01\x01"
    finally:
        client.close()


def test_http_without_upgrade_and_oversized_or_slow_upgrades(
    ws_broker: pyo3mq.Broker, capfd: pytest.CaptureFixture[str]
) -> None:
    port = port_of(ws_broker)
    with RawClient(port) as browser:
        browser.send(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        local = browser.sock.getsockname()[1]
        answer = browser.expect_closed()
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"\r\nUpgrade: websocket\r\n" in answer
    wait_log(about(local, r"without a WebSocket upgrade"))
    with RawClient(port) as huge:
        local_huge = huge.sock.getsockname()[1]
        huge.send(b"GET /mqtt HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 9000 + b"\r\n")
        assert huge.expect_closed().startswith(b"HTTP/1.1 431 ")
    wait_log(about(local_huge, r"over 8192 bytes"))
    with RawClient(port) as slow:
        local_slow = slow.sock.getsockname()[1]
        slow.send(b"GET /mqtt HTTP/1.1\r\n")
        assert slow.expect_closed(timeout=TIMEOUT) == b""
    wait_log(about(local_slow, r"no WebSocket upgrade within 1s"))
    with RawClient(port) as mqtt:
        mqtt.send(connect("mqtt-on-ws"))
        assert mqtt.expect_closed().startswith(b"HTTP/1.1 400 ")
    assert wait_stat(ws_broker, "websockets_upgrades_failed", 4) == 4
    for local_port in (local, local_huge, local_slow):
        assert len(log_lines(about(local_port))) == 1


# --------------------------------------------------------------------------------------
# Settings, $SYS and the command line
# --------------------------------------------------------------------------------------


def test_sys_topics_count_handshakes(
    make_broker: Callable[..., pyo3mq.Broker],
    pki: Pki,
    subscribers: Callable[[list[str]], subprocess.Popen[str]],
) -> None:
    broker = make_broker(
        listeners=["tls://127.0.0.1:0", "ws://127.0.0.1:0"], sys_interval=0.2, **tls_settings(pki)
    )
    with RawClient(port_of(broker)) as bad:
        bad.send(b"\x10\x00")
        bad.expect_closed()
    values: dict[str, str] = {}
    # Each subscriber's own handshake is published at a later tick: a few rounds show it.
    for _ in range(20):
        sub = subscribers(
            [
                *mosquitto(MOSQUITTO_SUB, port_of(broker), pki, "-v", "-C", "4"),
                "-t",
                "$SYS/broker/tls/#",
                "-t",
                "$SYS/broker/websockets/#",
            ]
        )
        out, err = sub.communicate(timeout=TIMEOUT)
        assert sub.returncode == 0, err
        values = dict(line.split(" ", 1) for line in out.splitlines())
        if values["$SYS/broker/tls/handshakes"] != "0":
            break
        time.sleep(0.2)
    assert values["$SYS/broker/tls/handshakes/failed"] == "1"
    assert int(values["$SYS/broker/tls/handshakes"]) >= 1
    assert values["$SYS/broker/websockets/upgrades"] == "0"
    assert values["$SYS/broker/websockets/upgrades/failed"] == "0"


def test_listener_settings_round_trip_and_refusals(pki: Pki) -> None:
    table = {"uri": "wss://127.0.0.1:0/x", "tls_version": "tlsv1.3", "cafile": str(pki.ca)}
    config = pyo3mq.BrokerConfig(
        listeners=["wss://127.0.0.1:0/x"], listener=[table], **tls_settings(pki)
    )
    assert config.listener == [table]
    assert pyo3mq.BrokerConfig.from_mapping(config.values()) == config
    for bad, needle in [
        ({"listener": [{"uri": "tls://127.0.0.1:9"}]}, "names no entry of listeners"),
        ({"listener": [{"uri": "wss://127.0.0.1:0/x", "certfle": "x"}]}, "unknown key"),
        ({"listener": [{"certfile": "x"}]}, "no uri"),
        ({"listener": ["wss://127.0.0.1:0/x"]}, "listener"),
        ({"tls_version": "tlsv1.1"}, "tls_version"),
        ({"listeners": ["quic://127.0.0.1:1"]}, "listeners"),
    ]:
        settings = {"listeners": ["wss://127.0.0.1:0/x"], **tls_settings(pki), **bad}
        with pytest.raises(ValueError, match=needle):
            pyo3mq.BrokerConfig(**settings)


def test_cli_quick_start_flags(pki: Pki) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyo3mq",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            "0",
            "--ws-port",
            "0",
            "--certfile",
            str(pki.server.cert),
            "--keyfile",
            str(pki.server.key),
            "--log-level",
            "warn",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ports = []
        for _ in range(3):
            line = proc.stdout.readline()
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)$", line.strip())
            assert match, line
            ports.append(int(match.group(1)))
        plain, tls, ws = ports
        with RawClient(plain) as client:
            assert client.connect("cli-plain").body == b"\x00\x00"
        with tls_raw(tls, client_context(pki)) as client:
            assert client.connect("cli-tls").body == b"\x00\x00"
        websocket = WsClient(ws)
        try:
            websocket.send_frame(2, connect("cli-ws"))
            assert websocket.recv_packets(1)[0].body == b"\x00\x00"
        finally:
            websocket.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyo3mq",
            "--port",
            "0",
            "--tls-port",
            "0",
            "--certfile",
            "/nonexistent/cert.pem",
            "--keyfile",
            str(pki.server.key),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert missing.returncode == 2
    assert "certfile /nonexistent/cert.pem" in missing.stderr


def test_cli_sighup_reloads_the_tls_certificate(pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pyo3mq", "--port", "0", "--tls-port", "0"),
            *("--certfile", str(cert), "--keyfile", str(key)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        tls = int(lines[1].strip().rsplit(":", 1)[1])
        assert peer_subject(tls, pki) == "pyo3mq server"
        shutil.copy(pki.server2.cert, cert)
        shutil.copy(pki.server2.key, key)
        proc.send_signal(signal.SIGHUP)
        for line in proc.stderr:
            if "SIGHUP received" in line:
                assert "TLS certificates reloaded for 1 listener(s)" in line
                break
        assert peer_subject(tls, pki) == "pyo3mq second"
        assert proc.poll() is None  # SIGHUP never stops it
    finally:
        proc.terminate()
        proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
