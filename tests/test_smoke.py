"""The package imports and a broker answers a real MQTT client."""

from __future__ import annotations

import pyo3mq
from support.mqtt_raw import RawClient, publish, subscribe


def test_version() -> None:
    assert pyo3mq.__version__ == "0.1.0"


def test_connect_subscribe_publish_roundtrip(port: int) -> None:
    with RawClient(port) as c:
        ack = c.connect("smoke")
        assert ack.body == b"\x00\x00"
        c.send(subscribe(1, ("t/#", 1)))
        suback = c.recv()
        assert (suback.first, suback.body) == (0x90, b"\x00\x01\x01")
        c.send(publish("t/x", b"hi", qos=1, pkid=9))
        got = {c.recv().first for _ in range(2)}
        # PUBACK for our publish, and the delivery to ourselves at QoS 1.
        assert got == {0x40, 0x32}
