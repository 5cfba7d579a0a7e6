"""A broker whose users live in a SQLite table, with salted PBKDF2 password hashes.

Add users, then run the broker (both in one go works too):

    python examples/auth_sqlite.py --db users.db --add-user alice wonderland --port 1883
    mosquitto_pub -p 1883 -u alice -P wonderland -t hello -m world

The table stores, per user, a random salt, an iteration count and
`hashlib.pbkdf2_hmac("sha256", password, salt, iterations)`: never the password. The
check is a plain blocking function (SQLite I/O plus a deliberately slow hash), so the
broker runs it in the event loop's default executor: the loop, and every other client,
keeps going while a password is verified.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence

import pyo3mq

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username   TEXT PRIMARY KEY,
    salt       BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    hash       BLOB NOT NULL
)
"""
#: Iterations for new passwords; each row keeps its own count, so raising it later is safe.
ITERATIONS = 100_000
SALT_BYTES = 16


def hash_password(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


def add_user(db_path: str, username: str, password: str, iterations: int = ITERATIONS) -> None:
    """Adds a user, or replaces that user's password."""
    salt = os.urandom(SALT_BYTES)
    digest = hash_password(password.encode(), salt, iterations)
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute(SCHEMA)
        db.execute(
            "INSERT OR REPLACE INTO users (username, salt, iterations, hash) VALUES (?, ?, ?, ?)",
            (username, salt, iterations, digest),
        )


class SqliteAuthenticator:
    """Accepts a CONNECT whose user name is in the `users` table with that password."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        # An empty database then refuses everyone instead of failing every check.
        with contextlib.closing(sqlite3.connect(db_path)) as db, db:
            db.execute(SCHEMA)

    def authenticate(self, client_id: str, username: str | None, password: bytes | None) -> bool:
        if username is None or password is None:
            return False
        # A connection per call: calls come from executor threads, and a sqlite3
        # connection belongs to the thread that opened it.
        with contextlib.closing(sqlite3.connect(self.db_path)) as db:
            row = db.execute(
                "SELECT salt, iterations, hash FROM users WHERE username = ?", (username,)
            ).fetchone()
        if row is None:
            # Hash anyway, so unknown users take as long to refuse as wrong passwords.
            hash_password(password, bytes(SALT_BYTES), ITERATIONS)
            return False
        salt: bytes = row[0]
        iterations: int = row[1]
        expected: bytes = row[2]
        return hmac.compare_digest(hash_password(password, salt, iterations), expected)


def make_broker(db_path: str, host: str = "127.0.0.1", port: int = 1883) -> pyo3mq.Broker:
    """A broker (not yet started) that authenticates against the database."""
    return pyo3mq.Broker(
        listeners=[f"tcp://{host}:{port}"], authenticator=SqliteAuthenticator(db_path)
    )


async def wait_for_stop(duration: float | None, handle_signals: bool) -> None:
    """Returns after `duration` seconds (never, if None) or on SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run(
    db_path: str,
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    duration: float | None = None,
    ready: Callable[[pyo3mq.Broker], object] | None = None,
    handle_signals: bool = False,
) -> None:
    """Serves until `duration` elapses, a signal (with `handle_signals`) or cancellation.
    `ready(broker)` is called once the broker listens (port 0 picks a free port)."""
    async with make_broker(db_path, host, port) as broker:
        for bound_host, bound_port in broker.addresses:
            print(f"listening on {bound_host}:{bound_port}", flush=True)
        if ready is not None:
            ready(broker)
        await wait_for_stop(duration, handle_signals)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MQTT broker with users in SQLite.")
    parser.add_argument("--db", default="users.db", help="SQLite database file")
    parser.add_argument(
        "--add-user",
        nargs=2,
        action="append",
        default=[],
        metavar=("USER", "PASSWORD"),
        help="add (or update) a user before serving; repeatable",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1883, help="TCP port; 0 picks a free one")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    for username, password in args.add_user:
        add_user(args.db, username, password)
    asyncio.run(run(args.db, args.host, args.port, duration=args.duration, handle_signals=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
