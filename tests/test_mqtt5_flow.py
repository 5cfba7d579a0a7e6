"""MQTT 5.0 connection-level features: Receive Maximum both ways, Topic Aliases, Will
Delay Interval, Session Expiry Interval across a restart with the SQLite store, Server
Keep Alive and Request Problem Information.

Real peers (paho-mqtt in v5 mode, `mosquitto_pub -V mqttv5`) for what works, raw sockets
(the 5.0 byte helpers of tests/test_mqtt5.py) for the violations and for withholding
acknowledgements. Time bounds are behavioural (a will does not come before its delay,
does come once it is over), never speed.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
import test_mqtt5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.mqtt_raw import Packet, RawClient, packet
from support.mqtt_raw import connect as connect_311
from support.mqtt_raw import subscribe as subscribe_311
from test_mqtt5 import (
    MOSQUITTO_PUB,
    expect_disconnect,
    props,
    publish5,
    publish5_fields,
    raw5,
    read_props,
    subscribe5,
)
from test_sessions import sqlite_query, wait_for

# The raw clients a test opens, closed after it (tests/test_mqtt5.py's fixture).
raw_clients = test_mqtt5.raw_clients

TIMEOUT = 5.0
PINGREQ, DISCONNECT = b"\xc0\x00", b"\xe0\x00"


def expiry(seconds: int) -> bytes:
    """A Session Expiry Interval property (0x11)."""
    return b"\x11" + seconds.to_bytes(4, "big")


def will_delay(seconds: int) -> bytes:
    """A will property section with a Will Delay Interval (0x18)."""
    return props(b"\x18" + seconds.to_bytes(4, "big"))


def alias(n: int) -> bytes:
    """A Topic Alias property (0x23)."""
    return b"\x23" + n.to_bytes(2, "big")


def port_of(broker: pyo3mq.Broker) -> int:
    return int(broker.addresses[0][1])


def watcher(port: int, topic: str, raw_clients: list[RawClient], qos: int = 0) -> RawClient:
    """A 3.1.1 client subscribed to `topic`."""
    w = RawClient(port)
    raw_clients.append(w)
    w.connect(f"watch-{topic.replace('/', '-')}")
    w.send(subscribe_311(1, (topic, qos)))
    assert w.recv().type == 9
    return w


def offline_subscriber(
    port: int, client_id: str, topic: str, session_expiry: int, more: bytes = b""
) -> None:
    """A 5.0 client with `session_expiry` (and the CONNECT properties `more`) subscribes
    to `topic` at QoS 1 and disconnects cleanly: its session waits offline."""
    c, (_, code, _) = raw5(
        port, client_id, clean=False, properties=props(expiry(session_expiry), more)
    )
    assert code == 0
    c.send(subscribe5(1, (topic, 1)))
    assert c.recv().type == 9
    c.send(DISCONNECT)
    c.expect_closed()
    c.close()


def resume(
    port: int, client_id: str, session_expiry: int, raw_clients: list[RawClient]
) -> tuple[RawClient, int]:
    """Reconnects `client_id` with Clean Start 0: the client and Session Present."""
    c, (present, code, _) = raw5(
        port, client_id, clean=False, properties=props(expiry(session_expiry))
    )
    raw_clients.append(c)
    assert code == 0
    return c, present


def next_publish(c: RawClient) -> tuple[str, bytes]:
    """(topic, payload) of the next packet, a 5.0 PUBLISH."""
    topic, _, _, payload = publish5_fields(c.recv())
    return topic, payload


def publishes(c: RawClient, n: int) -> list[tuple[str, bytes]]:
    """The next `n` packets, all PUBLISHes: (topic, payload) of each (3.1.1 framing)."""
    out = []
    for _ in range(n):
        topic, _, payload = c.recv().publish_fields()
        out.append((topic, payload))
    return out


def nothing_more(c: RawClient, within: float = 0.5) -> None:
    """No packet arrives within `within` seconds."""
    with pytest.raises(TimeoutError):
        c.recv(timeout=within)


# --------------------------------------------------------------------------- CONNACK


def test_connack_states_the_flow_settings(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.2.2-22] The CONNACK carries the configured Receive Maximum and Topic Alias
    Maximum, and a Server Keep Alive for a client asking for more than `max_keepalive`
    (or for none); a client within the limit keeps its own (no 0x13)."""
    broker = make_broker(receive_maximum=7, topic_alias_maximum=3, max_keepalive=20)
    port = port_of(broker)
    c, (_, code, properties) = raw5(port, "cfg-a", keepalive=60)
    raw_clients.append(c)
    assert code == 0
    assert (properties[0x21], properties[0x22], properties[0x13]) == (7, 3, 20)
    d, (_, _, properties) = raw5(port, "cfg-b", keepalive=0)
    raw_clients.append(d)
    assert properties[0x13] == 20
    e, (_, _, properties) = raw5(port, "cfg-c", keepalive=20)
    raw_clients.append(e)
    assert 0x13 not in properties


def test_server_keep_alive_is_enforced(
    make_broker: Callable[..., pyo3mq.Broker],
    raw_clients: list[RawClient],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """[MQTT-3.2.2-22] [MQTT-3.1.2-22] A client asking for Keep Alive 60 under
    `max_keepalive = 1` is told 1 s and held to it: silence ends in DISCONNECT 0x8D well
    before its own 60 s would (the 1.5x rule on the server's value)."""
    broker = make_broker(max_keepalive=1)
    c, (_, _, properties) = raw5(port_of(broker), "ka", keepalive=60)
    raw_clients.append(c)
    assert properties[0x13] == 1
    pkt = c.recv(timeout=10.0)
    assert (pkt.first, pkt.body) == (0xE0, b"\x8d")
    assert c.expect_closed() == b""
    assert "[MQTT-3.2.2-22]" in capfd.readouterr().err


# --------------------------------------------------------------------------- Receive Maximum


def test_client_over_the_receive_maximum_gets_0x93(
    make_broker: Callable[..., pyo3mq.Broker],
    raw_clients: list[RawClient],
    capfd: pytest.CaptureFixture[str],
) -> None:
    """[MQTT-4.9.0-2] (the broker's side) With `receive_maximum = 2`, a client may have
    two QoS 2 PUBLISHes unreleased; a resend of one is no new message, and PUBREL gives a
    unit back; one PUBLISH more than the quota is DISCONNECT 0x93 and is not delivered."""
    broker = make_broker(receive_maximum=2)
    port = port_of(broker)
    w = watcher(port, "rm/in", raw_clients)
    c, (_, _, properties) = raw5(port, "greedy")
    raw_clients.append(c)
    assert properties[0x21] == 2
    for pkid in (1, 2):
        c.send(publish5("rm/in", b"m%d" % pkid, qos=2, pkid=pkid))
        assert c.recv().first == 0x50
    # The same id again (DUP): acknowledged again, not a third message.
    c.send(b"\x3c" + publish5("rm/in", b"m1", qos=2, pkid=1)[1:])
    pubrec = c.recv()
    assert (pubrec.first, pubrec.pkid) == (0x50, 1)
    # PUBREL 1 frees one unit: a third message fits.
    c.send(b"\x62\x02\x00\x01")
    assert c.recv().first == 0x70
    c.send(publish5("rm/in", b"m3", qos=2, pkid=3))
    assert c.recv().first == 0x50
    # Ids 2 and 3 are unreleased: a QoS 1 PUBLISH is one too many.
    c.send(publish5("rm/in", b"m4", qos=1, pkid=4))
    expect_disconnect(c, 0x93)
    assert publishes(w, 3) == [("rm/in", b"m1"), ("rm/in", b"m2"), ("rm/in", b"m3")]
    nothing_more(w)
    assert "Receive Maximum of 2" in capfd.readouterr().err


def test_client_receive_maximum_caps_what_the_broker_sends(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.3.4-9] [MQTT-4.9.0-1] [MQTT-4.9.0-2] [MQTT-3.3.4-10] [MQTT-4.9.0-3] A
    subscriber with Receive Maximum 2 that withholds PUBACK gets exactly 2 of 10 QoS 1
    messages; each PUBACK releases one more, in order. With its quota used up it still
    gets SUBACK, PINGRESP and the PUBACK for its own QoS 1 publish."""
    sub, _ = raw5(port, "rm-sub", properties=props(b"\x21\x00\x02"))
    raw_clients.append(sub)
    sub.send(subscribe5(1, ("rm/out", 1)))
    assert sub.recv().type == 9
    pub, _ = raw5(port, "rm-pub")
    raw_clients.append(pub)
    for i in range(10):
        pub.send(publish5("rm/out", b"%d" % i, qos=1, pkid=i + 1))
        assert pub.recv().first == 0x40

    def next_message() -> tuple[int, bytes]:
        pkt = sub.recv()
        topic, pkid, _, payload = publish5_fields(pkt)
        assert topic == "rm/out" and pkid is not None
        return pkid, payload

    held = [next_message(), next_message()]
    assert [p for _, p in held] == [b"0", b"1"]
    nothing_more(sub)
    # Quota 0: everything but QoS 1/2 PUBLISHes still flows.
    sub.send(subscribe5(2, ("rm/other", 0)))
    assert sub.recv().type == 9
    sub.send(PINGREQ)
    assert sub.recv().first == 0xD0
    sub.send(publish5("rm/mine", b"x", qos=1, pkid=100))
    ack = sub.recv()
    assert (ack.first, ack.pkid) == (0x40, 100)
    got = [p for _, p in held]
    while len(got) < 10:
        pkid, _ = held.pop(0)
        sub.send(b"\x40\x02" + pkid.to_bytes(2, "big"))
        held.append(next_message())
        got.append(held[-1][1])
        if len(got) < 10:
            nothing_more(sub, 0.2)
    assert got == [b"%d" % i for i in range(10)]


# --------------------------------------------------------------------------- Topic Aliases


class PahoPublisher:
    """A paho-mqtt v5 client that publishes and waits for each acknowledgement."""

    def __init__(self, port: int, client_id: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        connected = threading.Event()
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert connected.wait(TIMEOUT)

    def publish(self, topic: str, payload: bytes, topic_alias: int | None = None) -> None:
        p = Properties(PacketTypes.PUBLISH)
        if topic_alias is not None:
            p.TopicAlias = topic_alias
        self.client.publish(topic, payload, qos=1, properties=p).wait_for_publish(TIMEOUT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho_publisher(port: int) -> Iterator[Callable[[str], PahoPublisher]]:
    made: list[PahoPublisher] = []

    def make(client_id: str) -> PahoPublisher:
        made.append(PahoPublisher(port, client_id))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_paho_topic_aliases_reach_subscribers_under_the_full_name(
    port: int,
    raw_clients: list[RawClient],
    paho_publisher: Callable[[str], PahoPublisher],
) -> None:
    """[MQTT-3.3.2-12] The broker accepts every alias from 1 to its Topic Alias Maximum
    (10): paho sets each with a topic, then publishes with the alias alone; a 5.0
    subscriber gets every message under its full topic and without the Topic Alias
    property (an alias belongs to the publisher's connection), a 3.1.1 one too. A
    topic with a known alias replaces its mapping."""
    sub5, _ = raw5(port, "alias-sub5")
    raw_clients.append(sub5)
    sub5.send(subscribe5(1, ("alias/#", 0)))
    assert sub5.recv().type == 9
    sub311 = watcher(port, "alias/#", raw_clients)
    pub = paho_publisher("alias-pub")
    expected = []
    for n in range(1, 11):
        pub.publish(f"alias/{n}", b"set", topic_alias=n)
        expected.append((f"alias/{n}", b"set"))
    for n in range(1, 11):
        pub.publish("", b"used", topic_alias=n)
        expected.append((f"alias/{n}", b"used"))
    pub.publish("alias/new", b"remapped", topic_alias=1)
    pub.publish("", b"again", topic_alias=1)
    expected += [("alias/new", b"remapped"), ("alias/new", b"again")]
    got5 = []
    for _ in expected:
        topic, _, properties, payload = publish5_fields(sub5.recv())
        assert 0x23 not in properties, "a Topic Alias was forwarded"
        got5.append((topic, payload))
    assert got5 == expected
    assert publishes(sub311, len(expected)) == expected


def test_mosquitto_pub_topic_alias(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.3.2-12] `mosquitto_pub -V mqttv5 -D publish topic-alias 1 --repeat 3`
    sends the topic with the alias once, then the alias alone: all three messages arrive
    under the topic."""
    w = watcher(port, "mosq/alias", raw_clients)
    subprocess.run(
        [MOSQUITTO_PUB, "-V", "mqttv5", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
         "-t", "mosq/alias", "-m", "hi", "-D", "publish", "topic-alias", "1",
         "--repeat", "3"],
        check=True, timeout=TIMEOUT, capture_output=True,
    )  # fmt: skip
    assert publishes(w, 3) == [("mosq/alias", b"hi")] * 3


@pytest.mark.parametrize(
    "first, bad, reason",
    [
        # Alias 2 was never set on this connection.
        pytest.param(
            publish5("ta/t", b"", properties=props(alias(1))),
            publish5("", b"", properties=props(alias(2))),
            0x82,
            id="unknown-alias",
        ),
        # [MQTT-3.3.2-12]'s bound: above the CONNACK's Topic Alias Maximum of 10.
        pytest.param(
            publish5("ta/t", b"", properties=props(alias(1))),
            publish5("ta/t", b"", properties=props(alias(11))),
            0x94,
            id="alias-above-maximum",
        ),
    ],
)
def test_topic_alias_violations(
    port: int,
    raw_clients: list[RawClient],
    capfd: pytest.CaptureFixture[str],
    first: bytes,
    bad: bytes,
    reason: int,
) -> None:
    """An unknown alias with an empty topic is DISCONNECT 0x82 (Protocol Error); an alias
    above the maximum 0x94 (Topic Alias invalid); the log names the rule."""
    c, _ = raw5(port, "ta-bad")
    raw_clients.append(c)
    c.send(first + bad)
    expect_disconnect(c, reason)
    assert "[MQTT-3.3.2-" in capfd.readouterr().err


def test_topic_aliases_do_not_outlive_the_connection(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.3.2-7] An alias set on one connection means nothing on the next, even for
    the same session: using it with an empty topic is DISCONNECT 0x82."""
    c, _ = raw5(port, "ta-sess", clean=False, properties=props(expiry(60)))
    c.send(publish5("ta/kept", b"", qos=1, properties=props(alias(1))))
    assert c.recv().first == 0x40
    c.send(publish5("", b"", qos=1, pkid=2, properties=props(alias(1))))
    assert c.recv().first == 0x40, "the alias works on its own connection"
    c.send(DISCONNECT)
    c.expect_closed()
    c.close()
    d, present = resume(port, "ta-sess", 60, raw_clients)
    assert present == 1
    d.send(publish5("", b"", qos=1, properties=props(alias(1))))
    expect_disconnect(d, 0x82)


def test_topic_alias_maximum_0_accepts_none(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """`topic_alias_maximum = 0`: the CONNACK has no Topic Alias Maximum (absent means
    0), and alias 1 is DISCONNECT 0x94."""
    broker = make_broker(topic_alias_maximum=0)
    c, (_, _, properties) = raw5(port_of(broker), "ta-none")
    raw_clients.append(c)
    assert 0x22 not in properties
    c.send(publish5("ta/t", b"", properties=props(alias(1))))
    expect_disconnect(c, 0x94)


# --------------------------------------------------------------------------- Will Delay


def will_client(
    port: int, client_id: str, delay: int, session_expiry: int, *, clean: bool = True
) -> RawClient:
    c, (_, code, _) = raw5(
        port,
        client_id,
        clean=clean,
        properties=props(expiry(session_expiry)),
        will=(f"will/{client_id}", b"gone", will_delay(delay)),
    )
    assert code == 0
    return c


def paho_drops_with_will(
    port: int, client_id: str, topic: str, payload: bytes, *, delay: int, session_expiry: int
) -> None:
    """A paho v5 client with a QoS 1 will of Will Delay Interval `delay` connects with
    `session_expiry`, then its socket closes without DISCONNECT (the network failed)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.WillDelayInterval = delay
    client.will_set(topic, payload, qos=1, properties=will_props)
    connect_props = Properties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = session_expiry
    client.connect("127.0.0.1", port, properties=connect_props)
    client.loop(TIMEOUT)
    assert client.is_connected()
    sock = client.socket()
    assert sock is not None
    sock.close()


def test_paho_will_is_published_after_its_delay(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.1.2-8] A paho client with Will Delay Interval 2 (session expiry 60) whose
    connection drops: its will is not published at once, and is once the delay is over."""
    w = watcher(port, "will/paho", raw_clients)
    paho_drops_with_will(port, "paho-will", "will/paho", b"paho gone", delay=2, session_expiry=60)
    nothing_more(w, 1.0)
    assert publishes(w, 1) == [("will/paho", b"paho gone")]


def test_reconnect_within_the_delay_cancels_the_will(
    port: int, raw_clients: list[RawClient], capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-3.1.3-9] Delay 2, expiry 60: the client drops and comes back with Clean
    Start 0 at once; the will is never published (not after the delay either)."""
    w = watcher(port, "will/back", raw_clients)
    c = will_client(port, "back", delay=2, session_expiry=60, clean=False)
    c.close()
    time.sleep(0.2)
    d = will_client(port, "back", delay=2, session_expiry=60, clean=False)
    raw_clients.append(d)
    nothing_more(w, 3.5)
    assert "[MQTT-3.1.3-9]" in capfd.readouterr().err


def test_takeover_within_the_delay_cancels_the_will(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.1.3-9] A new connection that takes the session over from a live one
    (Clean Start 0) is a reconnect within the delay: no will."""
    w = watcher(port, "will/over", raw_clients)
    c = will_client(port, "over", delay=2, session_expiry=60, clean=False)
    raw_clients.append(c)
    d = will_client(port, "over", delay=2, session_expiry=60, clean=False)
    raw_clients.append(d)
    expect_disconnect(c, 0x8E)
    nothing_more(w, 3.5)


def test_new_session_publishes_the_delayed_will_at_once(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.1.2-8] Delay 60: a reconnect with Clean Start 1 ends the old session, and
    the session's end publishes the will then, not after the delay."""
    w = watcher(port, "will/fresh", raw_clients)
    c = will_client(port, "fresh", delay=60, session_expiry=120, clean=False)
    c.close()
    nothing_more(w, 0.5)
    d, (present, _, _) = raw5(port, "fresh", clean=True)
    raw_clients.append(d)
    assert present == 0
    assert publishes(w, 1) == [("will/fresh", b"gone")]


def test_session_expiry_before_the_delay_publishes_the_will(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.1.2-8] Delay 60 with session expiry 1: the will comes when the session
    ends, long before the delay would run out."""
    w = watcher(port, "will/expiring", raw_clients)
    c = will_client(port, "expiring", delay=60, session_expiry=1, clean=False)
    c.close()
    assert publishes(w, 1) == [("will/expiring", b"gone")]


def test_will_delay_on_a_session_ending_with_the_connection_is_immediate(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.1.2-8] Session expiry 0: the session ends with the connection, so a will
    with a delay of 60 is published at once; DISCONNECT 0x00 still discards it."""
    w = watcher(port, "will/now", raw_clients)
    c = will_client(port, "now", delay=60, session_expiry=0)
    c.close()
    assert publishes(w, 1) == [("will/now", b"gone")]
    quiet = will_client(port, "quiet", delay=1, session_expiry=60)
    w2 = watcher(port, "will/quiet", raw_clients)
    quiet.send(DISCONNECT)
    quiet.expect_closed()
    quiet.close()
    nothing_more(w2, 2.0)


def test_delayed_wills_are_published_at_stop(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient], tmp_path: Path
) -> None:
    """A will still waiting out its delay when the broker stops is published then (as
    Mosquitto does), not lost: a persistent QoS 1 subscriber that was offline gets it
    from the SQLite store after the restart."""
    path = str(tmp_path / "wills.db")
    first = make_broker(session_store=f"sqlite:{path}")
    port = port_of(first)
    offline_subscriber(port, "keeper", "will/stop", 3600)
    paho_drops_with_will(port, "stopper", "will/stop", b"stopped", delay=3600, session_expiry=3600)
    wait_for(lambda: first.stats()["clients_disconnected"] == 2)
    first.stop()
    second = make_broker(session_store=f"sqlite:{path}")
    back, present = resume(port_of(second), "keeper", 3600, raw_clients)
    assert present == 1
    assert next_publish(back) == ("will/stop", b"stopped")


# --------------------------------------------------------------------------- Session Expiry


def test_session_expiry_survives_a_restart_with_sqlite(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient], tmp_path: Path
) -> None:
    """[MQTT-3.1.2-23] The SQLite store keeps each 5.0 session's Session Expiry Interval:
    after a restart, a session with 6 s expires on time (without a reconnect) while one
    with an hour is resumed with its queued message."""
    path = str(tmp_path / "v5.db")
    first = make_broker(session_store=f"sqlite:{path}")
    port = port_of(first)
    offline_subscriber(port, "exp-short", "exp/t", 6)
    offline_subscriber(port, "exp-long", "exp/t", 3600)
    pub, _ = raw5(port, "exp-pub")
    pub.send(publish5("exp/t", b"kept", qos=1))
    assert pub.recv().first == 0x40
    pub.close()
    first.stop()
    assert sorted(sqlite_query(path, "SELECT client_id, seconds FROM session_expiry")) == [
        ["exp-long", 3600],
        ["exp-short", 6],
    ]
    second = make_broker(session_store=f"sqlite:{path}", persist_interval=0.1)
    assert second.stats()["clients_disconnected"] == 2
    wait_for(lambda: second.stats()["clients_disconnected"] == 1)
    wait_for(lambda: sqlite_query(path, "SELECT client_id FROM sessions") == [["exp-long"]])
    port = port_of(second)
    assert resume(port, "exp-short", 6, raw_clients)[1] == 0
    d, present = resume(port, "exp-long", 3600, raw_clients)
    assert present == 1
    assert next_publish(d) == ("exp/t", b"kept")


def test_an_expired_session_is_not_resumed_after_a_restart(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient], tmp_path: Path
) -> None:
    """[MQTT-3.1.2-23] A session whose interval ran out while the broker was stopped
    ends at start, before any client can resume it; the interval the DISCONNECT set
    (1 s, from 3600 at CONNECT) is the one that counts, and the store keeps it."""
    path = str(tmp_path / "v5.db")
    first = make_broker(session_store=f"sqlite:{path}")
    c, _ = raw5(port_of(first), "shortened", clean=False, properties=props(expiry(3600)))
    c.send(packet(0xE0, b"\x00" + props(expiry(1))))
    c.expect_closed()
    c.close()
    first.stop()
    assert sqlite_query(path, "SELECT seconds FROM session_expiry") == [[1]]
    time.sleep(1.5)
    second = make_broker(session_store=f"sqlite:{path}")
    assert second.stats()["clients_disconnected"] == 0
    assert resume(port_of(second), "shortened", 60, raw_clients)[1] == 0


def test_a_version_2_store_still_loads(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient], tmp_path: Path
) -> None:
    """A store written before Session Expiry Intervals were kept (schema version 2) is
    read whole, its sessions resumed, and then upgraded to the current version (4)."""
    path = str(tmp_path / "old.db")
    first = make_broker(session_store=f"sqlite:{path}")
    old = RawClient(port_of(first))
    assert old.connect("old-311", clean=False).body == b"\x00\x00"
    old.send(subscribe_311(1, ("old/t", 1)))
    assert old.recv().type == 9
    old.send(DISCONNECT)
    old.expect_closed()
    old.close()
    first.stop()
    sqlite_query(path, "DROP TABLE session_expiry")
    sqlite_query(path, "PRAGMA user_version = 2")
    second = make_broker(session_store=f"sqlite:{path}")
    assert sqlite_query(path, "PRAGMA user_version") == [[4]]
    again = RawClient(port_of(second))
    raw_clients.append(again)
    assert again.connect("old-311", clean=False).body == b"\x01\x00"


# --------------------------------------------------------------------------- problem information


def test_request_problem_information_0(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient], tmp_path: Path
) -> None:
    """[MQTT-3.1.2-29] A client that sent Request Problem Information 0 gets PUBACK,
    PUBREC and SUBACK refusals (0x87) without Reason String (0x1F) or User Property
    (0x26)."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\n")
    broker = make_broker(acl_file=str(acl))
    c, _ = raw5(port_of(broker), "no-problems", properties=props(b"\x17\x00"))
    raw_clients.append(c)

    def ack_properties(pkt: Packet, skip: int) -> dict[int, Any]:
        if len(pkt.body) <= skip:  # the short form: no properties at all
            return {}
        properties, _ = read_props(pkt.body[skip:])
        return properties

    c.send(publish5("closed/t", b"x", qos=1, pkid=3))
    puback = c.recv()
    assert (puback.first, puback.body[:3]) == (0x40, b"\x00\x03\x87")
    c.send(publish5("closed/t", b"x", qos=2, pkid=4))
    pubrec = c.recv()
    assert (pubrec.first, pubrec.body[:3]) == (0x50, b"\x00\x04\x87")
    c.send(subscribe5(5, ("closed/t", 1)))
    suback = c.recv()
    assert suback.type == 9 and suback.body[-1:] == b"\x87"
    for pkt, skip in ((puback, 3), (pubrec, 3), (suback, 2)):
        found = ack_properties(pkt, skip)
        assert 0x1F not in found and 0x26 not in found, (pkt, found)


def test_v311_clients_keep_their_keep_alive_and_window(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """The 5.0 settings leave 3.1.1 clients as they were: `max_keepalive` does not cut
    a 3.1.1 client's Keep Alive (it cannot be told), and a session a 5.0 client used
    with Receive Maximum 1 gets `max_inflight` back when a 3.1.1 client resumes it."""
    broker = make_broker(max_keepalive=1, max_inflight=4)
    port = port_of(broker)
    c = RawClient(port)
    raw_clients.append(c)
    c.send(connect_311("ka-311", keepalive=60))
    assert c.recv().type == 2
    nothing_more(c, 2.5)  # 1.5 x 1 s would have closed it
    offline_subscriber(port, "window", "win/t", 60, more=b"\x21\x00\x01")
    pub, _ = raw5(port, "win-pub")
    raw_clients.append(pub)
    for i in range(6):
        pub.send(publish5("win/t", b"%d" % i, qos=1, pkid=i + 1))
        assert pub.recv().first == 0x40
    r = RawClient(port)
    raw_clients.append(r)
    assert r.connect("window", clean=False).body == b"\x01\x00"
    assert [p for _, p in publishes(r, 4)] == [b"0", b"1", b"2", b"3"]
    nothing_more(r)
