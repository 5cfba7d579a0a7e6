"""The native core. Use the public API in `pyo3mq` instead."""

from collections.abc import Callable
from typing import Any

__version__: str

class MqttError(Exception): ...
class BrokerStartError(MqttError): ...

def init_logging(level: str) -> None: ...

class ReplyHandle:
    def resolve(self, value: object) -> None: ...

class BrokerCore:
    def __init__(self, settings: dict[str, Any]) -> None: ...
    def start(
        self,
        event_loop: object | None = None,
        dispatch: Callable[[list[tuple[Any, ...]]], None] | None = None,
        auth: bool = False,
        authorize: bool = False,
        events: bool = False,
    ) -> list[tuple[str, int]]: ...
    def stop(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def dropped_messages(self) -> int: ...
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None: ...
    def subscribe(self, filter: str, qos: int) -> int: ...
    def unsubscribe(self, id: int) -> None: ...
    def seed(
        self,
        sessions: list[
            tuple[
                str,
                list[tuple[str, int]],
                list[tuple[str, bytes, int, int, bool, str, int | None, bool]],
            ]
        ],
        retained: list[tuple[str, bytes, int, str]],
    ) -> None: ...
    def snapshot(
        self,
    ) -> tuple[
        list[
            tuple[
                str,
                list[tuple[str, int]],
                list[tuple[str, bytes, int, int, bool, str, int | None, bool]],
            ]
        ],
        list[tuple[str, bytes, int, str]],
    ]: ...
