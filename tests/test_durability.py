"""A broker killed with SIGKILL: what a durable session store keeps.

The broker runs as the `pyo3mq` command in a subprocess, so the crash is real.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.mqtt_raw import RawClient, ack, publish, subscribe

PUBACK = 0x40


class BrokerProcess:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyo3mq", "--config", str(config), "--log-level", "warn"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"listening on [\d.]+:(\d+)", line)
        assert match, f"unexpected first line {line!r}"
        self.port = int(match.group(1))

    def crash(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


StartBroker = Callable[[str], BrokerProcess]


@pytest.fixture
def config_for(tmp_path: Path) -> Iterator[StartBroker]:
    procs: list[BrokerProcess] = []

    def start(durability: str) -> BrokerProcess:
        config = tmp_path / f"{durability}.toml"
        config.write_text(
            'listeners = ["tcp://127.0.0.1:0"]\n'
            f'session_store = "sqlite:{tmp_path / durability}.db"\n'
            f'durability = "{durability}"\n'
            "persist_interval = 0\n"
        )
        proc = BrokerProcess(config)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.close()


def publish_acknowledged(port: int, count: int) -> None:
    with RawClient(port) as pub:
        pub.connect("durable-pub")
        pub.send(b"".join(publish("d/t", b"m%d" % i, qos=1, pkid=i + 1) for i in range(count)))
        acks = [pub.recv() for _ in range(count)]
        assert [(a.first, a.pkid) for a in acks] == [(PUBACK, i + 1) for i in range(count)]


def offline_subscriber(port: int) -> None:
    with RawClient(port) as sub:
        assert sub.connect("durable-sub", clean=False).body == b"\x00\x00"
        sub.send(subscribe(1, ("d/#", 1)))
        assert sub.recv().body == b"\x00\x01\x01"


def received_after_restart(port: int, expect: int) -> list[bytes]:
    got = []
    with RawClient(port) as sub:
        ack0 = sub.connect("durable-sub", clean=False)
        if expect == 0:
            return []
        assert ack0.body == b"\x01\x00"
        for _ in range(expect):
            p = sub.recv()
            _, pkid, payload = p.publish_fields()
            assert pkid is not None
            sub.send(ack(PUBACK, pkid))
            got.append(payload)
    return got


def test_sync_durability_keeps_every_acknowledged_message(config_for: StartBroker) -> None:
    """[MQTT-3.1.2-5] [MQTT-4.5.0-1] With `durability = "sync"` a QoS 1 message is
    acknowledged only once it is in the SQLite store: after SIGKILL and a restart, the
    offline clean-session-0 subscriber gets every acknowledged message, in order."""
    first = config_for("sync")
    offline_subscriber(first.port)
    publish_acknowledged(first.port, 50)
    first.crash()
    second = config_for("sync")
    assert received_after_restart(second.port, 50) == [b"m%d" % i for i in range(50)]


def test_interval_durability_loses_what_was_not_saved(config_for: StartBroker) -> None:
    """The contrast that shows the test above can fail: with `durability = "interval"`
    and no periodic saves, a SIGKILL loses the session and its queued messages (what
    `persist_interval` documents), so the subscriber finds no stored session."""
    first = config_for("interval")
    offline_subscriber(first.port)
    publish_acknowledged(first.port, 50)
    first.crash()
    second = config_for("interval")
    with RawClient(second.port) as sub:
        assert sub.connect("durable-sub", clean=False).body == b"\x00\x00"


def test_sync_durability_saves_ended_sessions_and_cleared_retained(
    config_for: StartBroker,
) -> None:
    """Commits write only what changed, and that includes what went away: a persistent
    session ended by a clean-session reconnect, and a retained message cleared by an
    empty payload. After SIGKILL and a restart neither comes back, while the message
    acknowledged last (which forced the commit) is there."""
    first = config_for("sync")
    with RawClient(first.port) as gone:
        assert gone.connect("ended", clean=False).body == b"\x00\x00"
        gone.send(subscribe(1, ("d/#", 1)))
        assert gone.recv().body == b"\x00\x01\x01"
    offline_subscriber(first.port)
    with RawClient(first.port) as pub:
        pub.connect("retainer")
        pub.send(publish("r/t", b"kept", qos=1, pkid=1, retain=True))
        assert pub.recv().pkid == 1
        pub.send(publish("r/t", b"", qos=1, pkid=2, retain=True))
        assert pub.recv().pkid == 2
    with RawClient(first.port) as again:  # ends the persistent session "ended"
        assert again.connect("ended", clean=True).body == b"\x00\x00"
    publish_acknowledged(first.port, 1)  # a commit after both changes
    first.crash()

    second = config_for("sync")
    with RawClient(second.port) as again:
        assert again.connect("ended", clean=False).body == b"\x00\x00"  # no session
    assert received_after_restart(second.port, 1) == [b"m0"]
    with RawClient(second.port) as sub:
        sub.connect("late")
        sub.send(subscribe(1, ("r/#", 1)))
        assert sub.recv().body == b"\x00\x01\x01"
        with RawClient(second.port) as pub:
            pub.connect("marker")
            pub.send(publish("r/mark", b"m", qos=1, pkid=1))
            assert pub.recv().pkid == 1
        first_seen = sub.recv()
        assert first_seen.publish_fields()[0] == "r/mark"  # no retained r/t replayed
