"""pyo3mq: a fast MQTT 3.1/3.1.1 broker with a Rust core and a Python face."""

from pyo3mq._pyo3mq import BrokerStartError, MqttError, __version__
from pyo3mq.broker import Broker, BrokerConfig, Subscription
from pyo3mq.plugins import Authenticator, Authorizer, SessionStore
from pyo3mq.types import (
    ClientInfo,
    ConnectEvent,
    DisconnectEvent,
    Message,
    RetainedRecord,
    SessionRecord,
    StoredMessage,
    SubscribeEvent,
    UnsubscribeEvent,
)

__all__ = [
    "Authenticator",
    "Authorizer",
    "Broker",
    "BrokerConfig",
    "BrokerStartError",
    "ClientInfo",
    "ConnectEvent",
    "DisconnectEvent",
    "Message",
    "MqttError",
    "RetainedRecord",
    "SessionRecord",
    "SessionStore",
    "StoredMessage",
    "SubscribeEvent",
    "Subscription",
    "UnsubscribeEvent",
    "__version__",
]
