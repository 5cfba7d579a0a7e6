"""`Client`: an asyncio MQTT 3.1/3.1.1 client whose protocol work runs in Rust, with
aiomqtt's surface.

```python
async with Client("127.0.0.1", 1883, identifier="sensor-1") as client:
    await client.subscribe("cmd/#", qos=1)
    await client.publish("status", b"online", qos=1, retain=True)
    async for message in client.messages:
        if message.topic.matches("cmd/reboot"):
            ...
```

The socket, the codec, packet ids, the inflight window, QoS 1/2 flows, keepalive pings
and reconnects live in Rust (`src/client/`) on a process-wide tokio runtime. Python
calls into it only to hand over work, which never waits on I/O. Rust answers through a
wake socket this loop watches (`loop.add_reader`): one wake-up drains every completion,
state change and message that arrived meanwhile, so a burst of acknowledgements or
messages costs one hand-off, not one per packet. Received messages become Python objects
a batch per call into Rust, and `client.messages` yields from that batch. On a loop
without `add_reader` (Windows' Proactor loop) a thread waits in Rust instead and hands
each batch to the loop with `call_soon_threadsafe`.

`publish()` starts publishing at once and returns an awaitable (an `asyncio.Future`):
awaiting it waits for hand-over (QoS 0), PUBACK (QoS 1) or PUBCOMP (QoS 2). Many
publishes can be started and awaited together (`asyncio.gather(*futures)`) without any
per-message round trip between Python and Rust.

What crosses from Rust is typed: the core's state is `_pyo3mq.ConnectionState` (mapped
here to the public enum), `publish` returns `Submitted.SENT`, `Submitted.FULL` or a
token, a drain is a `Drained` record, and errors arrive as the exception instances to
raise: the exception classes are made in Rust (`src/python/errors.rs`).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import math
import os
import ssl
import threading
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict, TypeVar, Union, cast

from pyo3mq import _pyo3mq
from pyo3mq._pyo3mq import (
    ClientCore,
    ClientMessage,
    ConnAckInfo,
    MessageProperties,
    MqttBadUsernameOrPasswordError,
    MqttCodeError,
    MqttConnectionError,
    MqttConnectRefusedError,
    MqttDisconnectError,
    MqttIdentifierRejectedError,
    MqttNotAuthorizedError,
    MqttOperationTimeoutError,
    MqttProtocolError,
    MqttPublishError,
    MqttReentrantError,
    MqttServerUnavailableError,
    MqttSubscribeError,
    MqttTimeoutError,
    MqttUnacceptableProtocolVersionError,
    MqttUnsubscribeError,
    Submitted,
)

__all__ = [
    "AuthCallback",
    "AuthChallenge",
    "Client",
    "ClientMessage",
    "ConnAckInfo",
    "ConnectionState",
    "MQTTv5",
    "MQTTv31",
    "MQTTv311",
    "MessagesIterator",
    "MqttBadUsernameOrPasswordError",
    "MqttCodeError",
    "MqttConnectRefusedError",
    "MqttConnectionError",
    "MqttDisconnectError",
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
    "PayloadType",
    "ProtocolVersion",
    "Reconnect",
    "StateChange",
    "TLSParameters",
    "Topic",
    "TopicLike",
    "Wildcard",
    "WildcardLike",
    "Will",
]

#: MQTT 3.1 (protocol name `MQIsdp`, level 3).
MQTTv31: Final = 3
#: MQTT 3.1.1 (protocol name `MQTT`, level 4).
MQTTv311: Final = 4
#: MQTT 5.0 (protocol name `MQTT`, level 5).
MQTTv5: Final = 5


class ProtocolVersion(enum.IntEnum):
    """aiomqtt's names for the protocol levels."""

    V31 = 3
    V311 = 4
    V5 = 5


#: What `publish` accepts as a payload: str is sent as UTF-8, int and float as their
#: decimal text, None as an empty payload.
PayloadType = Union[str, bytes, bytearray, int, float, None]

#: Messages moved from Rust to Python per hand-off.
_BATCH: Final = 1024
#: `ClientCore.publish` results other than a token.
_SENT: Final = Submitted.SENT
_FULL: Final = Submitted.FULL
#: The client's default `timeout`, in seconds.
_DEFAULT_TIMEOUT: Final = 10.0
#: paho-mqtt's (so aiomqtt's) default, and Mosquitto's default `max_inflight_messages`,
#: which is also how many incoming QoS 2 messages awaiting PUBREL it allows a client
#: before it closes the connection.
_DEFAULT_MAX_INFLIGHT: Final = 20
_DEFAULT_MAX_QUEUED_INCOMING: Final = 10_000


# --------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------


class Topic(str):
    """A topic name, as aiomqtt's `Topic`: `message.topic.matches("a/+")`,
    `message.topic.value`.

    It is a `str` (so `message.topic == "a/b"`, dict keys and str methods work as they
    always did) with aiomqtt's `.value` and `.matches(wildcard)`. Received topics are
    made in Rust, one object per run of messages with the same topic.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Topic:
        if not isinstance(value, str):
            raise TypeError("Topic must be of type str")
        if not value or len(value) > 65_535 or "+" in value or "#" in value:
            raise ValueError(f"Invalid topic: {value}")
        return str.__new__(cls, value)

    @property
    def value(self) -> str:
        """The topic as a plain str."""
        return str.__str__(self)

    def matches(self, wildcard: WildcardLike) -> bool:
        """Whether the topic matches `wildcard` with aiomqtt's rules: `+` one level, a
        final `#` the rest, a `$share/GROUP/` prefix ignored. (`ClientMessage.matches`
        follows a server's routing instead, where `#` does not match `$SYS/...`.)
        A malformed wildcard raises ValueError."""
        return _pyo3mq.topic_matches(self, wildcard if isinstance(wildcard, str) else str(wildcard))

    def __repr__(self) -> str:
        return f"Topic(value={str.__repr__(self)})"


@dataclass(frozen=True)
class Wildcard:
    """A topic filter, as aiomqtt's `Wildcard` (validated; `str()` is the value)."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise TypeError("Wildcard must be of type str")
        value = self.value
        if (
            not value
            or len(value) > 65_535
            or "#/" in value
            or any(("+" in level or "#" in level) for level in value.split("/") if len(level) > 1)
        ):
            raise ValueError(f"Invalid wildcard: {value}")

    def __str__(self) -> str:
        return self.value


TopicLike = Union[str, Topic]
WildcardLike = Union[str, Wildcard]

_pyo3mq.set_topic_class(Topic)


# --------------------------------------------------------------------------------------
# Plain types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Will:
    """The message the server publishes for the client if it goes away without
    DISCONNECT."""

    topic: str
    payload: PayloadType = None
    qos: int = 0
    retain: bool = False
    #: MQTT 5.0: the will message's properties.
    properties: MessageProperties | None = None
    #: MQTT 5.0: Will Delay Interval, seconds the server waits after the connection is
    #: lost before it publishes the will (a reconnect within it cancels the will).
    delay_interval: int | None = None


@dataclass(frozen=True)
class AuthChallenge:
    """MQTT 5.0 enhanced authentication: the server's AUTH 0x18 (continue), which the
    client's `on_auth` callback answers with the next Authentication Data."""

    #: The Authentication Method (the client's `auth_method`).
    method: str
    #: The server's Authentication Data (None when it sent none).
    data: bytes | None
    #: Part of a re-authentication (`Client.reauthenticate`) rather than of connecting.
    reauth: bool


#: `on_auth(challenge)`: returns the next Authentication Data (or None for none); may be
#: a coroutine function in the asyncio `Client`. Raising ends the exchange: the client
#: disconnects and `connect` / `reauthenticate` raise the exception.
AuthCallback = Callable[[AuthChallenge], "bytes | Awaitable[bytes | None] | None"]


@dataclass(frozen=True)
class Reconnect:
    """Automatic reconnection after a lost connection, with exponential backoff.

    The delay starts at `initial_delay`, doubles per failed attempt up to `max_delay`,
    and is jittered down by up to half. After `max_attempts` failed attempts in a row
    (None: never) the client closes. A refusal that retrying cannot fix (CONNACK 1, 2,
    4 or 5) closes it at once.

    The first `connect()` is retried the same way: it returns once connected, and raises
    only after the first attempt plus `max_attempts` retries failed (or at once on such a
    refusal). Meanwhile the state stays CONNECTING.
    """

    initial_delay: float = 0.5
    max_delay: float = 30.0
    max_attempts: int | None = None


class ConnectionState(enum.Enum):
    """Where the connection stands."""

    #: `connect()` is waiting for CONNACK.
    CONNECTING = "connecting"
    CONNECTED = "connected"
    #: The connection was lost; the client is reconnecting (only with `reconnect`).
    RECONNECTING = "reconnecting"
    #: Not connected: never connected, disconnected, or lost for good.
    CLOSED = "closed"


#: The core's states, member for member by name.
_STATES: Final = {getattr(_pyo3mq.ConnectionState, s.name): s for s in ConnectionState}


@dataclass(frozen=True)
class StateChange:
    """A connection state transition, as passed to `on_state_change`."""

    state: ConnectionState
    #: The server resumed a stored session (CONNECTED on a clean_session=False client).
    session_present: bool = False
    #: Why the connection was lost or closed; None for a requested close.
    error: MqttConnectionError | None = None


# --------------------------------------------------------------------------------------
# Arguments shared with SyncClient
# --------------------------------------------------------------------------------------


def _pick(name: str, value: Any, alias: str, alias_value: Any, default: Any) -> Any:
    """One argument known under two names (aiomqtt's and pyo3mq's earlier one)."""
    if value is not None and alias_value is not None and value != alias_value:
        raise TypeError(f"{name} and {alias} are the same argument: pass one of them")
    if value is not None:
        return value
    return default if alias_value is None else alias_value


#: The largest value of the core's `usize` arguments.
_USIZE_MAX = 2**64 - 1


@dataclass(frozen=True)
class TLSParameters:
    """aiomqtt's TLS settings (`Client(..., tls_params=TLSParameters(...))`), with the
    same names and defaults; each maps onto the Rust core's rustls connection:

    - `ca_certs`: PEM file of the CAs to trust; None trusts the system's roots.
    - `certfile`, `keyfile`: the client certificate (PEM chain) and its key, for servers
      that require one (mutual TLS); without `keyfile` the key is read from `certfile`.
    - `cert_reqs`: `ssl.CERT_REQUIRED` (default; `CERT_OPTIONAL` means the same for a
      client) or `ssl.CERT_NONE`, which accepts any server certificate.
    - `tls_version`: None, `ssl.PROTOCOL_TLS_CLIENT`/`PROTOCOL_TLS` (TLS 1.2 or 1.3),
      `ssl.PROTOCOL_TLSv1_2` (1.2 only), or an `ssl.TLSVersion` minimum (`TLSv1_2`,
      `TLSv1_3`). Older versions are refused: rustls does not speak them.
    - `ciphers`: must be None. OpenSSL cipher strings do not apply to rustls, which picks
      from its own list of modern suites; a string raises ValueError rather than being
      ignored.
    - `keyfile_password`: the password (str, bytes or a callable returning one) of an
      encrypted key, decrypted with the `cryptography` package when it is installed.
    """

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: ssl.VerifyMode | None = None
    tls_version: Any | None = None
    ciphers: str | None = None
    keyfile_password: Any | None = None


#: URL schemes: the transport each names and its default port.
_SCHEMES: Final = {
    "mqtt": ("tcp", 1883),
    "tcp": ("tcp", 1883),
    "mqtts": ("tls", 8883),
    "tls": ("tls", 8883),
    "ssl": ("tls", 8883),
    "ws": ("ws", 80),
    "wss": ("wss", 443),
}
PathLike = Union[str, "os.PathLike[str]"]


def _path(value: PathLike | None) -> str | None:
    return None if value is None else os.fspath(value)


def _tls_versions(value: Any, setting: str) -> str:
    """The core's version choice for an `ssl` protocol or minimum version."""
    name = getattr(value, "name", str(value))
    if value is None or name in ("PROTOCOL_TLS", "PROTOCOL_TLS_CLIENT", "TLSv1_2"):
        return "any"
    if name in ("MINIMUM_SUPPORTED", "MAXIMUM_SUPPORTED"):
        return "any"
    if name == "PROTOCOL_TLSv1_2":
        return "1.2"
    if name == "TLSv1_3":
        return "1.3"
    raise ValueError(
        f"{setting} {value!r} is not offered: the client speaks TLS 1.2 and 1.3 (pass "
        "None, ssl.PROTOCOL_TLS_CLIENT, ssl.PROTOCOL_TLSv1_2 or ssl.TLSVersion.TLSv1_3)"
    )


def _context_versions(context: ssl.SSLContext) -> str:
    low, high = context.minimum_version, context.maximum_version
    if high is not ssl.TLSVersion.MAXIMUM_SUPPORTED and high < ssl.TLSVersion.TLSv1_2:
        raise ValueError(
            f"tls_context allows at most {high.name}: the client speaks TLS 1.2 and 1.3"
        )
    if low is ssl.TLSVersion.TLSv1_3:
        return "1.3"
    if high is ssl.TLSVersion.TLSv1_2:
        return "1.2"
    return "any"


def _decrypted_key(path: str, password: Any) -> bytes:
    """The PEM of an encrypted private key, decrypted (rustls reads plain keys only)."""
    if callable(password):
        password = password()
    if isinstance(password, str):
        password = password.encode()
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        raise ValueError(
            f"keyfile {path}: decrypting a key with keyfile_password needs the "
            "`cryptography` package (pip install cryptography); or pass an unencrypted key"
        ) from None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"keyfile {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as e:
        raise ValueError(f"keyfile {path}: cannot decrypt it with keyfile_password: {e}") from None
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _transport(
    hostname: str,
    port: int | None,
    *,
    transport: str,
    tls: bool | None,
    cafile: PathLike | None,
    certfile: PathLike | None,
    keyfile: PathLike | None,
    verify: bool,
    server_hostname: str | None,
    tls_params: TLSParameters | None,
    tls_context: ssl.SSLContext | None,
    tls_insecure: bool | None,
    websocket_path: str | None,
    websocket_headers: Mapping[str, str] | None,
) -> tuple[str, int, dict[str, Any]]:
    """The host, the port and the core's transport arguments, from a URL or keywords."""
    scheme: str | None = None
    url_path = ""
    if "://" in hostname:
        parts = urllib.parse.urlsplit(hostname)
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES:
            raise ValueError(
                f"{hostname!r}: unknown scheme {parts.scheme!r}: use mqtt://, mqtts://, "
                "ws:// or wss://"
            )
        try:
            url_port = parts.port
        except ValueError as e:
            raise ValueError(f"{hostname!r}: {e}") from None
        if not parts.hostname:
            raise ValueError(f"{hostname!r} names no host")
        if port is not None and url_port is not None and port != url_port:
            raise TypeError(f"port={port} and the port of {hostname!r} differ: pass one")
        port = url_port if port is None else port
        hostname = parts.hostname
        url_path = parts.path + (f"?{parts.query}" if parts.query else "")
    if transport not in ("tcp", "websockets"):
        raise ValueError(
            f"transport {transport!r} is not supported: 'tcp' or 'websockets' (or a "
            "ws:// or wss:// URL)"
        )
    kind = _SCHEMES[scheme][0] if scheme else "tcp"
    websocket = kind in ("ws", "wss") or transport == "websockets"
    if tls_params is not None and tls_context is not None:
        raise ValueError("pass tls_params or tls_context, not both")
    if tls_params is not None:
        if not isinstance(tls_params, TLSParameters):
            raise TypeError(f"tls_params must be a TLSParameters, not {type(tls_params).__name__}")
        for name, mine in (("cafile", cafile), ("certfile", certfile), ("keyfile", keyfile)):
            if mine is not None:
                raise TypeError(f"{name}= and tls_params are the same settings: pass one")
        cafile, certfile, keyfile = tls_params.ca_certs, tls_params.certfile, tls_params.keyfile
    if tls_context is not None and not isinstance(tls_context, ssl.SSLContext):
        raise TypeError(f"tls_context must be an ssl.SSLContext, not {type(tls_context).__name__}")
    configured = (
        tls_params is not None
        or tls_context is not None
        or cafile is not None
        or certfile is not None
        or keyfile is not None
    )
    tuned = not verify or server_hostname is not None or bool(tls_insecure)
    secure = kind in ("tls", "wss") or bool(tls) or configured
    if scheme is not None and kind in ("tcp", "ws") and (configured or tls):
        raise ValueError(
            f"{scheme}:// has no TLS, yet TLS settings were given: use mqtts:// or wss://"
        )
    if tls is False and (configured or kind in ("tls", "wss")):
        raise ValueError("tls=False, yet TLS settings or a TLS URL were given")
    if tuned and not secure:
        raise ValueError(
            "verify, server_hostname and tls_insecure apply to TLS connections: use an "
            "mqtts:// or wss:// URL, tls=True, tls_params or tls_context"
        )
    if port is None:
        if scheme is not None:
            port = _SCHEMES["wss" if websocket and secure else "ws" if websocket else kind][1]
        else:
            port = 8883 if secure and not websocket else 1883
    args: dict[str, Any] = {
        "transport": ("wss" if secure else "ws") if websocket else ("tls" if secure else "tcp")
    }
    path = url_path or websocket_path or "/mqtt"
    if url_path and websocket_path is not None and websocket_path != url_path:
        raise TypeError(f"websocket_path={websocket_path!r} and the path of the URL differ")
    if websocket:
        args["ws_path"] = path
        if websocket_headers is not None:
            if not isinstance(websocket_headers, Mapping):
                raise TypeError("websocket_headers must be a mapping of header names to values")
            args["ws_headers"] = [(str(k), str(v)) for k, v in websocket_headers.items()]
    elif websocket_headers is not None or websocket_path is not None:
        raise ValueError("websocket_path and websocket_headers need transport='websockets'")
    if not secure:
        return hostname, port, args
    check = "full"
    versions = "any"
    ca_der: list[bytes] = []
    key_pem: bytes | None = None
    if tls_params is not None:
        if tls_params.ciphers is not None:
            raise ValueError(
                "TLSParameters.ciphers: OpenSSL cipher strings do not apply; the client's "
                "TLS (rustls) negotiates from its own list of modern suites: pass None"
            )
        if tls_params.cert_reqs == ssl.CERT_NONE:
            check = "none"
        versions = _tls_versions(tls_params.tls_version, "tls_version")
        if tls_params.keyfile_password is not None:
            source = keyfile if keyfile is not None else certfile
            if source is None:
                raise ValueError("keyfile_password needs a keyfile (or certfile holding the key)")
            key_pem = _decrypted_key(os.fspath(source), tls_params.keyfile_password)
    if tls_context is not None:
        if tls_context.verify_mode == ssl.CERT_NONE:
            check = "none"
        elif not tls_context.check_hostname:
            check = "any-name"
        if check != "none":
            ca_der = [bytes(der) for der in tls_context.get_ca_certs(binary_form=True)]
        versions = _context_versions(tls_context)
    if tls_insecure and check == "full":
        check = "any-name"
    if not verify:
        check = "none"
    args.update(
        tls_cafile=_path(cafile),
        tls_ca_der=ca_der or None,
        tls_certfile=_path(certfile),
        tls_keyfile=_path(keyfile),
        tls_key_pem=key_pem,
        tls_verify=check,
        tls_versions=versions,
        tls_server_name=server_hostname,
    )
    return hostname, port, args


@dataclass(frozen=True)
class _Settings:
    hostname: str
    port: int
    timeout: float
    core_args: dict[str, Any]

    def new_core(self) -> ClientCore:
        return ClientCore(self.hostname, self.port, **self.core_args)


class _ClientOptions(TypedDict, total=False):
    """The keyword arguments `Client` and `SyncClient` share, with their types: what
    `SyncClient` forwards (`**options`) and `_settings` reads. Their defaults are those
    of `Client.__init__`, the one signature that lists them (`_OPTION_DEFAULTS`)."""

    username: str | None
    password: str | bytes | None
    identifier: str | None
    client_id: str | None
    protocol: int | None
    will: Will | None
    clean_session: bool | None
    transport: str
    timeout: float | None
    keepalive: int
    max_inflight_messages: int | None
    max_inflight: int | None
    max_queued_incoming_messages: int | None
    max_queued_incoming: int | None
    max_buffered_bytes: int
    max_packet_size: int
    reconnect: bool | Reconnect
    session_store: str | None
    tls: bool | None
    cafile: PathLike | None
    certfile: PathLike | None
    keyfile: PathLike | None
    verify: bool
    server_hostname: str | None
    tls_params: TLSParameters | None
    tls_context: ssl.SSLContext | None
    tls_insecure: bool | None
    websocket_path: str | None
    websocket_headers: Mapping[str, str] | None
    session_expiry_interval: int | None
    receive_maximum: int | None
    topic_alias_maximum: int
    outgoing_topic_aliases: int
    connect_user_properties: Iterable[tuple[str, str]] | None
    request_problem_information: bool | None
    auth_method: str | None
    auth_data: bytes | None


_OPTIONS: Final = frozenset(_ClientOptions.__annotations__)


def _settings(
    hostname: str, port: int | None, on_auth: object, options: _ClientOptions
) -> _Settings:
    """Checks the constructor's arguments (`options` holds all of them: the defaults
    filled in) and works out what the core is built with."""
    o = options
    will = o["will"]
    if (o["auth_method"] is None) != (on_auth is None):
        raise ValueError("enhanced authentication needs both auth_method and on_auth")
    hostname, port, transport_args = _transport(
        hostname,
        port,
        transport=o["transport"],
        tls=o["tls"],
        cafile=o["cafile"],
        certfile=o["certfile"],
        keyfile=o["keyfile"],
        verify=o["verify"],
        server_hostname=o["server_hostname"],
        tls_params=o["tls_params"],
        tls_context=o["tls_context"],
        tls_insecure=o["tls_insecure"],
        websocket_path=o["websocket_path"],
        websocket_headers=o["websocket_headers"],
    )
    # Out-of-range numbers are a ValueError naming the argument here, not an
    # OverflowError from the conversion to the core's integer types.
    bounds: tuple[tuple[str, int | None, int | None, int], ...] = (
        ("port", port, 0, 0xFFFF),
        ("keepalive", o["keepalive"], 0, 0xFFFF),
        ("max_inflight_messages", o["max_inflight_messages"], 1, 0xFFFF),
        ("max_inflight", o["max_inflight"], 1, 0xFFFF),
        ("max_buffered_bytes", o["max_buffered_bytes"], 0, _USIZE_MAX),
        # 0 or less: the default (aiomqtt's "unlimited", below).
        ("max_queued_incoming_messages", o["max_queued_incoming_messages"], None, _USIZE_MAX),
        ("max_queued_incoming", o["max_queued_incoming"], 0, _USIZE_MAX),
        ("max_packet_size", o["max_packet_size"], 0, _USIZE_MAX),
        ("session_expiry_interval", o["session_expiry_interval"], 0, 0xFFFF_FFFF),
        ("receive_maximum", o["receive_maximum"], 1, 0xFFFF),
        ("topic_alias_maximum", o["topic_alias_maximum"], 0, 0xFFFF),
        ("outgoing_topic_aliases", o["outgoing_topic_aliases"], 0, 0xFFFF),
        ("will delay_interval", None if will is None else will.delay_interval, 0, 0xFFFF_FFFF),
    )
    for name, value, low, high in bounds:
        if not isinstance(value, int):
            continue  # None (the default), or a wrong type the core refuses by name
        if value > high or (low is not None and value < low):
            span = f"at most {high}" if low is None else f"between {low} and {high}"
            raise ValueError(f"{name} must be {span}, not {value}")
    identifier = _pick("identifier", o["identifier"], "client_id", o["client_id"], "")
    inflight = _pick(
        "max_inflight_messages",
        o["max_inflight_messages"],
        "max_inflight",
        o["max_inflight"],
        _DEFAULT_MAX_INFLIGHT,
    )
    # aiomqtt's "0 or less means unlimited": every queue here is bounded, and a full one
    # pauses reading instead of discarding, so the default bound stands in.
    max_queued_incoming_messages = o["max_queued_incoming_messages"]
    if max_queued_incoming_messages is not None and max_queued_incoming_messages <= 0:
        max_queued_incoming_messages = _DEFAULT_MAX_QUEUED_INCOMING
    queued = _pick(
        "max_queued_incoming_messages",
        max_queued_incoming_messages,
        "max_queued_incoming",
        o["max_queued_incoming"],
        _DEFAULT_MAX_QUEUED_INCOMING,
    )
    store_path = None
    session_store = o["session_store"]
    if session_store is not None and session_store != "memory":
        if not session_store.startswith("sqlite:") or len(session_store) == len("sqlite:"):
            raise ValueError(
                f"session_store must be 'memory' or 'sqlite:PATH', not {session_store!r}"
            )
        store_path = session_store[len("sqlite:") :]
    seconds = _DEFAULT_TIMEOUT if o["timeout"] is None else float(o["timeout"])
    policy = Reconnect() if o["reconnect"] is True else (o["reconnect"] or None)
    core_args: dict[str, Any] = {
        "client_id": identifier,
        "clean_session": True if o["clean_session"] is None else o["clean_session"],
        "keepalive": o["keepalive"],
        "username": o["username"],
        "password": o["password"],
        "will": None if will is None else (will.topic, will.payload, will.qos, will.retain),
        "protocol": MQTTv311 if o["protocol"] is None else int(o["protocol"]),
        # An infinite timeout has no CONNACK bound; a day stands in for it.
        "connect_timeout": 86_400.0 if math.isinf(seconds) else seconds,
        "max_inflight": inflight,
        "max_buffered_bytes": o["max_buffered_bytes"],
        "max_queued_incoming": queued,
        "max_packet_size": o["max_packet_size"],
        "reconnect": None
        if policy is None
        else (policy.initial_delay, policy.max_delay, policy.max_attempts),
        "session_store": store_path,
        **transport_args,
    }
    # MQTT 5.0's CONNECT settings, passed only when set: the core refuses them on 3.1.1.
    v5_args = {
        "session_expiry_interval": o["session_expiry_interval"],
        "receive_maximum": o["receive_maximum"],
        "topic_alias_maximum": o["topic_alias_maximum"] or None,
        "outgoing_topic_aliases": o["outgoing_topic_aliases"] or None,
        "connect_user_properties": None
        if o["connect_user_properties"] is None
        else [(str(k), str(v)) for k, v in o["connect_user_properties"]],
        "will_properties": None if will is None else will.properties,
        "will_delay_interval": None if will is None else will.delay_interval,
        "request_problem_information": o["request_problem_information"],
        "auth_method": o["auth_method"],
        "auth_data": None if o["auth_data"] is None else bytes(o["auth_data"]),
    }
    core_args.update((k, v) for k, v in v5_args.items() if v is not None)
    return _Settings(hostname, port, seconds, core_args)


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


class MessagesIterator:
    """`async for message in client.messages`: received messages in arrival order.

    Messages wait in Rust (at most `max_queued_incoming`; beyond that the client stops
    reading the socket) and cross to Python a batch at a time; iterating takes them from
    that batch, with no trip through the event loop until it is used up. Iteration ends
    after a requested disconnect and raises the error after a lost connection.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._buffer: deque[ClientMessage] = deque()
        self._waiters: list[asyncio.Future[None]] = []

    def __aiter__(self) -> MessagesIterator:
        return self

    async def __anext__(self) -> ClientMessage:
        buffer = self._buffer
        while True:
            if buffer:
                return buffer.popleft()
            client = self._client
            if not client._started:
                raise MqttConnectionError("the client is not connected")
            batch = client._core.take_messages(_BATCH)
            if batch:
                buffer.extend(batch)
                continue
            if client._state is ConnectionState.CLOSED:
                error = client._core.last_error()
                if error is not None:
                    raise error
                raise StopAsyncIteration
            waiter: asyncio.Future[None] = client._loop.create_future()
            self._waiters.append(waiter)
            if client._waker is not None:
                # The waker thread waits for events only; now it must wait for messages.
                client._core.kick()
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)

    def __len__(self) -> int:
        """Messages received and not yet iterated."""
        client = self._client
        queued = client._core.queued_messages if client._started else 0
        return len(self._buffer) + queued

    def _wanted(self) -> int:
        return _BATCH if self._waiters and not self._buffer else 0

    def _feed(self, batch: list[ClientMessage]) -> None:
        self._buffer.extend(batch)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Waker:
    """For event loops without `add_reader` (Windows' Proactor loop): a thread waits in
    Rust, without the GIL, until the core has events, then schedules the client's drain
    on the loop with one `call_soon_threadsafe` and waits for it to have run."""

    def __init__(self, client: Client, core: ClientCore, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._core = core
        self._loop = loop
        self._drained = threading.Event()
        self._stopped = False
        core.set_wake_pipe(False)
        self._thread = threading.Thread(target=self._run, name="pyo3mq-client-waker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        core, client = self._core, self._client
        while not self._stopped:
            core.wait(client._messages._wanted() > 0)
            if self._stopped:
                return
            self._drained.clear()
            try:
                self._loop.call_soon_threadsafe(client._on_wake, core)
            except RuntimeError:  # the loop is closed: nobody is left to serve
                return
            while not self._drained.wait(0.5):
                if self._stopped or self._loop.is_closed():
                    return

    def drained(self) -> None:
        self._drained.set()

    def stop(self) -> None:
        self._stopped = True
        self._drained.set()
        self._core.kick()


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------

_Deferred = tuple[str, PayloadType, int, bool, "MessageProperties | None", "asyncio.Future[None]"]


class Client:
    """An asyncio MQTT 3.1/3.1.1 client, with aiomqtt's constructor and methods.

    >>> async with Client("127.0.0.1", 1883) as client:
    ...     await client.publish("a/b", b"hello", qos=1)

    Arguments, all keyword-only after `port` (aiomqtt's names; pyo3mq's earlier names
    are kept as aliases):

    - `identifier` (alias `client_id`): empty or None lets a 3.1.1 server assign one
      (then `clean_session` must be True); for MQTT 3.1 an id is generated.
    - `clean_session` (default True), `keepalive` (seconds, 0 = off), `username`,
      `password`, `will`.
    - `protocol`: `ProtocolVersion.V311` / `MQTTv311` (default) or `V31` / `MQTTv31`.
    - `timeout` (default 10 s): connecting (TCP, TLS handshake, WebSocket upgrade) plus
      CONNACK (per attempt), the bound of a graceful disconnect, and the default bound
      of `subscribe` and `unsubscribe` (`math.inf`: no bound). `publish` is bounded only
      when given its own `timeout`.
    - `hostname` may be a URL: `mqtt://host:1883`, `mqtts://host:8883` (also `tls://`,
      `ssl://`), `ws://host:80/mqtt`, `wss://host:443/mqtt`. Without a port the
      scheme's is used; without a URL, `port` defaults to 1883 (8883 with TLS).
    - `transport`: "tcp" (default) or "websockets" (aiomqtt's and paho's name; the
      subprotocol is `mqtt`, packets travel in binary frames).
      `websocket_path` (default "/mqtt", or the URL's path) and `websocket_headers` (a
      mapping, sent with the upgrade request) apply to WebSocket connections.
    - TLS (rustls, in Rust) is on with an `mqtts://` or `wss://` URL, `tls=True`, or any
      of `cafile`, `certfile`, `keyfile`, `tls_params`, `tls_context`:
      - the server's certificate must chain to the system's trusted roots, or to the
        CAs in `cafile` (PEM) when given, and be valid for the host connected to (or
        for `server_hostname`, which is also sent as SNI);
      - `certfile` and `keyfile` (PEM; without `keyfile` the key is read from
        `certfile`) are the client certificate for servers that require one;
      - `tls_insecure=True` (aiomqtt's and paho's name) skips the name check but still
        requires a trusted chain; `verify=False` accepts any certificate: use them only
        on purpose (a test broker with a self-signed certificate).
      - `tls_params=TLSParameters(ca_certs=, certfile=, keyfile=, cert_reqs=,
        tls_version=, ciphers=, keyfile_password=)` is aiomqtt's form of the same
        settings (see `TLSParameters` for how each applies).
      - `tls_context=ssl.SSLContext`: the client's TLS is rustls, not Python's `ssl`,
        so the context is read, not used. Honoured: `verify_mode` (`CERT_NONE` accepts
        any certificate), `check_hostname` (False skips the name check), the CA
        certificates it holds (`load_verify_locations`, or the system's default file;
        when it holds none, the system's roots) and `minimum_version` /
        `maximum_version`. Not readable from a context: a client certificate loaded
        with `load_cert_chain`, and cipher settings. Pass the certificate as
        `certfile=`/`keyfile=` beside the context; a server that requires one and did
        not get it fails the connection with an error that says so.
      Files are read when the client is made; a missing or malformed one raises
      ValueError naming the file. A refused certificate raises `MqttConnectionError`
      saying what to pass, and is not retried by `reconnect`.
    - `reconnect`: True or a `Reconnect` for automatic reconnection. With
      `clean_session=False` the session resumes and unacknowledged publishes are resent
      with DUP=1 under their original ids; when the server has no session, the client's
      subscriptions are restored first, and publishes (resent ones and those made while
      reconnecting) are held until the server acknowledged them, so a message published
      to one of the client's own subscriptions comes back to it. Publishes made while
      reconnecting are queued (QoS 0 in the write buffer, QoS 1/2 with their completions
      still pending). A first `connect()` that fails is retried with the same backoff
      (until `max_attempts` retries failed, if set) instead of raising at once.
    - `max_inflight_messages` (alias `max_inflight`, default 20, as paho-mqtt's and
      Mosquitto's, which closes a connection with more QoS 2 messages awaiting PUBREL):
      outgoing QoS 1/2 publishes awaiting acknowledgement (1-65535); more wait in order
      for the window.
    - `max_buffered_bytes`: bytes of outgoing packets not yet written plus publishes
      waiting for the window; beyond it, `publish()` returns a future that completes
      once there is room (back-pressure).
    - `max_queued_incoming_messages` (alias `max_queued_incoming`, default 10,000):
      received messages not yet iterated; beyond it the client stops reading the socket
      until the application catches up (nothing is discarded).
    - `max_packet_size`: largest packet accepted from the server.
    - `session_store`: "memory" (default: the session lives as long as the process) or
      "sqlite:PATH": the session's unacknowledged outgoing QoS 1/2 publishes and the
      inbound QoS 2 ids awaiting PUBREL are kept in that SQLite file, and a client made
      later with the same file and `identifier` (in this process or the next) resumes
      them: resends, with DUP=1, what the server may have had, and does not deliver twice
      a QoS 2 message the server sends again. Needs `clean_session=False` and an
      `identifier`. Every packet is written only once the session it depends on is
      committed (WAL; it survives a crash of the process).
    - `on_state_change`: called on the event loop with a `StateChange` at each
      transition (CONNECTING, CONNECTED, RECONNECTING, CLOSED).

    MQTT 5.0 (`protocol=5`, `ProtocolVersion.V5` or `MQTTv5`):

    - CONNECT settings: `session_expiry_interval` (seconds the server keeps the session
      after the connection closes; with `clean_session=False` a later connection
      resumes it), `receive_maximum` (QoS 1/2 messages the server may have
      unacknowledged towards this client), `topic_alias_maximum` (aliases the server may
      use towards it; received aliases are mapped back to topics),
      `outgoing_topic_aliases` (aliases this client uses towards the server, capped by
      the CONNACK; 0 = off), `connect_user_properties` (pairs); `max_packet_size` is
      sent as Maximum Packet Size.
    - The CONNACK is honoured and readable as `client.connack` (a `ConnAckInfo`): its
      Receive Maximum caps the inflight window, its Server Keep Alive replaces
      `keepalive`, `assigned_client_identifier` names the id it gave an empty one, and
      a publish above its Maximum QoS, retained without Retain Available, or larger
      than its Maximum Packet Size raises `MqttPublishError` (0x9B, 0x9A, 0x95) without
      being sent. A refusal raises the `MqttConnectRefusedError` subclass of its reason
      code, with `reason_code` and `reason_string`.
    - `publish(..., properties=MessageProperties(...))`; received messages carry
      `message.properties`. A PUBACK or PUBREC with a reason code of 0x80 or more fails
      the publish with `MqttPublishError`.
    - `subscribe(..., no_local=, retain_as_published=, retain_handling=,
      subscription_identifier=, user_properties=)`; a refused filter raises
      `MqttSubscribeError` with the reason codes. `unsubscribe` returns the UNSUBACK
      reason codes, or raises `MqttUnsubscribeError` when one is 0x80 or more.
    - A DISCONNECT from the server ends the connection with `MqttDisconnectError`
      carrying its `reason_code` (e.g. 0x8E session taken over, which `reconnect` does
      not retry) and `reason_string`.
    - `request_problem_information=False` asks the server to leave reason strings and
      user properties off every packet but PUBLISH, CONNACK and DISCONNECT;
      `Will(..., delay_interval=)` sets the will's Will Delay Interval.
    - Enhanced authentication (spec 4.12): `auth_method` and `auth_data` go in CONNECT;
      each server AUTH 0x18 calls `on_auth(AuthChallenge)` (plain or `async def`), whose
      return value is the next Authentication Data. `connack.authentication_data` is
      the CONNACK's (a SCRAM server's signature, to verify); a refusal raises the
      `MqttConnectRefusedError` subclass of its code (0x87 not authorized, 0x86 bad
      user name or password, 0x8C bad authentication method). `await
      reauthenticate(data)` authenticates again on the open connection (AUTH 0x19).
    """

    _loop: asyncio.AbstractEventLoop
    _done: asyncio.Future[None]

    def __init__(
        self,
        hostname: str,
        port: int | None = None,
        *,
        username: str | None = None,
        password: str | bytes | None = None,
        identifier: str | None = None,
        protocol: int | None = None,
        will: Will | None = None,
        clean_session: bool | None = None,
        transport: str = "tcp",
        timeout: float | None = None,
        keepalive: int = 60,
        max_queued_incoming_messages: int | None = None,
        max_inflight_messages: int | None = None,
        client_id: str | None = None,
        reconnect: bool | Reconnect = False,
        max_inflight: int | None = None,
        max_buffered_bytes: int = 8 * 1024 * 1024,
        max_queued_incoming: int | None = None,
        max_packet_size: int = 268_435_460,
        session_store: str | None = None,
        on_state_change: Callable[[StateChange], object] | None = None,
        tls: bool | None = None,
        cafile: PathLike | None = None,
        certfile: PathLike | None = None,
        keyfile: PathLike | None = None,
        verify: bool = True,
        server_hostname: str | None = None,
        tls_params: TLSParameters | None = None,
        tls_context: ssl.SSLContext | None = None,
        tls_insecure: bool | None = None,
        websocket_path: str | None = None,
        websocket_headers: Mapping[str, str] | None = None,
        session_expiry_interval: int | None = None,
        receive_maximum: int | None = None,
        topic_alias_maximum: int = 0,
        outgoing_topic_aliases: int = 0,
        connect_user_properties: Iterable[tuple[str, str]] | None = None,
        request_problem_information: bool | None = None,
        auth_method: str | None = None,
        auth_data: bytes | None = None,
        on_auth: AuthCallback | None = None,
    ) -> None:
        # Every keyword but the callbacks, by name from the one signature that lists them.
        options = cast(_ClientOptions, {k: v for k, v in locals().items() if k in _OPTIONS})
        self._settings = _settings(hostname, port, on_auth, options)
        self._v5 = self._settings.core_args["protocol"] == MQTTv5
        self._auth = _Auth(auth_method, auth_data, on_auth)
        #: The host and port connected to (from the URL when `hostname` is one).
        self.hostname = self._settings.hostname
        self.port = self._settings.port
        #: The default bound, in seconds, of `subscribe`, `unsubscribe`, and connecting.
        self.timeout = self._settings.timeout
        # Built now so that bad arguments fail here, not at connect time.
        self._core = self._settings.new_core()
        self._started = False
        self._fd: int | None = None
        self._waker: _Waker | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._backlog: deque[_Deferred] = deque()
        self._state = ConnectionState.CLOSED
        self._session_present = False
        self._messages = MessagesIterator(self)
        self._on_state_change = on_state_change
        self._state_waiters: list[tuple[ConnectionState, asyncio.Future[None]]] = []

    # -- properties ---------------------------------------------------------------------

    @property
    def identifier(self) -> str:
        """The client id sent to the server (generated for MQTT 3.1 when empty)."""
        return self._core.client_id

    @property
    def client_id(self) -> str:
        """`identifier`, under pyo3mq's earlier name."""
        return self._core.client_id

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def is_connected(self) -> bool:
        return self._state is ConnectionState.CONNECTED

    @property
    def session_present(self) -> bool:
        """Whether the server resumed a stored session at the last CONNACK."""
        return self._session_present

    @property
    def connack(self) -> ConnAckInfo | None:
        """MQTT 5.0: what the server's last CONNACK said (its limits, the assigned client
        id, its keepalive, ...); None before it, and on MQTT 3.1/3.1.1."""
        return self._core.connack if self._started else None

    @property
    def messages(self) -> MessagesIterator:
        """Received messages: `async for message in client.messages`."""
        return self._messages

    # -- connecting ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Connects and waits for CONNACK. A refusal raises a `MqttConnectRefusedError`
        subclass carrying the return code. With `reconnect`, other failures are retried
        per the policy before raising. A client can connect again after it closed;
        connecting one that is connected or connecting raises `MqttReentrantError`."""
        if self._state is not ConnectionState.CLOSED:
            raise MqttReentrantError(
                f"the client is already {self._state.value}: it is reusable, but not reentrant"
            )
        loop = asyncio.get_running_loop()
        if self._started:
            self._core = self._settings.new_core()
        core = self._core
        self._started = True
        self._loop = loop
        self._done = loop.create_future()
        self._done.set_result(None)
        # A closed core completed or failed every request it had; drop any leftovers so
        # that the new core's tokens (which start at 1 again) cannot meet them.
        stale = MqttConnectionError("the client is closed")
        for leftover in self._pending.values():
            _fail(leftover, stale)
        self._pending.clear()
        self._fail_backlog(stale)
        fd = core.wake_fd
        try:
            loop.add_reader(fd, self._on_wake, core)
            self._fd = fd
        except NotImplementedError:
            # Windows' Proactor loop cannot watch a socket: a thread waits instead.
            self._waker = _Waker(self, core, loop)
        self._set_state(ConnectionState.CONNECTING, False, None)
        future: asyncio.Future[bool] = loop.create_future()
        self._pending[core.connect()] = future
        self._auth.waiter = future
        try:
            await future
        except asyncio.CancelledError:
            core.disconnect()
            raise

    async def disconnect(self) -> None:
        """Sends what is buffered and DISCONNECT, then closes (bounded by `timeout`).
        Publishes still awaiting acknowledgement fail with `MqttConnectionError`."""
        if not self._started or self._state is ConnectionState.CLOSED:
            return
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[self._core.disconnect()] = future
        await future

    async def wait_for_state(self, state: ConnectionState) -> None:
        """Returns once the connection is in `state` (at once if it already is)."""
        if self._state is state:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (state, waiter)
        self._state_waiters.append(entry)
        try:
            await waiter
        finally:
            self._state_waiters.remove(entry)

    async def reauthenticate(
        self, data: bytes | None = None, *, timeout: float | None = None
    ) -> bytes | None:
        """MQTT 5.0 enhanced authentication: authenticates again on the open connection
        (AUTH 0x19 with `data`, default the client's `auth_data`; the server's challenges
        go to `on_auth` with `reauth=True`). Returns the Authentication Data of the
        server's AUTH 0x00 that ends it. A refusal is the server's DISCONNECT (0x87 not
        authorized, say): it raises `MqttDisconnectError` with that reason code, as the
        connection ends. Bounded by `timeout` (default the client's)."""
        if self._auth.method is None:
            raise ValueError("[MQTT-4.12.1-1] reauthenticate needs the auth_method connected with")
        if not self._started:
            raise MqttConnectionError("the client is not connected")
        token = self._core.reauthenticate(self._auth.data if data is None else bytes(data))
        future: asyncio.Future[None] = self._request(token)
        self._auth.waiter = future
        await self._bounded(
            future, self.timeout if timeout is None else timeout, "the re-authentication"
        )
        return self._core.auth_result_data

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # -- publishing and subscribing -----------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: PayloadType = None,
        qos: int = 0,
        retain: bool = False,
        properties: MessageProperties | Any | None = None,
        *,
        timeout: float | None = None,
    ) -> asyncio.Future[None]:
        """Publishes `payload` to `topic`, starting at once.

        Returns a future: awaiting it returns when the message is handed over (QoS 0),
        acknowledged by PUBACK (QoS 1) or completed by PUBCOMP (QoS 2). It raises
        `MqttConnectionError` (or a subclass) if the client closes first; while it
        reconnects, QoS 1/2 publishes stay pending and are resent. With `timeout`
        (seconds), it raises `MqttOperationTimeoutError` if that passes first (the
        message is not withdrawn). Bad arguments raise `ValueError` / `TypeError` at the
        call. `properties` (MQTT 5.0, a `MessageProperties`, or paho-mqtt's
        `Properties` as aiomqtt passes them) are sent with the message.
        """
        if properties is not None and not isinstance(properties, MessageProperties):
            properties = _from_paho_properties(properties)
        if self._backlog:
            future = self._defer(topic, payload, qos, retain, properties)
        else:
            # Raises the client's error when it is not connected.
            if self._v5 or properties is not None:
                result = self._core.publish_v5(topic, payload, qos, retain, properties)
            else:
                result = self._core.publish(topic, payload, qos, retain)
            if result is _SENT:
                return self._done
            if isinstance(result, int):
                future = self._loop.create_future()
                self._pending[result] = future
            else:
                future = self._defer(topic, payload, qos, retain, properties)
        if timeout is None:
            return future
        return self._bounded(future, timeout, "the publish")

    async def subscribe(
        self,
        topic: str | tuple[str, int] | Iterable[str | tuple[str, int]],
        qos: int = 0,
        options: Any | None = None,
        properties: Any | None = None,
        *,
        timeout: float | None = None,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_identifier: int | None = None,
        user_properties: Iterable[tuple[str, str]] | None = None,
    ) -> list[int]:
        """Subscribes to one filter or several (`[("a/#", 1), "b"]`; a bare filter gets
        `qos`). Returns the granted QoS per filter (MQTT 5.0: the SUBACK reason codes);
        raises `MqttSubscribeError` if the server refused any (code 0x80 or more),
        `MqttOperationTimeoutError` if no SUBACK came within `timeout` (default: the
        client's).

        MQTT 5.0 only, for every filter of the call: `no_local` (the server does not
        send the client its own messages), `retain_as_published` (keep the RETAIN flag
        as published), `retain_handling` (0 send retained messages, 1 only for a new
        subscription, 2 never), `subscription_identifier` (1-268,435,455, carried by
        matching messages in `properties.subscription_identifiers`) and
        `user_properties`. aiomqtt's `options` (paho-mqtt's `SubscribeOptions`) and
        `properties` (paho-mqtt's `Properties` with `SubscriptionIdentifier` and
        `UserProperty`) are read into the same settings."""
        filters, send = _subscribe_request(
            self._v5,
            topic,
            qos,
            options,
            properties,
            no_local=no_local,
            retain_as_published=retain_as_published,
            retain_handling=retain_handling,
            subscription_identifier=subscription_identifier,
            user_properties=user_properties,
        )
        token = send(self._core)
        future: asyncio.Future[list[int]] = self._request(token)
        codes: list[int] = await self._bounded(
            future, self.timeout if timeout is None else timeout, "the subscribe"
        )
        if any(code >= 0x80 for code in codes):
            raise MqttSubscribeError(filters, codes)
        return codes

    async def unsubscribe(
        self,
        topic: str | Iterable[str],
        *,
        timeout: float | None = None,
        user_properties: Iterable[tuple[str, str]] | None = None,
    ) -> list[int] | None:
        """Unsubscribes from one filter or several; returns on UNSUBACK (bounded by
        `timeout`, default the client's). MQTT 5.0 returns the UNSUBACK reason codes
        (0 success, 0x11 no subscription existed) and raises `MqttUnsubscribeError` if
        one is 0x80 or more; 3.1/3.1.1 returns None."""
        filters = [topic] if isinstance(topic, str) else list(topic)
        if self._v5:
            token = self._core.unsubscribe_v5(
                filters,
                user_properties=None if user_properties is None else list(user_properties),
            )
        elif user_properties is not None:
            raise ValueError("user properties need MQTT 5.0 (protocol=5)")
        else:
            token = self._core.unsubscribe(filters)
        future: asyncio.Future[list[int] | None] = self._request(token)
        codes: list[int] | None = await self._bounded(
            future, self.timeout if timeout is None else timeout, "the unsubscribe"
        )
        if codes is not None and any(code >= 0x80 for code in codes):
            raise _unsubscribe_error(filters, codes)
        return codes

    # -- internals ----------------------------------------------------------------------

    def _bounded(
        self, future: asyncio.Future[Any], timeout: float, what: str
    ) -> asyncio.Future[Any]:
        """`future`, or one that fails with MqttOperationTimeoutError after `timeout`
        seconds. The request's own future stays pending (it is not cancelled)."""
        if future.done() or math.isinf(timeout):
            return future
        loop = self._loop
        bounded: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(timeout, _expire, bounded, f"{what} timed out after {timeout} s")
        future.add_done_callback(functools.partial(_relay, bounded, timer))
        return bounded

    def _request(self, token: int) -> asyncio.Future[Any]:
        # The core raised already if the request could not be sent.
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[token] = future
        return future

    def _not_connected(self) -> MqttConnectionError:
        error = self._core.last_error() if self._started else None
        if error is not None:
            return error
        return MqttConnectionError("the client is not connected")

    def _defer(
        self,
        topic: str,
        payload: PayloadType,
        qos: int,
        retain: bool,
        properties: MessageProperties | None,
    ) -> asyncio.Future[None]:
        # The write buffer is full: wait in order for the room event.
        future: asyncio.Future[None] = self._loop.create_future()
        self._backlog.append((topic, payload, qos, retain, properties, future))
        return future

    def _flush_backlog(self) -> None:
        backlog = self._backlog
        core = self._core
        while backlog:
            topic, payload, qos, retain, properties, future = backlog[0]
            if future.done():  # cancelled by its caller: never sent
                backlog.popleft()
                continue
            try:
                if self._v5 or properties is not None:
                    result = core.publish_v5(topic, payload, qos, retain, properties)
                else:
                    result = core.publish(topic, payload, qos, retain)
            except (ValueError, TypeError, MqttPublishError) as exc:
                backlog.popleft()
                future.set_exception(exc)
                continue
            except MqttConnectionError as exc:
                self._fail_backlog(exc)
                return
            if result is _FULL:
                return
            backlog.popleft()
            if isinstance(result, int):
                self._pending[result] = future
            else:
                future.set_result(None)

    def _fail_backlog(self, error: MqttConnectionError) -> None:
        while self._backlog:
            future = self._backlog.popleft()[5]
            _fail(future, error)

    def _on_wake(self, core: ClientCore) -> None:
        if core is not self._core:  # a waker's late call for a core already replaced
            return
        drained = core.drain(self._messages._wanted())
        completions = drained.completions
        if completions is not None:
            pending = self._pending
            for completion in completions:
                future = pending.pop(completion.token, None)
                if future is None or future.done():
                    continue
                error = completion.error
                if error is None:
                    future.set_result(completion.value)
                else:
                    _fail(future, error)
        if self._auth.method is not None:
            self._answer_challenges(core)
        messages = drained.messages
        if messages is not None:
            self._messages._feed(messages)
        if drained.room:
            self._flush_backlog()
        states = drained.states
        if states is not None:
            for change in states:
                state = _STATES[change.state]
                if state is ConnectionState.CLOSED:  # no more events from this core
                    self._teardown()
                    if self._backlog:
                        self._fail_backlog(self._not_connected())
                self._set_state(state, change.session_present, change.error)
        if self._waker is not None:
            self._waker.drained()

    def _answer_challenges(self, core: ClientCore) -> None:
        """Hands the server's AUTH challenges to `on_auth`; its answers go back to the
        core (a coroutine's once it finishes, in a task)."""
        auth = self._auth
        while (challenge := core.auth_challenge()) is not None:
            seq, data, reauth = challenge
            assert auth.method is not None and auth.callback is not None
            try:
                answer = auth.callback(AuthChallenge(auth.method, data, reauth))
            except Exception as exc:
                self._auth_failed(core, exc)
                return
            if inspect.isawaitable(answer):
                task = self._loop.create_task(self._answer_later(core, seq, answer))
                auth.tasks.add(task)
                task.add_done_callback(auth.tasks.discard)
            else:
                core.auth_reply(seq, _auth_bytes(answer))

    async def _answer_later(
        self, core: ClientCore, seq: int, answer: Awaitable[bytes | None]
    ) -> None:
        try:
            data = await answer
        except Exception as exc:
            self._auth_failed(core, exc)
            return
        core.auth_reply(seq, _auth_bytes(data))

    def _auth_failed(self, core: ClientCore, exc: Exception) -> None:
        """`on_auth` raised: the exchange cannot go on, the client disconnects and what
        waits for the exchange (connect or reauthenticate) raises `exc`."""
        waiter = self._auth.waiter
        if waiter is not None:
            _fail(waiter, exc)
        core.disconnect()

    def _teardown(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._waker is not None:
            self._waker.stop()
            self._waker = None

    def _set_state(
        self, state: ConnectionState, session_present: bool, error: MqttConnectionError | None
    ) -> None:
        self._state = state
        if state is ConnectionState.CONNECTED:
            self._session_present = session_present
        for wanted, waiter in self._state_waiters:
            if wanted is state and not waiter.done():
                waiter.set_result(None)
        if state is ConnectionState.CLOSED:
            self._messages._wake()
        if self._on_state_change is not None:
            try:
                self._on_state_change(StateChange(state, session_present, error))
            except Exception as exc:
                self._loop.call_exception_handler(
                    {"message": "on_state_change callback failed", "exception": exc}
                )


#: `Client`'s defaults of the keywords `_ClientOptions` names, for `SyncClient`.
_OPTION_DEFAULTS: Final = cast(
    _ClientOptions,
    {
        p.name: p.default
        for p in inspect.signature(Client.__init__).parameters.values()
        if p.name in _OPTIONS
    },
)

_Init = TypeVar("_Init", bound=Callable[..., None])


def _client_keywords(init: _Init) -> _Init:
    """Shows `init`'s `**options: Unpack[_ClientOptions]` to `help()` and `inspect` as
    the keywords it stands for, in `Client`'s order and with `Client`'s defaults (type
    checkers read the `Unpack`); `init`'s own parameters keep their annotations, and
    those `Client` lacks come last."""
    own = inspect.signature(init)
    mine = {p.name: p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD}
    client = inspect.signature(Client.__init__).parameters
    params = [mine.pop(name, p) for name, p in client.items()]
    init.__signature__ = own.replace(parameters=[*params, *mine.values()])  # type: ignore[attr-defined]
    return init


class _Auth:
    """The client's enhanced authentication settings and its exchange in progress."""

    def __init__(
        self, method: str | None, data: bytes | None, callback: AuthCallback | None
    ) -> None:
        self.method = method
        self.data = None if data is None else bytes(data)
        self.callback = callback
        #: What raises when `callback` does: the connect or reauthenticate future.
        self.waiter: asyncio.Future[Any] | None = None
        #: Coroutine answers still running (kept referenced until they finish).
        self.tasks: set[asyncio.Task[None]] = set()


def _auth_bytes(data: object) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"on_auth must return bytes or None, not {type(data).__name__}")


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if future.done():
        return
    future.set_exception(error)
    # A publish nobody awaits (fire and forget) must not log "exception was never
    # retrieved" for each message when the connection goes: the state change reports it.
    future.exception()


def _expire(bounded: asyncio.Future[Any], message: str) -> None:
    if not bounded.done():
        bounded.set_exception(MqttOperationTimeoutError(message))


def _relay(
    bounded: asyncio.Future[Any], timer: asyncio.TimerHandle, future: asyncio.Future[Any]
) -> None:
    timer.cancel()
    if bounded.done():
        if not future.cancelled():
            future.exception()  # retrieved: the caller gave up on it already
        return
    if future.cancelled():
        bounded.cancel()
        return
    error = future.exception()
    if error is not None:
        _fail(bounded, error)
    else:
        bounded.set_result(future.result())


#: paho-mqtt's property names -> MessageProperties' fields.
_PAHO_MESSAGE_PROPERTIES: Final = (
    ("PayloadFormatIndicator", "payload_format_indicator"),
    ("MessageExpiryInterval", "message_expiry_interval"),
    ("ContentType", "content_type"),
    ("ResponseTopic", "response_topic"),
    ("CorrelationData", "correlation_data"),
    ("UserProperty", "user_properties"),
)


def _from_paho_properties(properties: Any) -> MessageProperties:
    """A paho-mqtt `Properties` (aiomqtt's `properties=`) as `MessageProperties`."""
    fields = {
        ours: getattr(properties, theirs)
        for theirs, ours in _PAHO_MESSAGE_PROPERTIES
        if getattr(properties, theirs, None) is not None
    }
    return MessageProperties(**fields)


def _subscribe_request(
    v5: bool,
    topic: str | tuple[str, int] | Iterable[str | tuple[str, int]],
    qos: int,
    options: Any | None,
    properties: Any | None,
    *,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: int,
    subscription_identifier: int | None,
    user_properties: Iterable[tuple[str, str]] | None,
) -> tuple[list[tuple[str, int]], Callable[[ClientCore], int]]:
    """The filters of a subscribe and the call that sends it, shared by `Client` and
    `SyncClient`: paho-mqtt's `SubscribeOptions` (`options`) and `Properties`
    (`properties`, with `SubscriptionIdentifier` and `UserProperty`) are read into the
    5.0 settings; on 3.1/3.1.1 any of those is a ValueError."""
    if options is not None:
        qos = int(getattr(options, "QoS", qos))
        no_local = no_local or bool(getattr(options, "noLocal", False))
        retain_as_published = retain_as_published or bool(
            getattr(options, "retainAsPublished", False)
        )
        retain_handling = retain_handling or int(getattr(options, "retainHandling", 0))
    if properties is not None:
        ids = getattr(properties, "SubscriptionIdentifier", None)
        if ids is not None and subscription_identifier is None:
            subscription_identifier = ids[0] if isinstance(ids, list) else int(ids)
        pairs = getattr(properties, "UserProperty", None)
        if pairs is not None and user_properties is None:
            user_properties = list(pairs)
    filters = _filters(topic, qos)
    if v5:
        pairs_list = None if user_properties is None else list(user_properties)
        return filters, lambda core: core.subscribe_v5(
            filters,
            no_local=no_local,
            retain_as_published=retain_as_published,
            retain_handling=retain_handling,
            subscription_identifier=subscription_identifier,
            user_properties=pairs_list,
        )
    if (
        no_local
        or retain_as_published
        or retain_handling
        or subscription_identifier is not None
        or user_properties is not None
    ):
        raise ValueError("subscription options and properties need MQTT 5.0 (protocol=5)")
    return filters, lambda core: core.subscribe(filters)


def _unsubscribe_request(
    v5: bool,
    topic: str | Iterable[str],
    properties: Any | None,
    user_properties: Iterable[tuple[str, str]] | None,
) -> tuple[list[str], Callable[[ClientCore], int]]:
    """The filters of an unsubscribe and the call that sends it (paho-mqtt's
    `Properties` with `UserProperty` read as `user_properties`)."""
    filters = [topic] if isinstance(topic, str) else list(topic)
    if properties is not None and user_properties is None:
        pairs = getattr(properties, "UserProperty", None)
        user_properties = None if pairs is None else list(pairs)
    if v5:
        pairs_list = None if user_properties is None else list(user_properties)
        return filters, lambda core: core.unsubscribe_v5(filters, user_properties=pairs_list)
    if user_properties is not None:
        raise ValueError("user properties need MQTT 5.0 (protocol=5)")
    return filters, lambda core: core.unsubscribe(filters)


def _unsubscribe_error(filters: list[str], codes: list[int]) -> MqttUnsubscribeError:
    refused = [f for f, c in zip(filters, codes) if c >= 0x80]
    first = next(c for c in codes if c >= 0x80)
    error = MqttUnsubscribeError(
        first, f"the server refused to unsubscribe from {', '.join(refused)}"
    )
    error.filters = filters
    error.reason_codes = codes
    return error


def _filters(
    topic: str | tuple[str, int] | Iterable[str | tuple[str, int]], qos: int
) -> list[tuple[str, int]]:
    if isinstance(topic, str):
        return [(topic, qos)]
    if isinstance(topic, tuple) and len(topic) == 2 and isinstance(topic[1], int):
        return [(str(topic[0]), topic[1])]
    return [(item, qos) if isinstance(item, str) else (item[0], item[1]) for item in topic]
