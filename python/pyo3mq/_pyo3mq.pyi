"""The native core. Use the public API in `pyo3mq` instead."""

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal, final

from pyo3mq.client import Topic
from pyo3mq.types import Message, RetainedRecord, SessionRecord

__all__ = [
    "AuthCall",
    "BrokerCore",
    "BrokerStartError",
    "ClientCore",
    "ClientMessage",
    "Completion",
    "ConnAckInfo",
    "Connected",
    "ConnectionState",
    "Deny",
    "Disconnected",
    "Drained",
    "EnhancedAuthCall",
    "EnhancedAuthReply",
    "HookKind",
    "InterceptCall",
    "InterceptedMessage",
    "MessageProperties",
    "MessagesReady",
    "MqttBadUsernameOrPasswordError",
    "MqttCodeError",
    "MqttConnectRefusedError",
    "MqttConnectionError",
    "MqttDisconnectError",
    "MqttError",
    "MqttIdentifierRejectedError",
    "MqttNotAuthorizedError",
    "MqttOperationTimeoutError",
    "MqttProtocolError",
    "MqttPublishError",
    "MqttReentrantError",
    "MqttServerUnavailableError",
    "MqttSubscribeError",
    "MqttTimeoutError",
    "MqttUnacceptableProtocolVersionError",
    "MqttUnsubscribeError",
    "PublishCall",
    "ReloadReport",
    "Replacement",
    "ReplyHandle",
    "Routed",
    "SpaceFreed",
    "StateChange",
    "Submitted",
    "SubscribeCall",
    "Subscribed",
    "SubscriptionFeed",
    "Unsubscribed",
    "__version__",
    "check_config_files",
    "check_settings",
    "config_defaults",
    "init_logging",
    "set_topic_class",
    "topic_matches",
]

__version__: str

class MqttError(Exception): ...
class BrokerStartError(MqttError): ...

def init_logging(level: str, to_python: bool = False, packets: bool = True) -> None: ...
def config_defaults() -> dict[str, Any]: ...
def check_settings(settings: dict[str, Any]) -> None: ...
def check_config_files(settings: dict[str, Any]) -> list[str]: ...

# -- MQTT 5.0 message properties (src/python/properties.rs) ---------------------------

@final
class MessageProperties:
    """The MQTT 5.0 properties of an application message: a frozen, checked record."""

    def __new__(
        cls,
        *,
        payload_format_indicator: int | None = None,
        message_expiry_interval: int | None = None,
        content_type: str | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Iterable[tuple[str, str]] | None = None,
        subscription_identifiers: Iterable[int] | None = None,
    ) -> MessageProperties: ...
    def replace(
        self,
        *,
        payload_format_indicator: int | None = ...,
        message_expiry_interval: int | None = ...,
        content_type: str | None = ...,
        response_topic: str | None = ...,
        correlation_data: bytes | None = ...,
        user_properties: Iterable[tuple[str, str]] | None = ...,
        subscription_identifiers: Iterable[int] | None = ...,
    ) -> MessageProperties: ...
    @property
    def payload_format_indicator(self) -> int | None: ...
    @property
    def message_expiry_interval(self) -> int | None: ...
    @property
    def content_type(self) -> str | None: ...
    @property
    def response_topic(self) -> str | None: ...
    @property
    def correlation_data(self) -> bytes | None: ...
    @property
    def user_properties(self) -> list[tuple[str, str]]: ...
    @property
    def subscription_identifiers(self) -> list[int]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class ReplyHandle:
    def resolve(self, value: object) -> None: ...

# -- a hook's MQTT 5.0 reason code (src/python/deny.rs) --------------------------------

@final
class Deny:
    """A refusal with an MQTT 5.0 reason code (0x80 or above) and an optional Reason
    String, returned by an authenticator or authorizer."""

    def __new__(cls, reason_code: int = 0x87, reason_string: str | None = None) -> Deny: ...
    @property
    def reason_code(self) -> int: ...
    @property
    def reason_string(self) -> str | None: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

# The records the broker hands to the dispatcher (`pyo3mq._dispatch`), a list per
# `call_soon_threadsafe`. Requests carry the `ReplyHandle` that answers them.

# MQTT 5.0 enhanced authentication (src/python/bridge/enhanced_auth.rs): one step for the hook
# registered for `method`, answered through its `EnhancedAuthReply`.

@final
class EnhancedAuthReply:
    def resolve(
        self,
        outcome: Literal["continue", "success", "failure"],
        data: bytes | None = None,
        state: object = None,
    ) -> None: ...

@final
class EnhancedAuthCall:
    @property
    def client_id(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def certificate_subject(self) -> str | None: ...
    @property
    def peer(self) -> tuple[str, int]: ...
    @property
    def method(self) -> str: ...
    @property
    def data(self) -> bytes | None: ...
    @property
    def reauth(self) -> bool: ...
    @property
    def state(self) -> Any: ...
    @property
    def reply(self) -> EnhancedAuthReply: ...

@final
class AuthCall:
    @property
    def client_id(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def certificate_subject(self) -> str | None: ...
    @property
    def password(self) -> bytes | None: ...
    @property
    def peer(self) -> tuple[str, int]: ...
    @property
    def protocol(self) -> int: ...
    @property
    def reply(self) -> ReplyHandle: ...

@final
class SubscribeCall:
    @property
    def client_id(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def certificate_subject(self) -> str | None: ...
    @property
    def protocol(self) -> int: ...
    @property
    def filter(self) -> str: ...
    @property
    def qos(self) -> int: ...
    @property
    def reply(self) -> ReplyHandle: ...

@final
class PublishCall:
    @property
    def client_id(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def certificate_subject(self) -> str | None: ...
    @property
    def protocol(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def reply(self) -> ReplyHandle: ...

@final
class InterceptCall:
    @property
    def messages(self) -> list[InterceptedMessage]: ...
    @property
    def reply(self) -> ReplyHandle: ...

@final
class InterceptedMessage:
    """One message of an `InterceptCall`; `pyo3mq._dispatch` makes it a `Message`."""

    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def client_id(self) -> str: ...
    @property
    def properties(self) -> MessageProperties | None: ...
    def replace_with(self, message: Message) -> Replacement:
        """The interceptor's `message` in place of this one, checked (ValueError)."""

@final
class Replacement:
    """An interceptor's checked replacement, returned in the `on_message` verdicts."""

@final
class SpaceFreed:
    @property
    def token(self) -> int: ...

@final
class MessagesReady:
    @property
    def subscription(self) -> int: ...

@final
class Connected:
    @property
    def client_id(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def certificate_subject(self) -> str | None: ...
    @property
    def protocol(self) -> int: ...
    @property
    def peer(self) -> tuple[str, int]: ...
    @property
    def clean_session(self) -> bool: ...
    @property
    def session_present(self) -> bool: ...

@final
class Disconnected:
    @property
    def client_id(self) -> str: ...
    @property
    def reason(self) -> Literal["clean", "keepalive", "error", "takeover", "shutdown"]: ...
    @property
    def reason_code(self) -> int | None: ...

@final
class Subscribed:
    @property
    def client_id(self) -> str: ...
    @property
    def filters(self) -> list[tuple[str, int]]: ...

@final
class Unsubscribed:
    @property
    def client_id(self) -> str: ...
    @property
    def filters(self) -> list[str]: ...

@final
class SubscriptionFeed:
    """An in-process subscription's messages, waiting in Rust for the consumer."""

    @property
    def id(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    def take(
        self, max: int
    ) -> list[tuple[str, bytes, int, bool, str, MessageProperties | None]]: ...

@final
class Routed:
    """What `BrokerCore.publish` did: routed; `space_token` when a flow-controlled
    subscription is full (a `SpaceFreed` record with it says when it drained)."""

    @property
    def space_token(self) -> int | None: ...

@final
class ReloadReport:
    """What `BrokerCore.reload` did."""

    @property
    def reloaded(self) -> list[str]: ...
    @property
    def failed(self) -> list[tuple[str, str]]: ...
    @property
    def tls_listeners(self) -> int: ...

@final
class HookKind:
    """A hook label of `/metrics`, for `BrokerCore.hook_called`."""

    AUTHENTICATE: ClassVar[HookKind]
    AUTHORIZE_SUBSCRIBE: ClassVar[HookKind]
    AUTHORIZE_PUBLISH: ClassVar[HookKind]
    ON_MESSAGE: ClassVar[HookKind]
    EVENTS: ClassVar[HookKind]
    @property
    def label(self) -> str: ...

@final
class BrokerCore:
    def __new__(cls, settings: dict[str, Any]) -> BrokerCore: ...
    def start(
        self,
        event_loop: object | None = None,
        dispatch: Callable[[list[Any]], None] | None = None,
        auth: bool = False,
        authorize: bool = False,
        events: bool = False,
        intercept: bool = False,
        track_changes: bool = False,
        enhanced_auth: list[str] = ...,
    ) -> list[tuple[str, int]]: ...
    def stop(self) -> None: ...
    def save(self) -> bool | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def dropped_messages(self) -> int: ...
    def stats(self) -> list[tuple[str, int]]: ...
    def metrics_text(self) -> str: ...
    @property
    def metrics_address(self) -> tuple[str, int] | None: ...
    def hook_called(
        self, kind: HookKind, seconds: float | None = None, failed: bool = False
    ) -> None: ...
    def reload_tls(self) -> int: ...
    def reload(self) -> ReloadReport: ...
    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: MessageProperties | None = None,
        wait: bool = False,
    ) -> Routed: ...
    def subscribe(
        self, filter: str, qos: int, max_buffered: int = 100000, flow_control: bool = False
    ) -> SubscriptionFeed: ...
    def unsubscribe(self, id: int) -> None: ...
    # Stored sessions and retained messages cross as the public records of pyo3mq.types.
    def seed(self, sessions: list[SessionRecord], retained: list[RetainedRecord]) -> None: ...
    def take_changes(
        self,
    ) -> tuple[list[str], list[SessionRecord], list[RetainedRecord], list[str]] | None: ...
    def snapshot(self) -> tuple[list[SessionRecord], list[RetainedRecord]]: ...

# --- client ---

# The client's exceptions, made in Rust; `pyo3mq` exports them.
class MqttCodeError(MqttError):
    rc: int
    def __init__(this, /, rc: int, *args: object) -> None: ...

class MqttConnectionError(MqttCodeError):
    def __init__(this, /, message: str | None = None, rc: int = 4) -> None: ...

class MqttTimeoutError(MqttConnectionError, TimeoutError): ...
class MqttProtocolError(MqttConnectionError): ...

class MqttConnectRefusedError(MqttConnectionError):
    return_code: int
    # MQTT 5.0: the CONNACK's reason code and reason string (None under 3.1.1).
    reason_code: int | None
    reason_string: str | None
    def __init__(this, /, return_code: int, message: str | None = None) -> None: ...

class MqttUnacceptableProtocolVersionError(MqttConnectRefusedError): ...
class MqttIdentifierRejectedError(MqttConnectRefusedError): ...
class MqttServerUnavailableError(MqttConnectRefusedError): ...
class MqttBadUsernameOrPasswordError(MqttConnectRefusedError): ...
class MqttNotAuthorizedError(MqttConnectRefusedError): ...

class MqttSubscribeError(MqttCodeError):
    filters: list[tuple[str, int]]
    return_codes: list[int]
    def __init__(this, /, filters: list[tuple[str, int]], return_codes: list[int]) -> None: ...

class MqttReentrantError(MqttError): ...
class MqttOperationTimeoutError(MqttError, TimeoutError): ...

# MQTT 5.0's client errors.
class MqttDisconnectError(MqttConnectionError):
    reason_code: int | None
    reason_string: str | None
    server_reference: str | None

class MqttPublishError(MqttCodeError):
    reason_code: int | None
    reason_string: str | None

class MqttUnsubscribeError(MqttCodeError):
    filters: list[str]
    reason_codes: list[int]

@final
class ConnAckInfo:
    """What an MQTT 5.0 CONNACK said (the spec's defaults for what it left out)."""

    @property
    def session_present(self) -> bool: ...
    @property
    def reason_code(self) -> int: ...
    @property
    def receive_maximum(self) -> int: ...
    @property
    def maximum_qos(self) -> int: ...
    @property
    def retain_available(self) -> bool: ...
    @property
    def maximum_packet_size(self) -> int | None: ...
    @property
    def topic_alias_maximum(self) -> int: ...
    @property
    def server_keep_alive(self) -> int | None: ...
    @property
    def assigned_client_identifier(self) -> str | None: ...
    @property
    def session_expiry_interval(self) -> int | None: ...
    @property
    def wildcard_subscription_available(self) -> bool: ...
    @property
    def subscription_identifier_available(self) -> bool: ...
    @property
    def shared_subscription_available(self) -> bool: ...
    @property
    def response_information(self) -> str | None: ...
    @property
    def server_reference(self) -> str | None: ...
    @property
    def reason_string(self) -> str | None: ...
    @property
    def user_properties(self) -> list[tuple[str, str]]: ...
    @property
    def authentication_method(self) -> str | None: ...
    @property
    def authentication_data(self) -> bytes | None: ...

def topic_matches(topic: str, wildcard: str) -> bool: ...
def set_topic_class(cls: type[str]) -> None: ...

@final
class ConnectionState:
    """The core's connection state; `pyo3mq.ConnectionState` mirrors it by name."""

    CONNECTING: ClassVar[ConnectionState]
    CONNECTED: ClassVar[ConnectionState]
    RECONNECTING: ClassVar[ConnectionState]
    CLOSED: ClassVar[ConnectionState]

@final
class Submitted:
    """What `ClientCore.publish` returns when it has no token."""

    SENT: ClassVar[Submitted]
    FULL: ClassVar[Submitted]

@final
class Completion:
    @property
    def token(self) -> int: ...
    @property
    def value(self) -> Any: ...
    @property
    def error(self) -> MqttError | None: ...

@final
class StateChange:
    @property
    def state(self) -> ConnectionState: ...
    @property
    def session_present(self) -> bool: ...
    @property
    def error(self) -> MqttConnectionError | None: ...

@final
class Drained:
    @property
    def completions(self) -> list[Completion] | None: ...
    @property
    def states(self) -> list[StateChange] | None: ...
    @property
    def messages(self) -> list[ClientMessage] | None: ...
    @property
    def room(self) -> bool: ...

@final
class ClientMessage:
    """A message received by a `pyo3mq.Client`."""

    def __new__(
        cls,
        topic: str,
        payload: bytes | bytearray | str | int | float | None,
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int = 0,
        properties: MessageProperties | None = None,
    ) -> ClientMessage: ...
    @property
    def topic(self) -> Topic: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def qos(self) -> int: ...
    @property
    def retain(self) -> bool: ...
    @property
    def dup(self) -> bool: ...
    @property
    def packet_id(self) -> int: ...
    @property
    def mid(self) -> int: ...
    @property
    def properties(self) -> MessageProperties | None: ...
    def matches(self, filter: str) -> bool: ...

@final
class ClientCore:
    def __new__(
        cls,
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
        session_store: str | None = None,
        transport: Literal["tcp", "tls", "ws", "wss"] = "tcp",
        tls_cafile: str | None = None,
        tls_ca_der: list[bytes] | None = None,
        tls_certfile: str | None = None,
        tls_keyfile: str | None = None,
        tls_key_pem: bytes | None = None,
        tls_verify: Literal["full", "any-name", "none"] = "full",
        tls_versions: Literal["any", "1.2", "1.3"] = "any",
        tls_server_name: str | None = None,
        ws_path: str | None = None,
        ws_headers: list[tuple[str, str]] | None = None,
        session_expiry_interval: int | None = None,
        receive_maximum: int | None = None,
        topic_alias_maximum: int = 0,
        outgoing_topic_aliases: int = 0,
        connect_user_properties: list[tuple[str, str]] | None = None,
        will_properties: MessageProperties | None = None,
        request_problem_information: bool | None = None,
        auth_method: str | None = None,
        auth_data: bytes | None = None,
        will_delay_interval: int | None = None,
    ) -> ClientCore: ...
    @property
    def wake_fd(self) -> int: ...
    @property
    def client_id(self) -> str: ...
    @property
    def queued_messages(self) -> int: ...
    @property
    def state(self) -> ConnectionState: ...
    def connect(self) -> int: ...
    def publish(
        self,
        topic: str,
        payload: bytes | bytearray | str | int | float | None,
        qos: int,
        retain: bool,
    ) -> int | Submitted: ...
    def subscribe(self, filters: list[tuple[str, int]]) -> int: ...
    def unsubscribe(self, filters: list[str]) -> int: ...
    # MQTT 5.0.
    def publish_v5(
        self,
        topic: str,
        payload: bytes | bytearray | str | int | float | None,
        qos: int,
        retain: bool,
        properties: MessageProperties | None = None,
    ) -> int | Submitted: ...
    def subscribe_v5(
        self,
        filters: list[tuple[str, int]],
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_identifier: int | None = None,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> int: ...
    def unsubscribe_v5(
        self, filters: list[str], *, user_properties: list[tuple[str, str]] | None = None
    ) -> int: ...
    @property
    def connack(self) -> ConnAckInfo | None: ...
    def auth_challenge(self) -> tuple[int, bytes | None, bool] | None: ...
    def auth_reply(self, seq: int, data: bytes | None) -> bool: ...
    def reauthenticate(self, data: bytes | None = None) -> int: ...
    @property
    def auth_result_data(self) -> bytes | None: ...
    def disconnect(self) -> int: ...
    def drain(self, max_messages: int) -> Drained: ...
    def take_messages(
        self, max: int, block: bool = False, timeout: float | None = None
    ) -> list[ClientMessage]: ...
    def wait(self, messages: bool, timeout: float | None = None) -> bool: ...
    def kick(self) -> None: ...
    def set_wake_pipe(self, enabled: bool) -> None: ...
    def last_error(self) -> MqttConnectionError | None: ...
    def debug_state(self) -> str: ...
