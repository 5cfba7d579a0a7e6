"""`SyncClient`: the blocking face of the same Rust client, for scripts and threads.

```python
with SyncClient("127.0.0.1", 1883) as client:
    client.subscribe("cmd/#", qos=1)
    client.publish("status", b"online", qos=1).wait_for_publish(5)
    for message in client.messages(timeout=10):
        print(message.topic, message.payload)
```

No asyncio: the protocol work runs in Rust on the process-wide client runtime, exactly as
for `Client`, and Python threads block in Rust (without the GIL) until what they wait for
has happened. Every method may be called from any thread.

Threads: one thread per connection, `pyo3mq-sync-events`, takes the core's events
(acknowledgements, state changes) a batch at a time and completes the handles and calls
threads wait on; it never runs application code except `on_state_change`. With
`on_message` set, a second thread, `pyo3mq-sync-messages`, takes received messages a
batch at a time and calls `on_message(client, userdata, message)` for each, paho-mqtt's
signature, so a callback may itself publish and wait for the acknowledgement.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, Unpack, cast

from pyo3mq._pyo3mq import (
    ClientCore,
    ClientMessage,
    MessageProperties,
    MqttConnectionError,
    MqttOperationTimeoutError,
    MqttReentrantError,
    MqttSubscribeError,
    Submitted,
)
from pyo3mq.client import (
    _OPTION_DEFAULTS,
    _STATES,
    AuthChallenge,
    ConnectionState,
    MQTTv5,
    PayloadType,
    StateChange,
    TLSParameters,
    _auth_bytes,
    _client_keywords,
    _ClientOptions,
    _from_paho_properties,
    _settings,
    _subscribe_request,
    _unsubscribe_error,
    _unsubscribe_request,
)

__all__ = ["MessageCallback", "PublishHandle", "SyncClient"]

logger = logging.getLogger("pyo3mq")

#: Messages moved from Rust to Python per hand-off.
_BATCH: Final = 1024
#: How often `messages()` looks for messages the callback thread handed back.
_SPILL_POLL: Final = 0.05
_SENT: Final = Submitted.SENT
_FULL: Final = Submitted.FULL

#: `on_auth(challenge)` of a `SyncClient`: returns the next Authentication Data.
SyncAuthCallback = Callable[[AuthChallenge], "bytes | None"]

#: `on_message(client, userdata, message)`, as paho-mqtt calls it.
MessageCallback = Callable[["SyncClient", Any, ClientMessage], object]


class _Request:
    """A request's outcome, filled in by the events thread."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None


class PublishHandle(_Request):
    """What `SyncClient.publish` returns, as paho-mqtt's `MQTTMessageInfo`.

    `wait_for_publish(timeout)` blocks until the message is handed over (QoS 0),
    acknowledged (QoS 1) or completed (QoS 2), or until `timeout` seconds pass (None: no
    limit), and raises the client's error if it failed (the connection closed first).
    Like paho's, it returns quietly on timeout: `is_published()` tells.
    """

    __slots__ = ("_client", "mid", "rc")

    def __init__(self, client: SyncClient | None, mid: int) -> None:
        super().__init__()
        self._client = client
        #: A number identifying this publish within its connection (0 for QoS 0). It is
        #: not the packet identifier on the wire, which is taken when the message enters
        #: the inflight window.
        self.mid = mid
        #: 0 (MQTT_ERR_SUCCESS), or the error's `rc` once it failed.
        self.rc = 0

    def is_published(self) -> bool:
        """Whether the publish completed; raises its error if it failed."""
        if self._error is not None:
            raise self._error
        return self._done

    def wait_for_publish(self, timeout: float | None = None) -> None:
        if not self._done and self._client is not None:
            self._client._wait_for(self, timeout)
        if self._error is not None:
            raise self._error

    def __repr__(self) -> str:
        state = "failed" if self._error else "published" if self._done else "pending"
        return f"PublishHandle(mid={self.mid}, {state})"


def _published() -> PublishHandle:
    handle = PublishHandle(None, 0)
    handle._done = True
    return handle


class SyncClient:
    """A blocking MQTT 3.1/3.1.1 client over the same Rust core as `Client`, with the
    same constructor arguments (see `Client`) plus `userdata` and `on_message`.

    `with SyncClient(host, port) as client:` connects and disconnects. Thread-safe:
    publish, subscribe and iterate from any thread.
    """

    @_client_keywords
    def __init__(
        self,
        hostname: str,
        port: int | None = None,
        *,
        on_state_change: Callable[[StateChange], object] | None = None,
        on_auth: SyncAuthCallback | None = None,
        on_message: MessageCallback | None = None,
        userdata: Any = None,
        **options: Unpack[_ClientOptions],
    ) -> None:
        self._options: _ClientOptions = {**_OPTION_DEFAULTS, **options}
        self._address = (hostname, port)
        self._settings = _settings(hostname, port, on_auth, self._options)
        #: The host and port connected to (from the URL when `hostname` is one).
        self.hostname = self._settings.hostname
        self.port = self._settings.port
        #: The default bound, in seconds, of `subscribe`, `unsubscribe` and connecting.
        self.timeout = self._settings.timeout
        #: Passed to `on_message` as its second argument (paho-mqtt's `userdata`).
        self.userdata = userdata
        self.on_state_change = on_state_change
        self._core = self._settings.new_core()
        self._v5 = self._settings.core_args["protocol"] == MQTTv5
        self._auth_method = options.get("auth_method")
        auth_data = options.get("auth_data")
        self._auth_data = None if auth_data is None else bytes(auth_data)
        self._on_auth = on_auth
        # What `on_auth` raised: the exchange ended, connect/reauthenticate raise it.
        self._auth_error: Exception | None = None
        self._started = False
        # Guards `_pending`, `_state`, `_room` and the callback thread; its condition is
        # notified whenever the events thread completed something.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: dict[int, _Request] = {}
        self._state = ConnectionState.CLOSED
        self._session_present = False
        self._room = 0
        self._on_message = on_message
        self._callback_thread: threading.Thread | None = None
        self._events_thread: threading.Thread | None = None
        # Messages the callback thread took but did not deliver (on_message was unset).
        self._spill: deque[ClientMessage] = deque()

    # -- properties ---------------------------------------------------------------------

    @property
    def identifier(self) -> str:
        """The client id sent to the server (generated for MQTT 3.1 when empty)."""
        return self._core.client_id

    @property
    def client_id(self) -> str:
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
    def on_message(self) -> MessageCallback | None:
        """`on_message(client, userdata, message)`, called on the client's message thread
        for every received message while set (then `messages()` gets none)."""
        return self._on_message

    @on_message.setter
    def on_message(self, callback: MessageCallback | None) -> None:
        self._on_message = callback
        if callback is not None:
            with self._lock:
                if self._started and self._state is not ConnectionState.CLOSED:
                    self._start_callbacks(self._core)

    # -- TLS, paho-mqtt's way -----------------------------------------------------------

    def tls_set(
        self,
        ca_certs: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        cert_reqs: ssl.VerifyMode | None = None,
        tls_version: Any | None = None,
        ciphers: str | None = None,
        keyfile_password: Any | None = None,
    ) -> None:
        """paho-mqtt's `tls_set`: turns TLS on with these settings (see `TLSParameters`
        for how each applies), before `connect()`. Without a port in the constructor the
        port becomes 8883."""
        params = TLSParameters(
            ca_certs, certfile, keyfile, cert_reqs, tls_version, ciphers, keyfile_password
        )
        self._reconfigure(tls_params=params)

    def tls_insecure_set(self, value: bool) -> None:
        """paho-mqtt's `tls_insecure_set`: with True the server's certificate must still
        chain to a trusted CA, but its names are not checked. Call after `tls_set`."""
        self._reconfigure(tls_insecure=value)

    def _reconfigure(self, **changes: Any) -> None:
        with self._lock:
            if self._started:
                raise ValueError("TLS settings must be made before connect()")
            options = cast(_ClientOptions, {**self._options, **changes})
            settings = _settings(*self._address, self._on_auth, options)
            self._core = settings.new_core()
            self._options, self._settings = options, settings
            self.hostname, self.port = settings.hostname, settings.port

    # -- connecting ---------------------------------------------------------------------

    def connect(self) -> None:
        """Connects and blocks until CONNACK (see `Client.connect`)."""
        with self._lock:
            if self._state is not ConnectionState.CLOSED:
                raise MqttReentrantError(
                    f"the client is already {self._state.value}: it is reusable, but not reentrant"
                )
            self._state = ConnectionState.CONNECTING
        # Reported before the core starts, so that it comes before CONNECTED.
        self._notify_state(StateChange(ConnectionState.CONNECTING))
        with self._lock:
            if self._started:
                self._core = self._settings.new_core()
            core = self._core
            self._started = True
            core.set_wake_pipe(False)
            self._pending.clear()
            request = _Request()
            self._pending[core.connect()] = request
            self._events_thread = threading.Thread(
                target=self._run_events, args=(core,), name="pyo3mq-sync-events", daemon=True
            )
            self._events_thread.start()
            if self._on_message is not None:
                self._start_callbacks(core)
        try:
            self._wait_for(request, None)
        except BaseException:
            core.disconnect()  # interrupted (Ctrl-C): do not leave it connecting
            raise
        if request._error is not None:
            self._join()
            raise self._auth_error or request._error

    def reauthenticate(
        self, data: bytes | None = None, *, timeout: float | None = None
    ) -> bytes | None:
        """MQTT 5.0 enhanced authentication again on the open connection (see
        `Client.reauthenticate`); blocks until the server's AUTH 0x00 and returns its
        Authentication Data."""
        if self._auth_method is None:
            raise ValueError("[MQTT-4.12.1-1] reauthenticate needs the auth_method connected with")
        if not self._started:
            raise MqttConnectionError("the client is not connected")
        payload = self._auth_data if data is None else bytes(data)
        self._auth_error = None
        try:
            self._call(lambda core: core.reauthenticate(payload), timeout, "the re-authentication")
        except MqttConnectionError:
            if self._auth_error is not None:
                raise self._auth_error from None
            raise
        return self._core.auth_result_data

    def disconnect(self) -> None:
        """Sends what is buffered and DISCONNECT, then closes (bounded by `timeout`);
        returns once closed. Publishes still unacknowledged fail."""
        with self._lock:
            if not self._started or self._state is ConnectionState.CLOSED:
                return
            request = _Request()
            self._pending[self._core.disconnect()] = request
        self._wait_for(request, None)
        self._join()

    def loop_forever(self) -> None:
        """Blocks until the client is closed, as paho-mqtt's `loop_forever()`: by
        `disconnect()` (from a callback or another thread), then it returns, or for good
        by a lost connection, then it raises that error."""
        with self._changed:
            while self._state is not ConnectionState.CLOSED:
                self._changed.wait(0.25)
        error = self._core.last_error()
        if error is not None:
            raise error

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # -- publishing and subscribing -----------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: PayloadType = None,
        qos: int = 0,
        retain: bool = False,
        properties: MessageProperties | Any | None = None,
    ) -> PublishHandle:
        """Publishes, starting at once, and returns a `PublishHandle`
        (`wait_for_publish(timeout)`, `is_published()`). Blocks only while the write
        buffer is full (`max_buffered_bytes`), until it has room. `properties` (MQTT
        5.0): a `MessageProperties`, or paho-mqtt's `Properties` as a paho v5 program
        passes them; a PUBACK/PUBREC refusal fails the handle with `MqttPublishError`."""
        if properties is not None and not isinstance(properties, MessageProperties):
            properties = _from_paho_properties(properties)
        v5 = self._v5 or properties is not None
        core = self._core
        while True:
            with self._lock:
                # Raises the client's error when it is not connected.
                if v5:
                    result = core.publish_v5(topic, payload, qos, retain, properties)
                else:
                    result = core.publish(topic, payload, qos, retain)
                if result is _SENT:
                    return _PUBLISHED
                if isinstance(result, int):
                    handle = PublishHandle(self, result)
                    self._pending[result] = handle
                    return handle
                # Full: wait for the room event (or the end), then try again.
                room = self._room
                while self._room == room and self._state is not ConnectionState.CLOSED:
                    self._changed.wait(0.25)

    def subscribe(
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
        """Subscribes and blocks until SUBACK (see `Client.subscribe`). MQTT 5.0:
        paho-mqtt's `options` (`SubscribeOptions`) and `properties` (`Properties` with
        `SubscriptionIdentifier`, `UserProperty`), or the keywords of `Client.subscribe`."""
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
        codes: list[int] = self._call(send, timeout, "the subscribe")
        if any(code >= 0x80 for code in codes):
            raise MqttSubscribeError(filters, codes)
        return codes

    def unsubscribe(
        self,
        topic: str | Iterable[str],
        properties: Any | None = None,
        *,
        timeout: float | None = None,
        user_properties: Iterable[tuple[str, str]] | None = None,
    ) -> list[int] | None:
        """Unsubscribes and blocks until UNSUBACK. MQTT 5.0 returns the reason codes
        and raises `MqttUnsubscribeError` if one is 0x80 or more (see
        `Client.unsubscribe`); `properties` may be paho-mqtt's `Properties`."""
        filters, send = _unsubscribe_request(self._v5, topic, properties, user_properties)
        codes: list[int] | None = self._call(send, timeout, "the unsubscribe")
        if codes is not None and any(code >= 0x80 for code in codes):
            raise _unsubscribe_error(filters, codes)
        return codes

    def messages(self, timeout: float | None = None) -> Iterator[ClientMessage]:
        """Received messages, blocking: `for message in client.messages(timeout=5):`.

        Ends when no message came for `timeout` seconds (None: waits for ever), and after
        `disconnect()`; raises the error when the connection is lost for good. Several
        threads may iterate at once: each message goes to one of them.
        """
        if not self._started:
            raise MqttConnectionError("the client is not connected")
        core = self._core
        spill = self._spill
        buffer: deque[ClientMessage] = deque()
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            while spill:
                try:
                    message = spill.popleft()
                except IndexError:  # another thread took it
                    break
                yield message
                deadline = None if timeout is None else _monotonic() + timeout
            if buffer:
                yield buffer.popleft()
                deadline = None if timeout is None else _monotonic() + timeout
                continue
            # After `on_message` was unset, the callback thread may still be blocked taking
            # the next batch; it puts what it took into `spill`, which a wait in the core
            # does not see. Wait in short slices then, looking at `spill` between them.
            wait = timeout if deadline is None else max(0.0, deadline - _monotonic())
            thread = self._callback_thread
            if thread is not None and thread.is_alive() and self._on_message is None:
                wait = _SPILL_POLL if wait is None else min(wait, _SPILL_POLL)
            batch = core.take_messages(_BATCH, True, wait)
            if batch:
                buffer.extend(batch)
                continue
            if core.state is _CLOSED_CORE:
                self._settle_closed()
                error = core.last_error()
                if error is not None:
                    raise error
                return
            if deadline is not None and _monotonic() >= deadline and not spill:
                return

    # -- internals ----------------------------------------------------------------------

    def _call(self, send: Callable[[ClientCore], int], timeout: float | None, what: str) -> Any:
        with self._lock:
            request = _Request()
            self._pending[send(self._core)] = request
        seconds = self.timeout if timeout is None else timeout
        if not self._wait_for(request, seconds):
            raise MqttOperationTimeoutError(f"{what} timed out after {seconds} s")
        if request._error is not None:
            raise request._error
        return request._value

    def _wait_for(self, request: _Request, timeout: float | None) -> bool:
        """Blocks until `request` is done or `timeout` passed; returns whether done. Waits
        in slices so that Ctrl-C is seen in the main thread."""
        if request._done:
            return True
        deadline = None if timeout is None else _monotonic() + timeout
        with self._changed:
            while not request._done:
                left = 0.25 if deadline is None else min(0.25, deadline - _monotonic())
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def _settle_closed(self) -> None:
        """The core has closed: waits until the events thread has recorded it too, so that
        `state` reads CLOSED once `messages()` ends (it records it within moments)."""
        with self._changed:
            self._changed.wait_for(lambda: self._state is ConnectionState.CLOSED, 5.0)

    def _join(self) -> None:
        current = threading.current_thread()
        for thread in (self._events_thread, self._callback_thread):
            if thread is not None and thread is not current:
                thread.join(5)

    def _start_callbacks(self, core: ClientCore) -> None:
        # Called with the lock held.
        thread = self._callback_thread
        if thread is not None and thread.is_alive():
            return
        self._callback_thread = threading.Thread(
            target=self._run_callbacks, args=(core,), name="pyo3mq-sync-messages", daemon=True
        )
        self._callback_thread.start()

    def _run_callbacks(self, core: ClientCore) -> None:
        while True:
            batch = core.take_messages(_BATCH, True, None)
            if not batch:
                if core.state is _CLOSED_CORE:
                    return
                continue
            for index, message in enumerate(batch):
                callback = self._on_message
                if callback is None:  # unset: what is left goes to messages()
                    self._spill.extend(batch[index:])
                    return
                try:
                    callback(self, self.userdata, message)
                except Exception:
                    logger.exception("on_message callback failed")

    def _run_events(self, core: ClientCore) -> None:
        while True:
            core.wait(False, None)
            drained = core.drain(0)
            if self._on_auth is not None:
                self._answer_challenges(core)
            closed = False
            with self._changed:
                completions = drained.completions
                if completions is not None:
                    pending = self._pending
                    for completion in completions:
                        request = pending.pop(completion.token, None)
                        if request is None:
                            continue
                        error = completion.error
                        if error is not None:
                            request._error = error
                            if isinstance(request, PublishHandle):
                                request.rc = getattr(error, "rc", 1)
                        else:
                            request._value = completion.value
                        request._done = True
                if drained.room:
                    self._room += 1
                changes: list[StateChange] = []
                if drained.states is not None:
                    for record in drained.states:
                        state = _STATES[record.state]
                        self._state = state
                        if state is ConnectionState.CONNECTED:
                            self._session_present = record.session_present
                        closed = closed or state is ConnectionState.CLOSED
                        changes.append(StateChange(state, record.session_present, record.error))
                self._changed.notify_all()
            for change in changes:
                self._notify_state(change)
            if closed:
                return

    def _answer_challenges(self, core: ClientCore) -> None:
        """Hands the server's AUTH challenges to `on_auth` (on the events thread) and
        its answers back to the core; if it raises, the client disconnects and the
        exchange's caller raises that exception."""
        assert self._auth_method is not None and self._on_auth is not None
        while (challenge := core.auth_challenge()) is not None:
            seq, data, reauth = challenge
            try:
                answer = _auth_bytes(self._on_auth(AuthChallenge(self._auth_method, data, reauth)))
            except Exception as exc:
                logger.warning("on_auth callback failed: %r", exc)
                self._auth_error = exc
                core.disconnect()
                return
            core.auth_reply(seq, answer)

    def _notify_state(self, change: StateChange) -> None:
        callback = self.on_state_change
        if callback is None:
            return
        try:
            callback(change)
        except Exception:
            logger.exception("on_state_change callback failed")


_PUBLISHED: Final = _published()
_CLOSED_CORE: Final = next(core for core, s in _STATES.items() if s is ConnectionState.CLOSED)

_monotonic = time.monotonic
