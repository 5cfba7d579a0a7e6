"""The README's configuration section stays true: its example file parses, and it names
every setting the broker has."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
import tomllib
from pyo3mq import BrokerConfig
from pyo3mq._pyo3mq import config_defaults
from support.mqtt_raw import RawClient, connect

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_example_has_every_setting_and_parses() -> None:
    text = README.read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, "the README has a ```toml example"
    settings = tomllib.loads(block.group(1))["broker"]
    assert set(settings) == {f.name for f in fields(BrokerConfig)}
    BrokerConfig.from_mapping(settings)  # values of the right types and in range


def test_readme_settings_table_has_every_setting() -> None:
    rows = set(re.findall(r"^\| `([a-z_0-9]+)` \|", README.read_text(), re.M))
    assert {f.name for f in fields(BrokerConfig)} <= rows


def test_broker_config_is_the_core_s_settings() -> None:
    """Names and defaults are declared once, in Rust: `BrokerConfig` has exactly the
    core's settings, in its order, with its defaults."""
    defaults = config_defaults()
    config = BrokerConfig()
    assert [f.name for f in fields(BrokerConfig)] == list(defaults)
    assert {f.name: getattr(config, f.name) for f in fields(config)} == defaults


# -- the README's programs run as written ------------------------------------------------

TIMEOUT = 10.0


def python_block(after: str) -> str:
    """The first ```python block after the line `after` in the README."""
    section = README.read_text().split(after, 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, f"no python block after {after!r}"
    return block.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Program:
    """A README program run by this interpreter (the oldest Python the package supports
    is the one the tests run on), its stdout read line by line."""

    def __init__(self, code: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self) -> str:
        try:
            return self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            raise AssertionError(f"no output from the program; stderr: {err}") from None

    def stop(self) -> str:
        """Ends it as Ctrl-C would; returns its stderr."""
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        return err


def paho(port: int, client_id: str, **kwargs: Any) -> tuple[mqtt.Client, queue.Queue[Any]]:
    """A connected paho client on its network thread, and the queue of what it receives."""
    got: queue.Queue[Any] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if kwargs:
        client.username_pw_set(kwargs["username"], kwargs["password"])
    client.on_message = lambda c, u, m: got.put(m)
    deadline = time.monotonic() + TIMEOUT
    while True:  # the program may still be starting its broker
        try:
            client.connect("127.0.0.1", port)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.loop_start()
    return client, got


def test_readme_embedding_example_runs(tmp_path: Path) -> None:
    """The "Embedding in Python" program, verbatim but for its listener (loopback, a free
    port): a device that logs in as the example says has its reading republished on
    alerts/hot, a wrong password is refused, and the SQLite store file is made."""
    port = free_port()
    code = python_block("## Embedding in Python")
    assert code.count('"tcp://0.0.0.0:1883"') == 1
    program = Program(code.replace('"tcp://0.0.0.0:1883"', f'"tcp://127.0.0.1:{port}"'), tmp_path)
    try:
        watcher, alerts = paho(port, "watcher", username="device", password="secret")
        try:
            watcher.subscribe("alerts/hot", qos=1)
            device, _ = paho(port, "d1", username="device", password="secret")
            deadline = time.monotonic() + TIMEOUT
            message = None
            while message is None and time.monotonic() < deadline:
                # Until the subscription is in place, a reading finds no one.
                device.publish("devices/d1/temperature", b"41.5", qos=1).wait_for_publish(5)
                try:
                    message = alerts.get(timeout=0.2)
                except queue.Empty:
                    pass
            assert message is not None, "no alert"
            assert (message.topic, message.payload, message.qos) == ("alerts/hot", b"41.5", 1)
            device.disconnect()
            device.loop_stop()
            assert program.line() == "d1 clean"  # the on_disconnect lambda
            with RawClient(port) as intruder:
                intruder.send(connect("x", username="device", password=b"wrong"))
                assert intruder.recv().body == b"\x00\x04"  # bad user name or password
        finally:
            watcher.disconnect()
            watcher.loop_stop()
    finally:
        err = program.stop()
    assert (tmp_path / "sessions.db").exists(), err


def test_readme_client_example_runs(make_broker: Any) -> None:
    """The "Client library" program, verbatim but for its port: it publishes its retained
    status, prints the messages of its subscriptions, and when it dies (no DISCONNECT)
    its will says offline."""
    broker = make_broker(sys_interval=0)
    port = broker.addresses[0][1]
    code = python_block("## Client library")
    assert code.count('"127.0.0.1", 1883') == 1
    program = Program(code.replace('"127.0.0.1", 1883', f'"127.0.0.1", {port}'), Path.cwd())
    watcher, got = paho(port, "watcher")
    try:
        watcher.subscribe("status/sensor-1", qos=1)
        status = got.get(timeout=TIMEOUT)
        # Live or retained, depending on who came first.
        assert (status.topic, status.payload) == ("status/sensor-1", b"online")
        deadline = time.monotonic() + TIMEOUT
        while broker.stats()["subscriptions_count"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)  # the program's two filters, and the watcher's
        watcher.publish("cmd/reboot", b"now", qos=1).wait_for_publish(5)
        assert program.line() == "cmd/reboot b'now' 1 False"
        watcher.publish("cfg/rate", b"5", qos=2).wait_for_publish(5)
        assert program.line() == "cfg/rate b'5' 2 False"
        program.proc.kill()  # no DISCONNECT: the will goes out
        program.proc.communicate(timeout=TIMEOUT)
        will = got.get(timeout=TIMEOUT)
        assert (will.topic, will.payload) == ("status/sensor-1", b"offline")
    finally:
        watcher.disconnect()
        watcher.loop_stop()
        if program.proc.poll() is None:
            program.stop()


def sys_topics(port: int, wanted: set[str] | None = None) -> set[str]:
    """The `$SYS/broker/...` topic names a broker publishes: read until every `wanted`
    name came, or for 3 s (at least two publication rounds at sys_interval 1)."""
    client, got = paho(port, "sys-reader")
    names: set[str] = set()
    try:
        client.subscribe("$SYS/#")
        deadline = time.monotonic() + (TIMEOUT if wanted else 3.0)
        while time.monotonic() < deadline and not (wanted and wanted <= names):
            try:
                names.add(got.get(timeout=0.1).topic)
            except queue.Empty:
                pass
    finally:
        client.disconnect()
        client.loop_stop()
    return names


def test_sys_topic_names_are_mosquittos(make_broker: Any, mosquitto: Any) -> None:
    """Every `$SYS` topic pyo3mq publishes (plain TCP listener) is one Debian's Mosquitto
    publishes under the same name, `$SYS/broker/publish/messages/dropped` included,
    except pyo3mq's own figures, apart under `$SYS/broker/pyo3mq/`; and the README lists
    them by those names."""
    ours = sys_topics(make_broker(sys_interval=1).addresses[0][1])
    assert "$SYS/broker/publish/messages/dropped" in ours
    own = {name for name in ours if name.startswith("$SYS/broker/pyo3mq/")}
    assert own == {"$SYS/broker/pyo3mq/events/dropped"}
    assert len(ours - own) == 13, sorted(ours)
    theirs = sys_topics(mosquitto("allow_anonymous true", "sys_interval 1"), ours - own)
    assert ours - own - theirs == set()
    assert not any(name.startswith("$SYS/broker/pyo3mq/") for name in theirs)
    readme = README.read_text()
    for name in ours:
        short = name.removeprefix("$SYS/broker/")
        assert f"`{short}`" in readme or f"`{name}`" in readme, name


def test_conformance_table_is_readable_from_the_repository() -> None:
    """Every statement ID docs/conformance.md maps is in the in-repository copy of the
    statement list (docs/spec/), with its text, and the table's checker passes against
    that copy."""
    root = README.parent
    checklist = (root / "docs" / "spec" / "mqtt-3.1.1-checklist.md").read_text()
    ids = [
        line.split("\t")[0]
        for line in (root / "docs" / "spec" / "mqtt-3.1.1-ids.tsv").read_text().splitlines()
        if line.strip()
    ]
    assert len(ids) == 141
    rows = re.findall(
        r"^\|\s*`?(MQTT-[0-9.-]+)`?\s*\|", (root / "docs" / "conformance.md").read_text(), re.M
    )
    # The spec spells two IDs irregularly; the table may use either spelling.
    regular = {"MQTT-3.1.2.7": "MQTT-3.1.2-7", "MQTT-3-8.3-4": "MQTT-3.8.3-4"}
    assert {regular.get(r, r) for r in rows} == {regular.get(i, i) for i in ids}
    for ident in ids:
        assert ident in checklist, ident
    res = subprocess.run(
        [
            sys.executable,
            str(root / "docs" / "conformance_check.py"),
            "--ids",
            str(root / "docs" / "spec" / "mqtt-3.1.1-ids.tsv"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "differs" not in res.stdout


# -- "Bad arguments raise ValueError or TypeError at the call", naming the argument -----


@pytest.mark.parametrize(
    "kwargs, name",
    [
        pytest.param({"keepalive": 70000}, "keepalive", id="keepalive-too-big"),
        pytest.param({"keepalive": -1}, "keepalive", id="keepalive-negative"),
        pytest.param({"port": 70000}, "port", id="port"),
        pytest.param({"max_inflight_messages": 2**70}, "max_inflight_messages", id="inflight"),
        pytest.param({"max_buffered_bytes": -5}, "max_buffered_bytes", id="buffered"),
        pytest.param({"max_packet_size": 2**70}, "max_packet_size", id="packet-size"),
        pytest.param(
            {"max_queued_incoming_messages": 2**70}, "max_queued_incoming_messages", id="queued"
        ),
    ],
)
@pytest.mark.parametrize("cls", [pyo3mq.Client, pyo3mq.SyncClient], ids=["Client", "SyncClient"])
def test_out_of_range_client_numbers_name_the_argument(
    cls: Any, kwargs: dict[str, int], name: str
) -> None:
    """Not a bare OverflowError from the conversion to the core's integer types."""
    with pytest.raises(ValueError, match=rf"^{name} must be "):
        cls("127.0.0.1", **kwargs)


def test_broker_with_a_dict_says_to_use_keywords() -> None:
    with pytest.raises(TypeError, match=r"pass settings as keywords .*BrokerConfig"):
        pyo3mq.Broker({"max_inflight": 5})  # type: ignore[arg-type]


def test_sqlite_store_without_a_path_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"session_store .*with a path"):
        pyo3mq.Broker(session_store="sqlite:")
