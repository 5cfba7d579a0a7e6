"""MQTT 5.0 against the broker: connection basics with real peers (paho-mqtt in v5 mode,
`mosquitto_pub`/`mosquitto_sub -V mqttv5`), the 3.1.1 <-> 5.0 mapping, and raw sockets
for the reason codes the broker sends before it closes.

The raw helpers below write 5.0 bytes by hand, apart from both the broker's codec and
`support.mqtt_raw` (which speaks 3.1.1), so a shared misreading cannot hide.
"""

from __future__ import annotations

import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from support.mqtt_raw import Closed, Packet, RawClient, packet, s
from support.mqtt_raw import connect as connect_311
from support.mqtt_raw import publish as publish_311
from support.mqtt_raw import subscribe as subscribe_311

TIMEOUT = 5.0
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = "/usr/bin/mosquitto_pub"
STDBUF = "/usr/bin/stdbuf"

# --------------------------------------------------------------------------- raw 5.0 bytes


def vbi(n: int) -> bytes:
    """A Variable Byte Integer, shortest form (spec 1.5.5)."""
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return vbi(len(body)) + body


def connect5(
    client_id: str = "",
    *,
    clean: bool = True,
    keepalive: int = 60,
    properties: bytes = b"\x00",
    will: tuple[str, bytes, bytes] | None = None,
) -> bytes:
    flags = 0x02 if clean else 0x00
    payload = s(client_id)
    if will is not None:
        topic, message, will_props = will
        flags |= 0x04
        payload += will_props + s(topic) + s(message)
    body = s("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive) + properties + payload
    return packet(0x10, body)


def publish5(
    topic: str, payload: bytes, *, qos: int = 0, pkid: int = 1, properties: bytes = b"\x00"
) -> bytes:
    body = s(topic) + (struct.pack("!H", pkid) if qos else b"") + properties + payload
    return packet(0x30 | (qos << 1), body)


def subscribe5(pkid: int, *filters: tuple[str, int], properties: bytes = b"\x00") -> bytes:
    body = struct.pack("!H", pkid) + properties
    for topic, options in filters:
        body += s(topic) + bytes([options])
    return packet(0x82, body)


def unsubscribe5(pkid: int, *filters: str) -> bytes:
    return packet(0xA2, struct.pack("!H", pkid) + b"\x00" + b"".join(s(f) for f in filters))


def read_props(data: bytes) -> tuple[dict[int, Any], bytes]:
    """Parses a property section: ({id: value or [values]}, the bytes after it)."""
    length, i, mult = 0, 0, 1
    while True:
        byte = data[i]
        length += (byte & 0x7F) * mult
        mult *= 128
        i += 1
        if not byte & 0x80:
            break
    section, rest = data[i : i + length], data[i + length :]
    out: dict[int, Any] = {}
    j = 0
    while j < len(section):
        pid = section[j]
        j += 1
        value: Any
        if pid in (0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A):
            value, j = section[j], j + 1
        elif pid in (0x13, 0x21, 0x22, 0x23):
            value, j = struct.unpack("!H", section[j : j + 2])[0], j + 2
        elif pid in (0x02, 0x11, 0x18, 0x27):
            value, j = struct.unpack("!I", section[j : j + 4])[0], j + 4
        elif pid == 0x0B:
            value, shift = 0, 0
            while True:
                byte = section[j]
                j += 1
                value |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
        elif pid == 0x26:
            (kl,) = struct.unpack("!H", section[j : j + 2])
            key = section[j + 2 : j + 2 + kl]
            j += 2 + kl
            (vl,) = struct.unpack("!H", section[j : j + 2])
            value = (key.decode(), section[j + 2 : j + 2 + vl].decode())
            j += 2 + vl
        else:  # strings and binary data
            (n,) = struct.unpack("!H", section[j : j + 2])
            value, j = section[j + 2 : j + 2 + n], j + 2 + n
        if pid in (0x26, 0x0B):
            out.setdefault(pid, []).append(value)
        else:
            out[pid] = value
    return out, rest


def connack5(pkt: Packet) -> tuple[int, int, dict[int, Any]]:
    """(session present, reason code, properties) of a 5.0 CONNACK."""
    assert pkt.type == 2, f"expected CONNACK, got {pkt.first:#x}"
    properties, rest = read_props(pkt.body[2:])
    assert rest == b""
    return pkt.body[0], pkt.body[1], properties


def publish5_fields(pkt: Packet) -> tuple[str, int | None, dict[int, Any], bytes]:
    """(topic, packet id, properties, payload) of a 5.0 PUBLISH."""
    assert pkt.type == 3, f"not a PUBLISH: {pkt.first:#x}"
    (tlen,) = struct.unpack("!H", pkt.body[:2])
    topic = pkt.body[2 : 2 + tlen].decode()
    rest = pkt.body[2 + tlen :]
    pkid = None
    if pkt.qos:
        (pkid,) = struct.unpack("!H", rest[:2])
        rest = rest[2:]
    properties, payload = read_props(rest)
    return topic, pkid, properties, payload


def raw5(
    port: int, client_id: str = "", **kwargs: Any
) -> tuple[RawClient, tuple[int, int, dict[int, Any]]]:
    c = RawClient(port)
    c.send(connect5(client_id, **kwargs))
    return c, connack5(c.recv())


def expect_disconnect(c: RawClient, reason: int) -> None:
    """The broker sends DISCONNECT with `reason` and no properties (never a Session
    Expiry Interval, [MQTT-3.14.2-2]), then nothing more, and closes [MQTT-3.14.4-1]
    [MQTT-3.14.4-2] [MQTT-4.13.2-1]."""
    pkt = c.recv()
    assert (pkt.first, pkt.body) == (0xE0, bytes([reason])), f"DISCONNECT {pkt}, want {reason:#x}"
    assert c.expect_closed() == b""


@pytest.fixture
def raw_clients() -> Iterator[list[RawClient]]:
    clients: list[RawClient] = []
    yield clients
    for c in clients:
        c.close()


# --------------------------------------------------------------------------- paho v5


class Paho5:
    """A paho-mqtt client in MQTT 5.0 mode with its messages and CONNACK collected."""

    def __init__(
        self,
        port: int,
        client_id: str,
        *,
        clean_start: bool = True,
        properties: Properties | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack: tuple[Any, Any, Any] | None = None
        self.subacks: list[list[ReasonCode]] = []
        self.got = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(
            "127.0.0.1", port, keepalive=30, clean_start=clean_start, properties=properties
        )
        self.client.loop_start()
        self.wait(lambda: self.connack is not None)

    def _on_connect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self.got:
            self.connack = (flags, reason, properties)
            self.got.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.got:
            self.messages.append(msg)
            self.got.notify_all()

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        with self.got:
            self.subacks.append(list(reasons))
            self.got.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        with self.got:
            assert self.got.wait_for(pred, timeout), "paho: timed out"

    def subscribe(self, topic: str, qos: int) -> list[ReasonCode]:
        n = len(self.subacks)
        self.client.subscribe(topic, qos)
        self.wait(lambda: len(self.subacks) > n)
        return self.subacks[n]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho5(port: int) -> Iterator[Callable[..., Paho5]]:
    made: list[Paho5] = []

    def make(client_id: str, **kwargs: Any) -> Paho5:
        c = Paho5(port, client_id, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_paho_v5_connack_properties_tell_the_truth(
    paho5: Callable[..., Paho5], broker: pyo3mq.Broker
) -> None:
    """[MQTT-3.1.4-5] [MQTT-3.2.2-2] A 5.0 CONNECT with properties is accepted with reason
    0x00; the CONNACK states the broker's Maximum Packet Size and its Topic Alias Maximum
    (`topic_alias_maximum`, 10), and leaves Receive Maximum (65535), Maximum QoS (2),
    Retain, Wildcard, Subscription Identifier and Shared Subscription availability (1) at
    their defaults, which are what the broker does."""
    connect_props = Properties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = 30
    connect_props.ReceiveMaximum = 10
    connect_props.UserProperty = ("k", "v")
    c = paho5("p5", properties=connect_props)
    assert c.connack is not None
    flags, reason, props = c.connack
    assert reason == 0 and not flags.session_present
    got = props.json()
    assert got["MaximumPacketSize"] == 1024 * 1024
    assert got["TopicAliasMaximum"] == 10
    # [MQTT-4.12.0-6]: no Authentication Method without one in CONNECT.
    for absent in (
        "ReceiveMaximum",
        "ServerKeepAlive",
        "MaximumQoS",
        "RetainAvailable",
        "WildcardSubscriptionAvailable",
        "SubscriptionIdentifierAvailable",
        "SharedSubscriptionAvailable",
        "AuthenticationMethod",
    ):
        assert absent not in got, got


def test_empty_client_id_gets_an_assigned_identifier(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.1.3-6] [MQTT-3.1.3-7] [MQTT-3.2.2-16] Empty client ids get distinct
    Assigned Client Identifiers in CONNACK; neither client is taken over."""
    ids = []
    for clean in (True, True, False):  # 5.0 allows Clean Start 0 with an empty id
        c, (present, reason, properties) = raw5(port, clean=clean)
        raw_clients.append(c)
        assert (present, reason) == (0, 0)
        ids.append(properties[0x12])
    assert len(set(ids)) == 3
    for c in raw_clients:
        c.send(b"\xc0\x00")
        assert c.recv().first == 0xD0


def test_paho_v5_properties_forwarded_untouched(paho5: Callable[..., Paho5]) -> None:
    """[MQTT-3.3.2-4] [MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18]
    [MQTT-3.3.2-20] User properties (in order, a name repeated), content type, response
    topic, correlation data and payload format reach a 5.0 subscriber as published, at
    each QoS (request/response passes through)."""
    sub = paho5("sub5")
    assert [r.value for r in sub.subscribe("v5/props", 2)] == [2]
    pub = paho5("pub5")
    for qos in (0, 1, 2):
        p = Properties(PacketTypes.PUBLISH)
        p.UserProperty = [("k", "1"), ("j", "2"), ("k", "3")]
        p.ContentType = "application/json; charset=utf-8"
        p.ResponseTopic = "v5/reply"
        p.CorrelationData = b"\x00\xff" + bytes([qos])
        p.PayloadFormatIndicator = 1
        pub.client.publish("v5/props", b'{"n": %d}' % qos, qos=qos, properties=p).wait_for_publish(
            TIMEOUT
        )
    sub.wait(lambda: len(sub.messages) == 3)
    for qos, msg in enumerate(sub.messages):
        assert (msg.topic, msg.payload, msg.qos) == ("v5/props", b'{"n": %d}' % qos, qos)
        got = msg.properties.json()
        assert [tuple(kv) for kv in got["UserProperty"]] == [("k", "1"), ("j", "2"), ("k", "3")]
        assert got["ContentType"] == "application/json; charset=utf-8"
        assert got["ResponseTopic"] == "v5/reply"
        assert msg.properties.CorrelationData == b"\x00\xff" + bytes([qos])
        assert got["PayloadFormatIndicator"] == 1


def test_v311_publisher_reaches_v5_subscriber_and_back(
    port: int, raw_clients: list[RawClient]
) -> None:
    """The 3.1.1 <-> 5.0 mapping: a 3.1.1 PUBLISH reaches a 5.0 subscriber as a 5.0
    PUBLISH with an empty property section [MQTT-2.2.2-1]; a 5.0 PUBLISH with properties
    reaches a 3.1.1 subscriber as 3.1.1 bytes, without them."""
    v5, (_, reason, _) = raw5(port, "v5-sub")
    raw_clients.append(v5)
    assert reason == 0
    v5.send(subscribe5(1, ("map/#", 1)))
    suback = v5.recv()
    assert (suback.first, suback.body) == (0x90, b"\x00\x01\x00\x01")
    old = RawClient(port)
    raw_clients.append(old)
    assert old.connect("v311-sub").body == b"\x00\x00"
    old.send(subscribe_311(1, ("map/#", 1)))
    assert old.recv().body == b"\x00\x01\x01"
    # 3.1.1 -> 5.0 (and the 3.1.1 subscriber gets its own copy).
    pub = RawClient(port)
    raw_clients.append(pub)
    pub.connect("v311-pub")
    pub.send(publish_311("map/a", b"from 3.1.1", qos=1, pkid=5))
    assert pub.recv().body == b"\x00\x05"
    topic, pkid, properties, payload = publish5_fields(v5.recv())
    assert (topic, properties, payload) == ("map/a", {}, b"from 3.1.1")
    v5.send(packet(0x40, struct.pack("!H", pkid or 0)))
    assert old.recv().publish_fields()[::2] == ("map/a", b"from 3.1.1")
    # 5.0 -> 3.1.1: the properties are left out; the 5.0 subscriber keeps them.
    user = b"\x26" + s("k") + s("v")
    v5.send(publish5("map/b", b"from 5.0", properties=props(user, b"\x03" + s("text/plain"))))
    got = old.recv()
    assert (got.first, got.body) == (0x30, s("map/b") + b"from 5.0")
    topic, _, properties, payload = publish5_fields(v5.recv())
    assert (topic, payload) == ("map/b", b"from 5.0")
    assert properties == {0x26: [("k", "v")], 0x03: b"text/plain"}


def test_mosquitto_v5_user_properties_and_content_type(port: int) -> None:
    """mosquitto_pub -V mqttv5 -D publish ... to mosquitto_sub -V mqttv5: user property,
    content type, correlation data and message expiry arrive (%P %C %D %E)."""
    sub = subprocess.Popen(
        [STDBUF, "-oL", MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
         "-t", "mosq5/t", "-q", "1", "-C", "1", "-W", "10", "-F", "%t|%P|%C|%D|%E|%p"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # let it subscribe (it prints nothing until a message)
        pub = subprocess.run(
            [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1",
             "-t", "mosq5/t", "-m", "hello v5",
             "-D", "publish", "user-property", "colour", "blue",
             "-D", "publish", "content-type", "text/plain",
             "-D", "publish", "correlation-data", "c0rr",
             "-D", "publish", "message-expiry-interval", "600"],
            capture_output=True, text=True, timeout=TIMEOUT * 2, check=False,
        )  # fmt: skip
        assert pub.returncode == 0, pub.stderr
        out, err = sub.communicate(timeout=TIMEOUT * 2)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.communicate()
    assert sub.returncode == 0, err
    topic, user, content_type, correlation, expiry, payload = out.strip().split("|")
    assert (topic, user, content_type, correlation, payload) == (
        "mosq5/t",
        "colour:blue",
        "text/plain",
        "c0rr",
        "hello v5",
    )
    # Forwarded at once: the remaining interval, rounded up, is still 600 [MQTT-3.3.2-6].
    assert expiry == "600"


def test_mosquitto_pub_v5_acks(port: int) -> None:
    """mosquitto_pub -V mqttv5 at QoS 1 and 2 completes its flows against the broker."""
    for qos in ("1", "2"):
        r = subprocess.run(
            [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-d",
             "-q", qos, "-t", "mosq5/acks", "-m", "x"],
            capture_output=True, text=True, timeout=TIMEOUT * 2, check=False,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "received CONNACK (0)" in r.stdout
        assert ("received PUBACK" if qos == "1" else "received PUBCOMP") in r.stdout, r.stdout


# --------------------------------------------------------------------------- reason codes


def test_suback_and_unsuback_reason_codes(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.9.3-1] [MQTT-3.9.3-2] [MQTT-3.11.3-1] [MQTT-3.11.3-2] SUBACK: granted QoS,
    0x8F for an invalid filter, the granted QoS for a shared subscription; UNSUBACK:
    0x00 for a removed subscription, 0x11 for one that did not exist, in order."""
    c, _ = raw5(port, "codes")
    raw_clients.append(c)
    c.send(subscribe5(7, ("a/b", 2), ("a/#/b", 1), ("$share/g/t", 1), ("c", 0)))
    suback = c.recv()
    assert (suback.first, suback.body) == (0x90, b"\x00\x07\x00\x02\x8f\x01\x00")
    c.send(unsubscribe5(8, "a/b", "never", "c"))
    unsuback = c.recv()
    assert (unsuback.first, unsuback.body) == (0xB0, b"\x00\x08\x00\x00\x11\x00")


@pytest.mark.parametrize(
    "bad, reason",
    [
        # [MQTT-2.2.2] a property twice -> Protocol Error
        pytest.param(
            publish5("t", b"", properties=props(b"\x02\x00\x00\x00\x01" * 2)),
            0x82,
            id="duplicate-property",
        ),
        # [MQTT-1.5.7-1] user property value with a UTF-16 surrogate -> Malformed
        pytest.param(
            publish5("t", b"", properties=props(b"\x26" + s("k") + s(b"\xed\xa0\x80"))),
            0x81,
            id="bad-utf8-user-property",
        ),
        # [MQTT-1.5.5-1] a padded Variable Byte Integer -> Malformed
        pytest.param(b"\x30\x05" + s("t") + b"\x80\x00", 0x81, id="non-minimal-vbi"),
        # a property PUBLISH may not carry -> Malformed
        pytest.param(
            publish5("t", b"", properties=props(b"\x11\x00\x00\x00\x01")),
            0x81,
            id="session-expiry-in-publish",
        ),
        # [MQTT-3.3.2-8] Topic Alias 0 -> Topic Alias invalid
        pytest.param(
            publish5("t", b"", properties=props(b"\x23\x00\x00")), 0x94, id="topic-alias-0"
        ),
        # [MQTT-3.3.2-9] (server side) an alias above the CONNACK's maximum of 10
        pytest.param(
            publish5("t", b"", properties=props(b"\x23\x00\x0b")), 0x94, id="topic-alias-above-max"
        ),
        # [MQTT-3.3.4-6] a Subscription Identifier from a client -> Protocol Error
        pytest.param(
            publish5("t", b"", properties=props(b"\x0b\x01")), 0x82, id="subscription-id-in-publish"
        ),
        # [MQTT-3.3.2-2] wildcard in a topic name
        pytest.param(publish5("a/+", b""), 0x82, id="wildcard-topic"),
        # [MQTT-3.3.2-14] Response Topic with a wildcard
        pytest.param(
            publish5("t", b"", properties=props(b"\x08" + s("r/#"))),
            0x82,
            id="wildcard-response-topic",
        ),
        # Payload Format Indicator 1 with a non-UTF-8 payload -> Payload format invalid
        pytest.param(
            publish5("t", b"\xff", properties=props(b"\x01\x01")), 0x99, id="payload-not-utf8"
        ),
        # [MQTT-3.8.3-5] reserved subscription option bits -> Malformed
        pytest.param(subscribe5(1, ("t", 0xC1)), 0x81, id="subscription-options-reserved"),
        # [MQTT-3.8.3-2] SUBSCRIBE without a filter -> Protocol Error
        pytest.param(packet(0x82, b"\x00\x01\x00"), 0x82, id="empty-subscribe"),
        # [MQTT-2.1.3-1] reserved fixed-header flags -> Malformed
        pytest.param(b"\xc1\x00", 0x81, id="pingreq-flags"),
        # [MQTT-3.4.2-1] PUBACK reason code outside its table -> Malformed
        pytest.param(packet(0x40, b"\x00\x01\x05"), 0x81, id="puback-bad-reason"),
        # AUTH without an authentication method in CONNECT -> Protocol Error
        pytest.param(b"\xf0\x00", 0x82, id="auth-without-method"),
        # [MQTT-3.1.0-2] a second CONNECT -> Protocol Error
        pytest.param(connect5("again"), 0x82, id="second-connect"),
    ],
)
def test_bad_packets_get_disconnect_with_reason(
    port: int,
    raw_clients: list[RawClient],
    capfd: pytest.CaptureFixture[str],
    bad: bytes,
    reason: int,
) -> None:
    """A broken rule gets DISCONNECT with the rule's reason code before the close, and a
    log line naming the rule; nothing is delivered."""
    watcher, _ = raw5(port, "watcher")
    raw_clients.append(watcher)
    watcher.send(subscribe5(1, ("#", 0)))
    assert watcher.recv().type == 9
    c, (_, code, _) = raw5(port, "bad")
    raw_clients.append(c)
    assert code == 0
    c.send(bad)
    expect_disconnect(c, reason)
    watcher.send(b"\xc0\x00")
    assert watcher.recv().first == 0xD0, "nothing may be delivered"
    assert "[MQTT-" in capfd.readouterr().err


def test_packet_too_large_is_0x95(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.2.2-15] (server side) A packet above the Maximum Packet Size the CONNACK
    announced gets DISCONNECT 0x95."""
    broker = make_broker(max_packet_size=256)
    port = broker.addresses[0][1]
    c, (_, code, properties) = raw5(port, "big")
    raw_clients.append(c)
    assert (code, properties[0x27]) == (0, 256)
    c.send(publish5("t", b"x" * 300))
    expect_disconnect(c, 0x95)


def test_takeover_is_0x8e(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.1.4-3] The connection taken over gets DISCONNECT 0x8E; the new one 0x00."""
    first, _ = raw5(port, "twin")
    raw_clients.append(first)
    second, (_, code, _) = raw5(port, "twin")
    raw_clients.append(second)
    assert code == 0
    expect_disconnect(first, 0x8E)


def test_keepalive_expiry_is_0x8d(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.1.2-22] Keep Alive 1 and silence: DISCONNECT 0x8D, then the close, after
    1.5 s (behavioural bound: not before 1 s)."""
    c, _ = raw5(port, "sleepy", keepalive=1)
    raw_clients.append(c)
    started = time.monotonic()
    expect_disconnect(c, 0x8D)
    assert time.monotonic() - started >= 1.0


def test_shutdown_is_0x8b(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """A broker that stops sends its 5.0 clients DISCONNECT 0x8B before closing."""
    broker = make_broker()
    c, _ = raw5(broker.addresses[0][1], "stay")
    raw_clients.append(c)
    broker.stop()
    expect_disconnect(c, 0x8B)


def test_enhanced_authentication_is_refused_with_0x8c(
    port: int, raw_clients: list[RawClient]
) -> None:
    """A CONNECT with an Authentication Method no enhanced authenticator implements (this
    broker has none: tests/test_mqtt5_auth.py has them) gets CONNACK 0x8C and the close
    [MQTT-3.2.2-7]."""
    c = RawClient(port)
    raw_clients.append(c)
    c.send(connect5("auth", properties=props(b"\x15" + s("SCRAM-SHA-256"))))
    present, reason, _ = connack5(c.recv())
    assert (present, reason) == (0, 0x8C)
    assert c.expect_closed() == b""


def test_client_disconnect_with_will_0x04(port: int, raw_clients: list[RawClient]) -> None:
    """DISCONNECT 0x04 publishes the will, with its properties; a normal DISCONNECT
    (E0 00) does not [MQTT-3.1.2-10]."""
    watcher, _ = raw5(port, "will-watcher")
    raw_clients.append(watcher)
    watcher.send(subscribe5(1, ("will/#", 0)))
    assert watcher.recv().type == 9
    will_props = props(b"\x26" + s("why") + s("asked"))
    a, _ = raw5(port, "a", will=("will/a", b"gone", will_props))
    raw_clients.append(a)
    a.send(b"\xe0\x01\x04")
    assert a.expect_closed() == b""
    topic, _, properties, payload = publish5_fields(watcher.recv())
    assert (topic, payload, properties) == ("will/a", b"gone", {0x26: [("why", "asked")]})
    b, _ = raw5(port, "b", will=("will/b", b"gone", b"\x00"))
    raw_clients.append(b)
    b.send(b"\xe0\x00")
    assert b.expect_closed() == b""
    watcher.send(b"\xc0\x00")
    assert watcher.recv().first == 0xD0, "a normal DISCONNECT discards the will"


def test_publish_not_authorized_gets_0x87(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient], tmp_path: Any
) -> None:
    """[MQTT-3.4.2-1] [MQTT-3.5.2-1] A refused QoS 1/2 publish is acknowledged with 0x87
    Not authorized (3.1.1 clients get a plain PUBACK); the message is dropped."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite open/#\n")
    broker = make_broker(acl_file=str(acl))
    port = broker.addresses[0][1]
    c, _ = raw5(port, "pub-acl")
    raw_clients.append(c)
    c.send(publish5("closed/t", b"x", qos=1, pkid=3))
    ack = c.recv()
    assert (ack.first, ack.body) == (0x40, b"\x00\x03\x87")
    c.send(publish5("closed/t", b"x", qos=2, pkid=4))
    ack = c.recv()
    assert (ack.first, ack.body) == (0x50, b"\x00\x04\x87")
    # A subscriber, so that the allowed message is answered Success, not 0x10 No
    # matching subscribers (tests/test_mqtt5_reason_codes.py).
    sub, _ = raw5(port, "sub-acl")
    raw_clients.append(sub)
    sub.send(subscribe5(1, ("open/#", 0)))
    assert sub.recv().body == b"\x00\x01\x00\x00"
    c.send(publish5("open/t", b"x", qos=1, pkid=5))
    ack = c.recv()
    assert (ack.first, ack.body) == (0x40, b"\x00\x05")
    assert publish5_fields(sub.recv())[::3] == ("open/t", b"x")


# --------------------------------------------------------------------------- sessions


def test_session_expiry_replaces_clean_session(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.1.2-6] [MQTT-3.1.2-23] [MQTT-3.2.2-3]
    Expiry 60: the session and its queued QoS 1 message survive a reconnect with Clean
    Start 0 (Session Present 1). Expiry 0 (the default): the session ends with the
    connection. Clean Start 1 with expiry 60: the old session is dropped, the new one
    kept."""
    expiry60 = props(b"\x11\x00\x00\x00\x3c")
    c, (present, _, _) = raw5(port, "keep", clean=False, properties=expiry60)
    assert present == 0
    c.send(subscribe5(1, ("sess/t", 1)))
    assert c.recv().type == 9
    c.send(b"\xe0\x00")
    c.expect_closed()
    c.close()
    pub, _ = raw5(port, "sess-pub")
    raw_clients.append(pub)
    pub.send(publish5("sess/t", b"queued", qos=1, pkid=1))
    assert pub.recv().type == 4
    c, (present, _, _) = raw5(port, "keep", clean=False, properties=expiry60)
    raw_clients.append(c)
    assert present == 1
    topic, _, _, payload = publish5_fields(c.recv())
    assert (topic, payload) == ("sess/t", b"queued")
    # Expiry 0: nothing survives.
    d, _ = raw5(port, "brief", clean=False)
    d.send(subscribe5(1, ("sess/t", 1)))
    assert d.recv().type == 9
    d.send(b"\xe0\x00")
    d.expect_closed()
    d.close()
    d, (present, _, _) = raw5(port, "brief", clean=False)
    raw_clients.append(d)
    assert present == 0
    # Clean Start 1 drops the stored session even with a non-zero expiry.
    c.send(b"\xe0\x00")
    c.expect_closed()
    e, (present, _, _) = raw5(port, "keep", clean=True, properties=expiry60)
    raw_clients.append(e)
    assert present == 0


def test_session_expires_on_time(port: int, raw_clients: list[RawClient]) -> None:
    """[MQTT-3.1.2-23] Expiry 1 s: reconnecting at once finds the session; after 3 s it
    is gone (Session Present 0). Behavioural bounds only."""
    expiry1 = props(b"\x11\x00\x00\x00\x01")
    c, _ = raw5(port, "short", clean=False, properties=expiry1)
    c.send(b"\xe0\x00")
    c.expect_closed()
    c.close()
    c, (present, _, _) = raw5(port, "short", clean=False, properties=expiry1)
    assert present == 1
    c.send(b"\xe0\x00")
    c.expect_closed()
    c.close()
    time.sleep(3.0)
    c, (present, _, _) = raw5(port, "short", clean=False, properties=expiry1)
    raw_clients.append(c)
    assert present == 0


def test_disconnect_cannot_revive_a_zero_expiry(port: int, raw_clients: list[RawClient]) -> None:
    """(3.14.2.2.2, no statement number) CONNECT with expiry 0, then DISCONNECT with a
    non-zero expiry: a Protocol Error, answered with DISCONNECT 0x82."""
    c, _ = raw5(port, "revive")
    raw_clients.append(c)
    c.send(packet(0xE0, b"\x00" + props(b"\x11\x00\x00\x00\x0a")))
    expect_disconnect(c, 0x82)


def test_v311_clients_unchanged_beside_v5(port: int, raw_clients: list[RawClient]) -> None:
    """3.1.1 keeps its own CONNACK and acknowledgements while 5.0 clients are connected."""
    v5, _ = raw5(port, "v5-beside")
    raw_clients.append(v5)
    old = RawClient(port)
    raw_clients.append(old)
    old.send(connect_311("old-beside"))
    ack = old.recv()
    assert (ack.first, ack.body) == (0x20, b"\x00\x00")
    old.send(publish_311("x", b"y", qos=1, pkid=9))
    ack = old.recv()
    assert (ack.first, ack.body) == (0x40, b"\x00\x09")
    with pytest.raises(Closed):
        old.send(b"\xf0\x00")  # AUTH is reserved in 3.1.1: closed without DISCONNECT
        old.recv()


# --------------------------------------------------------------------------- shared subscriptions


def test_shared_subscription_spans_5_0_and_3_1_1_members(
    port: int, paho5: Callable[..., Paho5]
) -> None:
    """[MQTT-4.8.2-1] [MQTT-4.8.2-2] A 5.0 client and a 3.1.1 client in one group share the
    messages: each message goes to exactly one of them, and both get some."""
    member5 = paho5("share-v5")
    assert [r.value for r in member5.subscribe("$share/mix/jobs/#", 1)] == [1]
    got311: list[bytes] = []
    got = threading.Condition()
    member311 = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="share-v311")

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with got:
            got311.append(msg.payload)
            got.notify_all()

    subscribed = threading.Event()
    member311.on_message = on_message
    member311.on_subscribe = lambda *_a: subscribed.set()
    member311.connect("127.0.0.1", port)
    member311.loop_start()
    try:
        member311.subscribe("$share/mix/jobs/#", 1)
        assert subscribed.wait(TIMEOUT)
        publisher = paho5("share-pub")
        total = 40
        for i in range(total):
            publisher.client.publish(f"jobs/{i}", b"%d" % i, qos=1).wait_for_publish(TIMEOUT)

        def all_in() -> bool:
            return len(member5.messages) + len(got311) >= total

        deadline = time.monotonic() + TIMEOUT
        while not all_in() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # a duplicate would arrive by now
        payloads = [m.payload for m in member5.messages] + got311
        assert sorted(payloads) == sorted(b"%d" % i for i in range(total))
        assert member5.messages and got311
    finally:
        member311.disconnect()
        member311.loop_stop()


def test_no_local_on_a_shared_subscription_is_a_protocol_error(
    port: int, raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.8.3-4] No Local set on a shared subscription: DISCONNECT 0x82."""
    c, _ = raw5(port, "share-nolocal")
    raw_clients.append(c)
    c.send(subscribe5(9, ("$share/g/t", 0x01 | 0x04)))
    expect_disconnect(c, 0x82)
