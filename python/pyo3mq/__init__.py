"""pyo3mq: a fast MQTT 3.1/3.1.1 broker with a Rust core and a Python face."""

from typing import Literal

# The client's public names, its exception classes among them, listed once in its
# `__all__` (and added to this package's below).
from pyo3mq import client as _client
from pyo3mq._pyo3mq import (
    BrokerStartError,
    Deny,
    MessageProperties,
    MqttError,
    __version__,
    init_logging,
)
from pyo3mq.broker import (
    BridgeConfig,
    Broker,
    BrokerConfig,
    ReloadError,
    ReloadResult,
    Subscription,
)
from pyo3mq.client import *  # noqa: F403
from pyo3mq.enhanced_auth import AuthResult, EnhancedAuthRequest
from pyo3mq.plugins import Authenticator, Authorizer, SessionStore
from pyo3mq.sync_client import PublishHandle, SyncClient
from pyo3mq.types import (
    ClientInfo,
    ConnectEvent,
    DisconnectEvent,
    Message,
    RetainedRecord,
    SessionRecord,
    StoredMessage,
    StoredSubscriptionOptions,
    SubscribeEvent,
    UnsubscribeEvent,
)


def enable_logging(level: str = "info", *, to: Literal["python", "stderr"] = "python") -> None:
    """Sends the Rust core's log lines (connections, closes with the rule broken,
    dropped messages) at `level` and above to Python's `logging`, on the loggers
    `pyo3mq.connection`, `pyo3mq.router`, `pyo3mq.server`... (`to="python"`), or straight
    to stderr without touching Python (`to="stderr"`, what the `pyo3mq` command does).

    Lines reach `logging` from a thread of their own, a batch per interpreter
    attachment; the broker never waits for a handler (lines beyond a bounded backlog are
    dropped, and a warning says how many). Only the first call in a process applies.
    """
    if to not in ("python", "stderr"):
        raise ValueError(f"to must be 'python' or 'stderr', not {to!r}")
    init_logging(level, to == "python")


__all__ = [
    "AuthResult",
    "Authenticator",
    "Authorizer",
    "BridgeConfig",
    "Broker",
    "BrokerConfig",
    "BrokerStartError",
    "ClientInfo",
    "ConnectEvent",
    "Deny",
    "DisconnectEvent",
    "EnhancedAuthRequest",
    "Message",
    "MessageProperties",
    "MqttError",
    "PublishHandle",
    "ReloadError",
    "ReloadResult",
    "RetainedRecord",
    "SessionRecord",
    "SessionStore",
    "StoredMessage",
    "StoredSubscriptionOptions",
    "SubscribeEvent",
    "Subscription",
    "SyncClient",
    "UnsubscribeEvent",
    "__version__",
    "enable_logging",
]
__all__ += _client.__all__
