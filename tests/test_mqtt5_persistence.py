"""MQTT 5.0 session state across a broker restart, with the SQLite store (real broker
processes, `python -m pyo3mq`, stopped with SIGTERM) and with a Python session store (a
JSON file store written here, on `Broker` instances): subscription options (No Local,
Retain As Published, Retain Handling), Subscription Identifiers, and the properties of
queued and retained messages (user properties in order, content type, response topic,
correlation data, payload format indicator, message expiry counted down across the
restart). A paho-mqtt v5 subscriber that reconnects after the restart gets what it
would have got without one.

The broker is down for "100 seconds" without the test waiting for them: while it is
stopped, the test moves every stored expiry deadline 100 s earlier, as if that much
time had passed. A message with 60 s left is then gone; one with 600 s arrives with
about 500.

"Nothing else arrives" is checked against a later message that does arrive on the same
connection: the broker delivers a session's messages in order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pyo3mq import (
    Broker,
    RetainedRecord,
    SessionRecord,
    StoredMessage,
    StoredSubscriptionOptions,
)
from test_mqtt5 import TIMEOUT, Paho5

LOOPBACK = "tcp://127.0.0.1:0"
SUB = "p5-sub"
#: How long the broker is "down" (see the module docs), in seconds.
DOWNTIME = 100
USER_PROPERTIES = [("a", "1"), ("b", "2"), ("a", "3")]


class Client(Paho5):
    """A paho v5 client that can leave and wait until the broker has closed it."""

    def __init__(self, port: int, client_id: str, **kwargs: Any) -> None:
        super().__init__(port, client_id, **kwargs)
        self.gone = threading.Event()
        self.client.on_disconnect = lambda *_args: self.gone.set()

    def leave(self) -> None:
        """DISCONNECT, and wait for the connection to close: the broker has the
        session offline before anything else is published."""
        self.client.disconnect()
        assert self.gone.wait(TIMEOUT), "paho: the connection did not close"
        self.client.loop_stop()


def connect_props(expiry: int) -> Properties:
    p = Properties(PacketTypes.CONNECT)
    p.SessionExpiryInterval = expiry
    return p


def publish_props(expiry: int | None) -> Properties:
    p = Properties(PacketTypes.PUBLISH)
    p.UserProperty = USER_PROPERTIES
    p.ContentType = "text/plain"
    p.ResponseTopic = "reply/p5"
    p.CorrelationData = b"\x00\xffcorr"
    p.PayloadFormatIndicator = 1
    if expiry is not None:
        p.MessageExpiryInterval = expiry
    return p


def subscribe(c: Client, topic: str, options: SubscribeOptions, sub_id: int) -> None:
    p = Properties(PacketTypes.SUBSCRIBE)
    p.SubscriptionIdentifier = sub_id
    n = len(c.subacks)
    c.client.subscribe(topic, options=options, properties=p)
    c.wait(lambda: len(c.subacks) > n)
    assert [r.value for r in c.subacks[n]] == [options.QoS]


def publish(c: Client, topic: str, payload: bytes, **kwargs: Any) -> None:
    c.client.publish(topic, payload, qos=1, **kwargs).wait_for_publish(TIMEOUT)


def prop(msg: mqtt.MQTTMessage, name: str) -> Any:
    return msg.properties.json().get(name) if msg.properties is not None else None


def sub_ids(msg: mqtt.MQTTMessage) -> list[int]:
    got = prop(msg, "SubscriptionIdentifier") or []
    return got if isinstance(got, list) else [got]


def assert_publisher_properties(msg: mqtt.MQTTMessage) -> None:
    """The publisher's properties, as it sent them (user properties in order)."""
    assert msg.properties is not None
    assert msg.properties.UserProperty == USER_PROPERTIES
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.ResponseTopic == "reply/p5"
    assert msg.properties.CorrelationData == b"\x00\xffcorr"
    assert msg.properties.PayloadFormatIndicator == 1


def assert_downtime_counted(msg: mqtt.MQTTMessage, published: int) -> None:
    """The remaining interval: what was published, less the downtime, less the test's
    own few seconds (rounded up, so never more than `published - DOWNTIME`)."""
    left = msg.properties.MessageExpiryInterval
    assert published - DOWNTIME - 10 <= left <= published - DOWNTIME, left


# --------------------------------------------------------------------------- the scenario


def before_restart(port: int) -> None:
    """A 5.0 subscriber with a session that outlives the connection subscribes with
    options and identifiers, and leaves; a publisher then sends it, while it is offline:
    a message with every property (600 s to live), a retained one with Retain As
    Published (also kept as the retained message), and one with 60 s to live."""
    sub = Client(port, SUB, clean_start=False, properties=connect_props(3600))
    subscribe(sub, "nl/#", SubscribeOptions(qos=1, noLocal=True), 11)
    subscribe(
        sub,
        "rap/#",
        SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2),
        12,
    )
    subscribe(sub, "$share/g/sh/#", SubscribeOptions(qos=1), 13)
    sub.leave()
    pub = Client(port, "p5-pub")
    publish(pub, "nl/a", b"queued", properties=publish_props(600))
    publish(pub, "rap/a", b"kept", retain=True, properties=publish_props(600))
    publish(pub, "nl/short", b"expires", properties=publish_props(60))
    pub.leave()


def after_restart(port: int) -> None:
    """The subscriber resumes: the queued messages with their properties, identifiers
    and remaining intervals, not the expired one; its own message on the No Local
    subscription is not sent back, a retained one on the Retain As Published one is
    (RETAIN=1); the shared subscription's identifier is there. A new subscriber gets the
    retained message with its properties and remaining interval."""
    sub = Client(port, SUB, clean_start=False, properties=connect_props(3600))
    assert sub.connack is not None
    assert sub.connack[0].session_present
    # Its own publishes: "nl/own" matches only the No Local subscription, "rap/own" the
    # Retain As Published one; the second arriving proves the first was not sent.
    publish(sub, "nl/own", b"own")
    publish(sub, "rap/own", b"own retained", retain=True)
    sub.wait(lambda: any(m.topic == "rap/own" for m in sub.messages))
    pub = Client(port, "p5-pub")
    publish(pub, "sh/x", b"shared")
    sub.wait(lambda: any(m.topic == "sh/x" for m in sub.messages))
    got = {m.topic: m for m in sub.messages}
    assert [m.topic for m in sub.messages] == ["nl/a", "rap/a", "rap/own", "sh/x"]

    queued = got["nl/a"]
    assert (queued.payload, queued.qos, queued.retain) == (b"queued", 1, False)
    assert_publisher_properties(queued)
    assert sub_ids(queued) == [11]
    assert_downtime_counted(queued, 600)

    kept = got["rap/a"]
    assert (kept.payload, kept.retain) == (b"kept", True)
    assert_publisher_properties(kept)
    assert sub_ids(kept) == [12]
    assert_downtime_counted(kept, 600)

    own = got["rap/own"]
    assert (own.payload, own.retain, sub_ids(own)) == (b"own retained", True, [12])
    assert sub_ids(got["sh/x"]) == [13]
    assert prop(got["sh/x"], "UserProperty") is None

    newcomer = Client(port, "p5-new")
    subscribe(newcomer, "rap/a", SubscribeOptions(qos=1), 99)
    newcomer.wait(lambda: len(newcomer.messages) == 1)
    retained = newcomer.messages[0]
    assert (retained.topic, retained.payload, retained.retain) == ("rap/a", b"kept", True)
    assert_publisher_properties(retained)
    assert sub_ids(retained) == [99]
    assert_downtime_counted(retained, 600)
    for c in (sub, pub, newcomer):
        c.leave()


# --------------------------------------------------------------------------- SQLite


class BrokerProcess:
    """`python -m pyo3mq --config F`: a broker process, stopped with SIGTERM (which saves
    the store and exits 0)."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyo3mq", "--config", str(config), "--log-level", "error"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert " listening on " in line, (line, self.proc.stderr and self.proc.stderr.read())
        self.port = int(line.rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, err


@pytest.fixture
def processes() -> Iterator[Callable[[Path], BrokerProcess]]:
    started: list[BrokerProcess] = []

    def start(config: Path) -> BrokerProcess:
        started.append(BrokerProcess(config))
        return started[-1]

    yield start
    for b in started:
        if b.proc.poll() is None:
            b.proc.kill()
        # Reads what is left and closes the pipes.
        b.proc.communicate(timeout=TIMEOUT)


def sql(db: Path, script: str) -> list[tuple[Any, ...]]:
    """Runs `script` (statements, then one query) on the store file."""
    conn = sqlite3.connect(db)
    try:
        *statements, query = [s for s in script.split(";") if s.strip()]
        for s in statements:
            conn.execute(s)
        rows = conn.execute(query).fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


def sqlite_config(tmp_path: Path, db: Path) -> Path:
    config = tmp_path / "broker.toml"
    config.write_text(f'listeners = ["{LOOPBACK}"]\nsession_store = "sqlite:{db}"\n')
    return config


def test_sqlite_restart_keeps_v5_session_state(
    tmp_path: Path, processes: Callable[[Path], BrokerProcess]
) -> None:
    """[MQTT-3.8.3-3] [MQTT-3.3.1-12] [MQTT-3.3.4-3] [MQTT-3.3.2-5] [MQTT-3.3.2-6]
    [MQTT-3.3.2-18] A broker process with `session_store = "sqlite:F"` is stopped and a
    new one started on the file: the 5.0 subscriber's options, identifiers and queued
    messages (with their properties and expiry) come back. The file holds the options
    byte and identifier of each subscription, and absolute expiry deadlines."""
    db = tmp_path / "sessions.db"
    config = sqlite_config(tmp_path, db)
    first = processes(config)
    before_restart(first.port)
    first.stop()
    assert sql(db, "PRAGMA user_version") == [(4,)]
    assert sql(
        db,
        f"SELECT filter, qos, options, identifier FROM subscriptions "
        f"WHERE client_id = '{SUB}' ORDER BY filter",
    ) == [("$share/g/sh/#", 1, 0, 13), ("nl/#", 1, 0x04, 11), ("rap/#", 1, 0x08 | 0x20, 12)]
    # Every stored message of the subscriber has its properties and a deadline.
    rows = sql(
        db,
        f"SELECT topic, length(properties), expires_at FROM pending "
        f"WHERE client_id = '{SUB}' ORDER BY seq",
    )
    assert [r[0] for r in rows] == ["nl/a", "rap/a", "nl/short"]
    assert all(r[1] > 0 and r[2] > 0 for r in rows), rows
    sql(
        db,
        f"UPDATE pending SET expires_at = expires_at - {DOWNTIME * 1000}; "
        f"UPDATE retained SET expires_at = expires_at - {DOWNTIME * 1000}; SELECT 1",
    )
    second = processes(config)
    after_restart(second.port)
    second.stop()


#: A version 3 file, as pyo3mq wrote it before the 5.0 state was kept: a 5.0 session
#: (Session Expiry Interval 3600, offline since a known time) with a subscription and a
#: queued message, and a retained message.
SCHEMA_3 = """
CREATE TABLE sessions (client_id TEXT PRIMARY KEY);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL,
    PRIMARY KEY (client_id, filter));
CREATE TABLE pending (
    client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL, msg_qos INTEGER NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL, publisher TEXT NOT NULL, pkid INTEGER,
    released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, seq));
CREATE TABLE retained (
    topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    publisher TEXT NOT NULL);
CREATE TABLE disconnected (client_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE session_expiry (client_id TEXT PRIMARY KEY, seconds INTEGER NOT NULL);
INSERT INTO sessions VALUES ('v3-sub');
INSERT INTO subscriptions VALUES ('v3-sub', 'v3/#', 1);
INSERT INTO pending VALUES ('v3-sub', 0, 'v3/t', x'6f6c64', 1, 1, 0, 'v3-pub', NULL, 0);
INSERT INTO retained VALUES ('v3/r', x'72', 0, 'v3-pub');
INSERT INTO disconnected VALUES ('v3-sub', CAST(strftime('%s', 'now') AS INTEGER) - 5);
INSERT INTO session_expiry VALUES ('v3-sub', 3600);
PRAGMA user_version = 3;
"""


def test_a_schema_3_store_is_upgraded_and_its_sessions_kept(
    tmp_path: Path, processes: Callable[[Path], BrokerProcess]
) -> None:
    """A store of schema version 3 loads whole (the 5.0 session resumes with its queued
    message, the retained message is there), is upgraded to version 4 (the new columns
    added, the rows kept), and from then on keeps the 5.0 state: a subscription made
    now is stored with its options and identifier."""
    db = tmp_path / "v3.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA_3)
    conn.close()
    broker = processes(sqlite_config(tmp_path, db))
    assert sql(db, "PRAGMA user_version") == [(4,)]
    assert sql(db, "SELECT client_id, filter, qos, options, identifier FROM subscriptions") == [
        ("v3-sub", "v3/#", 1, 0, None)
    ]
    sub = Client(broker.port, "v3-sub", clean_start=False, properties=connect_props(3600))
    assert sub.connack is not None
    assert sub.connack[0].session_present
    subscribe(sub, "v3/new", SubscribeOptions(qos=1, noLocal=True), 5)
    # The queued message first (the session's order), then a live one via the old
    # subscription, which has no identifier.
    pub = Client(broker.port, "v3-pub")
    publish(pub, "v3/live", b"live")
    sub.wait(lambda: len(sub.messages) == 2)
    assert [(m.topic, m.payload, sub_ids(m)) for m in sub.messages] == [
        ("v3/t", b"old", []),
        ("v3/live", b"live", []),
    ]
    newcomer = Client(broker.port, "v3-new")
    newcomer.subscribe("v3/r", 0)
    newcomer.wait(lambda: len(newcomer.messages) == 1)
    assert (newcomer.messages[0].payload, newcomer.messages[0].retain) == (b"r", True)
    for c in (sub, pub, newcomer):
        c.leave()
    broker.stop()
    assert sql(
        db,
        "SELECT filter, options, identifier FROM subscriptions WHERE client_id = 'v3-sub' "
        "ORDER BY filter",
    ) == [("v3/#", 0, None), ("v3/new", 0x04, 5)]


# --------------------------------------------------------------------------- Python store


def _bytes_to_json(value: object) -> object:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    raise TypeError(type(value))


def _json_to_bytes(obj: dict[str, Any]) -> Any:
    return bytes.fromhex(obj["hex"]) if obj.keys() == {"hex"} else obj


class JsonStore:
    """A `pyo3mq.SessionStore` that keeps every record in a JSON file, rewritten on each
    change: what a user's store does, through a serialization of its own. Records are
    rebuilt with their constructors, so a record written without the newer fields
    loads with their defaults."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saves = 0

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {"sessions": {}, "retained": {}}
        data: dict[str, dict[str, Any]] = json.loads(
            self.path.read_text(), object_hook=_json_to_bytes
        )
        return data

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.write_text(json.dumps(data, default=_bytes_to_json))
        self.saves += 1

    async def load(self) -> tuple[list[SessionRecord], list[RetainedRecord]]:
        data = self._read()
        sessions = []
        for s in data["sessions"].values():
            fields = dict(s)
            fields["subscriptions"] = [tuple(x) for x in s["subscriptions"]]
            fields["pending"] = [StoredMessage(**m) for m in s["pending"]]
            if "subscription_options" in s:
                fields["subscription_options"] = {
                    f: StoredSubscriptionOptions(**o) for f, o in s["subscription_options"].items()
                }
            sessions.append(SessionRecord(**fields))
        retained = [RetainedRecord(**r) for r in data["retained"].values()]
        return sessions, retained

    async def save_session(self, session: SessionRecord) -> None:
        data = self._read()
        data["sessions"][session.client_id] = asdict(session)
        self._write(data)

    async def delete_session(self, client_id: str) -> None:
        data = self._read()
        del data["sessions"][client_id]
        self._write(data)

    async def save_retained(self, message: RetainedRecord) -> None:
        data = self._read()
        data["retained"][message.topic] = asdict(message)
        self._write(data)

    async def delete_retained(self, topic: str) -> None:
        data = self._read()
        del data["retained"][topic]
        self._write(data)

    def shift_deadlines(self, seconds: float) -> None:
        """Every stored expiry deadline `seconds` earlier (the broker "was down")."""
        data = self._read()
        for s in data["sessions"].values():
            for m in s["pending"]:
                if m.get("expires_at") is not None:
                    m["expires_at"] -= seconds
        for r in data["retained"].values():
            if r.get("expires_at") is not None:
                r["expires_at"] -= seconds
        self._write(data)


async def test_python_store_restart_keeps_v5_session_state(tmp_path: Path) -> None:
    """[MQTT-3.8.3-3] [MQTT-3.3.1-12] [MQTT-3.3.4-3] [MQTT-3.3.2-5] [MQTT-3.3.2-6]
    [MQTT-3.3.2-18] The same restart with a Python store (two `Broker` objects on one
    JSON file): the records it is given carry the subscription options (Retain Handling
    too), the Session Expiry Interval and disconnect time, and each message's encoded
    properties and expiry deadline; a broker loaded from them gives the subscriber the
    same deliveries. A session stored in the older record format (none of those fields)
    still loads and resumes."""
    path = tmp_path / "store.json"
    old = {
        "client_id": "old-311",
        "subscriptions": [["old/#", 1]],
        "pending": [
            {
                "topic": "old/t",
                "payload": {"hex": b"old".hex()},
                "qos": 1,
                "delivery_qos": 1,
                "retain": False,
                "publisher": "",
                "packet_id": None,
                "released": False,
            }
        ],
    }
    path.write_text(json.dumps({"sessions": {"old-311": old}, "retained": {}}))
    store = JsonStore(path)
    async with Broker(session_store=store, listeners=[LOOPBACK]) as broker:
        await asyncio.to_thread(before_restart, broker.addresses[0][1])
    records, retained = await store.load()
    by_id = {r.client_id: r for r in records}
    record = by_id[SUB]
    assert record.session_expiry == 3600
    assert record.disconnected_at is not None
    assert record.subscription_options == {
        "nl/#": StoredSubscriptionOptions(no_local=True, subscription_identifier=11),
        "rap/#": StoredSubscriptionOptions(
            retain_as_published=True, retain_handling=2, subscription_identifier=12
        ),
        "$share/g/sh/#": StoredSubscriptionOptions(subscription_identifier=13),
    }
    assert [m.topic for m in record.pending] == ["nl/a", "rap/a", "nl/short"]
    assert all(m.properties and m.expires_at for m in record.pending)
    assert [r.topic for r in retained] == ["rap/a"]
    assert retained[0].properties == record.pending[1].properties[: len(retained[0].properties)]
    # The older record loaded with the defaults and was written back unchanged.
    assert by_id["old-311"].subscription_options == {}
    assert by_id["old-311"].pending[0].properties is None

    store.shift_deadlines(DOWNTIME)
    async with Broker(session_store=JsonStore(path), listeners=[LOOPBACK]) as broker:
        port = broker.addresses[0][1]
        await asyncio.to_thread(after_restart, port)

        def old_resumes() -> None:
            c = Client(port, "old-311", clean_start=False, properties=connect_props(60))
            assert c.connack is not None
            assert c.connack[0].session_present
            c.wait(lambda: len(c.messages) == 1)
            assert (c.messages[0].topic, c.messages[0].payload) == ("old/t", b"old")
            assert c.messages[0].properties is None or not c.messages[0].properties.json()
            c.leave()

        await asyncio.to_thread(old_resumes)
