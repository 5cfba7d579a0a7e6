"""A broker that accepts only the users of a dict: the smallest useful authenticator.

Run it, then connect with a user name and password from `USERS`:

    python examples/auth_dict.py --port 1883
    mosquitto_sub -p 1883 -u alice -P wonderland -t '#' -v

Clients with an unknown user, a wrong password or no credentials at all get CONNACK 0x04
(bad user name or password). A dict lookup never blocks, so the check is an `async def`
and runs directly on the event loop (a plain function would run in a worker thread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import signal
import sys
from collections.abc import Callable, Mapping, Sequence

import pyo3mq

#: Demo users (user name -> password). Real deployments load these from somewhere safer.
USERS: dict[str, str] = {"alice": "wonderland", "bob": "builder"}


class DictAuthenticator:
    """Accepts a CONNECT whose user name is in `users` and whose password matches."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {name: password.encode() for name, password in users.items()}

    async def authenticate(
        self, client_id: str, username: str | None, password: bytes | None
    ) -> bool:
        if username is None or password is None:
            return False
        expected = self._users.get(username)
        if expected is None:
            return False
        # Constant time, so response times do not reveal how much of a guess was right.
        return hmac.compare_digest(password, expected)


def make_broker(
    host: str = "127.0.0.1", port: int = 1883, users: Mapping[str, str] = USERS
) -> pyo3mq.Broker:
    """A broker (not yet started) that authenticates against `users`."""
    return pyo3mq.Broker(listeners=[f"tcp://{host}:{port}"], authenticator=DictAuthenticator(users))


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
    host: str = "127.0.0.1",
    port: int = 1883,
    users: Mapping[str, str] = USERS,
    *,
    duration: float | None = None,
    ready: Callable[[pyo3mq.Broker], object] | None = None,
    handle_signals: bool = False,
) -> None:
    """Serves until `duration` elapses, a signal (with `handle_signals`) or cancellation.
    `ready(broker)` is called once the broker listens (port 0 picks a free port)."""
    async with make_broker(host, port, users) as broker:
        for bound_host, bound_port in broker.addresses:
            print(f"listening on {bound_host}:{bound_port}", flush=True)
        if ready is not None:
            ready(broker)
        await wait_for_stop(duration, handle_signals)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MQTT broker with users from a dict.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=1883, help="TCP port; 0 picks a free one")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    asyncio.run(run(args.host, args.port, duration=args.duration, handle_signals=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
