"""Live reload (`Broker.reload()`, SIGHUP in the `pyo3mq` command): the password file, the
ACL file and the TLS files are read again while clients stay connected; a file that
cannot be parsed keeps the previous rules. Real sockets and paho-mqtt against a running
broker. (SIGHUP itself: tests/test_cli.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
from pyo3mq.passwd import hash_password
from support.mqtt_raw import PINGREQ, RawClient, connect, publish, subscribe

TIMEOUT = 5.0
CONNACK_OK = bytes.fromhex("20020000")
CONNACK_BAD_CREDENTIALS = bytes.fromhex("20020004")
PINGRESP = 0xD
PUBACK = 0x4
SUBACK = 0x9

ACL_OPEN = """\
user alice
topic readwrite a/#
topic readwrite fence/#
"""
#: Alice may no longer use a/#.
ACL_CLOSED = """\
user alice
topic readwrite fence/#
"""


def write_passwd(path: Path, users: dict[str, str]) -> None:
    # Few iterations: the hash is checked inline, and the test is about reloading.
    path.write_text("".join(f"{u}:{hash_password(p, iterations=101)}\n" for u, p in users.items()))


def login(port: int, user: str, password: str) -> bytes:
    """Connects as `user`; returns the CONNACK's bytes (and leaves)."""
    with RawClient(port) as c:
        c.send(connect(f"probe-{user}", username=user, password=password.encode()))
        p = c.recv()
        return bytes([p.first, len(p.body)]) + p.body


class Session:
    """A raw client that stays connected for the whole test."""

    def __init__(self, port: int, client_id: str, user: str, password: str) -> None:
        self.c = RawClient(port)
        self.c.send(connect(client_id, username=user, password=password.encode()))
        p = self.c.recv()
        assert bytes([p.first, len(p.body)]) + p.body == CONNACK_OK
        self.pkid = 0

    def next_id(self) -> int:
        self.pkid += 1
        return self.pkid

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1: returns once the broker acknowledged it (it does so when it drops a
        refused message too [MQTT-3.3.5-2])."""
        pkid = self.next_id()
        self.c.send(publish(topic, payload, qos=1, pkid=pkid))
        ack = self.c.recv()
        assert ack.type == PUBACK and ack.pkid == pkid

    def subscribe(self, topic: str) -> int:
        """The SUBACK code (0x80: refused)."""
        self.c.send(subscribe(self.next_id(), (topic, 1)))
        ack = self.c.recv()
        assert ack.type == SUBACK
        return ack.body[-1]

    def received_until(self, fence: str) -> list[str]:
        """Topics of the PUBLISHes received up to and including one on `fence`. A
        publisher's messages arrive in order, so one published before the fence and not
        in this list was not delivered."""
        topics = []
        while True:
            p = self.c.recv(TIMEOUT)
            topic, pkid, _ = p.publish_fields()
            if pkid is not None:
                self.c.send(bytes([0x40, 2]) + pkid.to_bytes(2, "big"))
            topics.append(topic)
            if topic == fence:
                return topics

    def alive(self) -> bool:
        self.c.send(PINGREQ)
        return self.c.recv().type == PINGRESP

    def close(self) -> None:
        self.c.close()


@pytest.fixture
def sessions() -> Iterator[Callable[..., Session]]:
    made: list[Session] = []

    def make(*args: Any) -> Session:
        made.append(Session(*args))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    write_passwd(passwd, {"alice": "a-pw", "bob": "b-pw"})
    acl.write_text(ACL_OPEN)
    return passwd, acl


@pytest.fixture
def broker(make_broker: Callable[..., pyo3mq.Broker], files: tuple[Path, Path]) -> pyo3mq.Broker:
    passwd, acl = files
    # The default acl_cache_ttl (60 s) on purpose: a reload must not wait for it.
    return make_broker(password_file=str(passwd), acl_file=str(acl), sys_interval=0)


def port_of(broker: pyo3mq.Broker) -> int:
    return broker.addresses[0][1]


def test_removed_user_cannot_log_in_after_reload_but_stays_connected(
    broker: pyo3mq.Broker, files: tuple[Path, Path], sessions: Callable[..., Session]
) -> None:
    """alice, connected, is removed from the password file and carol added: after the
    reload alice's new logins are refused (CONNACK 0x04) while her open connection goes
    on; carol, refused before, now logs in."""
    port = port_of(broker)
    passwd, _ = files
    alice = sessions(port, "alice-1", "alice", "a-pw")
    assert login(port, "carol", "c-pw") == CONNACK_BAD_CREDENTIALS
    write_passwd(passwd, {"bob": "b-pw", "carol": "c-pw"})

    result = broker.reload()

    assert result == pyo3mq.ReloadResult(("password_file", "acl_file"), {}, 0)
    assert login(port, "alice", "a-pw") == CONNACK_BAD_CREDENTIALS
    assert login(port, "carol", "c-pw") == CONNACK_OK
    assert login(port, "bob", "b-pw") == CONNACK_OK
    assert alice.alive()
    # Her connection still works, not only answers pings: a publish goes through.
    alice.subscribe("fence/#")
    alice.publish("fence/1", b"still here")
    assert alice.received_until("fence/1") == ["fence/1"]


def test_acl_change_denies_the_next_publish_and_subscribe_of_a_connected_client(
    broker: pyo3mq.Broker, files: tuple[Path, Path], sessions: Callable[..., Session]
) -> None:
    """The publisher's decision for a/1 is cached (acl_cache_ttl 60 s); after the ACL
    loses a/#, its very next publish to a/1 is acknowledged and dropped, and a new
    subscription to a/# is refused, on connections opened before the reload."""
    port = port_of(broker)
    _, acl = files
    sub = sessions(port, "sub", "alice", "a-pw")
    pub = sessions(port, "pub", "alice", "a-pw")
    assert sub.subscribe("a/#") == 1
    assert sub.subscribe("fence/#") == 1
    pub.publish("a/1", b"before")
    pub.publish("fence/1", b"")
    assert sub.received_until("fence/1") == ["a/1", "fence/1"]

    acl.write_text(ACL_CLOSED)
    assert broker.reload().reloaded == ("password_file", "acl_file")

    pub.publish("a/1", b"after")  # cached as allowed before the reload
    pub.publish("fence/2", b"")
    assert sub.received_until("fence/2") == ["fence/2"]
    assert sub.subscribe("a/#") == 0x80
    assert pub.alive() and sub.alive()


@pytest.mark.parametrize(
    "broken, why",
    [
        pytest.param("user alice\ntopic readwrite a/#\nfrobnicate x\n", "line 3", id="bad-keyword"),
        pytest.param("user alice\ntopic readwrite a/#+\n", "line 2", id="bad-filter"),
    ],
)
def test_broken_acl_file_keeps_the_previous_rules(
    broker: pyo3mq.Broker,
    files: tuple[Path, Path],
    sessions: Callable[..., Session],
    capfd: pytest.CaptureFixture[str],
    broken: str,
    why: str,
) -> None:
    """A reload of an ACL file that does not parse raises ReloadError naming the file and
    the line, logs why, keeps the previous rules (a/# still open, b/# still closed),
    and still reloads the password file."""
    port = port_of(broker)
    passwd, acl = files
    sub = sessions(port, "sub", "alice", "a-pw")
    pub = sessions(port, "pub", "alice", "a-pw")
    assert sub.subscribe("#") == 0x80  # not covered by the rules: refused, as before
    assert sub.subscribe("a/#") == 1
    assert sub.subscribe("fence/#") == 1
    acl.write_text(broken)
    write_passwd(passwd, {"alice": "a-pw", "bob": "b-pw", "carol": "c-pw"})

    with pytest.raises(pyo3mq.ReloadError) as caught:
        broker.reload()

    result = caught.value.result
    assert result.reloaded == ("password_file",)
    assert list(result.failed) == ["acl_file"]
    assert str(acl) in result.failed["acl_file"] and why in result.failed["acl_file"]
    assert isinstance(caught.value, ValueError)
    assert "acl_file not reloaded" in str(caught.value)
    err = capfd.readouterr().err
    assert f"not reloaded, the previous rules stay: ACL file {acl}: {why}" in err
    # The old rules still apply, to new topics too (no cached decision to hide behind).
    pub.publish("a/new", b"")
    pub.publish("b/1", b"")
    pub.publish("fence/1", b"")
    assert sub.received_until("fence/1") == ["a/new", "fence/1"]
    assert sub.subscribe("b/#") == 0x80
    # The password file was reloaded all the same.
    assert login(port, "carol", "c-pw") == CONNACK_OK


def test_broken_password_file_keeps_the_previous_users(
    broker: pyo3mq.Broker, files: tuple[Path, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    port = port_of(broker)
    passwd, _ = files
    passwd.write_text("alice:$7$101$not-base64!$x\n")
    with pytest.raises(pyo3mq.ReloadError) as caught:
        broker.reload()
    assert caught.value.result.reloaded == ("acl_file",)
    assert f"password file {passwd}: line 1" in caught.value.result.failed["password_file"]
    assert "not reloaded, the previous users stay: password file" in capfd.readouterr().err
    assert login(port, "alice", "a-pw") == CONNACK_OK
    # A file that has gone is kept the same way.
    passwd.unlink()
    with pytest.raises(pyo3mq.ReloadError, match="cannot read password file"):
        broker.reload()
    assert login(port, "bob", "b-pw") == CONNACK_OK


def test_paho_client_stays_connected_across_reloads(
    broker: pyo3mq.Broker, files: tuple[Path, Path]
) -> None:
    """A stock client (paho-mqtt) notices nothing of a reload: no disconnect, its
    subscription goes on delivering."""
    passwd, _ = files
    got: list[str] = []
    disconnects: list[Any] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-alice")
    client.username_pw_set("alice", "a-pw")
    client.on_message = lambda c, u, m: got.append(m.topic)
    client.on_disconnect = lambda *args: disconnects.append(args)
    client.connect("127.0.0.1", port_of(broker))
    client.loop_start()
    try:
        assert client.subscribe("fence/#", qos=1)[0] == mqtt.MQTT_ERR_SUCCESS
        for n in range(3):
            write_passwd(passwd, {"bob": "b-pw"})  # alice removed: she stays connected
            broker.reload()
            info = client.publish(f"fence/{n}", b"x", qos=1)
            info.wait_for_publish(TIMEOUT)
            assert info.is_published()
        deadline = time.monotonic() + TIMEOUT
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == ["fence/0", "fence/1", "fence/2"]
        assert disconnects == []
    finally:
        client.loop_stop()
        client.disconnect()


def test_reload_without_files_reloads_nothing(make_broker: Callable[..., pyo3mq.Broker]) -> None:
    broker = make_broker()
    assert broker.reload() == pyo3mq.ReloadResult((), {}, 0)


def test_reload_of_a_stopped_broker_is_an_error() -> None:
    broker = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"])
    with pytest.raises(RuntimeError, match="not running"):
        broker.reload()


async def test_reload_makes_connections_ask_a_python_authorizer_again(
    serve: Callable[..., Any],
) -> None:
    """With a Python authorizer, publish decisions are cached per connection; a reload
    makes every connection ask again, so an application that changed its rules can apply
    them to open connections."""
    allowed = {"a/1"}
    asked: list[str] = []

    class Acl:
        def authorize_subscribe(self, client: pyo3mq.ClientInfo, filter: str, qos: int) -> int:
            return qos

        def authorize_publish(self, client: pyo3mq.ClientInfo, topic: str) -> bool:
            asked.append(topic)
            return topic in allowed or topic.startswith("fence/")

    broker = await serve(authorizer=Acl(), sys_interval=0)
    port = port_of(broker)
    sub = await asyncio.to_thread(Session, port, "sub", "u", "p")
    pub = await asyncio.to_thread(Session, port, "pub", "u", "p")
    try:
        assert await asyncio.to_thread(sub.subscribe, "#") == 1
        for n in (1, 2):
            await asyncio.to_thread(pub.publish, "a/1", b"")
            await asyncio.to_thread(pub.publish, f"fence/{n}", b"")
        assert await asyncio.to_thread(sub.received_until, "fence/2") == [
            "a/1",
            "fence/1",
            "a/1",
            "fence/2",
        ]
        assert asked.count("a/1") == 1  # the second was a cached decision
        allowed.clear()
        assert broker.reload() == pyo3mq.ReloadResult((), {}, 0)
        await asyncio.to_thread(pub.publish, "a/1", b"")
        await asyncio.to_thread(pub.publish, "fence/3", b"")
        assert await asyncio.to_thread(sub.received_until, "fence/3") == ["fence/3"]
        assert asked.count("a/1") == 2
    finally:
        sub.close()
        pub.close()
