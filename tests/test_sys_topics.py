"""`$SYS/broker/...`: the broker's statistics, read by real clients.

The broker publishes them as retained QoS 0 messages every `sys_interval` (here 0.1 s so
the tests need not wait) when they change. Clients may read `$SYS` but not write it.
"""

from __future__ import annotations

import asyncio
import queue
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pyo3mq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.mosquitto import mosquitto_factory
from support.mqtt_raw import RawClient, subscribe
from support.stderr_capture import captured_stderr
from support.teardown import closed_at_teardown

TIMEOUT = 5.0
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
STATS = [
    "version",
    "uptime",
    "clients/connected",
    "clients/disconnected",
    "clients/total",
    "clients/maximum",
    "messages/received",
    "messages/sent",
    "publish/messages/dropped",
    "bytes/received",
    "bytes/sent",
    "subscriptions/count",
    "retained messages/count",
]
# pyo3mq's own figures, which Mosquitto has no name for: apart, under `pyo3mq/`, so that
# every name under Mosquitto's own stays one of Mosquitto's.
OWN = ["pyo3mq/events/dropped"]


class Peer:
    """A paho-mqtt 3.1.1 client whose received messages land in a queue."""

    def __init__(
        self, port: int, client_id: str, clean: bool = True, will: dict[str, Any] | None = None
    ) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        if will:
            self.client.will_set(**will)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, flt: str, qos: int = 0) -> None:
        done: queue.Queue[None] = queue.Queue()
        self.client.on_subscribe = lambda *_: done.put(None)
        self.client.subscribe(flt, qos)
        done.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(TIMEOUT)

    def next(self, timeout: float = TIMEOUT) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def stats_until(
        self,
        latest: dict[str, str],
        done: Callable[[dict[str, str]], bool],
        timeout: float = TIMEOUT,
    ) -> dict[str, str]:
        """Updates `latest` (value per statistic, named without `$SYS/broker/`) with what
        arrives until `done(latest)`; a value that does not change is not sent again."""
        deadline = time.monotonic() + timeout
        while not done(latest):
            m = self.next(max(deadline - time.monotonic(), 0.001))
            assert m.topic.startswith("$SYS/broker/"), m.topic
            latest[m.topic.removeprefix("$SYS/broker/")] = m.payload.decode()
        return latest

    def close(self, disconnect: bool = True) -> None:
        if disconnect:
            self.client.disconnect()
            self.client.loop_stop()
        else:
            # No DISCONNECT: stop paho's thread (so it cannot reconnect), then close the
            # socket under it, as a crashed client would.
            self.client.loop_stop()
            sock = self.client.socket()
            if sock is not None:
                sock.close()


@pytest.fixture
def sys_broker(make_broker: Callable[..., pyo3mq.Broker]) -> pyo3mq.Broker:
    return make_broker(sys_interval=0.1)


@pytest.fixture
def peers(sys_broker: pyo3mq.Broker) -> Iterator[Callable[..., Peer]]:
    yield from closed_at_teardown(Peer, sys_broker.addresses[0][1])


def test_statistics_are_retained_and_follow_the_traffic(
    sys_broker: pyo3mq.Broker, peers: Callable[..., Peer]
) -> None:
    """[MQTT-4.7.2-1] A `$SYS/broker/#` subscriber gets every statistic at once (retained
    replay, RETAIN=1), then live updates as clients come and go and messages flow."""
    offline = peers("offline", clean=False)
    offline.subscribe("t/#", 1)
    offline.close()

    watcher = peers("watcher")
    watcher.subscribe("$SYS/broker/#")
    # The replay (RETAIN=1) has every statistic; a live update (RETAIN=0) may interleave.
    first: dict[str, str] = {}
    latest: dict[str, str] = {}
    deadline = time.monotonic() + TIMEOUT
    while len(first) < len(STATS) + len(OWN):
        m = watcher.next(max(deadline - time.monotonic(), 0.001))
        name = m.topic.removeprefix("$SYS/broker/")
        latest[name] = m.payload.decode()
        if m.retain:
            first[name] = m.payload.decode()
    assert sorted(first) == sorted(STATS + OWN)
    assert first["pyo3mq/events/dropped"] == "0"
    assert first["version"] == f"pyo3mq {pyo3mq.__version__}"
    assert re.fullmatch(r"\d+ seconds", first["uptime"])

    receiver = peers("receiver")
    receiver.subscribe("t/#", 1)
    sender = peers("sender")
    for i in range(5):
        sender.publish("t/x", b"%d" % i, qos=1)
    sender.publish("keep/me", b"r", qos=1, retain=True)
    assert [receiver.next().payload for _ in range(5)] == [b"%d" % i for i in range(5)]

    def caught_up(s: dict[str, str]) -> bool:
        return (
            s.get("clients/connected") == "3"  # watcher, receiver, sender
            and s.get("clients/disconnected") == "1"  # the offline persistent session
            and s.get("clients/total") == "4"
            and int(s.get("subscriptions/count", "0")) >= 3
            and int(s.get("messages/received", "0")) >= 6
            and int(s.get("messages/sent", "0")) >= 5
            and s.get("retained messages/count") is not None
            and int(s["retained messages/count"]) >= 1 + len(STATS)
        )

    stats = watcher.stats_until(latest, caught_up)
    # Live updates are forwarded with RETAIN=0; the watcher saw them arrive.
    assert stats["clients/connected"] == "3"
    assert int(stats["messages/received"]) >= 6
    assert int(stats["bytes/received"]) > 0 and int(stats["bytes/sent"]) > 0
    # Every value read is a whole number (uptime and version aside).
    for name, value in {**first, **stats}.items():
        if name not in ("version", "uptime"):
            assert value.isdigit(), (name, value)
    assert int(stats["clients/maximum"]) >= 3


def test_wildcards_at_the_first_level_do_not_match_sys(peers: Callable[..., Peer]) -> None:
    """[MQTT-4.7.2-1] on the broker's own `$SYS` messages: `#` and `+/broker/#` get none of
    them (retained or live) while `$SYS/broker/+` gets the one-level statistics."""
    everything = peers("hash")
    everything.subscribe("#")
    plus = peers("plus")
    plus.subscribe("+/broker/#")
    one_level = peers("one-level")
    one_level.subscribe("$SYS/broker/+")
    got: set[str] = set()
    while len(got) < 2:  # a live uptime update may come between the two replayed ones
        got.add(one_level.next().topic)
    assert got == {"$SYS/broker/version", "$SYS/broker/uptime"}
    marker = peers("marker")
    marker.publish("mark", b"m")
    assert everything.next().topic == "mark"
    with pytest.raises(queue.Empty):
        plus.next(0.3)


def test_clients_cannot_publish_to_sys(
    sys_broker: pyo3mq.Broker, peers: Callable[..., Peer], capfd: pytest.CaptureFixture[str]
) -> None:
    """A client's PUBLISH to `$SYS` is acknowledged (3.1.1 has no negative PUBACK) but
    dropped with a log line, so it can neither fake a statistic nor reach a `$SYS`
    subscriber; its will to `$SYS` is dropped too. Other `$` topics work."""
    faker = peers("faker", will={"topic": "$SYS/broker/version", "payload": b"w", "retain": True})
    faker.publish("$SYS/broker/version", b"fake", qos=1, retain=True)
    faker.publish("$SYS", b"fake", qos=1, retain=True)
    faker.publish("$dev/x", b"ok", qos=1, retain=True)

    late = peers("late")
    late.subscribe("$SYS/broker/version")
    assert late.next().payload.decode() == f"pyo3mq {pyo3mq.__version__}"
    dev = peers("dev")
    dev.subscribe("$dev/#")
    assert dev.next().payload == b"ok"

    faker.close(disconnect=False)  # the will would fire now
    deadline = time.monotonic() + TIMEOUT
    while "will dropped: $SYS" not in captured_stderr() and time.monotonic() < deadline:
        time.sleep(0.02)
    log = captured_stderr()
    assert "will dropped: $SYS" in log, log
    assert log.count("publish dropped: $SYS topics are the broker's own") == 2
    again = peers("again")
    again.subscribe("$SYS/broker/version")
    assert again.next().payload.decode() == f"pyo3mq {pyo3mq.__version__}"
    with pytest.raises(queue.Empty):
        late.next(0.3)  # neither the fake nor the will reached a live subscriber


def test_mosquitto_sub_reads_sys(sys_broker: pyo3mq.Broker) -> None:
    """Debian's `mosquitto_sub` reads the statistics as it would from Mosquitto."""
    if not Path(MOSQUITTO_SUB).exists():
        pytest.skip("mosquitto-clients is not installed")
    port = str(sys_broker.addresses[0][1])
    command = [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", port, "-t", "$SYS/broker/clients/+"]
    out = subprocess.run(
        [*command, "-v", "-C", "4", "-W", "5"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.splitlines()
    assert sorted(line.split(" ")[0] for line in out) == [
        f"$SYS/broker/clients/{name}" for name in ("connected", "disconnected", "maximum", "total")
    ]


def test_names_are_mosquittos(tmp_path: Path, sys_broker: pyo3mq.Broker) -> None:
    """Every `$SYS/broker/...` name pyo3mq publishes is one Debian's Mosquitto publishes,
    so dashboards made for Mosquitto read pyo3mq unchanged, except pyo3mq's own figures,
    which are apart under `$SYS/broker/pyo3mq/` (a level Mosquitto does not use)."""
    if not Path(MOSQUITTO_SUB).exists():
        pytest.skip("mosquitto-clients is not installed")
    with mosquitto_factory(tmp_path) as mosquitto:
        theirs = sys_names(mosquitto("allow_anonymous true", "sys_interval 1"))
    ours = sys_names(sys_broker.addresses[0][1])
    own = {f"$SYS/broker/{name}" for name in OWN}
    assert ours == {f"$SYS/broker/{name}" for name in STATS} | own
    assert ours - own <= theirs, sorted(ours - own - theirs)
    assert not any(name.startswith("$SYS/broker/pyo3mq/") for name in theirs), theirs


def sys_names(port: int) -> set[str]:
    """The `$SYS/broker/...` topics a broker publishes (retained, or within 3 s)."""
    command = [MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-t", "$SYS/broker/#"]
    out = subprocess.run(
        [*command, "-F", "%t", "-W", "3"], capture_output=True, text=True, timeout=10
    ).stdout
    return set(out.splitlines())


def test_sys_interval_zero_publishes_nothing(make_broker: Callable[..., pyo3mq.Broker]) -> None:
    """`sys_interval=0` turns the statistics off: a `$SYS/#` subscriber gets only what the
    process itself publishes there (in-process publishing may use `$SYS`)."""
    broker = make_broker(sys_interval=0)
    peer = Peer(broker.addresses[0][1], "quiet")
    try:
        peer.subscribe("$SYS/#")
        with pytest.raises(queue.Empty):
            peer.next(0.5)
        # The subscription works: what the embedding process publishes arrives.
        asyncio.run(broker.publish("$SYS/app/mark", b"m"))
        assert (peer.next().topic, peer.messages.empty()) == ("$SYS/app/mark", True)
    finally:
        peer.close()


def test_sys_values_are_not_saved_in_the_store(tmp_path: Path) -> None:
    """Retained `$SYS` values describe one run: the session store does not keep them, so
    a restarted broker with statistics off has none to replay."""
    store = f"sqlite:{tmp_path / 'sessions.db'}"
    first = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], session_store=store, sys_interval=0.1)
    first.start()
    peer = Peer(first.addresses[0][1], "p")
    peer.subscribe("$SYS/broker/uptime")
    peer.next()  # the statistics exist in this run
    peer.publish("kept", b"k", qos=1, retain=True)
    peer.close()
    first.stop()

    second = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], session_store=store, sys_interval=0)
    second.start()
    try:
        peer = Peer(second.addresses[0][1], "q")
        peer.subscribe("#")
        assert peer.next().topic == "kept"  # the store works
        peer.subscribe("$SYS/#")
        with pytest.raises(queue.Empty):
            peer.next(0.5)
        peer.close()
    finally:
        second.stop()


def test_clients_maximum_sees_a_burst_between_updates(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    """`clients/maximum` is the most clients connected at once, counted at connect time:
    five clients that come and go between two updates still count."""
    broker = make_broker(sys_interval=0.5)
    port = broker.addresses[0][1]
    burst = []
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", port))
        client_id = b"burst-%d" % i
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
        s.sendall(b"\x10" + bytes([len(body)]) + body)
        assert s.recv(4) == b"\x20\x02\x00\x00"
        burst.append(s)
    for s in burst:
        s.sendall(b"\xe0\x00")
        s.close()
    watcher = Peer(port, "watcher")
    try:
        watcher.subscribe("$SYS/broker/clients/maximum")
        seen = watcher.stats_until({}, lambda s: int(s.get("clients/maximum", "0")) >= 5)
        assert int(seen["clients/maximum"]) in (5, 6)  # the burst, and the watcher after it
    finally:
        watcher.close()


def test_broker_stats_from_python(make_broker: Callable[..., pyo3mq.Broker]) -> None:
    """`Broker.stats()` gives the same figures to the embedding process, as integers."""
    broker = make_broker(sys_interval=0)
    assert set(broker.stats()) == {
        "uptime",
        *(name.replace("/", "_").replace(" ", "_") for name in STATS[2:]),
        "events_dropped",
        "connections_parked",
        "connection_parks",
    }
    port = broker.addresses[0][1]
    sub = Peer(port, "stats-sub")
    pub = Peer(port, "stats-pub")
    try:
        sub.subscribe("s/#", 1)
        for i in range(3):
            pub.publish("s/x", b"%d" % i, qos=1)
        pub.publish("s/kept", b"k", qos=1, retain=True)
        assert [sub.next().payload for _ in range(4)] == [b"0", b"1", b"2", b"k"]
        stats = broker.stats()
        assert stats["clients_connected"] == 2 and stats["clients_total"] == 2
        assert stats["messages_received"] == 4
        # Counted before the packets are written, so exact once they have arrived.
        assert stats["messages_sent"] == 4
        assert stats["subscriptions_count"] == 1
        assert stats["retained_messages_count"] == 1
        assert stats["bytes_received"] > 0 and stats["bytes_sent"] > 0
        assert stats["events_dropped"] == 0
    finally:
        sub.close()
        pub.close()
    broker.stop()
    assert broker.stats() == {}


async def test_dropped_events_are_counted_in_sys(
    serve: Callable[..., Any],
) -> None:
    """An `on_subscribe` observer on an event loop that is blocked while one client sends
    20,000 SUBSCRIBEs: the event queue (16,384) overflows, and what it drops is published
    as `$SYS/broker/pyo3mq/events/dropped` (a real subscriber reads it) and equals what
    the observers missed, so no event is lost without a count."""
    sent = 20_000
    seen: list[str] = []
    broker: pyo3mq.Broker = await serve(
        sys_interval=0.1,
        on_connect=lambda event: seen.append("connect"),
        on_disconnect=lambda event: seen.append("disconnect"),
        on_subscribe=lambda event: seen.append("subscribe"),
    )
    port = broker.addresses[0][1]

    def subscribe_storm() -> None:
        with RawClient(port) as raw:
            raw.connect("storm")
            for chunk in range(0, sent, 1000):
                raw.send(
                    b"".join(subscribe(i + 1, ("storm/x", 0)) for i in range(chunk, chunk + 1000))
                )
                for _ in range(1000):
                    assert raw.recv().type == 9  # SUBACK

    storm = threading.Thread(target=subscribe_storm)
    storm.start()
    # Joined on the loop's own thread: the loop runs no observer until every SUBACK came.
    storm.join()
    deadline = time.monotonic() + TIMEOUT
    events = sent + 2  # and the storm's connect and disconnect
    while len(seen) + broker.stats()["events_dropped"] < events:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    dropped = broker.stats()["events_dropped"]
    assert dropped > 0
    assert len(seen) + dropped == events, (len(seen), dropped)

    def values_until_dropped() -> list[paho.MQTTMessage]:
        """The retained value first, then updates until the count is the final one (the
        update after the storm may be one `sys_interval` away)."""
        watcher.subscribe("$SYS/broker/pyo3mq/events/dropped")
        messages = [watcher.next()]
        while messages[-1].payload.decode() != str(dropped):
            messages.append(watcher.next())
        return messages

    watcher = Peer(port, "dropped-watcher")
    try:
        messages = await asyncio.to_thread(values_until_dropped)
    finally:
        watcher.close()
    assert messages[0].retain
    assert messages[-1].payload.decode() == str(dropped)
