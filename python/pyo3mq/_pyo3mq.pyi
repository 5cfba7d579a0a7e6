"""The native core. Use the public API in `pyo3mq` instead."""

from collections.abc import Callable
from typing import Any, TypeAlias

__version__: str

class MqttError(Exception): ...
class BrokerStartError(MqttError): ...

def init_logging(level: str, to_python: bool = False) -> None: ...

class ReplyHandle:
    def resolve(self, value: object) -> None: ...

# A session as the broker hands it over: (client_id, [(filter, qos)], [(topic, payload,
# qos, delivery_qos, retain, publisher, packet_id, released)]); a retained message:
# (topic, payload, qos, publisher).
_Session: TypeAlias = tuple[
    str, list[tuple[str, int]], list[tuple[str, bytes, int, int, bool, str, int | None, bool]]
]
_Retained: TypeAlias = tuple[str, bytes, int, str]

class BrokerCore:
    def __init__(self, settings: dict[str, Any]) -> None: ...
    def start(
        self,
        event_loop: object | None = None,
        dispatch: Callable[[list[tuple[Any, ...]]], None] | None = None,
        auth: bool = False,
        authorize: bool = False,
        events: bool = False,
        intercept: bool = False,
        track_changes: bool = False,
    ) -> list[tuple[str, int]]: ...
    def stop(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def dropped_messages(self) -> int: ...
    def stats(self) -> list[tuple[str, int]]: ...
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int: ...
    def subscribe(
        self, filter: str, qos: int, max_buffered: int = 100000, flow_control: bool = False
    ) -> int: ...
    def credit(self, id: int, n: int) -> None: ...
    def unsubscribe(self, id: int) -> None: ...
    def seed(self, sessions: list[_Session], retained: list[_Retained]) -> None: ...
    def take_changes(
        self,
    ) -> tuple[list[str], list[_Session], list[_Retained], list[str]] | None: ...
    def snapshot(self) -> tuple[list[_Session], list[_Retained]]: ...

# --- client ---

class ClientMessage:
    """A message received by a `pyo3mq.Client`."""

    def __init__(
        self,
        topic: str,
        payload: bytes | bytearray | str | int | float | None,
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        mid: int = 0,
    ) -> None: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def dup(self) -> bool: ...
    @property
    def mid(self) -> int: ...
    def matches(self, filter: str) -> bool: ...

class ClientCore:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        clean_session: bool,
        keepalive: int,
        username: str | None,
        password: str | bytes | None,
        will: tuple[str, bytes | bytearray | str | int | float | None, int, bool] | None,
        protocol: int,
        connect_timeout: float,
        max_inflight: int,
        max_buffered_bytes: int,
        max_queued_incoming: int,
        max_packet_size: int,
        reconnect: tuple[float, float, int | None] | None,
    ) -> None: ...
    @property
    def wake_fd(self) -> int: ...
    @property
    def client_id(self) -> str: ...
    @property
    def queued_messages(self) -> int: ...
    @property
    def state(self) -> int: ...
    def connect(self) -> int: ...
    def publish(
        self,
        topic: str,
        payload: bytes | bytearray | str | int | float | None,
        qos: int,
        retain: bool,
    ) -> int: ...
    def subscribe(self, filters: list[tuple[str, int]]) -> int: ...
    def unsubscribe(self, filters: list[str]) -> int: ...
    def disconnect(self) -> int: ...
    def drain(
        self, max_messages: int
    ) -> tuple[
        list[tuple[int, bool, Any]] | None,
        list[tuple[int, bool, tuple[int, int, str] | None]] | None,
        list[ClientMessage] | None,
        bool,
    ]: ...
    def take_messages(self, max: int) -> list[ClientMessage]: ...
    def last_error(self) -> tuple[int, int, str] | None: ...
    def debug_state(self) -> str: ...
