"""Keeps a Python `SessionStore` up to date with the broker's persistent state.

The Rust broker never calls Python to persist: this side asks it, every
`persist_interval`, for what changed since the last time (the broker records which
sessions and retained topics changed, so this costs what the traffic changed, not the
size of the state) and tells the store. The sync after a stop, and the one after a store
failure, compare a full snapshot with what the store was last given instead.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from pyo3mq._pyo3mq import BrokerCore, BrokerStartError
from pyo3mq.plugins import SessionStore
from pyo3mq.types import RetainedRecord, SessionRecord

logger = logging.getLogger("pyo3mq")

_Record = TypeVar("_Record", SessionRecord, RetainedRecord)


class _Mirror(Generic[_Record]):
    """What the store holds of one kind of record (sessions by client id, retained
    messages by topic), as far as this side knows, and the writes that keep it so. Both
    kinds follow the same rules, for a change and for a full compare alike: a record is
    saved only when it differs from the stored one, and a key deleted only when stored."""

    def __init__(
        self,
        key: Callable[[_Record], str],
        save: Callable[[_Record], Awaitable[None]],
        delete: Callable[[str], Awaitable[None]],
    ) -> None:
        self._key: Callable[[_Record], str] = key
        self._save: Callable[[_Record], Awaitable[None]] = save
        self._delete = delete
        self._known: dict[str, _Record] = {}

    def reset(self, records: Iterable[_Record]) -> None:
        """The store holds `records` (just loaded)."""
        self._known = {self._key(r): r for r in records}

    async def put(self, record: _Record) -> None:
        key = self._key(record)
        if self._known.get(key) != record:
            await self._save(record)
            self._known[key] = record

    async def remove(self, key: str) -> None:
        if key in self._known:
            await self._delete(key)
            del self._known[key]

    async def match(self, records: Iterable[_Record]) -> None:
        """Brings the store to hold exactly `records`, a full snapshot."""
        live = {self._key(r): r for r in records}
        for record in live.values():
            await self.put(record)
        for key in list(self._known.keys() - live.keys()):
            await self.remove(key)


class Persister:
    def __init__(self, core: BrokerCore, store: SessionStore, *, start_empty: bool = False) -> None:
        self._core = core
        self._store = store
        # `store_load_error = "start_empty"`: a load that fails is logged, not raised.
        self._start_empty = start_empty
        # What the store holds, as far as this side knows: the base of a full compare.
        self._sessions = _Mirror[SessionRecord](
            lambda s: s.client_id, store.save_session, store.delete_session
        )
        self._retained = _Mirror[RetainedRecord](
            lambda r: r.topic, store.save_retained, store.delete_retained
        )
        # The broker's change records were taken but not all stored: compare in full.
        self._full_next = False
        self._loaded = False

    async def load(self) -> None:
        """Seeds the broker with what the store holds; call before starting it. On a
        restart of the same broker its in-memory copy is the newer one: the store is
        brought up to date from it instead (in case the last sync failed).

        A store whose `load()` raises (or returns what the broker cannot take) refuses
        the start with `BrokerStartError`: starting empty would later save over what it
        holds. With `start_empty` the broker starts with nothing loaded instead, and
        this side then knows of no stored session, so it deletes none of them."""
        if self._loaded:
            await self._sync_full()
            return
        try:
            sessions, retained = await self._store.load()
            self._core.seed(list(sessions), list(retained))
        except Exception as exc:
            problem = f"session store {type(self._store).__qualname__} cannot be loaded: {exc!r}"
            if not self._start_empty:
                raise BrokerStartError(
                    f"{problem}; refusing to start (store_load_error = 'start_empty' "
                    "starts without it)"
                ) from exc
            logger.error(
                "%s; starting with no stored sessions (store_load_error = 'start_empty')",
                problem,
                exc_info=True,
            )
            sessions, retained = [], []
            self._core.seed([], [])
        self._sessions.reset(sessions)
        self._retained.reset(retained)
        # Only now: a load that failed is tried again at the next start.
        self._loaded = True

    async def sync(self) -> None:
        """Writes the changes since the last sync. Errors are logged, never raised: the
        next sync tries again with the full difference."""
        changes = None if self._full_next else self._core.take_changes()
        if changes is None:  # stopped (or after a failure): compare a full snapshot
            await self._sync_full()
            return
        removed, sessions, retained, cleared = changes
        try:
            for client_id in removed:
                await self._sessions.remove(client_id)
            for record in sessions:
                await self._sessions.put(record)
            for message in retained:
                await self._retained.put(message)
            for topic in cleared:
                await self._retained.remove(topic)
        except Exception:
            logger.exception("session store failed; will retry")
            self._full_next = True

    async def _sync_full(self) -> None:
        # Drop the change records first (the snapshot after it covers them), so that they
        # do not pile up while the store keeps failing.
        self._core.take_changes()
        sessions, retained = self._core.snapshot()
        try:
            await self._sessions.match(sessions)
            await self._retained.match(retained)
            self._full_next = False
        except Exception:
            logger.exception("session store failed; will retry")
            self._full_next = True
