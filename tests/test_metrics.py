"""The metrics and health listener (`metrics_listener`): `/metrics` scraped with the
`prometheus_client` parser under real traffic from paho and pyo3mq clients, `/healthz`,
`/readyz`, and the HTTP edges (404, 405, an oversized or slow request).

Counters are flushed by each connection once per wake-up, so a figure a client has just
caused may show a moment later: tests scrape until the expected values appear (or fail
after a bound), and the values they wait for are exact.
"""

from __future__ import annotations

import asyncio
import http.client
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pyo3mq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families
from support.mqtt_raw import RawClient, connect

TIMEOUT = 5.0
METRICS = "http://127.0.0.1:0"

Families = dict[str, Any]


def get(
    address: tuple[str, int], path: str, method: str = "GET"
) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def parse(text: str) -> Families:
    return {family.name: family for family in text_string_to_metric_families(text)}


def scrape(address: tuple[str, int]) -> Families:
    status, headers, body = get(address, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body)


def value(families: Families, sample: str, **labels: str) -> float:
    """The value of the sample `sample` (a full sample name, such as `x_total` or
    `x_bucket`) with exactly these labels."""
    for family in families.values():
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {sample}{labels}")


def scrape_until(
    address: tuple[str, int], want: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> Families:
    """Scrapes until every (sample, labels) in `want` has its value; fails after a bound
    with what differed."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        families = scrape(address)
        wrong = {
            key: value(families, key[0], **dict(key[1]))
            for key, expected in want.items()
            if value(families, key[0], **dict(key[1])) != expected
        }
        if not wrong:
            return families
        if time.monotonic() > deadline:
            raise AssertionError(f"still differ from {want}: {wrong}")
        time.sleep(0.05)


def key(sample: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (sample, tuple(sorted(labels.items())))


class Peer:
    """A paho-mqtt 3.1.1 client on its own network thread."""

    def __init__(self, port: int, client_id: str, clean: bool = True) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        connected: queue.Queue[None] = queue.Queue()
        self.client.on_connect = lambda *_: connected.put(None)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        connected.get(timeout=TIMEOUT)

    def subscribe(self, flt: str, qos: int) -> None:
        done: queue.Queue[None] = queue.Queue()
        self.client.on_subscribe = lambda *_: done.put(None)
        self.client.subscribe(flt, qos)
        done.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    opened: list[Peer] = []

    def open_peer(port: int, client_id: str, clean: bool = True) -> Peer:
        peer = Peer(port, client_id, clean)
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


def test_counts_match_the_traffic_sent(
    make_broker: Callable[..., pyo3mq.Broker], peers: Callable[..., Peer]
) -> None:
    # No $SYS publisher: its retained topics would count as retained messages.
    broker = make_broker(metrics_listener=METRICS, sys_interval=0)
    assert broker.metrics_address is not None
    address = broker.metrics_address
    port = broker.addresses[0][1]
    subscriber = peers(port, "sub")
    subscriber.subscribe("t/#", 2)
    publisher = peers(port, "pub")
    sent = {0: [b"a" * 10] * 5, 1: [b"b" * 100] * 4, 2: [b"c" * 1000] * 3}
    for qos, payloads in sent.items():
        for payload in payloads:
            publisher.publish(f"t/{qos}", payload, qos)
    publisher.publish("t/kept", b"r" * 7, 1, retain=True)
    for _ in range(13):
        subscriber.messages.get(timeout=TIMEOUT)
    # The retained one was also sent: at QoS 1 (min of 1 and the granted 2).
    want = {
        key("pyo3mq_messages_received_total", qos="0"): 5,
        key("pyo3mq_messages_received_total", qos="1"): 5,
        key("pyo3mq_messages_received_total", qos="2"): 3,
        key("pyo3mq_payload_bytes_received_total", qos="0"): 50,
        key("pyo3mq_payload_bytes_received_total", qos="1"): 407,
        key("pyo3mq_payload_bytes_received_total", qos="2"): 3000,
        key("pyo3mq_messages_sent_total", qos="0"): 5,
        key("pyo3mq_messages_sent_total", qos="1"): 5,
        key("pyo3mq_messages_sent_total", qos="2"): 3,
        key("pyo3mq_payload_bytes_sent_total", qos="2"): 3000,
        key("pyo3mq_inflight_messages"): 0,
        key("pyo3mq_queued_messages"): 0,
    }
    families = scrape_until(address, want)
    assert value(families, "pyo3mq_clients_connected") == 2
    assert value(families, "pyo3mq_sessions") == 2
    assert value(families, "pyo3mq_connections", transport="tcp") == 2
    assert value(families, "pyo3mq_connections_accepted_total", transport="tcp") == 2
    assert value(families, "pyo3mq_connections", transport="ws") == 0
    assert value(families, "pyo3mq_subscriptions") == 1
    assert value(families, "pyo3mq_retained_messages") == 1
    assert value(families, "pyo3mq_messages_dropped_total", reason="queue_full") == 0
    # Wire bytes include every packet: more than the payloads.
    assert value(families, "pyo3mq_bytes_received_total") > 50 + 407 + 3000
    assert value(families, "pyo3mq_bytes_sent_total") > 50 + 407 + 3000
    # The same figures as $SYS (Broker.stats()).
    stats = broker.stats()
    assert stats["messages_received"] == 13
    assert stats["messages_sent"] == 13
    # Every family is typed, prefixed, and counters end in _total (the parser strips
    # the suffix from the family name, but the samples keep it).
    for family in families.values():
        assert family.name.startswith("pyo3mq_")
        assert family.documentation
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
    assert families["pyo3mq_hook_duration_seconds"].type == "histogram"

    subscriber.close()
    scrape_until(
        address,
        {key("pyo3mq_clients_connected"): 1, key("pyo3mq_connections", transport="tcp"): 1},
    )


def test_drops_by_reason_and_queues_of_offline_sessions(
    make_broker: Callable[..., pyo3mq.Broker], peers: Callable[..., Peer]
) -> None:
    broker = make_broker(metrics_listener=METRICS, sys_interval=0, max_queued_messages=2)
    assert broker.metrics_address is not None
    port = broker.addresses[0][1]
    offline = peers(port, "offline", clean=False)
    offline.subscribe("q/#", 1)
    offline.close()
    publisher = peers(port, "pub")
    for i in range(5):
        publisher.publish("q/x", b"%d" % i, 1)
    publisher.publish("$SYS/broker/lie", b"x", 1)
    families = scrape_until(
        broker.metrics_address,
        {
            key("pyo3mq_queued_messages"): 2,
            key("pyo3mq_messages_dropped_total", reason="queue_full"): 3,
            key("pyo3mq_messages_dropped_total", reason="sys_topic"): 1,
        },
    )
    assert value(families, "pyo3mq_sessions") == 2
    assert value(families, "pyo3mq_clients_connected") == 1
    assert value(families, "pyo3mq_messages_dropped_total", reason="not_authorized") == 0
    assert broker.dropped_messages == 3


def test_metrics_text_is_what_the_endpoint_serves(
    make_broker: Callable[..., pyo3mq.Broker], peers: Callable[..., Peer]
) -> None:
    broker = make_broker(metrics_listener=METRICS, sys_interval=0)
    assert broker.metrics_address is not None
    port = broker.addresses[0][1]
    peer = peers(port, "p")
    peer.subscribe("x", 1)
    peer.publish("x", b"hello", 1)
    peer.messages.get(timeout=TIMEOUT)
    scrape_until(broker.metrics_address, {key("pyo3mq_messages_sent_total", qos="1"): 1})

    def comparable(families: Families) -> list[Any]:
        # Uptime moves between the two reads; everything else is still.
        return sorted(
            (f.name, f.type, f.documentation, sorted(map(repr, f.samples)))
            for f in families.values()
            if f.name != "pyo3mq_uptime_seconds"
        )

    served = scrape(broker.metrics_address)
    assert comparable(parse(broker.metrics_text())) == comparable(served)
    assert "pyo3mq_uptime_seconds" in parse(broker.metrics_text())


def test_metrics_text_without_a_listener_and_when_stopped() -> None:
    broker = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"])
    assert broker.metrics_text() == ""
    broker.start()
    try:
        assert broker.metrics_address is None
        families = parse(broker.metrics_text())
        assert value(families, "pyo3mq_clients_connected") == 0
        assert value(families, "pyo3mq_build_info", version=pyo3mq.__version__) == 1
    finally:
        broker.stop()
    assert broker.metrics_text() == ""


async def test_hook_histograms_count_the_hook_calls(serve: Callable[..., Any]) -> None:
    connects: list[str] = []

    async def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        if username == "slow":
            await asyncio.sleep(5)
        return password == b"right"

    class Authorizer:
        async def authorize_subscribe(self, client: Any, topic: str, qos: int) -> int:
            return qos

        async def authorize_publish(self, client: Any, topic: str) -> bool:
            if topic == "boom":
                raise RuntimeError("the authorizer failed")
            return topic != "closed"

    def on_message(message: pyo3mq.Message) -> pyo3mq.Message | None:
        return None if message.payload == b"drop" else message

    broker = await serve(
        metrics_listener=METRICS,
        sys_interval=0,
        auth_timeout=0.5,
        authenticator=authenticate,
        authorizer=Authorizer(),
        on_message=on_message,
        on_connect=lambda event: connects.append(event.client.client_id),
    )
    address = broker.metrics_address
    port = broker.addresses[0][1]

    with pytest.raises(pyo3mq.MqttError):
        async with pyo3mq.Client("127.0.0.1", port, username="u", password="wrong"):
            pass
    with pytest.raises(pyo3mq.MqttError):
        async with pyo3mq.Client("127.0.0.1", port, username="slow", password="right", timeout=3):
            pass
    async with pyo3mq.Client("127.0.0.1", port, username="u", password="right") as client:
        await client.subscribe([("a/#", 1), ("b", 0)])
        # One PUBLISH per read (each waits for its PUBACK): one on_message batch each.
        # Two topics, so two publish authorizations (a connection caches decisions).
        for topic, payload in [("a/1", b"x"), ("a/1", b"drop"), ("a/2", b"y")]:
            await client.publish(topic, payload, qos=1)
        await client.publish("closed", b"z", qos=1)
        await client.publish("boom", b"z", qos=1)
        families = await asyncio.to_thread(
            scrape_until,
            address,
            {
                key("pyo3mq_hook_duration_seconds_count", hook="authenticate"): 2,
                key("pyo3mq_hook_timeouts_total", hook="authenticate"): 1,
                key("pyo3mq_auth_failures_total"): 2,
                key("pyo3mq_hook_duration_seconds_count", hook="authorize_subscribe"): 2,
                key("pyo3mq_hook_duration_seconds_count", hook="authorize_publish"): 4,
                key("pyo3mq_hook_errors_total", hook="authorize_publish"): 1,
                key("pyo3mq_authorization_denials_total", action="publish"): 2,
                key("pyo3mq_messages_dropped_total", reason="not_authorized"): 2,
                key("pyo3mq_hook_duration_seconds_count", hook="on_message"): 3,
                key("pyo3mq_messages_dropped_total", reason="on_message"): 1,
                key("pyo3mq_hook_duration_seconds_count", hook="events"): 1,
                key("pyo3mq_messages_received_total", qos="1"): 5,
            },
        )
    assert len(connects) == 1
    histogram = "pyo3mq_hook_duration_seconds"
    # Buckets are cumulative and end at +Inf == _count; the sum is in seconds.
    buckets = [
        s
        for s in families[histogram].samples
        if s.name == histogram + "_bucket" and s.labels["hook"] == "authorize_publish"
    ]
    assert buckets[-1].labels["le"] == "+Inf"
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)
    assert buckets[-1].value == 4
    assert 0 < value(families, histogram + "_sum", hook="authorize_publish") < 4 * 0.5
    assert value(families, "pyo3mq_hook_timeouts_total", hook="authorize_publish") == 0
    assert value(families, "pyo3mq_hook_errors_total", hook="authenticate") == 0


async def test_readyz_is_503_while_stopping(serve: Callable[..., Any]) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        entered.set()
        await release.wait()
        return True

    broker = await serve(metrics_listener=METRICS, authenticator=authenticate, auth_timeout=20)
    address = broker.metrics_address
    assert (await asyncio.to_thread(get, address, "/readyz"))[0] == 200
    # A login waiting for the authenticator holds the stop until it is answered.
    raw = RawClient(broker.addresses[0][1])
    try:
        raw.send(connect("held", username="u", password=b"p"))
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        stopping = asyncio.ensure_future(asyncio.to_thread(broker.stop))
        deadline = time.monotonic() + TIMEOUT
        while (await asyncio.to_thread(get, address, "/readyz"))[0] != 503:
            assert time.monotonic() < deadline, "/readyz still 200 during the stop"
            await asyncio.sleep(0.02)
        status, _, body = await asyncio.to_thread(get, address, "/healthz")
        assert (status, body) == (200, "ok\n")
        assert not stopping.done()
        release.set()
        await asyncio.wait_for(stopping, TIMEOUT * 2)
    finally:
        raw.close()
    with pytest.raises(OSError):
        await asyncio.to_thread(get, address, "/healthz")


def test_paths_methods_and_bad_requests(make_broker: Callable[..., pyo3mq.Broker]) -> None:
    broker = make_broker(metrics_listener=METRICS, connect_timeout=1)
    address = broker.metrics_address
    assert address is not None
    assert get(address, "/healthz")[::2] == (200, "ok\n")
    assert get(address, "/readyz")[::2] == (200, "ready\n")
    assert get(address, "/metrics?name=x")[0] == 200
    for path in ["/", "/metric", "/metrics/x", "/favicon.ico"]:
        assert get(address, path)[0] == 404, path
    for method in ["POST", "PUT", "DELETE", "HEAD"]:
        status, headers, _ = get(address, "/metrics", method)
        assert status == 405, method
        assert headers["Allow"] == "GET"

    def raw(data: bytes, wait: float = TIMEOUT) -> bytes:
        """Sends `data`, then reads until the server closes (fails if it does not)."""
        with socket.create_connection(address, timeout=wait) as sock:
            sock.sendall(data)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            return received

    assert raw(b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # Exactly the largest head, without its end: refused once it is all read.
    oversized = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 8192
    assert raw(oversized[:8192]).startswith(b"HTTP/1.1 431 ")
    # A head that never completes is answered 408 after connect_timeout (1 s here).
    started = time.monotonic()
    assert raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started >= 0.9
    # The listener still serves after all that.
    assert get(address, "/healthz")[0] == 200


def test_settings_are_checked() -> None:
    for bad in ["127.0.0.1:9234", "https://127.0.0.1:1", "http://127.0.0.1", "http://h:1/x"]:
        with pytest.raises(ValueError, match="metrics_listener"):
            pyo3mq.Broker(metrics_listener=bad)


def test_the_command_serves_metrics_on_metrics_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with subprocess.Popen(
        [sys.executable, "-m", "pyo3mq", "--port", "0", "--metrics-port", str(free)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline(), proc.stdout.readline()]
            assert lines[1] == f"pyo3mq metrics on http://127.0.0.1:{free}/metrics\n", lines
            assert get(("127.0.0.1", free), "/readyz")[0] == 200
            assert "pyo3mq_clients_connected 0" in get(("127.0.0.1", free), "/metrics")[2]
        finally:
            proc.terminate()
            assert proc.wait(TIMEOUT) == 0


def test_store_commits_are_timed(
    make_broker: Callable[..., pyo3mq.Broker], peers: Callable[..., Peer], tmp_path: Path
) -> None:
    broker = make_broker(
        metrics_listener=METRICS,
        session_store=f"sqlite:{tmp_path / 'sessions.db'}",
        durability="sync",
    )
    assert broker.metrics_address is not None
    assert value(scrape(broker.metrics_address), "pyo3mq_store_commit_duration_seconds_count") == 0
    peer = peers(broker.addresses[0][1], "durable", clean=False)
    peer.subscribe("d", 1)
    # With durability = "sync" the PUBACK waits for the commit that holds the message.
    peer.publish("d", b"kept", 1)
    families = scrape(broker.metrics_address)
    commits = value(families, "pyo3mq_store_commit_duration_seconds_count")
    assert commits >= 1
    assert value(families, "pyo3mq_store_commit_duration_seconds_bucket", le="+Inf") == commits
    assert value(families, "pyo3mq_store_commit_duration_seconds_sum") > 0
    assert value(families, "pyo3mq_store_commit_failures_total") == 0
