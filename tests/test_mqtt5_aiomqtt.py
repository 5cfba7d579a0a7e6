"""aiomqtt (from PyPI) in MQTT 5.0 mode against the broker: `protocol=ProtocolVersion.V5`,
message properties and user properties through the broker untouched and in order, the
subscription options No Local and Retain Handling, subscription identifiers, and a
shared subscription, each as an aiomqtt program would use them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

TIMEOUT = 10.0
V5 = aiomqtt.ProtocolVersion.V5


async def next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT):
        async for message in client.messages:
            return message
    raise AssertionError("the message stream ended")


async def nothing_within(client: aiomqtt.Client, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                raise AssertionError(f"unexpected message on {message.topic}")
    except TimeoutError:
        pass


@pytest.fixture
async def clients(port: int) -> AsyncIterator[list[aiomqtt.Client]]:
    made = [
        aiomqtt.Client("127.0.0.1", port, identifier=f"aio5-{i}", protocol=V5) for i in range(3)
    ]
    for c in made:
        await c.__aenter__()
    yield made
    for c in made:
        await c.__aexit__(None, None, None)


async def test_properties_pass_through_in_order(clients: list[aiomqtt.Client]) -> None:
    """[MQTT-3.3.2-15] [MQTT-3.3.2-16] [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20]
    A request with Response Topic, Correlation Data, Content Type, Payload Format and
    repeated User Properties reaches an aiomqtt subscriber exactly as published."""
    sub, pub, _ = clients
    await sub.subscribe("req/#", qos=1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "resp/aio"
    props.CorrelationData = b"\x00\x01corr"
    props.ContentType = "text/plain"
    props.PayloadFormatIndicator = 1
    props.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
    await pub.publish("req/x", b"hello", qos=1, properties=props)
    got = await next_message(sub)
    assert (str(got.topic), got.payload, got.qos) == ("req/x", b"hello", 1)
    assert got.properties is not None
    assert got.properties.ResponseTopic == "resp/aio"
    assert got.properties.CorrelationData == b"\x00\x01corr"
    assert got.properties.ContentType == "text/plain"
    assert got.properties.PayloadFormatIndicator == 1
    assert got.properties.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]


async def test_no_local_and_subscription_identifier(clients: list[aiomqtt.Client]) -> None:
    """[MQTT-3.8.3-3] [MQTT-3.3.4-3] With No Local, a client's own message is not sent back
    to it, while another client's is, carrying the subscription's identifier."""
    me, other, _ = clients
    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 42
    await me.subscribe("nl/t", options=SubscribeOptions(qos=1, noLocal=True), properties=sub_props)
    await me.publish("nl/t", b"mine", qos=1)
    await other.publish("nl/t", b"theirs", qos=1)
    got = await next_message(me)
    assert got.payload == b"theirs"
    assert got.properties is not None and got.properties.SubscriptionIdentifier == [42]
    await nothing_within(me, 0.3)


async def test_retain_handling_2_sends_no_retained(clients: list[aiomqtt.Client]) -> None:
    """[MQTT-3.3.1-11] Retain Handling 2: subscribing sends no retained message; 0 sends
    it (with RETAIN=1)."""
    a, b, pub = clients
    await pub.publish("rh/t", b"kept", qos=1, retain=True)
    await a.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=2))
    await nothing_within(a, 0.3)
    await b.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=0))
    got = await next_message(b)
    assert (got.payload, got.retain) == (b"kept", True)
    await pub.publish("rh/t", b"", qos=1, retain=True)


async def test_shared_subscription_gives_each_message_to_one_member(
    clients: list[aiomqtt.Client],
) -> None:
    """[MQTT-4.8.2-1] Two aiomqtt members of `$share/g/jobs`: each message reaches exactly
    one of them, and both get some (round robin)."""
    m1, m2, pub = clients
    await m1.subscribe("$share/g/jobs", qos=1)
    await m2.subscribe("$share/g/jobs", qos=1)
    n = 20
    for i in range(n):
        await pub.publish("jobs", str(i).encode(), qos=1)
    got: list[list[int]] = [[], []]

    async def drain(i: int, c: aiomqtt.Client) -> None:
        async for message in c.messages:
            assert isinstance(message.payload, bytes)
            got[i].append(int(message.payload))
            if sum(map(len, got)) == n:
                return

    async with asyncio.timeout(TIMEOUT):
        done, pending = await asyncio.wait(
            [asyncio.create_task(drain(0, m1)), asyncio.create_task(drain(1, m2))],
            return_when=asyncio.FIRST_COMPLETED,
        )
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
    assert sorted(got[0] + got[1]) == list(range(n))
    assert got[0] and got[1], got
