"""`Broker`: the Rust broker, embedded in a Python program.

The broker runs on its own threads. Python sees it through a small API: settings,
start/stop, hooks (authentication, authorization, events) and in-process publish and
subscribe. Hooks run on an asyncio loop: the one `async with Broker(...)` runs in, or a
private loop thread when a broker with Python hooks is started synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pyo3mq._dispatch import Dispatcher
from pyo3mq._persist import Persister
from pyo3mq._pyo3mq import BrokerCore, MessageProperties, check_settings, config_defaults
from pyo3mq.enhanced_auth import EnhancedAuthenticator
from pyo3mq.enhanced_auth import check_hooks as _check_enhanced_auth
from pyo3mq.plugins import Authenticator, Authorizer, SessionStore
from pyo3mq.types import ConnectEvent, DisconnectEvent, Message, SubscribeEvent, UnsubscribeEvent

OverflowPolicy = Literal["drop_new", "drop_oldest"]
StoreLoadError = Literal["refuse", "start_empty"]

# `Message` is a NamedTuple: building it with tuple.__new__ (one C call) instead of
# `Message._make` (a Python function) matters at a million messages per second. The
# Rust side always sends exactly the six fields.
_new_tuple = tuple.__new__
# Messages `async for` takes from Rust at a time (at most `max_buffered`).
_TAKE = 1024
# Longest a consumer iterates without the event loop getting a turn, in seconds.
_TURN = 0.01

#: Every setting's default, from the Rust core (src/broker/config.rs), where names,
#: types, defaults and bounds are declared once.
_DEFAULTS: dict[str, Any] = config_defaults()


@dataclass(frozen=True)
class BrokerConfig:
    """Every setting of the broker; the config file uses the same names. Values are
    checked by the Rust core when the config is made: a bad one is a ValueError naming
    the setting."""

    listeners: list[str] = field(default_factory=lambda: list(_DEFAULTS["listeners"]))
    listener: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(t) for t in _DEFAULTS["listener"]]
    )
    certfile: str | None = _DEFAULTS["certfile"]
    keyfile: str | None = _DEFAULTS["keyfile"]
    cafile: str | None = _DEFAULTS["cafile"]
    require_certificate: bool = _DEFAULTS["require_certificate"]
    use_identity_as_username: bool = _DEFAULTS["use_identity_as_username"]
    tls_version: Literal["tlsv1.2", "tlsv1.3"] = _DEFAULTS["tls_version"]
    max_packet_size: int = _DEFAULTS["max_packet_size"]
    max_connections: int = _DEFAULTS["max_connections"]
    max_inflight: int = _DEFAULTS["max_inflight"]
    max_queued_messages: int = _DEFAULTS["max_queued_messages"]
    max_queued_bytes: int = _DEFAULTS["max_queued_bytes"]
    queue_overflow: OverflowPolicy = _DEFAULTS["queue_overflow"]
    queue_qos0_offline: bool = _DEFAULTS["queue_qos0_offline"]
    connect_timeout: float = _DEFAULTS["connect_timeout"]
    max_client_id_len: int = _DEFAULTS["max_client_id_len"]
    allow_zero_length_client_id: bool = _DEFAULTS["allow_zero_length_client_id"]
    worker_threads: int = _DEFAULTS["worker_threads"]
    auth_timeout: float = _DEFAULTS["auth_timeout"]
    acl_cache_ttl: float = _DEFAULTS["acl_cache_ttl"]
    idle_park_after: float = _DEFAULTS["idle_park_after"]
    password_file: str | None = _DEFAULTS["password_file"]
    acl_file: str | None = _DEFAULTS["acl_file"]
    # None: the password file or authenticator decides, else loopback listeners only.
    allow_anonymous: bool | None = _DEFAULTS["allow_anonymous"]
    session_store: str = _DEFAULTS["session_store"]
    store_load_error: StoreLoadError = _DEFAULTS["store_load_error"]
    persist_interval: float = _DEFAULTS["persist_interval"]
    durability: Literal["interval", "sync"] = _DEFAULTS["durability"]
    sys_interval: float = _DEFAULTS["sys_interval"]
    metrics_listener: str | None = _DEFAULTS["metrics_listener"]
    persistent_client_expiration: str | float | None = _DEFAULTS["persistent_client_expiration"]
    # `[[bridge]]` tables (see BridgeConfig; `Broker(bridges=[...])` fills it).
    bridge: list[dict[str, Any]] = field(default_factory=list)
    # Cluster mode: "nats://HOST:PORT[,...]" of a NATS server with JetStream.
    cluster: str | None = _DEFAULTS["cluster"]
    cluster_prefix: str = _DEFAULTS["cluster_prefix"]
    cluster_node: str | None = _DEFAULTS["cluster_node"]
    cluster_max_bytes: int = _DEFAULTS["cluster_max_bytes"]
    cluster_max_age: float = _DEFAULTS["cluster_max_age"]
    cluster_max_ack_pending: int = _DEFAULTS["cluster_max_ack_pending"]
    # Cluster mode: node liveness (and fencing) and the QoS 0 inbound queue.
    cluster_heartbeat: float = _DEFAULTS["cluster_heartbeat"]
    cluster_node_ttl: float = _DEFAULTS["cluster_node_ttl"]
    cluster_pending_messages: int = _DEFAULTS["cluster_pending_messages"]
    # Cluster mode: the engine connection (replicas, credentials, TLS).
    cluster_replicas: int = _DEFAULTS["cluster_replicas"]
    cluster_user: str | None = _DEFAULTS["cluster_user"]
    cluster_password: str | None = _DEFAULTS["cluster_password"]
    cluster_token: str | None = _DEFAULTS["cluster_token"]
    cluster_creds: str | None = _DEFAULTS["cluster_creds"]
    cluster_cafile: str | None = _DEFAULTS["cluster_cafile"]
    cluster_certfile: str | None = _DEFAULTS["cluster_certfile"]
    cluster_keyfile: str | None = _DEFAULTS["cluster_keyfile"]
    # MQTT 5.0 connection limits (CONNACK Receive Maximum, Topic Alias Maximum, Server
    # Keep Alive).
    receive_maximum: int = _DEFAULTS["receive_maximum"]
    topic_alias_maximum: int = _DEFAULTS["topic_alias_maximum"]
    outbound_topic_aliases: int = _DEFAULTS["outbound_topic_aliases"]
    max_keepalive: int = _DEFAULTS["max_keepalive"]

    def __post_init__(self) -> None:
        check_settings(self.values())

    def values(self) -> dict[str, Any]:
        """The settings by name, as the core reads them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> BrokerConfig:
        """Builds a config from a mapping (a parsed TOML file), refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class BridgeConfig:
    """One bridge to another broker, with Mosquitto's setting names (a `[[bridge]]`
    table in the config file): `Broker(bridges=[BridgeConfig(...)])`.

    `topic` lines are Mosquitto's: `pattern [[[out|in|both] qos] local_prefix
    remote_prefix]`, `""` for an empty pattern or prefix. `restart_timeout` is a delay in
    seconds, or `(base, cap)` for a backoff from base up to cap. TLS towards the remote is
    on with `bridge_cafile` or `bridge_capath` (Mosquitto's rule) or an address written
    `mqtts://HOST:PORT` (the system's CAs); `bridge_certfile` and `bridge_keyfile` give a
    client certificate, `bridge_insecure` skips the check of the certificate's host name,
    `bridge_tls_version` ("tlsv1.3", "tlsv1.2") is the oldest version offered.
    `bridge_protocol_version="mqttv50"` speaks MQTT 5.0 to the remote: message properties
    cross the bridge both ways and `in` lines subscribe with No Local (no loop without
    `try_private`) and Retain As Published."""

    name: str
    address: str | list[str]
    topic: list[str]
    remote_clientid: str | None = None
    local_clientid: str | None = None
    remote_username: str | None = None
    remote_password: str | None = None
    cleansession: bool = False
    local_cleansession: bool | None = None
    try_private: bool = True
    keepalive_interval: int = 60
    restart_timeout: float | tuple[float, float] = (5.0, 30.0)
    notifications: bool = True
    notification_topic: str | None = None
    bridge_protocol_version: Literal["mqttv31", "mqttv311", "mqttv50"] = "mqttv311"
    bridge_cafile: str | None = None
    bridge_capath: str | None = None
    bridge_certfile: str | None = None
    bridge_keyfile: str | None = None
    bridge_insecure: bool | None = None
    bridge_tls_version: Literal["tlsv1.3", "tlsv1.2", "tlsv1.1"] | None = None

    def table(self) -> dict[str, Any]:
        """The `[[bridge]]` table the core reads (unset settings left out)."""
        table: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "restart_timeout" and isinstance(value, tuple):
                value = " ".join(str(float(v)) for v in value)
            elif f.name == "topic" and isinstance(value, str):
                value = [value]
            table[f.name] = value
        return table


@dataclass(frozen=True)
class ReloadResult:
    """What `Broker.reload()` read again and put in place."""

    #: The parts reloaded, among "password_file", "acl_file" and "tls" (the TLS
    #: listeners' certificate, key and CA files); parts not configured are not listed.
    reloaded: tuple[str, ...]
    #: The parts that could not be read or parsed, each with why. Each kept what it had.
    failed: dict[str, str]
    #: TLS listeners whose certificates were reloaded.
    tls_listeners: int


class ReloadError(ValueError):
    """`Broker.reload()` could not reload every part. The parts named in
    `result.failed` keep their previous rules (or certificates); the others, in
    `result.reloaded`, were reloaded all the same."""

    def __init__(self, result: ReloadResult) -> None:
        self.result = result
        super().__init__(
            "; ".join(f"{part} not reloaded: {why}" for part, why in result.failed.items())
        )


class Subscription:
    """Messages matching a filter, delivered inside the process: an async iterator and
    an async context manager (leaving it unsubscribes).

    Messages wait in Rust, in this subscription's buffer, until the consumer takes them
    (a batch at a time): only what is consumed becomes Python objects. If Python falls
    behind, either (default) the broker-side queue (`max_queued_messages`,
    `queue_overflow`) and then this buffer (`max_buffered`, oldest dropped first, counted
    in `dropped`) bound memory, or, with `flow_control=True`, nothing is dropped: at most
    `max_buffered` messages wait here and the publishers of matching messages are slowed
    until this subscription catches up. Iterating lets the event loop run between batches
    and every 10 ms, so a consumer that never awaits anything else (or blocks a little
    per message) cannot starve the loop: hooks and other tasks keep running.
    """

    def __init__(
        self, broker: Broker, filter: str, qos: int, max_buffered: int, flow_control: bool
    ) -> None:
        self.filter = filter
        self.qos = qos
        self._broker = broker
        self._buffer: deque[Message] = deque()
        # Taken from Rust per batch by `async for`. With flow control a batch counts
        # against `max_buffered` until the next one is taken: half of it leaves the other
        # half for the broker to refill meanwhile.
        self._chunk = min(_TAKE, max(1, max_buffered // 2) if flow_control else max_buffered)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        # Whether the consumer let the loop run since it last took a batch, and when it
        # must next let it run at the latest.
        self._yielded = True
        self._turn_ends = 0.0
        self._feed = broker._core.subscribe(filter, qos, max_buffered, flow_control)
        self._id = self._feed.id
        broker._subscriptions[self._id] = self

    @property
    def dropped(self) -> int:
        """Messages dropped because this subscription's buffer was full (never with
        `flow_control=True`); drops in the broker-side queue are in
        `Broker.dropped_messages`."""
        return self._feed.dropped

    def _ready(self) -> None:
        """The broker has messages for this subscription (a `MessagesReady` notice)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _take(self, max_messages: int) -> list[Message]:
        """Waits for messages and takes up to `max_messages`; empty once closed and
        drained."""
        if not self._yielded:
            # One batch per turn of the loop: hooks and other tasks run in between.
            await self._yield()
        while True:
            raw = self._feed.take(max_messages)
            if raw:
                self._yielded = False
                return [_new_tuple(Message, m) for m in raw]
            if self._closed:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._yielded = True
            self._turn_ends = time.monotonic() + _TURN

    async def _yield(self) -> None:
        await asyncio.sleep(0)
        self._yielded = True
        self._turn_ends = time.monotonic() + _TURN

    async def next_batch(self, max_messages: int = 65_536) -> list[Message]:
        """Waits for messages and returns all that are buffered (at most `max_messages`):
        the fast way to consume a busy subscription. Empty once the subscription is
        closed and drained."""
        if self._buffer:
            n = min(len(self._buffer), max_messages)
            return [self._buffer.popleft() for _ in range(n)]
        return await self._take(max_messages)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._broker._subscriptions.pop(self._id, None)
            self._broker._core.unsubscribe(self._id)
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                # `stop()` may run on another thread: futures are resolved on their loop.
                with contextlib.suppress(RuntimeError):  # that loop is closed: no one waits
                    waiter.get_loop().call_soon_threadsafe(_resolve, waiter)

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        if not self._buffer:
            batch = await self._take(self._chunk)
            if not batch:
                raise StopAsyncIteration
            self._buffer.extend(batch)
        elif time.monotonic() >= self._turn_ends:
            await self._yield()
        return self._buffer.popleft()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


Handler = Callable[[Any], Any]


def _check_hooks(**hooks: Any) -> None:
    """Refuses hooks of the wrong kind when the broker is made, naming the argument,
    instead of denying every client at run time."""
    for name, hook in hooks.items():
        if hook is None:
            continue
        if name == "authorizer":
            missing = [
                m
                for m in ("authorize_subscribe", "authorize_publish")
                if not callable(getattr(hook, m, None))
            ]
            if missing:
                raise TypeError(
                    f"authorizer must be an object with authorize_subscribe(client, filter, "
                    f"qos) and authorize_publish(client, topic); {hook!r} lacks "
                    + " and ".join(missing)
                )
        elif name == "authenticator":
            if not callable(hook) and not callable(getattr(hook, "authenticate", None)):
                raise TypeError(
                    "authenticator must be a callable authenticate(client_id, username, "
                    f"password) or an object with that method, not {hook!r}"
                )
        elif not callable(hook):
            raise TypeError(f"{name} must be callable, not {hook!r}")


class Broker:
    """An MQTT 3.1/3.1.1 broker running on Rust threads inside this process.

    >>> with Broker(listeners=["tcp://127.0.0.1:0"]) as broker:
    ...     host, port = broker.addresses[0]
    """

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        authenticator: Authenticator | Callable[..., Any] | None = None,
        authorizer: Authorizer | None = None,
        on_connect: Callable[[ConnectEvent], Any] | None = None,
        on_disconnect: Callable[[DisconnectEvent], Any] | None = None,
        on_subscribe: Callable[[SubscribeEvent], Any] | None = None,
        on_unsubscribe: Callable[[UnsubscribeEvent], Any] | None = None,
        session_store: str | SessionStore | None = None,
        on_message: Callable[[Message], Any] | None = None,
        bridges: list[BridgeConfig] | None = None,
        enhanced_auth: Mapping[str, EnhancedAuthenticator] | None = None,
        **settings: Any,
    ) -> None:
        _check_hooks(
            authenticator=authenticator,
            authorizer=authorizer,
            on_connect=on_connect,
            on_disconnect=on_disconnect,
            on_subscribe=on_subscribe,
            on_unsubscribe=on_unsubscribe,
            on_message=on_message,
        )
        _check_enhanced_auth(enhanced_auth)
        if config is not None and not isinstance(config, BrokerConfig):
            raise TypeError(
                "Broker's first argument is a BrokerConfig; pass settings as keywords "
                f"(Broker(**settings)) or BrokerConfig(**settings), not a {type(config).__name__}"
            )
        self._store: SessionStore | None = None
        if isinstance(session_store, str):
            settings["session_store"] = session_store
        elif session_store is not None:
            if not isinstance(session_store, SessionStore):
                raise TypeError("session_store must be 'memory', 'sqlite:PATH' or a SessionStore")
            self._store = session_store
        if bridges is not None:
            if config is not None or "bridge" in settings:
                raise TypeError("pass bridges either as bridges=[...] or in the config, not both")
            for bridge in bridges:
                if not isinstance(bridge, BridgeConfig):
                    raise TypeError(f"bridges must be BridgeConfig objects, not {bridge!r}")
            settings["bridge"] = [bridge.table() for bridge in bridges]
        if config is None:
            config = BrokerConfig.from_mapping(settings)
        elif settings:
            raise TypeError("pass either a BrokerConfig or keyword settings, not both")
        if self._store is not None and config.session_store != "memory":
            # Two stores would each get half of the changes.
            raise ValueError(
                f"a SessionStore object replaces session_store={config.session_store!r}: "
                "pass one or the other"
            )
        self.config = config
        self._core = BrokerCore(config.values())
        self._persister = (
            Persister(
                self._core,
                self._store,
                start_empty=config.store_load_error == "start_empty",
            )
            if self._store
            else None
        )
        self._persist_task: asyncio.Task[None] | None = None
        self._addresses: list[tuple[str, int]] = []
        #: Sees every published message before routing; may return it (or True) to
        #: keep it, None/False to drop it, or another Message to replace it. Runs in
        #: batches on the loop, and the publishers wait for it: it costs throughput.
        self.on_message = on_message
        self.authenticator = authenticator
        self.authorizer = authorizer
        #: MQTT 5.0 enhanced authentication: a hook per Authentication Method name
        #: (pyo3mq.enhanced_auth); read when the broker starts.
        self.enhanced_auth: dict[str, EnhancedAuthenticator] = dict(enhanced_auth or {})
        self._handlers: dict[str, list[Handler]] = {
            "connect": [],
            "disconnect": [],
            "subscribe": [],
            "unsubscribe": [],
        }
        for kind, handler in (
            ("connect", on_connect),
            ("disconnect", on_disconnect),
            ("subscribe", on_subscribe),
            ("unsubscribe", on_unsubscribe),
        ):
            if handler is not None:
                self._handlers[kind].append(handler)
        self._subscriptions: dict[int, Subscription] = {}
        # `publish()` calls waiting for a full flow-controlled subscription, by token.
        self._space_waiters: dict[int, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    # -- decorator registration -------------------------------------------------------

    def on_connect(self, handler: Callable[[ConnectEvent], Any]) -> Callable[[ConnectEvent], Any]:
        self._handlers["connect"].append(handler)
        return handler

    def on_disconnect(
        self, handler: Callable[[DisconnectEvent], Any]
    ) -> Callable[[DisconnectEvent], Any]:
        self._handlers["disconnect"].append(handler)
        return handler

    def on_subscribe(
        self, handler: Callable[[SubscribeEvent], Any]
    ) -> Callable[[SubscribeEvent], Any]:
        self._handlers["subscribe"].append(handler)
        return handler

    def on_unsubscribe(
        self, handler: Callable[[UnsubscribeEvent], Any]
    ) -> Callable[[UnsubscribeEvent], Any]:
        self._handlers["unsubscribe"].append(handler)
        return handler

    # -- state ------------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of each listener; a port 0 listener shows its real port."""
        return list(self._addresses)

    @property
    def running(self) -> bool:
        return self._core.running

    @property
    def dropped_messages(self) -> int:
        """Messages dropped by full session queues since the broker started."""
        return self._core.dropped_messages

    def save(self) -> bool:
        """Brings the durable session store (`session_store="sqlite:PATH"`) up to date now,
        outside the `persist_interval` schedule; the `pyo3mq` command does this on SIGUSR1.
        Returns whether a durable store was written: False with the in-memory store, or
        with a Python `SessionStore` (which the broker syncs every `persist_interval`), and
        when the write failed (logged). Blocks the calling thread for the write; raises
        RuntimeError when the broker is not running (stopping saves everything)."""
        return self._core.save() is True

    def stats(self) -> dict[str, int]:
        """The figures `$SYS/broker/...` publishes, now: `uptime` (seconds),
        `clients_connected`, `clients_disconnected` (offline persistent sessions),
        `clients_total`, `clients_maximum`, `messages_received`, `messages_sent`,
        `publish_messages_dropped`, `bytes_received`, `bytes_sent`, `subscriptions_count`
        and `retained_messages_count`; with a TLS listener also `tls_handshakes` and
        `tls_handshakes_failed`, with a WebSocket listener `websockets_upgrades` and
        `websockets_upgrades_failed`; `events_dropped` (events for `on_connect` and the
        other observers that a full event queue dropped; in `$SYS` as
        `$SYS/broker/pyo3mq/events/dropped`); and, not in `$SYS`, `connections_parked`
        (idle connections parked now, see `idle_park_after`) and `connection_parks` (times
        a connection parked). Empty while the broker is stopped."""
        return dict(self._core.stats())

    def metrics_text(self) -> str:
        """The broker's figures in the Prometheus text format 0.0.4, the same text the
        `metrics_listener` serves at `/metrics`: for a service that already serves its
        own `/metrics` and appends these. Empty while the broker is stopped."""
        return self._core.metrics_text()

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """The (host, port) the `metrics_listener` is bound to (its port 0 picks a free
        one); None without one, or while the broker is stopped."""
        return self._core.metrics_address

    def reload_tls(self) -> int:
        """Reads the TLS listeners' `certfile`, `keyfile` and `cafile` again (a renewed
        certificate, say). New connections use them; open ones keep theirs and are not
        dropped. All or nothing: a missing or malformed file raises ValueError naming it,
        and every listener keeps what it had. Returns the number of TLS listeners."""
        return self._core.reload_tls()

    def reload(self) -> ReloadResult:
        """What SIGHUP does to the `pyo3mq` command: reads the `password_file`, the
        `acl_file` and the TLS listeners' certificate files again and puts each in place
        without dropping a connection. Connected clients stay connected (a user removed
        from the password file cannot log in again); the new ACL applies to every
        connection's next SUBSCRIBE and PUBLISH. With a Python `authorizer`, connections
        forget their cached publish decisions and ask it again.

        Each part stands alone: one that cannot be read or parsed keeps what it had and
        is logged, the others are still reloaded, and then `ReloadError` (a ValueError)
        is raised naming what failed and why, with the `ReloadResult` as `.result`.
        Blocks the calling thread while it reads the files; RuntimeError when the broker
        is not running."""
        report = self._core.reload()
        result = ReloadResult(tuple(report.reloaded), dict(report.failed), report.tls_listeners)
        if result.failed:
            raise ReloadError(result)
        return result

    # -- life cycle -------------------------------------------------------------------

    def _start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        authenticate: Callable[..., Any] | None = None
        if isinstance(self.authenticator, Authenticator):
            authenticate = self.authenticator.authenticate
        elif self.authenticator is not None:
            authenticate = self.authenticator
        dispatcher = Dispatcher(
            loop,
            timeout=self.config.auth_timeout,
            authenticate=authenticate,
            authorize_subscribe=getattr(self.authorizer, "authorize_subscribe", None),
            authorize_publish=getattr(self.authorizer, "authorize_publish", None),
            handlers=self._handlers,
            ready=self._ready,
            intercept=self.on_message,
            space=self._space_ready,
            report=self._core.hook_called,
            enhanced_auth=dict(self.enhanced_auth),
        )
        self._loop = loop
        self._addresses = self._core.start(
            loop,
            dispatcher,
            auth=authenticate is not None,
            authorize=self.authorizer is not None,
            events=any(self._handlers.values()),
            intercept=self.on_message is not None,
            # Recorded changes are drained by the periodic sync only.
            track_changes=self._persister is not None and self.config.persist_interval > 0,
            enhanced_auth=list(self.enhanced_auth),
        )

    def _space_ready(self, token: int) -> None:
        waiter = self._space_waiters.pop(token, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release_space_waiters(self) -> None:
        # Stopping: nothing will drain the subscriptions, and every waiting message was
        # already routed, so the publishers return.
        waiters = list(self._space_waiters.values())
        self._space_waiters.clear()
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed: no one waits
                waiter.get_loop().call_soon_threadsafe(_resolve, waiter)

    def _ready(self, subscription_id: int) -> None:
        subscription = self._subscriptions.get(subscription_id)
        if subscription is not None:
            subscription._ready()

    def _has_hooks(self) -> bool:
        return (
            self.authenticator is not None
            or self.authorizer is not None
            or any(self._handlers.values())
            or self._store is not None
            or self.on_message is not None
            or bool(self.enhanced_auth)
        )

    def start(self) -> None:
        """Starts serving. Python hooks, if any, then run on a private event loop thread;
        inside asyncio code prefer `async with Broker(...)`, which uses the running loop
        (and is needed for in-process subscriptions)."""
        if not self._has_hooks():
            self._loop = None
            self._addresses = self._core.start()
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="pyo3mq-hooks", daemon=True)
        thread.start()
        self._loop_thread = thread
        try:
            if self._persister is not None:
                asyncio.run_coroutine_threadsafe(self._persister.load(), loop).result()
            self._start_on(loop)
            if self._persister is not None:
                asyncio.run_coroutine_threadsafe(self._start_persisting(), loop).result()
        except BaseException:
            self._stop_loop_thread()
            raise

    async def start_async(self) -> None:
        """Starts serving with hooks and in-process subscriptions on the running loop."""
        self._stopped = asyncio.Event()
        if self._persister is not None:
            await self._persister.load()
        self._start_on(asyncio.get_running_loop())
        if self._persister is not None:
            await self._start_persisting()

    async def _start_persisting(self) -> None:
        persister = self._persister
        interval = self.config.persist_interval
        if persister is None or interval <= 0:
            return

        async def run() -> None:
            while True:
                await asyncio.sleep(interval)
                await persister.sync()

        self._persist_task = asyncio.get_running_loop().create_task(run())

    def stop(self) -> None:
        """Closes every connection gracefully and stops. Persistent sessions and retained
        messages are kept in memory (so `start()` on the same object resumes them) and
        written to the session store, if one is set."""
        loop = self._loop
        task, self._persist_task = self._persist_task, None
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)
        for subscription in list(self._subscriptions.values()):
            subscription.close()
        self._core.stop()
        self._release_space_waiters()
        if self._persister is not None and loop is not None and self._loop_thread is not None:
            asyncio.run_coroutine_threadsafe(self._persister.sync(), loop).result()
        self._stop_loop_thread()
        if self._stopped is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)

    def _stop_loop_thread(self) -> None:
        thread, self._loop_thread = self._loop_thread, None
        loop = self._loop
        if thread is not None and loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
            self._loop = None

    async def serve_forever(self) -> None:
        """Waits until the broker is stopped; cancelling it stops the broker."""
        if self._stopped is None:
            raise RuntimeError("start the broker with `async with` or start_async() first")
        try:
            await self._stopped.wait()
        finally:
            if self.running:
                await asyncio.get_running_loop().run_in_executor(None, self.stop)
                if self._persister is not None:
                    await self._persister.sync()

    # -- in-process pub/sub -----------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        properties: MessageProperties | None = None,
    ) -> None:
        """Delivers a message to matching subscribers without a socket.

        `properties` (MQTT 5.0: user properties, content type, response topic,
        correlation data, message expiry, payload format) reach 5.0 subscribers and
        in-process ones (`Message.properties`); 3.1/3.1.1 subscribers get the message
        without them. A payload that breaks `payload_format_indicator=1` is a ValueError.

        It returns once the message is routed. If it filled a subscription made with
        `flow_control=True` on this broker's event loop, it waits, as an MQTT publisher
        would, until that subscription's consumer has caught up (so a coroutine must not
        publish more than `max_buffered` messages to a flow-controlled subscription that
        only it consumes). From another thread or event loop it never waits: what such a
        publisher sends beyond the subscription's hard limit (`max_buffered` plus at least
        65,536 queued) is dropped and counted in `dropped_messages`."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        # Only a caller on the broker's loop can be woken by the "space" notice.
        loop = self._loop
        waits = loop is not None and asyncio.get_running_loop() is loop
        token = self._core.publish(topic, data, qos, retain, properties, waits).space_token
        if token is not None and loop is not None:
            waiter = loop.create_future()
            self._space_waiters[token] = waiter
            if not self._core.running:
                # Stopped between the publish and now: nothing will drain or release it.
                self._space_waiters.pop(token, None)
                return
            try:
                await waiter
            finally:
                self._space_waiters.pop(token, None)

    def subscribe(
        self,
        filter: str,
        qos: int = 0,
        *,
        max_buffered: int = 100_000,
        flow_control: bool = False,
        group: str | None = None,
    ) -> Subscription:
        """Receives messages matching `filter` in this process: `async for m in sub`.
        With `flow_control=True` nothing is dropped when Python falls behind: matching
        publishers are slowed instead. With `group="g"` (the same as the filter
        `$share/g/<filter>`) the subscription joins that shared subscription group: each
        matching message goes to one member of the group, network clients included."""
        if self._loop is None or not self.running:
            raise RuntimeError("the broker is not running")
        if group is not None:
            if not group or any(c in group for c in "/+#"):
                raise ValueError(
                    "[MQTT-4.8.2-1] [MQTT-4.8.2-2] a shared subscription group name is "
                    "at least one character long, without '/', '+' or '#'"
                )
            filter = f"$share/{group}/{filter}"
        return Subscription(self, filter, qos, max_buffered, flow_control)

    # -- context managers -------------------------------------------------------------

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Broker:
        await self.start_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Stopping waits for connections to close: keep the event loop free meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.stop)
        if self._persister is not None:
            await self._persister.sync()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
