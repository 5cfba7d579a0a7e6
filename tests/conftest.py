"""Shared fixtures: a real broker on a random loopback port, per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pyo3mq
import pytest
from pyo3mq._pyo3mq import init_logging
from pyo3mq.pytest_plugin import MqttBroker
from support.mosquitto import mosquitto_factory

# Broker log lines go to stderr, where capfd can read them. Not the per-packet lines
# (tests/test_logging.py checks those in a process of its own): the load tests would
# spend their time writing them.
init_logging("debug", packets=False)


@pytest.fixture
def make_broker(
    mqtt_broker_factory: Callable[..., MqttBroker],
) -> Callable[..., pyo3mq.Broker]:
    """Factory: `make_broker(max_inflight=2)` starts a broker on 127.0.0.1:<free port>
    (the package's own pytest fixture, `mqtt_broker_factory`, returning the `Broker`)."""
    return lambda **settings: mqtt_broker_factory(**settings).broker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Factory: `mosquitto("allow_anonymous true")` starts Debian's mosquitto on a free
    loopback port with those config lines and returns the port; stopped after the test."""
    with mosquitto_factory(tmp_path) as start:
        yield start


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[pyo3mq.Broker]]]:
    """Factory: `await serve(on_message=...)` runs a broker on this test's event loop
    (`async with` semantics: hooks and in-process subscribers run on that loop)."""
    started: list[pyo3mq.Broker] = []

    async def factory(**settings: Any) -> pyo3mq.Broker:
        settings.setdefault("listeners", ["tcp://127.0.0.1:0"])
        broker = pyo3mq.Broker(**settings)
        await broker.__aenter__()
        started.append(broker)
        return broker

    yield factory
    for broker in reversed(started):
        await broker.__aexit__(None, None, None)


@pytest.fixture
def broker(make_broker: Callable[..., pyo3mq.Broker]) -> pyo3mq.Broker:
    return make_broker()


@pytest.fixture
def port(broker: pyo3mq.Broker) -> int:
    return broker.addresses[0][1]
