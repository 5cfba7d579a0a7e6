"""Outbound QoS 2 flows that the other suites leave out: unsubscribe during a delivery,
PUBREL order, and a refused CONNECT for an id with a stored session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pyo3mq
from support.mqtt_raw import RawClient, ack, connect, publish, subscribe, unsubscribe

PUBREC, PUBREL, PUBCOMP = 0x50, 0x62, 0x70


def deliveries(c: RawClient, n: int) -> list[tuple[str, int, bytes]]:
    out = []
    for _ in range(n):
        p = c.recv()
        assert p.type == 3, f"expected PUBLISH, got {p.first:#x}"
        topic, pkid, payload = p.publish_fields()
        assert pkid is not None
        out.append((topic, pkid, payload))
    return out


def test_unsubscribe_completes_qos2_delivery_under_way(port: int) -> None:
    """[MQTT-3.10.4-3] [MQTT-3.10.4-2] A QoS 2 delivery started before UNSUBSCRIBE is
    completed after it (PUBREC still gets PUBREL, PUBCOMP is accepted), and nothing new
    is delivered for the removed subscription."""
    with RawClient(port) as sub, RawClient(port) as pub:
        sub.connect("flow-unsub")
        sub.send(subscribe(1, ("u/t", 2)))
        assert sub.recv().body == b"\x00\x01\x02"
        pub.connect("flow-unsub-pub")
        pub.send(publish("u/t", b"first", qos=2, pkid=1))
        assert pub.recv().first == PUBREC
        [(topic, pkid, payload)] = deliveries(sub, 1)
        assert (topic, payload) == ("u/t", b"first")
        # PUBREC withheld; unsubscribe first.
        sub.send(unsubscribe(2, "u/t"))
        unsuback = sub.recv()
        assert (unsuback.first, unsuback.body) == (0xB0, b"\x00\x02")
        sub.send(ack(PUBREC, pkid))
        rel = sub.recv()
        assert (rel.first, rel.pkid) == (PUBREL, pkid)
        sub.send(ack(PUBCOMP, pkid))
        # A later publish is not delivered; a PINGRESP proves the broker answered.
        pub.send(ack(PUBREL, 1))
        assert pub.recv().first == PUBCOMP
        pub.send(publish("u/t", b"after", qos=2, pkid=2))
        assert pub.recv().first == PUBREC
        sub.send(b"\xc0\x00")
        assert sub.recv().first == 0xD0


def test_pubrel_order_follows_pubrec_order(port: int) -> None:
    """[MQTT-4.6.0-4] The broker's PUBRELs go out in the order the subscriber's PUBRECs
    arrived, even when that is not the order of the deliveries."""
    with RawClient(port) as sub, RawClient(port) as pub:
        sub.connect("flow-order")
        sub.send(subscribe(1, ("o/t", 2)))
        sub.recv()
        pub.connect("flow-order-pub")
        for i in range(1, 6):
            pub.send(publish("o/t", b"m%d" % i, qos=2, pkid=i))
        ids = [pkid for _, pkid, _ in deliveries(sub, 5)]
        order = [ids[3], ids[0], ids[4], ids[2], ids[1]]
        sub.send(b"".join(ack(PUBREC, i) for i in order))
        rels = [sub.recv() for _ in order]
        assert [(p.first, p.pkid) for p in rels] == [(PUBREL, i) for i in order]


def test_refused_connect_for_stored_session_has_no_session_present(tmp_path: Path) -> None:
    """[MQTT-3.2.2-4] [MQTT-3.2.2-5] A CONNACK refusing an id that has a stored session
    says session-present 0 and is followed by a close."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "dev", "right"],
        check=True,
        capture_output=True,
    )
    with pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], password_file=str(passwd)) as broker:
        port = broker.addresses[0][1]
        with RawClient(port) as c:
            ack0 = c.connect("stored", clean=False, username="dev", password=b"right")
            assert ack0.body == b"\x00\x00"
            c.send(subscribe(1, ("s/#", 1)))
            c.recv()
        with RawClient(port) as c:
            ok = c.connect("stored", clean=False, username="dev", password=b"right")
            assert ok.body == b"\x01\x00", "the session is stored"
        with RawClient(port) as c:
            c.send(connect("stored", clean=False, username="dev", password=b"wrong"))
            assert c.expect_closed() == b"\x20\x02\x00\x04"


def test_heavily_pipelined_qos1_acks_all_arrive_in_order(port: int) -> None:
    """[MQTT-4.6.0-2] [MQTT-2.3.1-6] 60,000 QoS 1 PUBLISHes written as one stream get
    every PUBACK, with the right ids, in publish order."""
    import socket
    import threading

    count = 60_000
    with RawClient(port, timeout=30) as pub:
        pub.connect("no-reader")
        data = b"".join(
            publish("nr/t", b"x" * 32, qos=1, pkid=(i % 65535) + 1) for i in range(count)
        )
        sender_done = threading.Event()

        def send_all() -> None:
            s = socket.socket(fileno=pub.sock.fileno())
            try:
                s.settimeout(60)
                s.sendall(data)
            finally:
                s.detach()
                sender_done.set()

        sender = threading.Thread(target=send_all)
        sender.start()
        acks = [pub.recv(timeout=30) for _ in range(count)]
        sender.join(timeout=60)
        assert sender_done.is_set()
        assert [a.first for a in acks] == [0x40] * count
        assert [a.pkid for a in acks] == [(i % 65535) + 1 for i in range(count)]
