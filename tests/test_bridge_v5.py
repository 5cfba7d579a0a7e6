"""Bridges that speak MQTT 5.0 to the remote (`bridge_protocol_version = "mqttv50"`):
message properties cross the bridge both ways, `in` lines are subscribed with No Local
(no loop without `try_private`) and Retain As Published. The remote is Debian's
mosquitto 2.0, or another pyo3mq broker.

Every wait is for something to happen (the bridge's retained state notification, a
message, a marker sent last), never a fixed sleep for ordering.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyo3mq
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pyo3mq import BridgeConfig, Broker
from support.mosquitto import free_port, run, terminate
from support.teardown import closed_at_teardown
from test_bridge import bridge, brokers, client, exchange_both, wait_state
from test_mqtt5 import Paho5
from test_pubsub import MARK, TIMEOUT, PahoClient

__all__ = ["brokers", "client"]  # fixtures, imported for their use here

USER = [("k", "1"), ("j", "2"), ("k", "3")]
EXPIRY = 120


@pytest.fixture
def client5() -> Iterator[Callable[..., Paho5]]:
    """`client5(port, client_id)`: a connected paho 5.0 client, closed after the test."""
    yield from closed_at_teardown(Paho5)


def bridge5(address: str, *topics: str, **settings: Any) -> BridgeConfig:
    settings.setdefault("bridge_protocol_version", "mqttv50")
    return bridge(address, *topics, **settings)


def properties(n: int, expiry: int | None = EXPIRY) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = USER
    p.ContentType = "application/json; charset=utf-8"
    p.ResponseTopic = "reply/here"
    p.CorrelationData = b"\x00\xff" + bytes([n])
    p.PayloadFormatIndicator = 1
    if expiry is not None:
        p.MessageExpiryInterval = expiry
    return p


def publish5(pub: Paho5, topic: str, payload: bytes, qos: int, **kwargs: Any) -> None:
    info = pub.client.publish(topic, payload, qos=qos, **kwargs)
    info.wait_for_publish(TIMEOUT)
    assert info.is_published(), f"paho: publish {topic!r} not completed"


def check_properties(msg: Any, n: int, sent_expiry: int = EXPIRY) -> None:
    """`msg` carries what `properties(n)` set; its expiry is what remained of it."""
    got = msg.properties.json()
    assert [tuple(kv) for kv in got["UserProperty"]] == USER
    assert got["ContentType"] == "application/json; charset=utf-8"
    assert got["ResponseTopic"] == "reply/here"
    assert msg.properties.CorrelationData == b"\x00\xff" + bytes([n])
    assert got["PayloadFormatIndicator"] == 1
    assert 0 < got["MessageExpiryInterval"] <= sent_expiry
    assert "TopicAlias" not in got and "SubscriptionIdentifier" not in got, got


def cross(
    from_port: int, to_port: int, topic: str, client5: Callable[..., Paho5], to_topic: str = ""
) -> None:
    """A 5.0 publisher on `from_port` sends QoS 0, 1, 2 messages with properties on
    `topic`; a 5.0 subscriber on `to_port` (subscribed first) gets all of them."""
    to_topic = to_topic or topic
    sub = client5(to_port, "sub5")
    assert [r.value for r in sub.subscribe(to_topic, 2)] == [2]
    pub = client5(from_port, "pub5")
    for qos in (0, 1, 2):
        publish5(pub, topic, b'{"n": %d}' % qos, qos, properties=properties(qos))
    sub.wait(lambda: len(sub.messages) == 3)
    for qos, msg in enumerate(sorted(sub.messages, key=lambda m: m.qos)):
        assert (msg.topic, msg.payload, msg.qos) == (to_topic, b'{"n": %d}' % qos, qos)
        check_properties(msg, qos)


def test_properties_cross_to_mosquitto(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    client5: Callable[..., Paho5],
) -> None:
    """A paho 5.0 publisher on pyo3mq -> an `out` line of a 5.0 bridge -> a paho 5.0
    subscriber on mosquitto: user properties (in order, a name repeated), content type,
    response topic, correlation data and payload format arrive as published, the
    message expiry as what remained of it, at each QoS, remapped by the line's prefixes."""
    remote = mosquitto("allow_anonymous true")
    _, port = brokers(bridge5(f"127.0.0.1:{remote}", "v5/# out 2 edge/ site1/"))
    wait_state(port, b"1", client)
    cross(port, remote, "edge/v5/t", client5, to_topic="site1/v5/t")


def test_properties_cross_from_mosquitto(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    client5: Callable[..., Paho5],
) -> None:
    """A paho 5.0 publisher on mosquitto -> an `in` line of a 5.0 bridge -> a paho 5.0
    subscriber on pyo3mq gets the properties; a 3.1.1 subscriber beside it gets the
    same payloads (without properties, which 3.1.1 cannot carry)."""
    remote = mosquitto("allow_anonymous true")
    _, port = brokers(bridge5(f"127.0.0.1:{remote}", "v5/# in 2"))
    wait_state(port, b"1", client)
    old = client(port)
    old.subscribe(("v5/#", 2))
    cross(remote, port, "v5/t", client5)
    got = sorted(old.take(3), key=lambda m: m.qos)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("v5/t", b'{"n": %d}' % qos, qos) for qos in (0, 1, 2)
    ]


@pytest.mark.parametrize("remote_kind", ["mosquitto", "pyo3mq"])
def test_retained_flag_survives_an_in_line(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    client5: Callable[..., Paho5],
    remote_kind: str,
) -> None:
    """The `in` lines are subscribed with Retain As Published: a retained message
    published on mosquitto while the bridge is subscribed reaches the bridge with its
    RETAIN flag, so pyo3mq retains it too (with its properties) for later subscribers.
    (A remote clears the flag of live deliveries to 5.0 subscribers without it.)"""
    remote = mosquitto("allow_anonymous true") if remote_kind == "mosquitto" else brokers()[1]
    _, port = brokers(bridge5(f"127.0.0.1:{remote}", "r/# in 1"))
    wait_state(port, b"1", client)
    live = client(port)
    live.subscribe(("r/#", 1))
    publish5(client5(remote, "pub5"), "r/kept", b"R", 1, retain=True, properties=properties(7))
    assert live.next_msg().payload == b"R"
    late = client5(port, "late5")
    late.subscribe("r/#", 1)
    late.wait(lambda: len(late.messages) == 1)
    msg = late.messages[0]
    assert (msg.topic, msg.payload, msg.retain) == ("r/kept", b"R", True)
    check_properties(msg, 7)


@pytest.mark.parametrize("remote_kind", ["mosquitto", "pyo3mq"])
def test_both_without_try_private_does_not_loop(
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    remote_kind: str,
) -> None:
    """A `both` line of a 5.0 bridge with `try_private = false` delivers every message
    exactly once on each side: the remote's subscription has No Local, so it does not
    send the bridge's own messages back (a 3.1.1 bridge without `try_private` gets them
    echoed: tests/test_bridge.py::test_both_does_not_loop)."""
    remote = mosquitto("allow_anonymous true") if remote_kind == "mosquitto" else brokers()[1]
    _, port = brokers(bridge5(f"127.0.0.1:{remote}", "room/# both 1", try_private=False))
    on_local, on_remote = exchange_both(port, remote, client)
    sent = sorted([b"L%d" % i for i in range(5)] + [b"R%d" % i for i in range(5)])
    assert on_remote == sent
    assert on_local == sent


def test_pyo3mq_to_pyo3mq_both_ways(
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    client5: Callable[..., Paho5],
) -> None:
    """Between two pyo3mq brokers a 5.0 bridge carries the properties out and in."""
    _, remote = brokers()
    _, port = brokers(bridge5(f"127.0.0.1:{remote}", "o/# out 2", "i/# in 2"))
    wait_state(port, b"1", client)
    cross(port, remote, "o/t", client5)
    cross(remote, port, "i/t", client5)


def test_expiry_counts_down_while_the_remote_is_away(
    tmp_path: Path,
    mosquitto: Callable[..., int],  # skips without mosquitto
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    client5: Callable[..., Paho5],
) -> None:
    """Messages that wait in the bridge's session for an unreachable remote keep
    counting down: one whose Message Expiry Interval ran out is not forwarded
    [MQTT-3.3.2-5]; the other arrives with what remained of its interval [MQTT-3.3.2-6],
    less than was sent by at least the time it waited."""
    remote_port = free_port()  # nothing listens there yet
    _, port = brokers(bridge5(f"127.0.0.1:{remote_port}", "q/# out 1"))
    pub = client5(port, "pub5")
    published = time.monotonic()
    # Retained, so that the remote keeps what the bridge forwards until the subscriber
    # below is there, whenever the bridge connects.
    publish5(pub, "q/short", b"gone", 1, retain=True, properties=properties(1, expiry=1))
    publish5(pub, "q/long", b"kept", 1, retain=True, properties=properties(2, expiry=EXPIRY))
    # Time has to pass for the interval to run out: not an ordering wait.
    time.sleep(2.2)
    proc = run(tmp_path / "remote.conf", remote_port, ["allow_anonymous true"])
    try:
        wait_state(port, b"1", client)
        sink = client5(remote_port, "sink5")
        sink.subscribe("q/#", 1)
        # Sent after the others, through the same session: when it arrives, they have.
        publish5(pub, "q/mark", MARK, 1)
        sink.wait(lambda: any(m.payload == MARK for m in sink.messages))
        waited = int(time.monotonic() - published)
        got = [m for m in sink.messages if m.payload != MARK]
        assert [(m.topic, m.payload) for m in got] == [("q/long", b"kept")]
        check_properties(got[0], 2, sent_expiry=EXPIRY - waited)
    finally:
        terminate(proc)


@pytest.mark.parametrize(
    ("version", "seen"), [("mqttv31", "p1"), ("mqttv311", "p2"), ("mqttv50", "p5")]
)
def test_each_protocol_version_connects_as_it_says(
    tmp_path: Path,
    mosquitto: Callable[..., int],
    brokers: Callable[..., tuple[Broker, int]],
    client: Callable[..., PahoClient],
    version: str,
    seen: str,
) -> None:
    """`bridge_protocol_version` is the protocol of the bridge's CONNECT (mosquitto logs
    it as `(p1, ...)` for 3.1, `p2` for 3.1.1, `p5` for 5.0), and messages cross both
    ways with each, echoed back once only over 3.1."""
    log = tmp_path / "remote.log"
    remote = mosquitto("allow_anonymous true", f"log_dest file {log}", "log_type all")
    _, port = brokers(bridge5(f"127.0.0.1:{remote}", "x/# both 1", bridge_protocol_version=version))
    wait_state(port, b"1", client)
    assert f"as edge ({seen}, " in log.read_text()
    local_sub, remote_sub = client(port), client(remote)
    local_sub.subscribe(("x/#", 1))
    remote_sub.subscribe(("x/#", 1))
    client(port).publish("x/out", b"L", qos=1)
    client(remote).publish("x/in", b"R", qos=1)
    assert sorted(m.payload for m in remote_sub.take(2)) == [b"L", b"R"]
    # 3.1 has no bridge bit (Mosquitto's 0x83 is not implemented): mosquitto sends the
    # bridge's own message back once, and the bridge brings it in (never out again).
    # 3.1.1 sends the bit (try_private), 5.0 subscribes with No Local: no echo.
    want = [b"L", b"L", b"R"] if version == "mqttv31" else [b"L", b"R"]
    assert sorted(m.payload for m in local_sub.take(len(want))) == want
    assert local_sub.drain() == [] and remote_sub.drain() == []


def test_an_unknown_protocol_version_names_the_setting(tmp_path: Path) -> None:
    """A value that is not one of Mosquitto's names is a config error naming the bridge,
    the setting and the values it takes, from Python and from `pyo3mq check-config`
    (which accepts mqttv50 and prints it back)."""
    table = {
        "name": "b6",
        "address": "127.0.0.1:1883",
        "topic": ["a"],
        "bridge_protocol_version": "mqttv5",
    }
    with pytest.raises(ValueError, match="bridge") as info:
        pyo3mq.BrokerConfig(bridge=[table])
    error = str(info.value)
    assert 'bridge "b6"' in error and "bridge_protocol_version" in error
    assert '"mqttv5" is not a protocol version' in error and '"mqttv50"' in error

    config = tmp_path / "broker.toml"
    good = (
        '[broker]\nlisteners = ["tcp://127.0.0.1:0"]\n[[broker.bridge]]\nname = "cloud"\n'
        'address = "127.0.0.1:1"\ntopic = ["a both 1"]\nbridge_protocol_version = "{v}"\n'
    )
    for version, code in (("mqttv50", 0), ("mqttv6", 1)):
        config.write_text(good.replace("{v}", version))
        res = subprocess.run(
            [sys.executable, "-m", "pyo3mq", "check-config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == code, (res.stdout, res.stderr)
        if code:
            assert 'bridge_protocol_version "mqttv6" is not a protocol version' in res.stderr
        else:
            # The effective settings, a config file themselves, keep the bridge table.
            assert 'bridge_protocol_version = "mqttv50"' in res.stdout, res.stdout
