"""`Broker`: the Rust broker, started and stopped from Python.

The broker runs on its own threads; starting it binds the listeners and returns at once,
so it can be embedded in a synchronous program (`start()`/`stop()`, `with`) or an asyncio
one (`async with`, where stopping runs off the event loop).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, Literal

from pyo3mq._pyo3mq import BrokerCore

OverflowPolicy = Literal["drop_new", "drop_oldest"]


@dataclass(frozen=True)
class BrokerConfig:
    """Every setting of the broker; the config file uses the same names."""

    listeners: list[str] = field(default_factory=lambda: ["tcp://0.0.0.0:1883"])
    max_packet_size: int = 1024 * 1024
    max_connections: int = 100_000
    max_inflight: int = 32
    max_queued_messages: int = 1000
    queue_overflow: OverflowPolicy = "drop_new"
    queue_qos0_offline: bool = False
    connect_timeout: float = 10.0
    max_client_id_len: int = 65_535
    allow_zero_length_client_id: bool = True
    worker_threads: int = 0

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> BrokerConfig:
        """Builds a config from a mapping (a parsed TOML file), refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**values)


class Broker:
    """An MQTT 3.1/3.1.1 broker running on Rust threads inside this process.

    >>> with Broker(listeners=["tcp://127.0.0.1:0"]) as broker:
    ...     host, port = broker.addresses[0]
    """

    def __init__(self, config: BrokerConfig | None = None, **settings: Any) -> None:
        if config is None:
            config = BrokerConfig.from_mapping(settings)
        elif settings:
            raise TypeError("pass either a BrokerConfig or keyword settings, not both")
        self.config = config
        values = {f.name: getattr(config, f.name) for f in fields(config)}
        listeners = list(values.pop("listeners"))
        self._core = BrokerCore(listeners, **values)
        self._addresses: list[tuple[str, int]] = []

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener; a port 0 listener shows its real port."""
        return list(self._addresses)

    @property
    def running(self) -> bool:
        return self._core.running

    @property
    def dropped_messages(self) -> int:
        """Messages dropped by full session queues since the broker started."""
        return self._core.dropped_messages

    def start(self) -> None:
        """Binds the listeners and starts serving on the broker's own threads."""
        self._addresses = self._core.start()

    def stop(self) -> None:
        """Closes every connection gracefully and stops. Persistent sessions are kept in
        memory, so `start()` on the same object resumes them."""
        self._core.stop()

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Broker:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Stopping waits for connections to close: keep the event loop free meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.stop)
