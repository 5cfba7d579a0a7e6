"""The native core. Use the public API in `pyo3mq` instead."""

__version__: str

class MqttError(Exception): ...
class BrokerStartError(MqttError): ...

def init_logging(level: str) -> None: ...

class BrokerCore:
    def __init__(
        self,
        listeners: list[str],
        *,
        max_packet_size: int,
        max_connections: int,
        max_inflight: int,
        max_queued_messages: int,
        queue_overflow: str,
        queue_qos0_offline: bool,
        connect_timeout: float,
        max_client_id_len: int,
        allow_zero_length_client_id: bool,
        worker_threads: int,
    ) -> None: ...
    def start(self) -> list[tuple[str, int]]: ...
    def stop(self) -> None: ...
    @property
    def running(self) -> bool: ...
    @property
    def dropped_messages(self) -> int: ...
