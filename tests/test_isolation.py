"""Isolation under load: what one client or one slow consumer does costs its own session,
never the broker or the program that embeds it.

Three scenarios, each under real load from other processes (tests/support/load.py: raw
MQTT over plain sockets, so that the load does not share this process's GIL):

1. a flooded in-process subscriber whose consumer takes 1 ms per message, while 200
   clients log in (through an async Python authenticator) and subscribe;
2. one client publishing as fast as it can, while 200 clients log in and a paced
   publisher/subscriber pair keeps talking;
3. 50 concurrent logins against a password file hashed with 1,000,000 PBKDF2 iterations,
   while a paced pair keeps talking.

The bounds are the issue's "Done when" (issue 11): every login answered and accepted
with a p99 under 250 ms, the embedding process under 400 MB, no event lost without a
count; a paced pair loses nothing and keeps a p99 under 50 ms; no slow-hash login is
accepted after `auth_timeout`. The broker was intermittently fine before the fix, so each
scenario runs twice in its test, and each run must pass. Before the fix, each scenario
broke them: logins refused or answered after seconds, event-loop lag of seconds, a paced
pair stalled for seconds, the process at gigabytes (benches/README.md, "Isolation").

Latencies are the broker's, not the load generator's: load.py times what it receives by
the kernel's arrival stamp, so a load process waiting for one of the two busy cores does
not count against the broker.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyo3mq
import pytest

LOOPBACK = "tcp://127.0.0.1:0"
LOAD = Path(__file__).resolve().parent / "support" / "load.py"
LOGINS = 200
# The logins' p99 must stay under this (the broker answers in milliseconds; Mosquitto
# under the same floods in 13 ms at worst). Before the fix: up to 8-30 s, or never.
LOGIN_P99 = 0.250
# And none may take longer than this.
LOGIN_BOUND = 2.0
# A paced pair's p99 must stay under this (before the fix: 9-11 s) ...
PACED_P99 = 0.050
# ... and no message may be later than this (before the fix: 2-11 s).
PACED_BOUND = 1.0
# The embedding process's resident memory must stay under this (before: 1.1-6.4 GB).
RSS_BOUND_MB = 400
# How long the in-process subscriber is flooded before the first logins, and between
# rounds.
FLOOD_SECONDS = 10
ROUND_GAP = 2
ROUNDS = 2

# mosquitto_passwd format. "slow" is hashed with 1,000,000 PBKDF2-SHA512 iterations (about
# half a second to a second of CPU per login), "fast" with mosquitto_passwd's default 101.
PASSWORDS = """\
slow:$7$1000000$aXNvbGF0aW9uLXNs$d2TwIwXnmDhqmZVsNPsntpsUrhpDbMJ2amWLulW6WmAzLwAjNniFSD1f8ky3FQqotPxenTI7cq9rBMEIFMCBGA==
fast:$7$101$aXNvbGF0aW9uLWZh$AaoEjQtyKxy8iLkpQNv8Zo9MMy3nL7xmnWG3D2NTHHj1FdH/RLaJRZDBraXXJHisFV5zBLHH0KkvyPF/NQ2CRA==
"""


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def load(*args: str | int) -> dict[str, Any]:
    """Runs a load.py command to completion; its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(LOAD), *map(str, args), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"load.py {args} failed"
    result: dict[str, Any] = json.loads(out)
    return result


class Flood:
    """`load.py flood` in a subprocess, from the moment its connections are accepted."""

    def __init__(self, port: int, topic: str, connections: int, rate: int) -> None:
        self.args = [
            "flood",
            port,
            topic,
            "--connections",
            connections,
            "--rate",
            rate,
            "--seconds",
            55,
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Flood:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(LOAD), *map(str, self.args), stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line == b"ready\n", line
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


class Watch:
    """Samples, while it runs, the event loop's lag (how late a 50 ms sleep wakes) and
    this process's resident memory."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.peak_rss = rss_mb()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.05)
            self.max_lag = max(self.max_lag, loop.time() - start - 0.05)
            self.peak_rss = max(self.peak_rss, rss_mb())

    async def __aenter__(self) -> Watch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def settle(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Waits until `check()` or the timeout (the assertions that follow say what failed)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


def assert_logins_ok(logins: dict[str, Any]) -> None:
    codes = Counter(logins["codes"])
    assert codes == {0: LOGINS}, f"CONNACK codes (None: no answer): {codes}"
    assert logins["p99"] < LOGIN_P99, (
        f"login p99 {logins['p99']:.3f} s (slowest {logins['max']:.3f} s)"
    )
    assert logins["max"] < LOGIN_BOUND, (
        f"slowest login {logins['max']:.3f} s (p99 {logins['p99']:.3f} s)"
    )


def assert_paced_ok(pair: dict[str, Any]) -> None:
    assert pair["lost"] == 0, pair
    assert pair["p99"] < PACED_P99, pair
    assert pair["max"] < PACED_BOUND, pair


def report(name: str, figures: dict[str, Any]) -> None:
    """The measured figures, in the test's output (`pytest -s`, or on failure)."""
    print(
        f"{name}: p50 {figures['p50'] * 1000:.1f} ms, p99 {figures['p99'] * 1000:.1f} ms, "
        f"max {figures['max'] * 1000:.1f} ms"
    )


@pytest.mark.parametrize(
    ("flow_control", "blocking"),
    [(False, False), (False, True), (True, False)],
    ids=["drop", "drop-blocking-consumer", "flow_control"],
)
async def test_a_flooded_in_process_subscriber_costs_the_embedding_nothing(
    flow_control: bool, blocking: bool
) -> None:
    """Four clients flood `flood/x` (QoS 0, 150,000 msg/s each) into an in-process
    subscription whose consumer takes 1 ms per message (awaiting, or blocking the loop
    for that long), for 10 s; then, twice, 2 s apart, 200 clients log in (20 at a time)
    through an async authenticator, each subscribing and unsubscribing. Every login is
    accepted, with a p99 under 250 ms, every connect, subscribe and unsubscribe event
    reaches its handler (none dropped, counted or not), the event loop never lags by as
    much as a second and the process stays under 400 MB. Without flow control the excess
    is dropped and counted; with it nothing is dropped and the flooders are held back."""
    events: Counter[str] = Counter()

    async def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        return True

    def counting(kind: str) -> Callable[[Any], None]:
        return lambda _event: events.update([kind])

    async with pyo3mq.Broker(
        listeners=[LOOPBACK],
        authenticator=authenticate,
        on_connect=counting("connect"),
        on_disconnect=counting("disconnect"),
        on_subscribe=counting("subscribe"),
        on_unsubscribe=counting("unsubscribe"),
    ) as broker:
        port = broker.addresses[0][1]
        rss_before = rss_mb()
        consumed = 0
        max_buffered = 10_000 if flow_control else 100_000
        async with broker.subscribe(
            "flood/#", max_buffered=max_buffered, flow_control=flow_control
        ) as sub:

            async def consume() -> None:
                nonlocal consumed
                async for _message in sub:
                    consumed += 1
                    if blocking:
                        time.sleep(0.001)  # noqa: ASYNC251 - a consumer that blocks the loop
                    else:
                        await asyncio.sleep(0.001)

            consumer = asyncio.create_task(consume())
            rounds = []
            async with Watch() as watch, Flood(port, "flood/x", 4, 150_000):
                await asyncio.sleep(FLOOD_SECONDS)
                for _round in range(ROUNDS):
                    rounds.append(
                        await load(
                            "logins", port, "--count", LOGINS, "--concurrency", 20, "--churn"
                        )
                    )
                    report("logins", rounds[-1])
                    await asyncio.sleep(ROUND_GAP)
            consumer.cancel()
            logins_made = ROUNDS * LOGINS
            await settle(
                lambda: (
                    events["subscribe"] >= logins_made
                    and events["unsubscribe"] >= logins_made
                    and events["connect"] >= logins_made + 4
                )
            )
            stats = broker.stats()
            received = stats["messages_received"]
            dropped = (sub.dropped, broker.dropped_messages)

    for logins in rounds:
        assert_logins_ok(logins)
    assert stats["events_dropped"] == 0
    assert (events["connect"], events["subscribe"], events["unsubscribe"]) == (
        logins_made + 4,
        logins_made,
        logins_made,
    )
    assert watch.max_lag < 1.0, f"the event loop lagged {watch.max_lag:.2f} s"
    print(f"RSS {rss_before:.0f} MB before, {watch.peak_rss:.0f} MB at peak")
    assert watch.peak_rss < RSS_BOUND_MB, (
        f"RSS grew from {rss_before:.0f} MB to {watch.peak_rss:.0f} MB"
    )
    assert consumed > 0
    if flow_control:
        assert dropped == (0, 0)
        # Held back: far fewer than 10 s x 600,000 messages were read from the flooders.
        assert received < 1_000_000, received
    else:
        # The flood was real, and its excess was counted where it was dropped.
        assert received > 1_000_000, received
        assert sum(dropped) > 0


async def test_a_flooding_publisher_does_not_stall_other_connections(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    """One client publishes QoS 0 as fast as the broker reads (no Python hooks at all).
    Twice over, while it floods: 200 clients log in (20 at a time) and a paced pair
    exchanges 200 QoS 1 messages per second. Every login is accepted, with a p99 under
    250 ms, and the pair loses nothing and keeps a p99 under 50 ms: the flooder shares its
    worker with the other connections instead of keeping it."""
    broker = make_broker()
    port = broker.addresses[0][1]
    async with Flood(port, "flood/x", 1, 0):
        for _round in range(ROUNDS):
            await asyncio.sleep(ROUND_GAP)
            logins, pair = await asyncio.gather(
                load("logins", port, "--count", LOGINS, "--concurrency", 20),
                load("paced", port, "--rate", 200, "--seconds", 5, "--qos", 1),
            )
            report("logins", logins)
            report("paced pair", pair)
            assert_logins_ok(logins)
            assert_paced_ok(pair)
    # The flood was real: millions of messages read while the others were served.
    assert broker.stats()["messages_received"] > 1_000_000


async def test_slow_password_hashes_do_not_stall_traffic(
    make_broker: Callable[..., pyo3mq.Broker], tmp_path: Path
) -> None:
    """Twice, each time on a fresh broker: 50 clients log in at once as a user whose
    password is hashed with 1,000,000 PBKDF2 iterations, with `auth_timeout = 2`, while a
    paced pair (another user) exchanges 200 QoS 1 messages per second for 6 s. The pair
    loses nothing and keeps a p99 under 50 ms (the hashes run on the blocking pool, a
    bounded number at once), and every login is answered: accepted within
    `auth_timeout`, or refused with 0x05 once it passes; none is accepted late."""
    passwd = tmp_path / "passwd"
    passwd.write_text(PASSWORDS)
    auth_timeout = 2.0
    for _round in range(ROUNDS):
        broker = make_broker(password_file=str(passwd), auth_timeout=auth_timeout)
        port = broker.addresses[0][1]

        async def storm(port: int = port) -> dict[str, Any]:
            await asyncio.sleep(1)
            return await load(
                "logins",
                port,
                "--count",
                50,
                "--concurrency",
                50,
                "--username",
                "slow",
                "--password",
                "slow-secret",
            )

        pair, logins = await asyncio.gather(
            load(
                "paced",
                port,
                "--rate",
                200,
                "--seconds",
                6,
                "--qos",
                1,
                "--username",
                "fast",
                "--password",
                "fast-secret",
            ),
            storm(),
        )
        report("paced pair", pair)
        assert_paced_ok(pair)
        codes = Counter(logins["codes"])
        print(f"slow logins: {codes}")
        assert set(codes) <= {0, 5}, codes
        # From the CONNECT's sending to the CONNACK's arrival (what the broker's
        # `auth_timeout` covers, and a little more): no acceptance after the timeout.
        late = [
            t
            for code, t in zip(logins["codes"], logins["after_connect"])
            if code == 0
            if t > auth_timeout
        ]
        assert not late, f"logins accepted after auth_timeout: {late}"
        # Refused by the timeout, not before it (the hashes were queued, not skipped).
        refused = [t for code, t in zip(logins["codes"], logins["seconds"]) if code == 5]
        assert all(t >= auth_timeout - 0.05 for t in refused), refused
