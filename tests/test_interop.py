"""Interoperability with stock third-party clients.

Debian's `mosquitto_pub`/`mosquitto_sub` (as subprocesses, over MQTT 3.1 and 3.1.1),
paho-mqtt speaking MQTT 3.1 (`MQIsdp`, level 3) and aiomqtt (asyncio).

`mosquitto_sub` runs under `stdbuf -oL` so that its debug log (`-d`) and formatted messages
(`-F`) reach the test line by line; the test waits for its "Subscribed" line before
publishing, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from support.teardown import closed_at_teardown
from test_pubsub import MARK, QOS, SETTLE, TIMEOUT, Msg, PahoClient

MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
MOSQUITTO_PUB = "/usr/bin/mosquitto_pub"
STDBUF = "/usr/bin/stdbuf"
FORMAT = "MSG|%t|%q|%r|%p"  # topic, QoS, retain flag, payload
VERSIONS = ["mqttv31", "mqttv311"]


class MosquittoSub:
    """A `mosquitto_sub -d` process whose output lines are read on a thread."""

    def __init__(self, port: int, *args: str) -> None:
        cmd = [STDBUF, "-oL", MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port)]
        self.proc = subprocess.Popen(
            [*cmd, "-d", "-F", FORMAT, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, pred: Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"mosquitto_sub: nothing matching; log {self.log}") from None
            if line is None:
                self.lines.put(None)
                raise AssertionError(f"mosquitto_sub exited; log {self.log}")
            self.log.append(line)
            if pred(line):
                return line

    def subscribed(self) -> list[int]:
        """Waits for the SUBACK; returns the granted QoS values mosquitto_sub reports."""
        line = self.wait_for(lambda s: s.startswith("Subscribed (mid:"))
        return [int(q) for q in line.split(":", 2)[2].split(",")]

    def next_msg(self, timeout: float = TIMEOUT) -> Msg:
        line = self.wait_for(lambda s: s.startswith("MSG|"), timeout)
        _, topic, qos, retain, payload = line.split("|", 4)
        return Msg(topic, payload.encode(), int(qos), retain == "1")

    def until_mark(self) -> list[Msg]:
        """Messages up to the marker, then any arriving in the next SETTLE seconds."""
        out = [self.next_msg()]
        while out[-1].payload != MARK:
            out.append(self.next_msg())
        while True:
            try:
                out.append(self.next_msg(SETTLE))
            except AssertionError:
                return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def mosquitto_pub(port: int, *args: str) -> str:
    """Runs `mosquitto_pub -d`; asserts it succeeded; returns its debug log."""
    r = subprocess.run(
        [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-d", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    assert r.returncode == 0, f"mosquitto_pub failed ({r.returncode}): {r.stdout}{r.stderr}"
    assert "received CONNACK (0)" in r.stdout, r.stdout
    return r.stdout


@pytest.fixture
def mosq_sub(port: int) -> Iterator[Callable[..., MosquittoSub]]:
    yield from closed_at_teardown(MosquittoSub, port)


@pytest.fixture
def paho_client(port: int) -> Iterator[Callable[..., PahoClient]]:
    yield from closed_at_teardown(PahoClient, port)


# --------------------------------------------------------------------------- mosquitto


@pytest.mark.parametrize("qos", QOS)
@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_pub_to_mosquitto_sub(
    port: int, mosq_sub: Callable[..., MosquittoSub], version: str, qos: int
) -> None:
    """[MQTT-7.0.0-2] [MQTT-3.3.4-1] [MQTT-3.8.4-6] mosquitto_pub to mosquitto_sub over MQTT
    3.1 and 3.1.1 at each QoS: CONNACK 0, QoS granted, the publisher's flow completes and
    the message arrives once at that QoS with RETAIN=0."""
    sub = mosq_sub("-V", version, "-q", str(qos), "-t", "interop/x", "-i", f"sub-{version}")
    assert sub.subscribed() == [qos]
    assert any("received CONNACK (0)" in line for line in sub.log)
    log = mosquitto_pub(port, "-V", version, "-q", str(qos), "-t", "interop/x", "-m", "hi there")
    expected_acks = {0: [], 1: ["received PUBACK"], 2: ["received PUBREC", "received PUBCOMP"]}
    for marker in expected_acks[qos]:
        assert marker in log, log
    mosquitto_pub(port, "-V", version, "-q", str(qos), "-t", "interop/x", "-m", MARK.decode())
    assert sub.until_mark() == [Msg("interop/x", b"hi there", qos), Msg("interop/x", MARK, qos)]


@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_retained(
    port: int,
    mosq_sub: Callable[..., MosquittoSub],
    paho_client: Callable[..., PahoClient],
    version: str,
) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-8] [MQTT-3.3.1-10] [MQTT-3.3.1-11] `mosquitto_pub -r`
    retains (replayed with RETAIN=1 at min QoS); `mosquitto_pub -r -n` clears it: the live
    subscriber gets the empty message with RETAIN=0, a later one gets nothing."""
    mosquitto_pub(port, "-V", version, "-r", "-q", "1", "-t", "interop/r", "-m", "kept")
    sub = mosq_sub("-V", version, "-q", "2", "-t", "interop/r")
    assert sub.subscribed() == [2]
    assert sub.next_msg() == Msg("interop/r", b"kept", 1, True)
    mosquitto_pub(port, "-V", version, "-r", "-n", "-q", "2", "-t", "interop/r")
    assert sub.next_msg() == Msg("interop/r", b"", 2, False)

    late = paho_client("late")
    assert late.subscribe(("interop/r", 2)) == [2]
    late.publish("interop/r", MARK, qos=1)
    assert late.until() == [Msg("interop/r", MARK, 1)]


@pytest.mark.parametrize("retain", [False, True], ids=["will", "retained-will"])
@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_will_on_sigkill(
    mosq_sub: Callable[..., MosquittoSub],
    paho_client: Callable[..., PahoClient],
    version: str,
    retain: bool,
) -> None:
    """[MQTT-3.1.2-8] [MQTT-3.1.2-16] [MQTT-3.1.2-17] The will of a mosquitto_sub killed with
    SIGKILL is published once to a live subscriber (RETAIN=0, its QoS); with --will-retain a
    later subscriber gets it with RETAIN=1, without it nothing."""
    watcher = paho_client("watcher")
    assert watcher.subscribe(("interop/will/#", 2)) == [2]
    args = ["-V", version, "-t", "interop/alive", "-i", "victim"]
    args += ["--will-topic", "interop/will/victim", "--will-payload", "gone", "--will-qos", "1"]
    victim = mosq_sub(*args, *(["--will-retain"] if retain else []))
    assert victim.subscribed() == [0]
    victim.proc.kill()
    assert victim.proc.wait(TIMEOUT) == -9
    assert watcher.next_msg() == Msg("interop/will/victim", b"gone", 1, False)
    watcher.publish("interop/will/mk", MARK, qos=1)
    assert watcher.until() == [Msg("interop/will/mk", MARK, 1)]

    late = paho_client("late")
    assert late.subscribe(("interop/will/victim", 2)) == [2]
    late.publish("interop/will/victim", MARK)
    replay = [Msg("interop/will/victim", b"gone", 1, True)] if retain else []
    assert late.until() == [*replay, Msg("interop/will/victim", MARK, 0)]


@pytest.mark.parametrize("version", VERSIONS)
def test_mosquitto_clean_exit_sends_no_will(
    port: int,
    mosq_sub: Callable[..., MosquittoSub],
    paho_client: Callable[..., PahoClient],
    version: str,
) -> None:
    """[MQTT-3.1.2-10] A mosquitto_sub that exits normally (DISCONNECT after `-C 1`) has its
    will discarded: nothing is published."""
    watcher = paho_client("watcher")
    assert watcher.subscribe(("interop/will/#", 2)) == [2]
    args = ["-V", version, "-t", "interop/alive", "-C", "1", "-i", "polite"]
    polite = mosq_sub(*args, "--will-topic", "interop/will/polite", "--will-payload", "gone")
    assert polite.subscribed() == [0]
    mosquitto_pub(port, "-V", version, "-t", "interop/alive", "-m", "bye")
    assert polite.next_msg() == Msg("interop/alive", b"bye", 0)
    assert polite.proc.wait(TIMEOUT) == 0
    assert "sending DISCONNECT" in polite.wait_for(lambda s: "DISCONNECT" in s)
    watcher.publish("interop/will/mk", MARK, qos=1)
    assert watcher.until() == [Msg("interop/will/mk", MARK, 1)]


def test_mosquitto_and_paho_cross_versions(
    port: int, mosq_sub: Callable[..., MosquittoSub], paho_client: Callable[..., PahoClient]
) -> None:
    """[MQTT-7.0.0-2] [MQTT-3.8.4-6] Messages cross between MQTT 3.1 and 3.1.1 clients of
    different makes: a 3.1 mosquitto_sub, a 3.1.1 mosquitto_sub and a 3.1 paho client."""
    sub31 = mosq_sub("-V", "mqttv31", "-q", "1", "-t", "x/#", "-i", "m31")
    sub311 = mosq_sub("-V", "mqttv311", "-q", "2", "-t", "x/#", "-i", "m311")
    assert sub31.subscribed() == [1]
    assert sub311.subscribed() == [2]
    paho31 = paho_client("p31", protocol=mqtt.MQTTv31)
    assert paho31.subscribe(("x/+", 2)) == [2]
    paho31.publish("x/paho", b"from paho 3.1", qos=2)
    mosquitto_pub(port, "-V", "mqttv31", "-q", "2", "-t", "x/mosq", "-m", "from mosquitto 3.1")
    paho31.publish("x/mk", MARK, qos=2)
    for sub, cap in ((sub31, 1), (sub311, 2)):
        got = sub.until_mark()
        assert sorted(got, key=lambda m: m.topic) == [
            Msg("x/mk", MARK, cap),
            Msg("x/mosq", b"from mosquitto 3.1", cap),
            Msg("x/paho", b"from paho 3.1", cap),
        ]
    got = paho31.until()
    assert sorted(got, key=lambda m: m.topic) == [
        Msg("x/mk", MARK, 2),
        Msg("x/mosq", b"from mosquitto 3.1", 2),
        Msg("x/paho", b"from paho 3.1", 2),
    ]


# --------------------------------------------------------------------------- paho 3.1


@pytest.mark.parametrize("qos", QOS)
def test_paho_mqttv31_pub_sub(paho_client: Callable[..., PahoClient], qos: int) -> None:
    """[MQTT-7.0.0-2] [MQTT-3.8.4-6] A paho client speaking MQTT 3.1 (MQIsdp/3) is accepted
    (CONNACK 0, no session-present bit), gets its QoS granted and publishes/receives."""
    sub = paho_client("v31-sub", protocol=mqtt.MQTTv31)
    assert sub.session_present is False
    assert sub.subscribe(("v31/#", qos)) == [qos]
    pub = paho_client("v31-pub", protocol=mqtt.MQTTv31)
    for q in QOS:
        pub.publish("v31/t", f"q{q}".encode(), qos=q)
    pub.publish("v31/t", MARK, qos=2)
    assert sub.until() == [Msg("v31/t", f"q{q}".encode(), min(q, qos)) for q in QOS] + [
        Msg("v31/t", MARK, qos)
    ]


def test_paho_mqttv31_persistent_session_no_session_present(
    paho_client: Callable[..., PahoClient],
) -> None:
    """[MQTT-3.1.2-4] [MQTT-3.1.2-5] A 3.1 client with CleanSession=0 resumes its session
    (subscription kept, QoS 1 messages queued while offline delivered), but its CONNACK
    never carries the session-present bit (3.1 has none)."""
    first = paho_client("v31-durable", protocol=mqtt.MQTTv31, clean_session=False)
    assert first.session_present is False
    assert first.subscribe(("v31/keep", 1)) == [1]
    first.close()
    pub = paho_client("v31-pub", protocol=mqtt.MQTTv31)
    pub.publish("v31/keep", b"while away", qos=1)
    again = paho_client("v31-durable", protocol=mqtt.MQTTv31, clean_session=False)
    assert again.session_present is False
    m = again.next_msg()
    # DUP may be 1 if the broker had sent it to the closing connection: compare the rest.
    assert (m.topic, m.payload, m.qos, m.retain) == ("v31/keep", b"while away", 1, False)
    pub.publish("v31/keep", MARK, qos=1)
    assert again.until() == [Msg("v31/keep", MARK, 1)]


# --------------------------------------------------------------------------- aiomqtt


def to_msg(m: aiomqtt.Message) -> Msg:
    payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
    return Msg(m.topic.value, payload, m.qos, bool(m.retain))


async def until_mark(c: aiomqtt.Client) -> list[Msg]:
    """Messages up to the marker, then any arriving in the next SETTLE seconds."""
    out: list[Msg] = []
    async with asyncio.timeout(TIMEOUT):
        async for m in c.messages:
            out.append(to_msg(m))
            if out[-1].payload == MARK:
                break
    try:
        async with asyncio.timeout(SETTLE):
            async for m in c.messages:
                out.append(to_msg(m))
    except TimeoutError:
        pass
    return out


@pytest.mark.parametrize("qos", QOS)
@pytest.mark.parametrize(
    "protocol", [aiomqtt.ProtocolVersion.V31, aiomqtt.ProtocolVersion.V311], ids=["v31", "v311"]
)
async def test_aiomqtt_roundtrip(port: int, protocol: aiomqtt.ProtocolVersion, qos: int) -> None:
    """[MQTT-7.0.0-2] [MQTT-4.5.0-1] aiomqtt subscribes and publishes to itself at each QoS
    over MQTT 3.1 and 3.1.1: the message comes back once at that QoS."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="aio", protocol=protocol) as c:
        await c.subscribe("aio/t", qos=2)
        await c.publish("aio/t", b"hello", qos=qos)
        await c.publish("aio/t", MARK, qos=qos)
        assert await until_mark(c) == [Msg("aio/t", b"hello", qos), Msg("aio/t", MARK, qos)]


async def test_aiomqtt_retained_between_clients(port: int) -> None:
    """[MQTT-3.3.1-5] [MQTT-3.3.1-8] [MQTT-3.3.1-9] A retained message published by one
    aiomqtt client reaches a live subscriber with RETAIN=0 and a later one with RETAIN=1
    at min(stored, granted) QoS."""
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier="aio-live") as live,
        aiomqtt.Client("127.0.0.1", port, identifier="aio-pub") as pub,
    ):
        await live.subscribe("aio/r", qos=2)
        await pub.publish("aio/r", b"kept", qos=2, retain=True)
        await pub.publish("aio/r", MARK, qos=2)
        assert await until_mark(live) == [Msg("aio/r", b"kept", 2), Msg("aio/r", MARK, 2)]
        async with aiomqtt.Client("127.0.0.1", port, identifier="aio-late") as late:
            await late.subscribe("aio/r", qos=1)
            await pub.publish("aio/r", MARK, qos=1)
            assert await until_mark(late) == [
                Msg("aio/r", b"kept", 1, True),
                Msg("aio/r", MARK, 1),
            ]


async def test_aiomqtt_receives_from_mosquitto_pub(port: int) -> None:
    """[MQTT-7.0.0-2] An aiomqtt subscriber receives what mosquitto_pub (MQTT 3.1) sends."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="aio-sub") as c:
        await c.subscribe("aio/m/#", qos=1)
        for payload, qos in ((b"one", "2"), (MARK, "1")):
            proc = await asyncio.create_subprocess_exec(
                MOSQUITTO_PUB,
                *("-h", "127.0.0.1", "-p", str(port), "-V", "mqttv31"),
                *("-q", qos, "-t", "aio/m/x", "-m", payload.decode()),
            )
            async with asyncio.timeout(TIMEOUT):
                assert await proc.wait() == 0
        assert await until_mark(c) == [Msg("aio/m/x", b"one", 1), Msg("aio/m/x", MARK, 1)]
