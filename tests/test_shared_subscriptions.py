"""Shared subscriptions, `$share/GROUP/FILTER` (MQTT 5.0 section 4.8.2), for MQTT 3.1.1
clients as Mosquitto and EMQX accept them: paho-mqtt and mosquitto_pub/mosquitto_sub
members and publishers, raw sockets for a member that never acknowledges, and in-process
members. Each matching message goes to exactly one member of each group.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pyo3mq
import pytest
from support.mqtt_raw import Closed, RawClient, subscribe, unsubscribe
from support.stderr_capture import captured_stderr
from support.teardown import closed_at_teardown
from test_embedding import next_msg
from test_hooks import LOOPBACK, frame, port_of
from test_interop import MOSQUITTO_PUB, MosquittoSub
from test_pubsub import SETTLE, TIMEOUT, Msg, PahoClient

PUBLISH_QOS1 = 0x32


@pytest.fixture
def paho_client(port: int) -> Iterator[Callable[..., PahoClient]]:
    yield from closed_at_teardown(PahoClient, port)


@pytest.fixture
def raw(port: int) -> Iterator[Callable[..., RawClient]]:
    yield from closed_at_teardown(RawClient, port)


def pub_lines(port: int, topic: str, payloads: list[str], qos: int = 1) -> None:
    """Publishes one message per payload with one `mosquitto_pub -l` (MQTT 3.1.1)."""
    cmd = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311"]
    r = subprocess.run(
        [*cmd, "-t", topic, "-q", str(qos), "-l"],
        input="".join(p + "\n" for p in payloads),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        check=False,
    )
    assert r.returncode == 0, f"mosquitto_pub failed: {r.stdout}{r.stderr}"


def collect(members: list[PahoClient], total: int) -> list[list[Msg]]:
    """What each member received, once `total` messages arrived in all (then a settle
    period for anything extra, which would be a duplicate)."""
    got: list[list[Msg]] = [[] for _ in members]
    deadline = time.monotonic() + TIMEOUT * 4
    while sum(map(len, got)) < total:
        assert time.monotonic() < deadline, f"only {sum(map(len, got))} of {total} arrived"
        for i, m in enumerate(members):
            try:
                got[i].append(m.msgs.get(timeout=0.01))
            except queue.Empty:
                pass
    for i, m in enumerate(members):
        got[i] += m.drain()
    return got


def joined(member: PahoClient, filter: str, qos: int = 1) -> None:
    assert member.subscribe((filter, qos)) == [qos]


def raw_member(raw: Callable[..., RawClient], client_id: str, filter: str) -> RawClient:
    c = raw()
    assert frame(c.connect(client_id)) == bytes.fromhex("20020000")
    c.send(subscribe(1, (filter, 1)))
    assert frame(c.recv()) == bytes.fromhex("9003000101")
    return c


def raw_publishes(c: RawClient) -> list[bytes]:
    """Payloads of the PUBLISHes `c` receives until SETTLE passes without one."""
    out = []
    while True:
        try:
            p = c.recv(SETTLE)
        except (TimeoutError, Closed):
            return out
        assert p.type == 3
        out.append(p.publish_fields()[2])


def test_even_distribution_across_three_members(
    make_broker: Callable[..., pyo3mq.Broker],
) -> None:
    """Round robin: 300 messages from mosquitto_pub over 3 paho members, each message to
    exactly one member and each member exactly a third, in turn. `max_inflight` is above
    the message count, so no member's window can fill however late its acknowledgements
    (a full window is skipped: `test_full_window_skipped_and_leaver_hands_over`)."""
    n = 300
    broker = make_broker(max_inflight=n + 1)
    port = port_of(broker)
    members = [PahoClient(port, f"m{i}") for i in range(3)]
    try:
        for m in members:
            joined(m, "$share/work/jobs/#")
        pub_lines(port, "jobs/x", [str(i) for i in range(n)])
        got = collect(members, n)
    finally:
        for m in members:
            m.close()
    payloads = [int(m.payload) for per in got for m in per]
    assert sorted(payloads) == list(range(n)), "lost or duplicated messages"
    assert [len(per) for per in got] == [n // 3] * 3
    for per in got:
        # Strict turns: a member's messages are every third one.
        assert len({int(m.payload) % 3 for m in per}) == 1, [m.payload for m in per]
        assert all(m.topic == "jobs/x" and m.qos == 1 and not m.retain for m in per)


@pytest.mark.parametrize("leave", ["disconnect", "unsubscribe"])
def test_full_window_skipped_and_leaver_hands_over(
    make_broker: Callable[..., pyo3mq.Broker],
    leave: str,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A member that never acknowledges fills its window (`max_inflight` = 5) and is then
    skipped; when it leaves (a clean session disconnecting, or UNSUBSCRIBE) its 5
    unacknowledged QoS 1 messages go to the other members mid-stream: none is lost."""
    broker = make_broker(max_inflight=5)
    port = port_of(broker)
    stuck = RawClient(port)
    try:
        assert frame(stuck.connect("stuck")) == bytes.fromhex("20020000")
        stuck.send(subscribe(1, ("$share/g/t", 1)))
        assert frame(stuck.recv()) == bytes.fromhex("9003000101")
        a, b = PahoClient(port, "a"), PahoClient(port, "b")
        try:
            joined(a, "$share/g/t")
            joined(b, "$share/g/t")
            pub = PahoClient(port, "pub")
            try:
                # One message at a time, each delivered before the next, so that a and b
                # never have a full window: only the stuck member's fills (after its
                # round-robin turns), and from then on it is skipped. (In a burst every
                # member's window can be full at once; then the least loaded one gets the
                # message, which may be the stuck one.)
                held: list[bytes] = []
                first: list[list[Msg]] = [[], []]
                for i in range(60):
                    pub.publish("t", b"%d" % i, 1)
                    deadline = time.monotonic() + TIMEOUT
                    while len(held) + sum(map(len, first)) < i + 1:
                        assert time.monotonic() < deadline, f"message {i} not delivered"
                        for got, m in zip(first, (a, b)):
                            with contextlib.suppress(queue.Empty):
                                got.append(m.msgs.get(timeout=0.005))
                        if len(held) < 5:
                            with contextlib.suppress(TimeoutError):
                                p = stuck.recv(0.005)
                                assert p.type == 3
                                held.append(p.publish_fields()[2])
                assert len(held) == 5, held
                assert sum(map(len, first)) == 55
                assert raw_publishes(stuck) == []  # skipped once its window was full
                if leave == "disconnect":
                    stuck.close()
                else:
                    stuck.send(unsubscribe(2, "$share/g/t"))
                for i in range(60, 90):
                    pub.publish("t", b"%d" % i, 1)
                second = collect([a, b], 35)
                if leave == "unsubscribe":
                    # Nothing more for the member that left: only its UNSUBACK.
                    assert frame(stuck.recv()) == bytes.fromhex("b0020002")
                    assert raw_publishes(stuck) == []
            finally:
                pub.close()
        finally:
            a.close()
            b.close()
    finally:
        stuck.close()
    payloads = [int(m.payload) for per in first + second for m in per]
    assert sorted(payloads) == list(range(90))
    assert {int(p) for p in held} <= set(payloads)
    assert "shared subscription member left" in captured_stderr()


def test_two_groups_and_a_plain_subscription_each_get_every_message(
    port: int, paho_client: Callable[..., PahoClient]
) -> None:
    """Two groups on one filter each get every message (once per group); a client with a
    shared and an ordinary subscription that both match gets one copy per subscription;
    a mosquitto_sub is a group of its own."""
    n = 40
    a1, a2 = paho_client("a1"), paho_client("a2")
    joined(a1, "$share/g1/t/#")
    joined(a1, "t/#")
    joined(a2, "$share/g1/t/#")
    b = paho_client("b")
    joined(b, "$share/g2/t/+")
    mosq = MosquittoSub(port, "-V", "mqttv311", "-q", "1", "-t", "$share/g3/t/#")
    try:
        assert mosq.subscribed() == [1]
        pub_lines(port, "t/x", [str(i) for i in range(n)])
        got_a1, got_a2, got_b = collect([a1, a2, b], 3 * n)
        from_mosq = [int(mosq.next_msg().payload) for _ in range(n)]
    finally:
        mosq.close()
    everything = list(range(n))
    assert sorted(int(m.payload) for m in got_b) == everything
    assert sorted(from_mosq) == everything
    group1 = Counter(int(m.payload) for m in got_a1 + got_a2)
    assert group1 == Counter(everything * 2)  # g1's copy plus a1's ordinary one
    assert Counter(int(m.payload) for m in got_a1) >= Counter(everything)
    assert got_a2, "round robin gave the second member of g1 nothing"


def test_bad_share_names_are_refused(
    raw: Callable[..., RawClient], capfd: pytest.CaptureFixture[str]
) -> None:
    """[MQTT-4.8.2-1] [MQTT-4.8.2-2] A bad share name gets SUBACK 0x80 for that filter,
    with a log line naming the rule; good filters in the same SUBSCRIBE are granted."""
    c = raw()
    assert frame(c.connect("bad")) == bytes.fromhex("20020000")
    bad = ["$share//t", "$share/g", "$share/g/", "$share/g+/t", "$share/#/t", "$share/g/a#"]
    c.send(subscribe(1, *[(f, 1) for f in bad], ("$share/g/ok", 1), ("$sharex/t", 0)))
    assert (
        frame(c.recv()) == bytes([0x90, 2 + len(bad) + 2, 0, 1]) + b"\x80" * len(bad) + b"\x01\x00"
    )
    log = captured_stderr()
    for filter, rule in zip(
        bad, ["4.8.2-1", "4.8.2-2", "4.8.2-2", "4.8.2-2", "4.8.2-2", "4.7.1-2"]
    ):
        assert any(filter in line and f"[MQTT-{rule}]" in line for line in log.splitlines()), (
            filter,
            rule,
        )


def test_retained_messages_are_not_sent_on_shared_subscriptions(
    port: int, paho_client: Callable[..., PahoClient]
) -> None:
    """No retained message is sent when joining a group (MQTT 5.0 section 4.8.2); an
    ordinary subscription to the same filter gets it, and live messages reach the group."""
    pub = paho_client("pub")
    pub.publish("r/t", b"kept", 1, retain=True)
    member = paho_client("member")
    joined(member, "$share/g/r/#")
    plain = paho_client("plain")
    joined(plain, "r/#")
    assert plain.next_msg() == Msg("r/t", b"kept", 1, True)
    assert member.drain() == []
    pub.publish("r/t", b"live", 1, retain=True)
    assert member.next_msg() == Msg("r/t", b"live", 1, False)


def test_shared_subscriptions_survive_a_restart(
    make_broker: Callable[..., pyo3mq.Broker], tmp_path: Path
) -> None:
    """Persistent members keep their group across a restart with the SQLite store. With
    no member online, messages queue round robin in the offline members' sessions (each
    message once), and each gets its share on reconnecting."""
    store = f"sqlite:{tmp_path / 'sessions.db'}"
    first = make_broker(session_store=store)
    for cid in ("p1", "p2"):
        m = PahoClient(port_of(first), cid, clean_session=False)
        joined(m, "$share/g/p/#")
        m.close()
    first.stop()

    second = make_broker(session_store=store)
    port = port_of(second)
    pub_lines(port, "p/x", [str(i) for i in range(10)])
    members = [PahoClient(port, cid, clean_session=False) for cid in ("p1", "p2")]
    try:
        assert all(m.session_present for m in members)
        got = collect(members, 10)
        assert sorted(int(m.payload) for per in got for m in per) == list(range(10))
        assert [len(per) for per in got] == [5, 5]
        # Still one group, now with both members online.
        pub_lines(port, "p/y", [str(i) for i in range(10)])
        got = collect(members, 10)
        assert sorted(int(m.payload) for per in got for m in per) == list(range(10))
        assert all(per for per in got)
    finally:
        for m in members:
            m.close()


async def test_in_process_members_share_with_mqtt_clients() -> None:
    """`broker.subscribe(filter, group="g")` and `broker.subscribe("$share/g/...")` join the
    same group as a paho member: each message reaches exactly one of the three."""
    async with pyo3mq.Broker(listeners=[LOOPBACK]) as broker:
        port = port_of(broker)
        with pytest.raises(ValueError, match=r"MQTT-4\.8\.2"):
            broker.subscribe("q/#", group="a/b")
        with pytest.raises(ValueError, match=r"MQTT-4\.8\.2-2"):
            broker.subscribe("$share/g+/q/#")
        async with (
            broker.subscribe("q/#", qos=1, group="g") as first,
            broker.subscribe("$share/g/q/#", qos=1) as second,
        ):
            member = await asyncio.to_thread(PahoClient, port, "net")
            try:
                await asyncio.to_thread(joined, member, "$share/g/q/#")
                n = 30
                await asyncio.to_thread(pub_lines, port, "q/1", [str(i) for i in range(n)])
                mine: list[pyo3mq.Message] = []
                net: list[Msg] = []
                deadline = time.monotonic() + TIMEOUT
                while len(mine) + len(net) < n:
                    assert time.monotonic() < deadline, (len(mine), len(net))
                    for s in (first, second):
                        try:
                            mine.append(await next_msg(s, 0.02))
                        except TimeoutError:
                            pass
                    net += await asyncio.to_thread(member.drain, 0.02)
                net += await asyncio.to_thread(member.drain)
                payloads = [int(m.payload) for m in net] + [int(m.payload) for m in mine]
                assert sorted(payloads) == list(range(n))
                assert net and all(m.qos == 1 for m in mine)
            finally:
                await asyncio.to_thread(member.close)
