"""Bridges (`[[bridge]]`, Mosquitto's settings) against a real Debian mosquitto as the
remote, and between two pyo3mq brokers.

Every wait is for something to happen (the bridge's retained state notification, a
marker message), never a fixed sleep; "nothing more arrives" is checked for a bounded
settle time after a marker that was sent last.
"""

from __future__ import annotations

import datetime
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyo3mq
import pytest
import test_transports
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyo3mq import BridgeConfig, Broker
from pyo3mq.cli import load_config
from support.mosquitto import free_port, run, terminate
from support.mqtt_raw import Packet, RawClient, ack
from support.teardown import closed_at_teardown
from test_pubsub import MARK, SETTLE, TIMEOUT, Msg, PahoClient
from test_transports import Issued, Pki, wait_log

#: test_transports' certificates (a module-scoped fixture made with `cryptography`).
pki = test_transports.pki

STATE = "$SYS/broker/connection/edge/state"


@pytest.fixture
def client() -> Iterator[Callable[..., PahoClient]]:
    """`client(port, ...)`: a connected paho client, closed after the test."""
    yield from closed_at_teardown(PahoClient)


def bridge(address: str, *topics: str, **settings: Any) -> BridgeConfig:
    settings.setdefault("restart_timeout", (0.1, 0.5))
    settings.setdefault("remote_clientid", "edge")
    return BridgeConfig(name="edge", address=address, topic=list(topics), **settings)


def wait_state(port: int, want: bytes, make: Callable[..., PahoClient]) -> None:
    """Waits for the bridge's retained state notification on the local broker."""
    watcher = make(port)
    watcher.subscribe((STATE, 0))
    deadline = time.monotonic() + 3 * TIMEOUT
    while True:
        m = watcher.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
        if m.payload == want:
            return


def exactly(sub: PahoClient, topic: str) -> list[Msg]:
    """What `sub` got up to the marker on `topic` (sent last), and for a settle time
    after it."""
    got = sub.until(lambda m: m.payload == MARK and m.topic == topic, settle=SETTLE * 3)
    return [m for m in got if m.payload != MARK]


def local_broker(*bridges: BridgeConfig, **settings: Any) -> Broker:
    broker = Broker(listeners=["tcp://127.0.0.1:0"], bridges=list(bridges), **settings)
    broker.start()
    return broker


@pytest.fixture
def brokers() -> Iterator[Callable[..., tuple[Broker, int]]]:
    """`brokers(*bridges)`: a started pyo3mq broker with those bridges, and its port."""
    started: list[Broker] = []

    def make(*bridges: BridgeConfig, **settings: Any) -> tuple[Broker, int]:
        broker = local_broker(*bridges, **settings)
        started.append(broker)
        return broker, broker.addresses[0][1]

    yield make
    for broker in reversed(started):
        broker.stop()


def test_out_and_in_with_prefixes(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
) -> None:
    """`out` lines take the local prefix off and put the remote one on, `in` lines the
    other way round, at min(line QoS, message QoS); `""` stands for no prefix."""
    remote = mosquitto("allow_anonymous true")
    _, port = brokers(
        bridge(
            f"127.0.0.1:{remote}",
            "sensors/# out 1 edge/ site1/",
            'cmd/# in 2 "" cloud/',
            "plain out 2",
        )
    )
    wait_state(port, b"1", client)
    remote_sub = client(remote)
    remote_sub.subscribe(("#", 2))
    local_sub = client(port)
    local_sub.subscribe(("cmd/#", 2), ("edge/#", 2))
    local_pub, remote_pub = client(port), client(remote)

    local_pub.publish("edge/sensors/t1", b"21.5", qos=2)
    local_pub.publish("plain", b"p", qos=1)
    local_pub.publish("other/topic", b"not bridged", qos=1)
    local_pub.publish("edge/sensors/mark", MARK, qos=1)
    got = exactly(remote_sub, "site1/sensors/mark")
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("site1/sensors/t1", b"21.5", 1),  # line QoS 1 < message QoS 2
        ("plain", b"p", 1),  # message QoS 1 < line QoS 2
    ]

    remote_pub.publish("cloud/cmd/reboot", b"now", qos=1)
    remote_pub.publish("cmd/unprefixed", b"not bridged", qos=1)
    remote_pub.publish("cloud/cmd/mark", MARK, qos=1)
    got = exactly(local_sub, "cmd/mark")
    # The local copies of the local publishes came first; the remote's are what follow.
    incoming = [(m.topic, m.payload, m.qos) for m in got if m.topic.startswith("cmd/")]
    assert incoming == [("cmd/reboot", b"now", 1)]


@pytest.mark.parametrize("try_private", [True, False])
def test_both_does_not_loop(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    try_private: bool,
) -> None:
    """A `both` line delivers every message once on each side: the bridge never sends a
    message it brought in back out, and with `try_private` (Mosquitto's bridge bit in
    CONNECT) mosquitto does not send the bridge's own messages back to it. Without
    `try_private` mosquitto echoes them, and local subscribers get them twice: what the
    bit is for."""
    remote = mosquitto("allow_anonymous true")
    _, port = brokers(bridge(f"127.0.0.1:{remote}", "room/# both 1", try_private=try_private))
    on_local, on_remote = exchange_both(port, remote, client)
    sent = sorted([b"L%d" % i for i in range(5)] + [b"R%d" % i for i in range(5)])
    assert on_remote == sent
    echoed = [b"L%d" % i for i in range(5)] if not try_private else []
    assert on_local == sorted(sent + echoed)


def exchange_both(
    port: int, remote: int, make: Callable[..., PahoClient]
) -> tuple[list[bytes], list[bytes]]:
    """Over a `room/# both` line between `port` (bridged) and `remote`: five messages
    published on each side, then a marker; the payloads each side's subscriber got
    (sorted), local first."""
    wait_state(port, b"1", make)
    local_sub, remote_sub = make(port), make(remote)
    local_sub.subscribe(("room/#", 1))
    remote_sub.subscribe(("room/#", 1))
    local_pub, remote_pub = make(port), make(remote)
    for i in range(5):
        local_pub.publish("room/local", b"L%d" % i, qos=1)
        remote_pub.publish("room/remote", b"R%d" % i, qos=1)
    local_pub.publish("room/mark", MARK, qos=1)
    on_remote = exactly(remote_sub, "room/mark")
    on_local = exactly(local_sub, "room/mark")
    return sorted(m.payload for m in on_local), sorted(m.payload for m in on_remote)


def remote_mosquitto(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    """A mosquitto on `port` that keeps its sessions across a restart (persistence)."""
    lines = ["allow_anonymous true", "persistence true", f"persistence_location {tmp_path}/"]
    return run(tmp_path / "remote.conf", port, lines)


@contextmanager
def stream_across_a_remote_restart(
    tmp_path: Path,
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    qos: int,
    total: int,
) -> Iterator[PahoClient]:
    """Bridges `q/#` at `qos` to a mosquitto that keeps its sessions across a restart,
    publishes `total` messages and a marker at `qos` while it is stopped (after a third)
    and started again (after two thirds); yields the remote's persistent subscriber."""
    remote_port = free_port()
    remote = remote_mosquitto(tmp_path, remote_port)
    try:
        _, port = brokers(bridge(f"127.0.0.1:{remote_port}", f"q/# out {qos}"))
        wait_state(port, b"1", client)
        sink = PahoClient(remote_port, "sink", clean_session=False)
        sink.client.reconnect_delay_set(1, 1)
        try:
            sink.subscribe(("q/#", qos))
            pub = client(port)
            for i in range(total):
                if i == total // 3:
                    terminate(remote)
                if i == 2 * total // 3:
                    remote = remote_mosquitto(tmp_path, remote_port)
                pub.publish_async("q/n", b"%d" % i, qos=qos)
            pub.publish("q/mark", MARK, qos=qos)
            yield sink
        finally:
            sink.close()
    finally:
        terminate(remote)


def test_qos1_across_a_remote_restart_loses_nothing(
    mosquitto: Callable[..., int],  # skips without mosquitto
    tmp_path: Path,
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
) -> None:
    """QoS 1 messages published while the remote restarts wait in the bridge's session
    and reach the remote once it is back: every one arrives, and in order (a message the
    remote had but did not acknowledge may come twice, as QoS 1 allows)."""
    total = 300
    with stream_across_a_remote_restart(tmp_path, brokers, client, 1, total) as sink:
        seen: list[int] = []
        deadline = time.monotonic() + 6 * TIMEOUT
        while len(set(seen)) < total:
            m = sink.next_msg(timeout=max(deadline - time.monotonic(), 0.01))
            if m.payload != MARK:
                seen.append(int(m.payload))
        first = list(dict.fromkeys(seen))
        assert first == list(range(total))


def test_qos2_across_a_remote_restart_exactly_once(
    mosquitto: Callable[..., int],  # skips without mosquitto
    tmp_path: Path,
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
) -> None:
    """QoS 2 messages published while mosquitto (which keeps sessions across a restart)
    restarts reach its subscriber once each, in order. Mosquitto takes at most 20
    unreleased QoS 2 messages from a client and drops the next ones while acknowledging
    them (PUBREC): the bridge keeps fewer in flight, also when it sends its window again
    on the restarted remote."""
    with stream_across_a_remote_restart(tmp_path, brokers, client, 2, 300) as sink:
        seen = [int(m.payload) for m in exactly(sink, "q/mark")]
        assert seen == list(range(300))


def test_queue_for_the_remote_survives_a_restart_of_this_broker(
    mosquitto: Callable[..., int],  # skips without mosquitto
    tmp_path: Path,
    client: Callable[..., PahoClient],
) -> None:
    """With `cleansession = false` (the default) the bridge's local session is
    persistent: QoS 1 messages waiting for an unreachable remote are in the SQLite
    session store when this broker stops, and reach the remote after a restart."""
    remote_port = free_port()  # nothing listens there yet
    store = f"sqlite:{tmp_path / 'edge.db'}"
    config = bridge(f"127.0.0.1:{remote_port}", "q/# out 1")
    first = local_broker(config, session_store=store)
    try:
        pub = client(first.addresses[0][1])
        for i in range(20):
            pub.publish("q/n", b"%d" % i, qos=1)
        pub.close()
    finally:
        first.stop()
    remote = remote_mosquitto(tmp_path, remote_port)
    try:
        sink = client(remote_port)
        sink.subscribe(("q/#", 1))
        second = local_broker(config, session_store=store)
        try:
            got = [int(m.payload) for m in sink.take(20, timeout=3 * TIMEOUT)]
            assert got == list(range(20))
        finally:
            second.stop()
    finally:
        terminate(remote)


def test_state_notification_follows_the_remote(
    tmp_path: Path,
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
) -> None:
    """`$SYS/broker/connection/<remote_clientid>/state` is 1 while connected, 0 when the
    remote is gone, 1 again when it is back."""
    remote_port = free_port()
    remote = remote_mosquitto(tmp_path, remote_port)
    try:
        _, port = brokers(bridge(f"127.0.0.1:{remote_port}", "x out 0"))
        wait_state(port, b"1", client)
        terminate(remote)
        wait_state(port, b"0", client)
        remote = remote_mosquitto(tmp_path, remote_port)
        wait_state(port, b"1", client)
    finally:
        terminate(remote)


@pytest.mark.parametrize("remote_kind", ["mosquitto", "pyo3mq"])
def test_retained_messages_are_retained_on_the_other_side(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    remote_kind: str,
) -> None:
    """A retained message published while the bridge is up is retained on the other
    broker too: the remote (mosquitto, or pyo3mq seeing the bridge bit) delivers it to the
    bridge with its RETAIN flag, and the bridge publishes it with it, both ways."""
    remote = mosquitto("allow_anonymous true") if remote_kind == "mosquitto" else brokers()[1]
    _, port = brokers(bridge(f"127.0.0.1:{remote}", "r/# both 1"))
    wait_state(port, b"1", client)
    # Subscribed while the messages pass, so that they are live deliveries.
    local_sub, remote_sub = client(port), client(remote)
    local_sub.subscribe(("r/#", 1))
    remote_sub.subscribe(("r/#", 1))
    client(port).publish("r/from-local", b"L", qos=1, retain=True)
    client(remote).publish("r/from-remote", b"R", qos=1, retain=True)
    assert {m.payload for m in local_sub.take(2)} == {b"L", b"R"}
    assert {m.payload for m in remote_sub.take(2)} == {b"L", b"R"}
    for side in (port, remote):
        late = client(side)
        late.subscribe(("r/#", 1))
        got = late.take(2)
        assert {(m.topic, m.payload, m.retain) for m in got} == {
            ("r/from-local", b"L", True),
            ("r/from-remote", b"R", True),
        }


def test_addresses_are_tried_in_turn(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
) -> None:
    """With several addresses, one that refuses is passed over for the next."""
    remote = mosquitto("allow_anonymous true")
    dead = free_port()  # nothing listens there
    config = BridgeConfig(
        name="edge",
        address=[f"127.0.0.1:{dead}", f"127.0.0.1:{remote}"],
        topic=["f out 1"],
        remote_clientid="edge",
        restart_timeout=(0.1, 0.2),
    )
    _, port = brokers(config)
    wait_state(port, b"1", client)
    sink = client(remote)
    sink.subscribe(("f", 1))
    client(port).publish("f", b"via the second address", qos=1)
    assert sink.next_msg().payload == b"via the second address"


def test_pyo3mq_to_pyo3mq_both_ways_without_loops(
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
) -> None:
    """pyo3mq's own listener takes a bridge's CONNECT (level 0x84) and, like mosquitto,
    does not send the bridge's messages back to it: each message is delivered once per
    broker."""
    _, cloud = brokers()
    _, edge = brokers(bridge(f"127.0.0.1:{cloud}", 'data/# both 2 "" site/'))
    wait_state(edge, b"1", client)
    edge_sub, cloud_sub = client(edge), client(cloud)
    edge_sub.subscribe(("data/#", 2))
    cloud_sub.subscribe(("site/data/#", 2))
    edge_pub, cloud_pub = client(edge), client(cloud)
    for i in range(3):
        edge_pub.publish("data/up", b"u%d" % i, qos=2)
        cloud_pub.publish("site/data/down", b"d%d" % i, qos=1)
    edge_pub.publish("data/mark", MARK, qos=1)
    on_cloud = exactly(cloud_sub, "site/data/mark")
    on_edge = exactly(edge_sub, "data/mark")
    assert sorted((m.topic, m.payload) for m in on_cloud) == sorted(
        [("site/data/up", b"u%d" % i) for i in range(3)]
        + [("site/data/down", b"d%d" % i) for i in range(3)]
    )
    assert sorted((m.topic, m.payload) for m in on_edge) == sorted(
        [("data/up", b"u%d" % i) for i in range(3)] + [("data/down", b"d%d" % i) for i in range(3)]
    )


@pytest.mark.parametrize(
    ("table", "error"),
    [
        (
            {"name": "b1", "address": "127.0.0.1:1883", "topic": ["a/# sideways 1"]},
            'bridge "b1": topic line "a/# sideways 1" has direction "sideways"',
        ),
        (
            {"name": "b2", "address": "127.0.0.1:1883", "topic": ["a out 1 L/"]},
            "has a local prefix but no remote prefix",
        ),
        ({"name": "b3", "topic": ["a"]}, 'bridge "b3": has no address'),
        (
            {"name": "b4", "address": "127.0.0.1:1883", "topic": ["a"], "bridge_certfile": "c"},
            'bridge "b4": bridge_certfile needs TLS: set bridge_cafile or bridge_capath',
        ),
        (
            {
                "name": "b7",
                "address": "127.0.0.1:1883",
                "topic": ["a"],
                "bridge_cafile": "ca.pem",
                "bridge_certfile": "c.pem",
            },
            'bridge "b7": give both bridge_certfile and bridge_keyfile',
        ),
        (
            {"name": "b5", "address": "127.0.0.1:1883", "topic": ["a"], "tyr_private": False},
            'unknown key "tyr_private"',
        ),
        (
            {
                "name": "b6",
                "address": "127.0.0.1:1883",
                "topic": ["a"],
                "bridge_protocol_version": "mqttv6",
            },
            'bridge_protocol_version "mqttv6" is not a protocol version',
        ),
    ],
)
def test_config_errors_name_the_bridge_and_the_problem(table: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match="bridge") as info:
        pyo3mq.BrokerConfig(bridge=[table])
    assert error in str(info.value)


def test_toml_bridge_tables(tmp_path: Path) -> None:
    """`[[bridge]]` tables in the config file, read with Mosquitto's defaults filled in;
    a bad one is refused naming the bridge and the line."""
    path = tmp_path / "broker.toml"
    path.write_text(
        'listeners = ["tcp://127.0.0.1:0"]\n'
        "[[bridge]]\n"
        'name = "cloud"\n'
        'address = ["127.0.0.1:1884", "127.0.0.1:1885"]\n'
        'topic = ["sensors/# out 1 local/ remote/", "cmd/# in 2"]\n'
        'remote_clientid = "gw1"\n'
        'restart_timeout = "2 20"\n'
    )
    (table,) = load_config(str(path), None, None).bridge
    assert table["topic"] == ["sensors/# out 1 local/ remote/", "cmd/# in 2"]
    path.write_text('[[bridge]]\nname = "cloud"\naddress = "h:1"\ntopic = ["a in 3"]\n')
    with pytest.raises(ValueError, match='bridge "cloud": topic line "a in 3" has QoS "3"'):
        load_config(str(path), None, None)


def test_bridges_argument_takes_bridge_configs() -> None:
    with pytest.raises(TypeError, match="BridgeConfig"):
        Broker(bridges=[{"name": "x"}])  # type: ignore[list-item]


# --------------------------------------------------------------------------------------
# TLS towards the remote
# --------------------------------------------------------------------------------------


def tls_remote(
    mosquitto: Callable[..., int],
    pki: Pki,
    *,
    server: Issued | None = None,
    require_certificate: bool = False,
) -> tuple[int, int]:
    """A mosquitto with a plain listener (for the test's clients) and a TLS one (for the
    bridge), serving `server` (pki.server by default); returns (plain port, TLS port)."""
    server = server or pki.server
    tls_port = free_port()
    lines = [
        "allow_anonymous true",
        f"listener {tls_port} 127.0.0.1",
        f"cafile {pki.ca}",
        f"certfile {server.cert}",
        f"keyfile {server.key}",
    ]
    if require_certificate:
        lines.append("require_certificate true")
    return mosquitto(*lines), tls_port


def misnamed_server(pki: Pki, directory: Path) -> Issued:
    """A server certificate from pki's CA for `remote.example` only: not for 127.0.0.1."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.with_suffix(".key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "remote.example")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("remote.example")]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(directory / "misnamed.pem", directory / "misnamed.key")
    issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issued.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return issued


def tls_refused(port: int, why: str = "") -> str:
    """A pattern for the bridge's log line about a failed TLS handshake with `port`."""
    return rf"bridge cannot connect: TLS with 127\.0\.0\.1:{port} failed: .*{why}"


def forwards_both_ways(port: int, remote: int, client: Callable[..., PahoClient]) -> None:
    """`up/#` goes out, `down/#` comes in (the lines of the TLS tests' bridges)."""
    local_sub, remote_sub = client(port), client(remote)
    local_sub.subscribe(("down/#", 1))
    remote_sub.subscribe(("up/#", 1))
    client(port).publish("up/1", b"to the remote", qos=1)
    client(remote).publish("down/1", b"from the remote", qos=1)
    assert remote_sub.next_msg().payload == b"to the remote"
    assert local_sub.next_msg().payload == b"from the remote"


@pytest.mark.parametrize("trust", ["bridge_cafile", "bridge_capath"])
def test_out_and_in_over_tls(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    pki: Pki,
    tmp_path: Path,
    trust: str,
) -> None:
    """With `bridge_cafile` (or `bridge_capath`, a directory of CA files) the bridge
    speaks TLS to the remote's TLS listener and checks its certificate."""
    remote, tls_port = tls_remote(mosquitto, pki)
    if trust == "bridge_capath":
        capath = tmp_path / "cas"
        capath.mkdir()
        shutil.copy(pki.ca, capath / "test-ca.pem")
        (capath / "README").write_text("not a certificate: passed over\n")
        setting = {"bridge_capath": str(capath)}
    else:
        setting = {"bridge_cafile": str(pki.ca)}
    _, port = brokers(bridge(f"127.0.0.1:{tls_port}", "up/# out 1", "down/# in 1", **setting))
    wait_state(port, b"1", client)
    forwards_both_ways(port, remote, client)


def test_mutual_tls(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    pki: Pki,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A remote that requires a client certificate takes the bridge's
    (`bridge_certfile`, `bridge_keyfile`) and refuses a bridge without one."""
    remote, tls_port = tls_remote(mosquitto, pki, require_certificate=True)
    without = bridge(
        f"127.0.0.1:{tls_port}", "up/# out 1", bridge_cafile=str(pki.ca), remote_clientid="bare"
    )
    brokers(without)
    wait_log(tls_refused(tls_port, "set bridge_certfile and bridge_keyfile"))
    config = bridge(
        f"127.0.0.1:{tls_port}",
        "up/# out 1",
        "down/# in 1",
        bridge_cafile=str(pki.ca),
        bridge_certfile=str(pki.alice.cert),
        bridge_keyfile=str(pki.alice.key),
        bridge_tls_version="tlsv1.3",
    )
    _, port = brokers(config)
    wait_state(port, b"1", client)
    forwards_both_ways(port, remote, client)


def test_untrusted_remote_certificate_is_refused_logged_and_retried(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    pki: Pki,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A remote whose certificate is not from the bridge's CA is refused, with a log line
    saying so, and tried again after `restart_timeout`; nothing is forwarded to it."""
    remote, tls_port = tls_remote(mosquitto, pki)
    rogue_ca = pki.ca.with_name("rogue-ca.pem")
    _, port = brokers(bridge(f"127.0.0.1:{tls_port}", "up/# out 1", bridge_cafile=str(rogue_ca)))
    refused = tls_refused(tls_port, r"UnknownIssuer.*set bridge_cafile or bridge_capath")
    wait_log(refused, count=3)
    sink = client(remote)
    sink.subscribe(("up/#", 1))
    client(port).publish("up/1", b"x", qos=1)
    assert sink.drain(SETTLE * 3) == []


def test_bridge_insecure_skips_the_host_name_check_only(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    pki: Pki,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A certificate from a trusted CA for another name is refused, unless
    `bridge_insecure`; with it, a certificate from an untrusted CA is still refused."""
    server = misnamed_server(pki, tmp_path)
    remote, tls_port = tls_remote(mosquitto, pki, server=server)
    address = f"127.0.0.1:{tls_port}"
    brokers(bridge(address, "up/# out 1", bridge_cafile=str(pki.ca), remote_clientid="strict"))
    wait_log(tls_refused(tls_port, "not valid for name.*bridge_insecure = true"))
    rogue_ca = str(pki.ca.with_name("rogue-ca.pem"))
    untrusted = bridge(
        address, "up/# out 1", bridge_cafile=rogue_ca, bridge_insecure=True, remote_clientid="u"
    )
    brokers(untrusted)
    wait_log(tls_refused(tls_port, "UnknownIssuer"))
    config = bridge(
        address, "up/# out 1", "down/# in 1", bridge_cafile=str(pki.ca), bridge_insecure=True
    )
    _, port = brokers(config)
    wait_state(port, b"1", client)
    forwards_both_ways(port, remote, client)


@pytest.mark.parametrize("problem", ["missing", "malformed", "capath"])
def test_bad_tls_files_fail_the_start_naming_the_bridge_and_the_file(
    tmp_path: Path, pki: Pki, problem: str
) -> None:
    settings: dict[str, Any]
    if problem == "missing":
        path = tmp_path / "nowhere.pem"
        settings = {"bridge_cafile": str(pki.ca), "bridge_certfile": str(path)}
        settings["bridge_keyfile"] = str(pki.alice.key)
        expected = f'bridge "edge": bridge_certfile {path}: '
    elif problem == "malformed":
        path = tmp_path / "broken.pem"
        path.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        settings = {"bridge_cafile": str(path)}
        expected = f'bridge "edge": bridge_cafile {path}: not a PEM certificate file'
    else:
        empty = tmp_path / "empty"
        empty.mkdir()
        settings = {"bridge_capath": str(empty)}
        expected = f'bridge "edge": bridge_capath {empty}: no PEM certificate'
    broker = Broker(
        listeners=["tcp://127.0.0.1:0"], bridges=[bridge("127.0.0.1:1", "a out 1", **settings)]
    )
    with pytest.raises(ValueError, match="bridge") as info:
        broker.start()
    assert expected in str(info.value)
    assert not broker.running


def test_check_config_names_the_bridge_and_its_missing_file(tmp_path: Path) -> None:
    """`pyo3mq check-config` reads a bridge's TLS files as the start would."""
    missing = tmp_path / "missing-ca.pem"
    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\nlisteners = ["tcp://127.0.0.1:0"]\n[[broker.bridge]]\nname = "cloud"\n'
        f'address = "127.0.0.1:1"\ntopic = ["a out 1"]\nbridge_cafile = "{missing}"\n'
    )
    res = subprocess.run(
        [sys.executable, "-m", "pyo3mq", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1, res.stdout
    assert f'bridge "cloud": bridge_cafile {missing}: ' in res.stderr


# --------------------------------------------------------------------------------------
# QoS 2 across a reconnect
# --------------------------------------------------------------------------------------


class FakeRemote:
    """A listening socket on which the test plays the remote broker, packet by packet."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]

    def accept(self, session_present: bool) -> RawClient:
        """Takes the bridge's next connection and accepts its CONNECT (a persistent
        session, the remote client id) with `session_present`."""
        sock, _ = self.listener.accept()
        conn = RawClient.__new__(RawClient)
        conn.sock, conn.buf, conn.timeout = sock, b"", TIMEOUT
        connect = conn.recv()
        assert connect.type == 1
        flags = connect.body[7]
        assert not flags & 0x02, "the bridge asks for a persistent session"
        assert connect.body[12 : 12 + 4] == b"edge"
        conn.send(bytes([0x20, 2, int(session_present), 0]))
        return conn

    def close(self) -> None:
        self.listener.close()


def recv_kinds(conn: RawClient, n: int) -> dict[int, Packet]:
    """The next `n` packets, by packet type (one of each)."""
    got = [conn.recv() for _ in range(n)]
    kinds = {p.type: p for p in got}
    assert len(kinds) == n, [hex(p.first) for p in got]
    return kinds


def test_qos2_resumes_across_a_reconnect_instead_of_sending_again(
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
) -> None:
    """The remote drops the connection with one QoS 2 message PUBREC'd (PUBREL sent, no
    PUBCOMP) and one unacknowledged. On the next connection (session present) the bridge
    sends the PUBREL again and the PUBLISH with DUP=1, both under their first packet ids,
    and nothing as a new message: the remote delivers each once."""
    remote = FakeRemote()
    try:
        _, port = brokers(bridge(f"127.0.0.1:{remote.port}", "x/# out 2", notifications=False))
        first = remote.accept(session_present=False)
        pub = client(port)
        pub.publish("x/a", b"a", qos=2)
        a = first.recv()
        assert (a.qos, a.publish_fields()[0::2]) == (2, ("x/a", b"a"))
        id_a = a.publish_fields()[1]
        assert id_a is not None
        first.send(ack(0x50, id_a))  # PUBREC
        pub.publish("x/b", b"b", qos=2)
        got = recv_kinds(first, 2)
        assert got[6].pkid == id_a  # PUBREL
        _, id_b, payload = got[3].publish_fields()
        assert id_b is not None and payload == b"b" and not got[3].dup
        first.close()  # neither PUBCOMP for a nor PUBREC for b

        second = remote.accept(session_present=True)
        again = [second.recv(), second.recv()]
        assert (again[0].type, again[0].pkid) == (6, id_a)
        assert again[1].dup and again[1].publish_fields() == ("x/b", id_b, b"b")
        second.send(ack(0x70, id_a))  # PUBCOMP
        second.send(ack(0x50, id_b))
        rel = second.recv()
        assert (rel.type, rel.pkid) == (6, id_b)
        second.send(ack(0x70, id_b))
        pub.publish("x/mark", MARK, qos=2)
        mark = second.recv()
        assert mark.publish_fields()[0::2] == ("x/mark", MARK), "nothing else was sent"
        second.close()
    finally:
        remote.close()
