"""Keeps a Python `SessionStore` up to date with the broker's persistent state.

The Rust broker never calls Python to persist: this side asks it, every
`persist_interval`, for what changed since the last time (the broker records which
sessions and retained topics changed, so this costs what the traffic changed, not the
size of the state) and tells the store. The sync after a stop, and the one after a store
failure, compare a full snapshot with what the store was last given instead.
"""

from __future__ import annotations

import logging

from pyo3mq._pyo3mq import BrokerCore, BrokerStartError
from pyo3mq.plugins import SessionStore
from pyo3mq.types import RetainedRecord, SessionRecord

logger = logging.getLogger("pyo3mq")


class Persister:
    def __init__(self, core: BrokerCore, store: SessionStore, *, start_empty: bool = False) -> None:
        self._core = core
        self._store = store
        # `store_load_error = "start_empty"`: a load that fails is logged, not raised.
        self._start_empty = start_empty
        # What the store holds, as far as this side knows: the base of a full compare.
        self._sessions: dict[str, SessionRecord] = {}
        self._retained: dict[str, RetainedRecord] = {}
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
        self._sessions = {s.client_id: s for s in sessions}
        self._retained = {r.topic: r for r in retained}
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
                if client_id in self._sessions:
                    await self._store.delete_session(client_id)
                    del self._sessions[client_id]
            for record in sessions:
                if self._sessions.get(record.client_id) != record:
                    await self._store.save_session(record)
                    self._sessions[record.client_id] = record
            for message in retained:
                if self._retained.get(message.topic) != message:
                    await self._store.save_retained(message)
                    self._retained[message.topic] = message
            for topic in cleared:
                if topic in self._retained:
                    await self._store.delete_retained(topic)
                    del self._retained[topic]
        except Exception:
            logger.exception("session store failed; will retry")
            self._full_next = True

    async def _sync_full(self) -> None:
        # Drop the change records first (the snapshot after it covers them), so that they
        # do not pile up while the store keeps failing.
        self._core.take_changes()
        live_sessions, live_retained = self._core.snapshot()
        sessions = {s.client_id: s for s in live_sessions}
        retained = {r.topic: r for r in live_retained}
        try:
            for client_id, record in sessions.items():
                if self._sessions.get(client_id) != record:
                    await self._store.save_session(record)
                    self._sessions[client_id] = record
            for client_id in list(self._sessions.keys() - sessions.keys()):
                await self._store.delete_session(client_id)
                del self._sessions[client_id]
            for topic, message in retained.items():
                if self._retained.get(topic) != message:
                    await self._store.save_retained(message)
                    self._retained[topic] = message
            for topic in list(self._retained.keys() - retained.keys()):
                await self._store.delete_retained(topic)
                del self._retained[topic]
            self._full_next = False
        except Exception:
            logger.exception("session store failed; will retry")
            self._full_next = True
