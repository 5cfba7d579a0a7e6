"""Keeps a Python `SessionStore` up to date with the broker's persistent state.

The Rust broker never calls Python to persist: this side asks it for a snapshot (taken
with the interpreter released), compares it with the previous one, and tells the store
only what changed.
"""

from __future__ import annotations

import logging
from typing import Any

from pyo3mq._pyo3mq import BrokerCore
from pyo3mq.plugins import SessionStore
from pyo3mq.types import RetainedRecord, SessionRecord, StoredMessage

logger = logging.getLogger("pyo3mq")


def _session(raw: tuple[Any, ...]) -> SessionRecord:
    client_id, subscriptions, pending = raw
    return SessionRecord(
        client_id,
        [(f, q) for f, q in subscriptions],
        [
            StoredMessage(t, bytes(p), q, dq, r, pub, pkid, rel)
            for t, p, q, dq, r, pub, pkid, rel in pending
        ],
    )


def _retained(raw: tuple[Any, ...]) -> RetainedRecord:
    topic, payload, qos, publisher = raw
    return RetainedRecord(topic, bytes(payload), qos, publisher)


class Persister:
    def __init__(self, core: BrokerCore, store: SessionStore) -> None:
        self._core = core
        self._store = store
        self._sessions: dict[str, SessionRecord] = {}
        self._retained: dict[str, RetainedRecord] = {}

    async def load(self) -> None:
        """Seeds the broker with what the store holds; call before starting it."""
        sessions, retained = await self._store.load()
        self._sessions = {s.client_id: s for s in sessions}
        self._retained = {r.topic: r for r in retained}
        self._core.seed(
            [
                (
                    s.client_id,
                    list(s.subscriptions),
                    [
                        (
                            m.topic,
                            m.payload,
                            m.qos,
                            m.delivery_qos,
                            m.retain,
                            m.publisher,
                            m.packet_id,
                            m.released,
                        )
                        for m in s.pending
                    ],
                )
                for s in sessions
            ],
            [(r.topic, r.payload, r.qos, r.publisher) for r in retained],
        )

    async def sync(self) -> None:
        """Writes the changes since the last sync. Errors are logged, never raised: the
        next sync tries again with the full difference."""
        raw_sessions, raw_retained = self._core.snapshot()
        sessions = {s.client_id: s for s in map(_session, raw_sessions)}
        retained = {r.topic: r for r in map(_retained, raw_retained)}
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
        except Exception:
            logger.exception("pyo3mq: session store failed; will retry")
