"""The asyncio end of the hand-off from the Rust broker (see src/python/bridge.rs).

The broker's dispatch thread schedules `Dispatcher.__call__` on the event loop with one
`call_soon_threadsafe` per hand-off, a list of at most a few hundred small records (and
never more than two hand-offs wait on the loop). Requests (authentication,
authorization, `on_message`) carry a reply handle; the hook runs as a task, bounded by
`timeout`, and whatever goes wrong (an exception, a timeout, a value of the wrong type) is
logged and answered as a denial. In-process subscriptions only get a `MessagesReady`
notice: their consumers take the messages themselves. Nothing that happens here can stop
the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pyo3mq._pyo3mq import (
    AuthCall,
    Connected,
    Deny,
    Disconnected,
    EnhancedAuthCall,
    HookKind,
    InterceptCall,
    MessagesReady,
    PublishCall,
    SpaceFreed,
    SubscribeCall,
    Subscribed,
    Unsubscribed,
)
from pyo3mq.enhanced_auth import EnhancedAuthenticator, run_step
from pyo3mq.types import (
    ClientInfo,
    ConnectEvent,
    DisconnectEvent,
    Message,
    SubscribeEvent,
    UnsubscribeEvent,
)

logger = logging.getLogger("pyo3mq")

# CONNACK return codes.
ACCEPTED = 0
BAD_USERNAME_OR_PASSWORD = 4
NOT_AUTHORIZED = 5


# What an authorization hook's answer becomes (see `Dispatcher._authorize`).
_Verdict = TypeVar("_Verdict")


class _Denied(Exception):
    """A hook's answer that cannot be used; logged, then treated as a denial."""


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class Dispatcher:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float,
        authenticate: Callable[..., Any] | None,
        authorize_subscribe: Callable[..., Any] | None,
        authorize_publish: Callable[..., Any] | None,
        handlers: dict[str, list[Callable[[Any], Any]]],
        ready: Callable[[int], None],
        intercept: Callable[[Message], Any] | None = None,
        space: Callable[[int], None] | None = None,
        report: Callable[..., None] | None = None,
        enhanced_auth: dict[str, EnhancedAuthenticator] | None = None,
    ) -> None:
        # MQTT 5.0 enhanced authentication hooks by method name (pyo3mq.enhanced_auth).
        self._enhanced_auth = enhanced_auth or {}
        self._intercept = intercept
        # `report(kind, seconds=None, failed=False)` counts a hook call for /metrics: the
        # failures seen here (the broker times the requests and counts their timeouts
        # itself), and the observers' calls, which only this side sees.
        self._report = report
        self._space = space
        self._loop = loop
        self._timeout = timeout
        self._authenticate = authenticate
        # An authenticator that names a `certificate_subject` parameter (or takes
        # **kwargs) is told the client's certificate subject; others keep three arguments.
        self._auth_wants_subject = authenticate is not None and _accepts(
            authenticate, "certificate_subject"
        )
        # Likewise `protocol` (3, 4 or 5, the MQTT version of the CONNECT).
        self._auth_wants_protocol = authenticate is not None and _accepts(authenticate, "protocol")
        self._authorize_subscribe = authorize_subscribe
        self._authorize_publish = authorize_publish
        self._handlers = handlers
        self._ready = ready
        self._tasks: set[asyncio.Task[None]] = set()
        # One handler per record type the bridge sends.
        self._routes: dict[type, Callable[[Any], None]] = {
            MessagesReady: self._on_ready,
            SpaceFreed: self._on_space,
            AuthCall: lambda call: self._spawn(self._auth(call)),
            EnhancedAuthCall: lambda call: self._spawn(
                run_step(call, self._enhanced_auth.get(call.method), self._call, self._failed)
            ),
            SubscribeCall: lambda call: self._spawn(self._sub(call)),
            PublishCall: lambda call: self._spawn(self._pub(call)),
            InterceptCall: lambda call: self._spawn(self._on_messages(call)),
            Connected: self._on_connect,
            Disconnected: self._on_disconnect,
            Subscribed: self._on_subscribe,
            Unsubscribed: self._on_unsubscribe,
        }

    def __call__(self, batch: list[Any]) -> None:
        for item in batch:
            try:
                route = self._routes.get(type(item))
                if route is None:
                    logger.warning("unknown dispatch item %r", item)
                else:
                    route(item)
            except Exception:
                logger.exception("failed to dispatch %r", type(item).__name__)

    def _on_ready(self, record: MessagesReady) -> None:
        self._ready(record.subscription)

    def _on_space(self, record: SpaceFreed) -> None:
        if self._space is not None:
            self._space(record.token)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Calls a hook: async ones on the loop, sync ones in the default executor so a
        slow check never blocks the loop; bounded by the timeout either way."""

        async def run() -> Any:
            if _is_async(fn):
                return await fn(*args)
            result = await self._loop.run_in_executor(None, functools.partial(fn, *args))
            if inspect.isawaitable(result):
                result = await result
            return result

        return await asyncio.wait_for(run(), self._timeout)

    async def _auth(self, call: AuthCall) -> None:
        code = NOT_AUTHORIZED
        client_id = call.client_id
        try:
            assert self._authenticate is not None
            authenticate = self._authenticate
            if self._auth_wants_subject:
                authenticate = functools.partial(
                    authenticate, certificate_subject=call.certificate_subject
                )
            if self._auth_wants_protocol:
                authenticate = functools.partial(authenticate, protocol=call.protocol)
            result = await self._call(authenticate, client_id, call.username, call.password)
            if isinstance(result, Deny):
                # The hook's own CONNACK code: Rust checks it and maps it for 3.1.1.
                call.reply.resolve(result)
                return
            if result is True:
                code = ACCEPTED
            elif result is False:
                code = BAD_USERNAME_OR_PASSWORD
            else:
                raise _Denied(f"authenticate() returned {result!r}, not a bool or a Deny")
        except asyncio.TimeoutError:
            logger.error("authenticate(%r) timed out: denied", client_id)
        except Exception:
            logger.exception("authenticate(%r) failed: denied", client_id)
            self._failed(HookKind.AUTHENTICATE)
        call.reply.resolve(code)

    async def _authorize(
        self,
        kind: HookKind,
        hook: Callable[..., Any] | None,
        check: Callable[[Any], _Verdict],
        info: ClientInfo,
        target: str,
        *rest: Any,
    ) -> _Verdict | None:
        """Asks authorization hook `kind` about `target` (a topic filter or a topic name)
        and turns its answer into a verdict with `check`, which raises `_Denied` for an
        answer of the wrong type. Both hooks treat a failure (an exception, a timeout, a
        wrong answer) as a denial: None, logged with the client and `target`."""
        name = kind.label
        try:
            assert hook is not None
            return check(await self._call(hook, info, target, *rest))
        except asyncio.TimeoutError:
            logger.error("%s(%r, %r) timed out: denied", name, info, target)
        except Exception:
            logger.exception("%s(%r, %r) failed: denied", name, info, target)
            self._failed(kind)
        return None

    async def _sub(self, call: SubscribeCall) -> None:
        info = ClientInfo(call.client_id, call.username, call.certificate_subject, call.protocol)
        qos = call.qos

        def granted(result: Any) -> int | Deny | None:
            if result is True:
                return qos
            if result is False or result is None:
                return None
            if isinstance(result, int) and 0 <= result <= 2:
                return min(result, qos)
            if isinstance(result, Deny):
                return result
            raise _Denied(f"authorize_subscribe() returned {result!r}")

        verdict = await self._authorize(
            HookKind.AUTHORIZE_SUBSCRIBE, self._authorize_subscribe, granted, info, call.filter, qos
        )
        call.reply.resolve(verdict)

    async def _pub(self, call: PublishCall) -> None:
        info = ClientInfo(call.client_id, call.username, call.certificate_subject, call.protocol)

        def allowed(result: Any) -> bool | Deny:
            if not isinstance(result, (bool, Deny)):
                raise _Denied(f"authorize_publish() returned {result!r}, not a bool or a Deny")
            return result

        verdict = await self._authorize(
            HookKind.AUTHORIZE_PUBLISH, self._authorize_publish, allowed, info, call.topic
        )
        call.reply.resolve(False if verdict is None else verdict)

    async def _on_messages(self, call: InterceptCall) -> None:
        """Runs the interceptor over one batch; a message whose call fails is dropped."""
        hook = self._intercept
        verdicts: list[Any] = []
        for record in call.messages:
            message = Message(
                record.topic,
                record.payload,
                record.qos,
                record.retain,
                record.client_id,
                record.properties,
            )
            verdict: Any = None
            try:
                assert hook is not None
                result = hook(message)
                if inspect.isawaitable(result):
                    result = await asyncio.wait_for(result, self._timeout)
                if result is True or result is message:
                    verdict = True
                elif isinstance(result, Message):
                    # Checked in Rust (a ValueError saying which rule it breaks).
                    verdict = record.replace_with(result)
                elif result is None or result is False:
                    verdict = None
                else:
                    raise _Denied(f"on_message() returned {result!r}")
            except Exception:
                logger.exception("on_message failed: message on %r dropped", message.topic)
                self._failed(HookKind.ON_MESSAGE)
            verdicts.append(verdict)
        try:
            call.reply.resolve(verdicts)
        except Exception:
            logger.exception("on_message verdicts refused: batch dropped")

    def _on_connect(self, record: Connected) -> None:
        if self._handlers.get("connect"):
            client = ClientInfo(
                record.client_id, record.username, record.certificate_subject, record.protocol
            )
            event = ConnectEvent(client, record.peer, record.clean_session, record.session_present)
            self._event("connect", event)

    def _on_disconnect(self, record: Disconnected) -> None:
        if self._handlers.get("disconnect"):
            event = DisconnectEvent(record.client_id, record.reason, record.reason_code)
            self._event("disconnect", event)

    def _on_subscribe(self, record: Subscribed) -> None:
        if self._handlers.get("subscribe"):
            self._event("subscribe", SubscribeEvent(record.client_id, record.filters))

    def _on_unsubscribe(self, record: Unsubscribed) -> None:
        if self._handlers.get("unsubscribe"):
            self._event("unsubscribe", UnsubscribeEvent(record.client_id, record.filters))

    def _failed(self, kind: HookKind) -> None:
        if self._report is not None:
            with contextlib.suppress(Exception):  # a stopped broker counts nothing
                self._report(kind, None, True)

    def _observed(self, started: float, failed: bool) -> None:
        if self._report is not None:
            with contextlib.suppress(Exception):
                self._report(HookKind.EVENTS, time.perf_counter() - started, failed)

    def _event(self, kind: str, event: Any) -> None:
        for handler in self._handlers[kind]:
            started = time.perf_counter()
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    self._spawn(self._guard(result, kind, started))
                else:
                    self._observed(started, False)
            except Exception:
                logger.exception("on_%s handler failed", kind)
                self._observed(started, True)

    async def _guard(self, awaitable: Awaitable[Any], kind: str, started: float) -> None:
        try:
            await awaitable
        except Exception:
            logger.exception("on_%s handler failed", kind)
            self._observed(started, True)
        else:
            self._observed(started, False)
