#!/usr/bin/env python3
"""Isolation benchmark: pyo3mq and Debian's Mosquitto under the same floods, in one run.

Three scenarios (benches/README.md, "Isolation"); in each, the loads come from other
processes (tests/support/load.py: raw MQTT over plain sockets) and the broker's memory is
sampled from /proc every 0.2 s.

1. slow in-process subscriber: four clients flood `flood/x` (QoS 0, 150,000 msg/s each)
   for 30 s into a subscriber whose consumer takes 1 ms per message, then 200 clients log
   in, 20 at a time, each subscribing and unsubscribing. pyo3mq is embedded in a Python
   program (asyncio, an async authenticator that accepts at once, event handlers, an
   in-process `flood/#` subscription in drop mode); Mosquitto has no in-process
   subscriber, so a socket subscriber reading one message per millisecond stands in.
2. one flooding publisher: one client publishes QoS 0 as fast as the broker reads (no
   hooks) while 200 clients log in (20 at a time) and a paced pair exchanges 200 QoS 1
   messages per second for 10 s.
3. slow password hashes: a password file with a user hashed at 1,000,000 PBKDF2-SHA512
   iterations (the same `$7$` line for both brokers) and another at 101 for a paced pair
   (200 QoS 1 msg/s for 12 s); 2 s in, 50 clients log in at once as the slow user.
   pyo3mq runs with `auth_timeout = 2`; Mosquitto has no such timeout.

    python3 benches/isolation_bench.py                 # every scenario, both brokers
    python3 benches/isolation_bench.py --scenarios 2 --runs 3

Prints a table per scenario and writes results.jsonl to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOAD = ROOT / "tests" / "support" / "load.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
MOSQUITTO = "/usr/sbin/mosquitto"
LOGINS = 200
FLOOD_SECONDS = 30
AUTH_TIMEOUT = 2.0
# The same hashes for both brokers (mosquitto_passwd 2.0 has no iteration option; these
# lines were made with hashlib.pbkdf2_hmac("sha512", password, salt, iterations)).
PASSWORDS = """\
slow:$7$1000000$aXNvbGF0aW9uLXNs$d2TwIwXnmDhqmZVsNPsntpsUrhpDbMJ2amWLulW6WmAzLwAjNniFSD1f8ky3FQqotPxenTI7cq9rBMEIFMCBGA==
fast:$7$101$aXNvbGF0aW9uLWZh$AaoEjQtyKxy8iLkpQNv8Zo9MMy3nL7xmnWG3D2NTHHj1FdH/RLaJRZDBraXXJHisFV5zBLHH0KkvyPF/NQ2CRA==
"""
Result = dict[str, Any]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# -- the brokers -----------------------------------------------------------------------


@contextmanager
def broker(name: str, scenario: int, workdir: Path) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """Starts `name` for `scenario`; yields (port, process)."""
    port = free_port()
    passwd = workdir / "passwd"
    passwd.write_text(PASSWORDS)
    # Mosquitto started as root reads its files as the `mosquitto` user.
    workdir.chmod(0o755)
    passwd.chmod(0o644)
    if name == "mosquitto":
        conf = workdir / "mosquitto.conf"
        lines = [f"listener {port} 127.0.0.1", "persistence false", "log_dest none"]
        if scenario == 3:
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines += ["allow_anonymous true"]
        conf.write_text("\n".join(lines) + "\n")
        cmd = [MOSQUITTO, "-c", str(conf)]
    elif scenario == 1:
        cmd = [str(VENV_PYTHON), __file__, "embed", str(port)]
    else:
        conf = workdir / "pyo3mq.toml"
        text = ""
        if scenario == 3:
            text = f'password_file = "{passwd}"\nauth_timeout = {AUTH_TIMEOUT}\n'
        conf.write_text(text)
        cmd = [str(ROOT / ".venv" / "bin" / "pyo3mq"), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--config", str(conf), "--log-level", "error"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def embed(port: int) -> None:
    """Scenario 1's embedding program: prints its figures as JSON when SIGTERM arrives."""
    import pyo3mq

    async def main() -> None:
        events = {"connect": 0, "disconnect": 0, "subscribe": 0, "unsubscribe": 0}

        async def authenticate(client_id: str, username: str | None, pw: bytes | None) -> bool:
            return True

        def counter(kind: str) -> Any:
            def count(_event: object) -> None:
                events[kind] += 1

            return count

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        consumed = 0
        max_lag = 0.0
        async with pyo3mq.Broker(
            listeners=[f"tcp://127.0.0.1:{port}"],
            authenticator=authenticate,
            on_connect=counter("connect"),
            on_disconnect=counter("disconnect"),
            on_subscribe=counter("subscribe"),
            on_unsubscribe=counter("unsubscribe"),
        ) as broker:
            async with broker.subscribe("flood/#") as sub:

                async def consume() -> None:
                    nonlocal consumed
                    async for _message in sub:
                        consumed += 1
                        await asyncio.sleep(0.001)

                consumer = asyncio.create_task(consume())
                while not stop.is_set():
                    start = loop.time()
                    await asyncio.sleep(0.05)
                    max_lag = max(max_lag, loop.time() - start - 0.05)
                consumer.cancel()
                figures = {
                    "events": events,
                    "consumed": consumed,
                    "subscription_dropped": sub.dropped,
                    "stats": broker.stats(),
                    "max_loop_lag": max_lag,
                }
        print(json.dumps(figures), flush=True)

    asyncio.run(main())


# -- the loads -------------------------------------------------------------------------


def load_cmd(*args: object) -> list[str]:
    return [str(VENV_PYTHON), str(LOAD), *map(str, args)]


@contextmanager
def flood(port: int, connections: int, rate: int) -> Iterator[None]:
    proc = subprocess.Popen(
        load_cmd("flood", port, "flood/x", "--connections", connections, "--rate", rate),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline() != "ready\n":
            raise RuntimeError("the flood did not start")
        yield
    finally:
        proc.kill()
        proc.wait()


def start_load(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(load_cmd(*args), stdout=subprocess.PIPE, text=True)


def result_of(proc: subprocess.Popen[str]) -> Result:
    out, _ = proc.communicate(timeout=300)
    result: Result = json.loads(out)
    return result


def slow_subscriber(port: int) -> None:
    """Mosquitto's stand-in for the in-process consumer: a socket subscriber to `flood/#`
    that takes 1 ms per message."""
    sys.path.insert(0, str(LOAD.parent))
    from mqtt_raw import RawClient, subscribe

    with RawClient(port, timeout=3600) as client:
        client.connect("slow-sub")
        client.send(subscribe(1, ("flood/#", 0)))
        while True:
            client.recv()
            time.sleep(0.001)


class Sampler:
    """The peak RSS of a process, sampled every 0.2 s on a thread."""

    def __init__(self, pid: int) -> None:
        import threading

        self.pid = pid
        self.peak = rss_mb(pid)
        self.start_rss = self.peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def login_figures(logins: Result) -> Result:
    codes = logins["codes"]
    return {
        "logins_answered": logins["answered"],
        "logins_accepted": logins["accepted"],
        "login_p50_ms": logins["p50"] * 1000,
        "login_p99_ms": logins["p99"] * 1000,
        "login_max_ms": logins["max"] * 1000,
        "login_codes": {str(c): codes.count(c) for c in sorted(set(codes), key=str)},
    }


def paced_figures(pair: Result) -> Result:
    return {
        "paced_p50_ms": pair["p50"] * 1000,
        "paced_p99_ms": pair["p99"] * 1000,
        "paced_max_ms": pair["max"] * 1000,
        "paced_lost": pair["lost"],
    }


# -- the scenarios ---------------------------------------------------------------------


def scenario_1(name: str, workdir: Path) -> Result:
    with broker(name, 1, workdir) as (port, proc):
        sampler = Sampler(proc.pid)
        helper = None
        if name == "mosquitto":
            helper = subprocess.Popen(
                [str(VENV_PYTHON), __file__, "slow-sub", str(port)], stdout=subprocess.DEVNULL
            )
            time.sleep(0.5)
        try:
            with flood(port, 4, 150_000):
                time.sleep(FLOOD_SECONDS)
                logins = result_of(
                    start_load("logins", port, "--count", LOGINS, "--concurrency", 20, "--churn")
                )
        finally:
            if helper is not None:
                helper.kill()
                helper.wait()
        peak = sampler.stop()
        row: Result = {"rss_start_mb": sampler.start_rss, "rss_peak_mb": peak}
        row.update(login_figures(logins))
        if name == "pyo3mq":
            time.sleep(1)  # the last events
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            inner = json.loads(out.strip().splitlines()[-1])
            row["events"] = inner["events"]
            # (Builds before the counter existed have no such figure.)
            row["events_dropped"] = inner["stats"].get("events_dropped", "n/a")
            row["max_loop_lag_ms"] = inner["max_loop_lag"] * 1000
            row["consumed"] = inner["consumed"]
            stats = inner["stats"]
            row["messages_received"] = stats.get("messages_received", 0)
            row["dropped"] = inner["subscription_dropped"] + stats.get("messages_dropped", 0)
        return row


def scenario_2(name: str, workdir: Path) -> Result:
    with broker(name, 2, workdir) as (port, proc):
        sampler = Sampler(proc.pid)
        with flood(port, 1, 0):
            time.sleep(3)
            pair = start_load("paced", port, "--rate", 200, "--seconds", 10, "--qos", 1)
            logins = result_of(start_load("logins", port, "--count", LOGINS, "--concurrency", 20))
            paced = result_of(pair)
        row: Result = {"rss_peak_mb": sampler.stop()}
        row.update(login_figures(logins))
        row.update(paced_figures(paced))
        return row


def scenario_3(name: str, workdir: Path) -> Result:
    with broker(name, 3, workdir) as (port, proc):
        sampler = Sampler(proc.pid)
        pair = start_load(
            "paced",
            port,
            "--rate",
            200,
            "--seconds",
            12,
            "--qos",
            1,
            "--username",
            "fast",
            "--password",
            "fast-secret",
            "--grace",
            120,
        )
        time.sleep(2)
        storm = start_load(
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
            "--timeout",
            120,
        )
        logins = result_of(storm)
        paced = result_of(pair)
        row: Result = {"rss_peak_mb": sampler.stop()}
        row.update(login_figures(logins))
        row.update(paced_figures(paced))
        accepted = [t for c, t in zip(logins["codes"], logins["seconds"]) if c == 0]
        row["accepted_after_auth_timeout"] = sum(t > AUTH_TIMEOUT for t in accepted)
        row["slowest_accepted_ms"] = max(accepted, default=0.0) * 1000
        return row


SCENARIOS = {1: scenario_1, 2: scenario_2, 3: scenario_3}
TITLES = {
    1: "1. slow in-process subscriber, 4 x 150k msg/s flood, 200 logins",
    2: "2. one client flooding as fast as it can, 200 logins + paced pair",
    3: "3. 50 logins at 1,000,000 PBKDF2 iterations + paced pair",
}
COLUMNS = {
    1: [
        ("logins answered/accepted", "{logins_answered}/{logins_accepted}"),
        ("login p99 (max) ms", "{login_p99_ms:.0f} ({login_max_ms:.0f})"),
        ("broker RSS start/peak MB", "{rss_start_mb:.0f}/{rss_peak_mb:.0f}"),
        ("loop lag max ms", "{max_loop_lag_ms:.0f}"),
        ("connect/subscribe/unsubscribe events seen", "{events_seen}"),
        ("events dropped (counted)", "{events_dropped}"),
    ],
    2: [
        ("logins answered/accepted", "{logins_answered}/{logins_accepted}"),
        ("login p99 (max) ms", "{login_p99_ms:.0f} ({login_max_ms:.0f})"),
        ("paced pair p99 (max) ms", "{paced_p99_ms:.1f} ({paced_max_ms:.0f})"),
        ("paced lost", "{paced_lost}"),
        ("RSS peak MB", "{rss_peak_mb:.0f}"),
    ],
    3: [
        ("paced pair p99 (max) ms", "{paced_p99_ms:.1f} ({paced_max_ms:.0f})"),
        ("paced lost", "{paced_lost}"),
        ("logins accepted/refused/unanswered", "{accepted}/{refused}/{unanswered}"),
        ("accepted after 2 s", "{accepted_after_auth_timeout}"),
        ("slowest accepted ms", "{slowest_accepted_ms:.0f}"),
    ],
}


def cell(fmt: str, row: Result) -> str:
    values = dict(row)
    codes = row.get("login_codes", {})
    values["accepted"] = codes.get("0", 0)
    values["refused"] = sum(n for c, n in codes.items() if c not in ("0", "None"))
    values["unanswered"] = codes.get("None", 0)
    values.setdefault("max_loop_lag_ms", float("nan"))
    values.setdefault("events_dropped", "n/a")
    events = row.get("events")
    values["events_seen"] = (
        f"{events['connect']}/{events['subscribe']}/{events['unsubscribe']}" if events else "n/a"
    )
    return fmt.format(**values)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "embed":
        embed(int(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "slow-sub":
        slow_subscriber(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="1,2,3")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--brokers", default="pyo3mq,mosquitto")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "isolation")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = [int(s) for s in args.scenarios.split(",")]
    names = args.brokers.split(",")
    rows: dict[tuple[int, str], list[Result]] = {}
    with open(args.out / "results.jsonl", "a") as log:
        for run in range(args.runs):
            for scenario in scenarios:
                # Alternate which broker goes first, so both see the same background noise.
                for name in names if run % 2 == 0 else names[::-1]:
                    with tempfile.TemporaryDirectory() as tmp:
                        row = SCENARIOS[scenario](name, Path(tmp))
                    row.update({"scenario": scenario, "broker": name, "run": run})
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    rows.setdefault((scenario, name), []).append(row)
                    print(f"scenario {scenario} {name} run {run}: {row}", file=sys.stderr)
    load = os.getloadavg()
    print(
        f"{platform.node()}: {os.cpu_count()} cores, load average {load[0]:.1f}, "
        f"{args.runs} run(s) each; worst run shown where runs > 1"
    )
    for scenario in scenarios:
        print(f"\n{TITLES[scenario]}\n")
        heads = [title for title, _ in COLUMNS[scenario]]
        print("| broker | " + " | ".join(heads) + " |")
        print("|---" * (len(heads) + 1) + "|")
        for name in names:
            results = rows.get((scenario, name), [])
            if not results:
                continue
            # The worst run (slowest login, or most delayed paced message in scenario 3):
            # what a user would remember.
            key = "paced_max_ms" if scenario == 3 else "login_max_ms"
            worst = max(results, key=lambda r: r[key])
            cells = [cell(fmt, worst) for _, fmt in COLUMNS[scenario]]
            print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
