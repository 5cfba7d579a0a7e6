"""A broker whose persistent sessions and retained messages survive restarts.

Clean-session-0 clients keep their subscriptions, their queued messages and their
unacknowledged deliveries (with the packet ids they were sent with) across a restart of
the broker, and retained messages stay retained. Everything is kept in a SQLite file:

    python examples/persistent_broker.py --db sessions.db --port 1883
    mosquitto_sub -p 1883 -i dashboard -c -q 1 -t 'alerts/#' -v    # then Ctrl-C
    mosquitto_pub -p 1883 -q 1 -t alerts/door -m open              # queued for dashboard
    # stop the broker (Ctrl-C or SIGTERM), start it again with the same --db, and:
    mosquitto_sub -p 1883 -i dashboard -c -q 1 -t 'alerts/#' -v    # gets "alerts/door open"

A graceful stop (SIGINT, SIGTERM, `--duration`) writes everything. Between stops the
database is brought up to date every `--persist-interval` seconds, so a crash loses at
most that much; with `--sync` a QoS 1/2 message is acknowledged only once it is committed
to the database, so a crash never loses an acknowledged message (at some throughput cost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyo3mq


def make_broker(
    db: str | Path,
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    sync: bool = False,
    persist_interval: float = 1.0,
) -> pyo3mq.Broker:
    """A broker (not yet started) keeping its persistent state in the SQLite file `db`
    (created, with its directory, if missing)."""
    path = Path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    return pyo3mq.Broker(
        listeners=[f"tcp://{host}:{port}"],
        session_store=f"sqlite:{path}",
        durability="sync" if sync else "interval",
        persist_interval=persist_interval,
    )


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, enabled: bool) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM (if `enabled`) set `stop` instead of killing the
    process. Installed before the broker starts, so a signal sent as soon as the
    `listening on` line appears still stops it gracefully."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if enabled else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def run(
    db: str | Path,
    host: str = "127.0.0.1",
    port: int = 1883,
    *,
    sync: bool = False,
    persist_interval: float = 1.0,
    duration: float | None = None,
    ready: Callable[[pyo3mq.Broker], object] | None = None,
    handle_signals: bool = False,
) -> None:
    """Serves until `duration` elapses, a signal (with `handle_signals`) or cancellation,
    then stops gracefully, which saves every persistent session and retained message.
    `ready(broker)` is called once the broker listens (port 0 picks a free port)."""
    broker = make_broker(db, host, port, sync=sync, persist_interval=persist_interval)
    stop = asyncio.Event()
    with stop_on_signals(stop, handle_signals):
        async with broker:
            for bound_host, bound_port in broker.addresses:
                print(f"listening on {bound_host}:{bound_port}", flush=True)
            if ready is not None:
                ready(broker)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="MQTT broker whose persistent sessions and retained messages survive "
        "restarts (SQLite)."
    )
    parser.add_argument("--db", required=True, help="SQLite file for sessions and retained")
    parser.add_argument(
        "--sync",
        action="store_true",
        help="acknowledge QoS 1/2 messages only once they are committed to the database",
    )
    parser.add_argument(
        "--persist-interval",
        type=float,
        default=1.0,
        help="seconds between writes to the database (0: only at stop)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1883, help="TCP port; 0 picks a free one")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    try:
        asyncio.run(
            run(
                args.db,
                args.host,
                args.port,
                sync=args.sync,
                persist_interval=args.persist_interval,
                duration=args.duration,
                handle_signals=True,
            )
        )
    except (ValueError, OSError, pyo3mq.MqttError) as exc:
        print(f"persistent_broker: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
