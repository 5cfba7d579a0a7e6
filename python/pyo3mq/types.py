"""The plain data types the broker hands to Python code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from pyo3mq._pyo3mq import MessageProperties

DisconnectReason = Literal["clean", "keepalive", "error", "takeover", "shutdown"]


@dataclass(frozen=True)
class ClientInfo:
    """Who a hook is asked about."""

    client_id: str
    #: The CONNECT's username; on a listener with `use_identity_as_username`, the Common
    #: Name of the client's certificate instead.
    username: str | None
    #: The subject of the client's verified TLS certificate as an RFC 4514 string
    #: (`"CN=alice,O=Example"`), or None without one.
    certificate_subject: str | None = None
    #: The MQTT version it connected with: 3 (3.1), 4 (3.1.1) or 5 (5.0).
    protocol: int = 4


class Message(NamedTuple):
    """A message routed by the broker, as an in-process subscriber receives it.

    A named tuple rather than a dataclass: in-process subscribers may see hundreds of
    thousands per second, and a tuple is the cheapest object Python can build.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    #: Client id of the publisher; empty for messages from `Broker.publish`.
    client_id: str
    #: The MQTT 5.0 properties it was published with; None without any (every message
    #: from a 3.1/3.1.1 client). `on_message` may return a message with other ones
    #: (`message._replace(properties=...)`): subscribers get those.
    properties: MessageProperties | None = None


@dataclass(frozen=True)
class ConnectEvent:
    client: ClientInfo
    peer: tuple[str, int]
    clean_session: bool
    session_present: bool


@dataclass(frozen=True)
class DisconnectEvent:
    client_id: str
    reason: DisconnectReason
    #: The reason code of the MQTT 5.0 DISCONNECT that ended the connection, whichever
    #: side sent it: the client's (0x00 normal, 0x04 with will, 0x80 and up for an
    #: error), or the broker's (0x8E taken over, 0x8D keep alive, 0x8B shutting down, the
    #: code of a broken rule); None without one (3.1/3.1.1, or the network closed).
    reason_code: int | None = None


@dataclass(frozen=True)
class SubscribeEvent:
    client_id: str
    #: (filter, SUBACK code): 0, 1 or 2 granted; refused, 0x80 for a 3.1/3.1.1 client and
    #: the 5.0 reason code for a 5.0 one (0x87 not authorized, 0x8F invalid filter...).
    filters: list[tuple[str, int]]


@dataclass(frozen=True)
class UnsubscribeEvent:
    client_id: str
    filters: list[str]


# The three records below are what a `SessionStore` is given and loads, and also what the
# Rust core hands over and takes (built by keyword, read by attribute): one type each.


@dataclass(frozen=True)
class StoredMessage:
    """A message waiting in a persistent session."""

    topic: str
    payload: bytes
    #: QoS the publisher used.
    qos: int
    #: QoS it will be delivered with (min of published and granted).
    delivery_qos: int
    retain: bool
    publisher: str
    #: Packet id of a delivery that was in flight (resent with it on resume), else None.
    packet_id: int | None = None
    #: True when PUBREL was sent for this QoS 2 delivery (only PUBCOMP is awaited).
    released: bool = False
    #: Its MQTT 5.0 properties as encoded on the wire (without their length): user
    #: properties in order, content type, response topic, correlation data, payload
    #: format, message expiry and the subscription identifiers of this delivery. None
    #: without any. Store the bytes as they are.
    properties: bytes | None = None
    #: When its Message Expiry Interval runs out, in Unix time (seconds), so the
    #: countdown goes on while the broker is down; None if it never expires.
    expires_at: float | None = None


@dataclass(frozen=True)
class StoredSubscriptionOptions:
    """A subscription's MQTT 5.0 options, as a session store keeps them."""

    no_local: bool = False
    retain_as_published: bool = False
    #: 0, 1 or 2 (as in the SUBSCRIBE).
    retain_handling: int = 0
    subscription_identifier: int | None = None


@dataclass(frozen=True)
class SessionRecord:
    """A clean-session-0 session: subscriptions and undelivered messages, oldest first
    (deliveries in flight, with their packet ids, then the queue)."""

    client_id: str
    subscriptions: list[tuple[str, int]]
    pending: list[StoredMessage]
    #: The MQTT 5.0 options of those subscriptions that have any, by filter (empty
    #: for a 3.1/3.1.1 client's).
    subscription_options: dict[str, StoredSubscriptionOptions] = field(default_factory=dict)
    #: An MQTT 5.0 client's Session Expiry Interval in seconds (4294967295: never);
    #: None for a 3.1/3.1.1 client's (`persistent_client_expiration` applies).
    session_expiry: int | None = None
    #: When the client went offline, in Unix time (seconds); None if it was online.
    #: Session expiry counts from it (from the load without it).
    disconnected_at: float | None = None


@dataclass(frozen=True)
class RetainedRecord:
    topic: str
    payload: bytes
    qos: int
    publisher: str
    #: As `StoredMessage.properties` and `StoredMessage.expires_at`.
    properties: bytes | None = None
    expires_at: float | None = None
