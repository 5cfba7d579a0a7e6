"""Protocols for the objects a `Broker` accepts as hooks.

Each method may be a plain function (run in the default executor, off the event loop)
or an `async def` (run on the loop). Whatever they raise, or a call that exceeds the
broker's `auth_timeout`, counts as a denial and is logged; it never stops the broker.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol, Union, runtime_checkable

from pyo3mq._pyo3mq import Deny
from pyo3mq.types import ClientInfo, RetainedRecord, SessionRecord

BoolResult = Union[bool, Deny, Awaitable[Union[bool, Deny]]]
GrantResult = Union[int, bool, Deny, Awaitable[Union[int, bool, Deny, None]], None]


@runtime_checkable
class Authenticator(Protocol):
    def authenticate(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> BoolResult:
        """True accepts the CONNECT; False refuses it with CONNACK 0x04; a `Deny` refuses
        it with its 5.0 CONNACK reason code (the nearest 3.1.1 code for 3.1.1 clients).
        An authenticator that also takes a `certificate_subject` keyword argument is given
        the subject of the client's verified TLS certificate (RFC 4514), or None."""
        ...


@runtime_checkable
class Authorizer(Protocol):
    def authorize_subscribe(self, client: ClientInfo, filter: str, qos: int) -> GrantResult:
        """The QoS to grant (capped at `qos`), True for `qos`, or False/None to refuse
        (SUBACK 0x80, 5.0: 0x87), or a `Deny` for a 5.0 client's SUBACK code."""
        ...

    def authorize_publish(self, client: ClientInfo, topic: str) -> BoolResult:
        """Whether `client` may publish to `topic`; a refused message is acknowledged
        and dropped (MQTT 3.1.1 has no negative acknowledgement; a 5.0 PUBACK/PUBREC says
        0x87, or a returned `Deny`'s code). Decisions are cached per connection and topic
        for `acl_cache_ttl` seconds."""
        ...


@runtime_checkable
class SessionStore(Protocol):
    """Where a broker keeps persistent sessions and retained messages across restarts.

    The broker calls `load` once before it starts serving, then reports changes every
    `persist_interval` seconds and at shutdown (so a crash loses at most one interval).
    All methods are coroutines run on the broker's event loop.
    """

    async def load(self) -> tuple[list[SessionRecord], list[RetainedRecord]]: ...

    async def save_session(self, session: SessionRecord) -> None: ...

    async def delete_session(self, client_id: str) -> None: ...

    async def save_retained(self, message: RetainedRecord) -> None: ...

    async def delete_retained(self, topic: str) -> None: ...
