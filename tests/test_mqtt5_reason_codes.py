"""MQTT 5.0 reason codes that depend on what became of a packet: PUBACK/PUBREC 0x10 No
matching subscribers, and the codes a Python authenticator or authorizer chooses with
`pyo3mq.Deny` (CONNACK, PUBACK/PUBREC, SUBACK), with their Reason String; 3.1.1 clients
keep their codes. Raw sockets (bytes written by hand, tests/test_mqtt5.py's helpers) and
paho-mqtt in v5 mode.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
import test_mqtt5
import test_mqtt5_python
from paho.mqtt.enums import CallbackAPIVersion
from pyo3mq import Deny
from support.mqtt_raw import Packet, RawClient, packet, s
from support.mqtt_raw import publish as publish_311
from support.mqtt_raw import subscribe as subscribe_311
from support.nats import nats_server
from support.stderr_capture import captured_stderr
from test_mqtt5 import (
    TIMEOUT,
    connack5,
    connect5,
    props,
    publish5,
    publish5_fields,
    raw5,
    read_props,
    subscribe5,
)

Serve = Callable[..., Awaitable[pyo3mq.Broker]]

PUBACK, PUBREC = 0x40, 0x50


def port_of(broker: pyo3mq.Broker) -> int:
    return broker.addresses[0][1]


def ack5(pkt: Packet) -> tuple[int, int, int, dict[int, Any]]:
    """(first byte, packet id, reason code, properties) of a 5.0 PUBACK or PUBREC; the
    short form (no reason code) is 0x00 Success."""
    (pkid,) = struct.unpack("!H", pkt.body[:2])
    if len(pkt.body) == 2:
        return pkt.first, pkid, 0x00, {}
    properties: dict[int, Any] = {}
    if len(pkt.body) > 3:
        properties, rest = read_props(pkt.body[3:])
        assert rest == b""
    return pkt.first, pkid, pkt.body[2], properties


def suback5(pkt: Packet) -> tuple[int, list[int], dict[int, Any]]:
    """(packet id, reason codes, properties) of a 5.0 SUBACK."""
    assert pkt.type == 9, f"expected SUBACK, got {pkt.first:#x}"
    (pkid,) = struct.unpack("!H", pkt.body[:2])
    properties, codes = read_props(pkt.body[2:])
    return pkid, list(codes), properties


def finish_qos2(c: RawClient, pkid: int) -> None:
    """PUBREL for a PUBREC below 0x80, answered by PUBCOMP [MQTT-4.3.3-4]."""
    c.send(packet(0x62, struct.pack("!H", pkid)))
    comp = c.recv()
    assert (comp.first, comp.body[:2]) == (0x70, struct.pack("!H", pkid))


# Clients closed after the test: tests/test_mqtt5.py's fixture (raw sockets) and
# tests/test_mqtt5_python.py's (closed in a worker thread, for async tests).
raw_clients = test_mqtt5.raw_clients
clients = test_mqtt5_python.clients


# --------------------------------------------------------------------------- 0x10


def retained5(topic: str, payload: bytes, pkid: int) -> bytes:
    """A QoS 1 PUBLISH with RETAIN set and no properties."""
    return packet(0x33, s(topic) + struct.pack("!H", pkid) + b"\x00" + payload)


def test_no_matching_subscribers_gets_0x10(
    make_broker: Callable[..., pyo3mq.Broker], raw_clients: list[RawClient]
) -> None:
    """[MQTT-3.4.2-1] [MQTT-3.5.2-1] A 5.0 publisher's QoS 1 and 2 messages that no
    subscriber matches are acknowledged 0x10 No matching subscribers (PUBREC 0x10 still
    goes on to PUBREL/PUBCOMP); a retained message nobody is subscribed to as well (as
    Mosquitto 2.0 answers: `mosquitto_pub -V 5 -d -q 1 -r` gets "PUBACK (RC:16)"). A
    subscriber, a member of a shared group: 0x00. A No Local subscription of the
    publisher itself takes nothing, so 0x10. 3.1.1 PUBACKs have no reason code."""
    port = port_of(make_broker())
    pub, _ = raw5(port, "pub10")
    raw_clients.append(pub)
    pub.send(publish5("nobody/t", b"x", qos=1, pkid=1))
    assert ack5(pub.recv()) == (PUBACK, 1, 0x10, {})
    pub.send(publish5("nobody/t", b"x", qos=2, pkid=2))
    assert ack5(pub.recv()) == (PUBREC, 2, 0x10, {})
    finish_qos2(pub, 2)
    pub.send(retained5("nobody/retain", b"kept", 3))
    assert ack5(pub.recv()) == (PUBACK, 3, 0x10, {})

    sub, _ = raw5(port, "sub10")
    raw_clients.append(sub)
    sub.send(subscribe5(1, ("some/#", 0), ("$share/g/shared/#", 0)))
    assert suback5(sub.recv())[1] == [0, 0]
    for qos, pkid, topic in [(1, 4, "some/t"), (2, 5, "some/t"), (1, 6, "shared/t")]:
        pub.send(publish5(topic, b"y", qos=qos, pkid=pkid))
        assert ack5(pub.recv()) == ([0, PUBACK, PUBREC][qos], pkid, 0x00, {}), topic
        if qos == 2:
            finish_qos2(pub, pkid)
        got_topic, _, _, payload = publish5_fields(sub.recv())
        assert (got_topic, payload) == (topic, b"y")
    # The retained message matched nobody when published, and was kept all the same.
    sub.send(subscribe5(2, ("nobody/retain", 0)))
    assert suback5(sub.recv())[1] == [0]
    got_topic, _, _, payload = publish5_fields(sub.recv())
    assert (got_topic, payload) == ("nobody/retain", b"kept")

    # No Local: the publisher's own subscription does not take it, so nobody did.
    own, _ = raw5(port, "own10")
    raw_clients.append(own)
    own.send(subscribe5(1, ("mine/#", 0x04 | 1)))
    assert suback5(own.recv())[1] == [1]
    own.send(publish5("mine/t", b"z", qos=1, pkid=7))
    assert ack5(own.recv()) == (PUBACK, 7, 0x10, {})

    old = RawClient(port)
    raw_clients.append(old)
    assert old.connect("old10").body == b"\x00\x00"
    old.send(publish_311("nobody/t", b"x", qos=1, pkid=8))
    ack = old.recv()
    assert (ack.first, ack.body) == (PUBACK, b"\x00\x08")


def test_paho_v5_publisher_sees_0x10_then_0x00(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    """paho-mqtt in v5 mode: `on_publish` reports 0x10 No matching subscribers for a QoS 1
    message nobody subscribed to, and Success once a paho subscriber has."""
    port = port_of(make_broker())
    acks: dict[int, int] = {}
    got = threading.Condition()

    def on_publish(client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with got:
            acks[mid] = reason.value
            got.notify_all()

    def wait(pred: Callable[[], bool]) -> None:
        with got:
            assert got.wait_for(pred, TIMEOUT)

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-pub10", protocol=mqtt.MQTTv5)
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-sub10", protocol=mqtt.MQTTv5)
    subscribed: list[Any] = []

    def on_subscribe(client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        with got:
            subscribed.extend(reasons)
            got.notify_all()

    pub.on_publish = on_publish
    sub.on_subscribe = on_subscribe
    for c in (pub, sub):
        c.connect("127.0.0.1", port)
        c.loop_start()
    try:
        first = pub.publish("paho10/t", b"1", qos=1).mid
        wait(lambda: first in acks)
        assert acks[first] == 0x10
        sub.subscribe("paho10/#", qos=1)
        wait(lambda: len(subscribed) == 1)
        second = pub.publish("paho10/t", b"2", qos=1).mid
        wait(lambda: second in acks)
        assert acks[second] == 0x00
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()


async def test_in_process_subscription_is_a_matching_subscriber(
    serve: Serve, clients: list[Any]
) -> None:
    """An in-process `broker.subscribe` is a subscriber like any other: 0x00 for QoS 1
    and 2 while it exists, 0x10 once it is closed."""
    broker = await serve()
    c, _ = await asyncio.to_thread(raw5, port_of(broker), "inproc-pub")
    clients.append(c)

    async def ack(data: bytes) -> tuple[int, int, int, dict[int, Any]]:
        await asyncio.to_thread(c.send, data)
        return ack5(await asyncio.to_thread(c.recv))

    async with broker.subscribe("inproc/#", qos=2) as sub:
        assert await ack(publish5("inproc/a", b"1", qos=1, pkid=1)) == (PUBACK, 1, 0x00, {})
        assert await ack(publish5("inproc/a", b"2", qos=2, pkid=2)) == (PUBREC, 2, 0x00, {})
        await asyncio.to_thread(finish_qos2, c, 2)
        first = await asyncio.wait_for(sub.__anext__(), TIMEOUT)
        second = await asyncio.wait_for(sub.__anext__(), TIMEOUT)
        assert [first.payload, second.payload] == [b"1", b"2"]
    assert await ack(publish5("inproc/a", b"3", qos=1, pkid=3)) == (PUBACK, 3, 0x10, {})
    assert await ack(publish5("inproc/a", b"4", qos=2, pkid=4)) == (PUBREC, 4, 0x10, {})
    await asyncio.to_thread(finish_qos2, c, 4)


def test_cluster_node_never_answers_0x10(tmp_path: Path, raw_clients: list[RawClient]) -> None:
    """In cluster mode another node's subscribers may take any message, so a node with no
    local subscriber still answers 0x00 (never a false 0x10)."""
    with (
        nats_server(tmp_path) as nats,
        pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], cluster=nats.url) as broker,
    ):
        c, _ = raw5(port_of(broker), "cluster-pub")
        raw_clients.append(c)
        c.send(publish5("nobody/here", b"x", qos=1, pkid=1))
        assert ack5(c.recv()) == (PUBACK, 1, 0x00, {})
        c.send(publish5("nobody/here", b"x", qos=2, pkid=2))
        assert ack5(c.recv()) == (PUBREC, 2, 0x00, {})
        finish_qos2(c, 2)


async def test_with_an_interceptor_the_answer_is_0x00(serve: Serve, clients: list[Any]) -> None:
    """An `on_message` interceptor decides after the acknowledgement is written (a batch
    per read), so whether anything matched is not known then: 0x00, never a false 0x10.
    The interceptor did see the message."""
    seen: list[str] = []

    def on_message(message: pyo3mq.Message) -> bool:
        seen.append(message.topic)
        return True

    broker = await serve(on_message=on_message)
    c, _ = await asyncio.to_thread(raw5, port_of(broker), "icpt-pub")
    clients.append(c)
    await asyncio.to_thread(c.send, publish5("nobody/icpt", b"x", qos=1, pkid=1))
    assert ack5(await asyncio.to_thread(c.recv)) == (PUBACK, 1, 0x00, {})
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while seen != ["nobody/icpt"]:
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- authorizer


class Quota:
    """Refuses with codes of its choice: publishes to quota/# with 0x97 and a reason
    string, to banned/# with 0x8A (not a PUBACK code), to closed/# with False; filters
    with a wildcard under wild/ with 0xA2 and a reason string, bad/# with 0x8E (not a
    SUBACK code)."""

    def authorize_publish(self, client: pyo3mq.ClientInfo, topic: str) -> bool | Deny:
        if topic.startswith("quota/"):
            return Deny(reason_code=0x97, reason_string="quota exceeded")
        if topic.startswith("banned/"):
            return Deny(0x8A)
        return not topic.startswith("closed/")

    async def authorize_subscribe(
        self, client: pyo3mq.ClientInfo, filter: str, qos: int
    ) -> int | Deny:
        if filter.startswith("wild/"):
            return Deny(0xA2, "no wildcards here")
        if filter.startswith("bad/"):
            return Deny(0x8E, "taken over?")
        return qos


async def test_authorizer_chooses_puback_pubrec_and_suback_codes(
    serve: Serve, clients: list[Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.9.3-2] A `Deny` from the authorizer puts its
    code and Reason String in a 5.0 client's PUBACK, PUBREC and SUBACK; False is 0x87; a
    code the packet's table does not have is logged naming the rule and sent as 0x87.
    A client that asked for no problem information gets the code without the string
    [MQTT-3.1.2-29]. 3.1.1 clients: a plain PUBACK and SUBACK 0x80, as before."""
    broker = await serve(authorizer=Quota())
    port = port_of(broker)
    c, _ = await asyncio.to_thread(raw5, port, "quota5")
    clients.append(c)

    async def exchange(data: bytes, client: RawClient = c) -> Packet:
        await asyncio.to_thread(client.send, data)
        return await asyncio.to_thread(client.recv)

    quota = {0x1F: b"quota exceeded"}
    # (topic, QoS, packet id, the acknowledgement's reason code and properties). A
    # refused PUBREC ends the flow [MQTT-4.3.3-9]: its id is free again at once.
    for topic, qos, pkid, code, properties in [
        ("quota/a", 1, 1, 0x97, quota),
        ("quota/a", 2, 1, 0x97, quota),
        ("closed/a", 1, 2, 0x87, {}),
        ("banned/a", 1, 3, 0x87, {}),
        ("banned/a", 2, 4, 0x87, {}),
        ("open/a", 1, 5, 0x10, {}),
    ]:
        ack = ack5(await exchange(publish5(topic, b"x", qos=qos, pkid=pkid)))
        assert ack == ([0, PUBACK, PUBREC][qos], pkid, code, properties), topic
    suback = suback5(await exchange(subscribe5(6, ("wild/#", 1), ("bad/x", 1), ("ok/#", 1))))
    assert suback == (6, [0xA2, 0x87, 0x01], {0x1F: b"no wildcards here"})
    log = captured_stderr()
    assert "reason code 0x8a (Banned), which is not an error code of the [MQTT-3.4.2-1]" in log
    assert (
        "reason code 0x8e (Session taken over), which is not an error code of the "
        "[MQTT-3.9.3-2] SUBACK" in log
    )

    # Request Problem Information 0: the codes, never the strings.
    quiet, _ = await asyncio.to_thread(raw5, port, "quiet5", properties=props(b"\x17\x00"))
    clients.append(quiet)
    assert ack5(await exchange(publish5("quota/b", b"x", qos=1, pkid=1), quiet)) == (
        PUBACK,
        1,
        0x97,
        {},
    )
    suback = suback5(await exchange(subscribe5(2, ("wild/+", 0)), quiet))
    assert suback == (2, [0xA2], {})

    # A Maximum Packet Size the string does not fit in: the code alone [MQTT-3.4.2-2].
    small, _ = await asyncio.to_thread(
        raw5, port, "small5", properties=props(b"\x27\x00\x00\x00\x08")
    )
    clients.append(small)
    assert ack5(await exchange(publish5("quota/c", b"x", qos=1, pkid=1), small)) == (
        PUBACK,
        1,
        0x97,
        {},
    )

    old = RawClient(port)
    clients.append(old)
    assert (await asyncio.to_thread(old.connect, "quota311")).body == b"\x00\x00"
    for topic, pkid in [("quota/a", 1), ("banned/a", 2), ("closed/a", 3)]:
        ack = await exchange(publish_311(topic, b"x", qos=1, pkid=pkid), old)
        assert (ack.first, ack.body) == (PUBACK, struct.pack("!H", pkid)), topic
    ack = await exchange(publish_311("quota/a", b"x", qos=2, pkid=4), old)
    assert (ack.first, ack.body) == (PUBREC, b"\x00\x04")
    ack = await exchange(subscribe_311(5, ("wild/#", 1), ("ok/#", 1)), old)
    assert ack.body == b"\x00\x05\x80\x01"


# --------------------------------------------------------------------------- authenticator


def refuse_by_client_id(client_id: str, username: str | None, password: bytes | None) -> Any:
    """Refuses by the client id's first word: banned 0x8A with a reason string, rate
    0x9F, badpw 0x86, odd 0x97 (0x8E, not a CONNACK code), no False (0x04)."""
    word = client_id.split("-")[0]
    return {
        "banned": Deny(0x8A, "banned until tomorrow"),
        "rate": Deny(0x9F),
        "badpw": Deny(0x86),
        "odd": Deny(0x8E),
        "no": False,
    }.get(word, True)


async def test_authenticator_chooses_connack_codes(
    serve: Serve, clients: list[Any], capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-3.2.2-7] [MQTT-3.2.2-8] A `Deny` from the authenticator is a 5.0 client's
    CONNACK code, with its Reason String, and the connection closes; a code CONNACK's
    table does not have is logged naming the rule and sent as 0x87. 3.1.1 clients get the
    nearest 3.1.1 code: Banned 0x05, Connection rate exceeded 0x03, Bad user name or
    password 0x04."""
    broker = await serve(authenticator=refuse_by_client_id)
    port = port_of(broker)

    async def connack_v5(client_id: str) -> tuple[int, int, dict[int, Any]]:
        c = RawClient(port)
        clients.append(c)
        await asyncio.to_thread(c.send, connect5(client_id))
        answer = connack5(await asyncio.to_thread(c.recv))
        if answer[1] >= 0x80:
            assert await asyncio.to_thread(c.expect_closed) == b""
        return answer

    assert await connack_v5("banned-5") == (0, 0x8A, {0x1F: b"banned until tomorrow"})
    assert await connack_v5("rate-5") == (0, 0x9F, {})
    assert await connack_v5("badpw-5") == (0, 0x86, {})
    assert await connack_v5("no-5") == (0, 0x86, {})
    assert await connack_v5("odd-5") == (0, 0x87, {})
    assert (await connack_v5("fine-5"))[1] == 0x00
    assert (
        "reason code 0x8e (Session taken over), which is not an error code of the "
        "[MQTT-3.2.2-8] CONNACK" in captured_stderr()
    )

    for client_id, code in [
        ("banned-4", 5),
        ("rate-4", 3),
        ("badpw-4", 4),
        ("no-4", 4),
        ("odd-4", 5),
        ("fine-4", 0),
    ]:
        old = RawClient(port)
        clients.append(old)
        assert (await asyncio.to_thread(old.connect, client_id)).body == bytes([0, code])
        if code:
            assert await asyncio.to_thread(old.expect_closed) == b""


async def test_authenticator_failures_keep_the_default_codes(serve: Serve) -> None:
    """A hook that raises or returns something else still refuses with the default code:
    0x87 for 5.0 (0x05 for 3.1.1), as before `Deny` existed."""

    def broken(client_id: str, username: str | None, password: bytes | None) -> Any:
        if client_id.startswith("raise"):
            raise RuntimeError("database down")
        return 0x8A  # an int is not a Deny

    broker = await serve(authenticator=broken)
    port = port_of(broker)
    for client_id in ("raise-5", "int-5"):
        c = RawClient(port)
        try:
            await asyncio.to_thread(c.send, connect5(client_id))
            assert connack5(await asyncio.to_thread(c.recv))[1] == 0x87
        finally:
            c.close()


def test_deny_is_a_checked_frozen_record() -> None:
    """`Deny` defaults to 0x87 without a string, refuses a success code (below 0x80) and
    a string MQTT cannot carry, and compares by value."""
    assert (Deny().reason_code, Deny().reason_string) == (0x87, None)
    assert Deny(0x97, "quota exceeded") == Deny(reason_code=0x97, reason_string="quota exceeded")
    assert repr(Deny(0x97, "q")) == 'Deny(reason_code=0x97, reason_string="q")'
    with pytest.raises(ValueError, match="0x80 or above"):
        Deny(0x10)
    with pytest.raises(ValueError, match=r"MQTT-1\.5\.4-2"):
        Deny(0x87, "nul\0inside")
    with pytest.raises(OverflowError):
        Deny(0x100)
    with pytest.raises(AttributeError):
        Deny().reason_code = 0x80  # type: ignore[misc]
