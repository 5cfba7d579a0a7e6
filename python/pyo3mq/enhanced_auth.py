"""MQTT 5.0 enhanced authentication (spec 4.12): the types of the broker's hook.

A client that puts an Authentication Method (a SASL mechanism name such as
``SCRAM-SHA-256``) in its CONNECT is authenticated by the hook registered for that
method, in as many AUTH round trips as the method needs::

    async def scram(request: EnhancedAuthRequest) -> AuthResult: ...

    Broker(enhanced_auth={"SCRAM-SHA-256": scram})

Each call gets the client's data of one step and answers
``AuthResult.continue_with(challenge, state)`` (the broker sends AUTH 0x18 and calls the
hook again with the client's answer and ``state``), ``AuthResult.success(final_data)``
(CONNACK 0x00, or AUTH 0x00 for a re-authentication) or ``AuthResult.failure()``
(CONNACK 0x87, or DISCONNECT 0x87 and the close). An exception, an answer of another type
or a call longer than ``auth_timeout`` is a failure and is logged. A CONNECT naming a
method no hook is registered for gets CONNACK 0x8C.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from pyo3mq._pyo3mq import EnhancedAuthCall, HookKind
from pyo3mq.types import ClientInfo

logger = logging.getLogger("pyo3mq")


@dataclass(frozen=True)
class EnhancedAuthRequest:
    """One step of an exchange, as the hook sees it."""

    client: ClientInfo
    #: The Authentication Method the client named in CONNECT.
    method: str
    #: The client's Authentication Data of this step (CONNECT's, then each AUTH's).
    data: bytes | None
    #: True for a re-authentication (the client's AUTH 0x19 after CONNACK).
    reauth: bool
    #: What the previous step of this exchange returned as `state`; None at the first.
    state: Any
    #: The client's address and port.
    peer: tuple[str, int]


@dataclass(frozen=True)
class AuthResult:
    """How the exchange goes on; make one with the class methods."""

    outcome: Literal["continue", "success", "failure"]
    data: bytes | None = None
    state: Any = None

    @classmethod
    def continue_with(cls, data: bytes | None, state: Any = None) -> AuthResult:
        """Send the client `data` in AUTH 0x18 and call the hook again with its answer
        and `state` (kept by the broker for this connection, never looked into)."""
        return cls("continue", data, state)

    @classmethod
    def success(cls, data: bytes | None = None) -> AuthResult:
        """Authenticated; `data` is the final Authentication Data (in the CONNACK, or in
        AUTH 0x00 for a re-authentication)."""
        return cls("success", data)

    @classmethod
    def failure(cls) -> AuthResult:
        """Refused: CONNACK 0x87 at login, DISCONNECT 0x87 for a re-authentication."""
        return cls("failure")


EnhancedAuthenticator = Callable[[EnhancedAuthRequest], Union[AuthResult, Awaitable[AuthResult]]]


def check_hooks(hooks: Mapping[str, EnhancedAuthenticator] | None) -> None:
    """Refuses a malformed `enhanced_auth=` when the broker is made."""
    if hooks is None:
        return
    if not isinstance(hooks, Mapping):
        raise TypeError("enhanced_auth must map Authentication Method names to callables")
    for method, hook in hooks.items():
        if not isinstance(method, str) or not method:
            raise TypeError(f"enhanced_auth keys are method names, not {method!r}")
        if not callable(hook):
            raise TypeError(f"enhanced_auth[{method!r}] must be callable, not {hook!r}")


async def run_step(
    call: EnhancedAuthCall,
    hook: EnhancedAuthenticator | None,
    invoke: Callable[..., Awaitable[Any]],
    failed: Callable[[HookKind], None],
) -> None:
    """Runs one step through `invoke` (the dispatcher's bounded call) and answers it;
    whatever goes wrong is logged and answered as a failure."""
    client = ClientInfo(call.client_id, call.username, call.certificate_subject)
    request = EnhancedAuthRequest(
        client, call.method, call.data, call.reauth, call.state, call.peer
    )
    result = AuthResult.failure()
    try:
        if hook is None:
            raise LookupError(f"no enhanced_auth hook for {call.method!r}")
        answer = await invoke(hook, request)
        if not isinstance(answer, AuthResult):
            raise TypeError(f"enhanced_auth[{call.method!r}] returned {answer!r}, not AuthResult")
        if answer.outcome not in ("continue", "success", "failure"):
            raise ValueError(f"AuthResult.outcome {answer.outcome!r} is not one of the three")
        if answer.data is not None and not isinstance(answer.data, bytes):
            raise TypeError(f"AuthResult.data must be bytes or None, not {answer.data!r}")
        result = answer
    except asyncio.TimeoutError:
        logger.error("enhanced authentication %r of %r timed out: denied", call.method, client)
    except Exception:
        logger.exception("enhanced authentication %r of %r failed: denied", call.method, client)
        failed(HookKind.AUTHENTICATE)
    if result.outcome == "failure":
        logger.info("enhanced authentication %r refused %r", call.method, client)
    call.reply.resolve(result.outcome, result.data, result.state)
