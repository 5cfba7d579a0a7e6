"""pytest fixtures for testing MQTT applications against a real pyo3mq broker.

Installed with the package (entry point `pytest11`), so a project that has pyo3mq
installed can use them without any set-up:

    def test_my_device_reports(mqtt_broker):
        device = MyDevice(host=mqtt_broker.host, port=mqtt_broker.port)
        ...

    async def test_round_trip(mqtt_client):      # needs pytest-asyncio
        await mqtt_client.subscribe("t")
        await mqtt_client.publish("t", b"x")

- `mqtt_broker`: a broker on a free loopback port, in memory, running for the test;
  `.host`, `.port`, `.url` (`mqtt://127.0.0.1:PORT`) and `.broker` (the `Broker`).
- `mqtt_broker_factory`: `mqtt_broker_factory(**settings)` starts another one with
  settings (`max_inflight=2`, `password_file=...`), all stopped at teardown.
- `mqtt_client`: a `pyo3mq.Client` connected to `mqtt_broker` (an async fixture: it
  needs pytest-asyncio, and disconnects at teardown).

The brokers run on their own threads (`Broker.start()`), so they serve synchronous
tests, threads and asyncio tests alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pyo3mq.broker import Broker
from pyo3mq.client import Client

__all__ = ["MqttBroker", "mqtt_broker", "mqtt_broker_factory", "mqtt_client"]


@dataclass(frozen=True)
class MqttBroker:
    """A running test broker: where to connect, and the `Broker` itself."""

    host: str
    port: int
    broker: Broker

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture
def mqtt_broker_factory() -> Iterator[Callable[..., MqttBroker]]:
    """`mqtt_broker_factory(**settings)` starts a broker on 127.0.0.1:<free port> with
    those settings (any `Broker` keyword); every broker it made is stopped at teardown."""
    started: list[Broker] = []

    def factory(**settings: Any) -> MqttBroker:
        settings.setdefault("listeners", ["tcp://127.0.0.1:0"])
        broker = Broker(**settings)
        broker.start()
        started.append(broker)
        host, port = broker.addresses[0]
        return MqttBroker(host=host, port=port, broker=broker)

    yield factory
    for broker in reversed(started):
        broker.stop()


@pytest.fixture
def mqtt_broker(mqtt_broker_factory: Callable[..., MqttBroker]) -> MqttBroker:
    """A pyo3mq broker on a free loopback port, in memory, for this test."""
    return mqtt_broker_factory()


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - without pytest-asyncio there is no mqtt_client
    _HAVE_ASYNCIO_PLUGIN = False
else:
    _HAVE_ASYNCIO_PLUGIN = True

if _HAVE_ASYNCIO_PLUGIN:

    @pytest_asyncio.fixture
    async def mqtt_client(mqtt_broker: MqttBroker) -> AsyncIterator[Client]:
        """A `pyo3mq.Client` connected to `mqtt_broker`; disconnected at teardown."""
        async with Client(mqtt_broker.host, mqtt_broker.port) as client:
            yield client
