"""`pyo3mq.enable_logging()`: the Rust core's log lines in Python's `logging`.

The choice is process-wide and the first call wins, and this test process already sends
the core's lines to stderr (conftest), so each case runs a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from support.mqtt_raw import RawClient, connect

SCRIPT = textwrap.dedent(
    """
    import json, logging, socket, sys, time
    import pyo3mq

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.name, record.levelno, record.getMessage()))

    class Broken(logging.Handler):
        def emit(self, record):
            raise RuntimeError("a handler that fails")

    root = logging.getLogger("pyo3mq")
    root.setLevel(logging.DEBUG)
    root.addHandler(Keep())
    if "--broken-handler" in sys.argv:
        root.addHandler(Broken())
    pyo3mq.enable_logging("info")

    broker = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], sys_interval=0)
    broker.start()
    port = broker.addresses[0][1]
    for client_id in (b"log-1", b"log-2"):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"\\x10" + bytes([12 + len(client_id)]) + b"\\x00\\x04MQTT\\x04\\x02\\x00\\x3c"
                  + len(client_id).to_bytes(2, "big") + client_id)
        assert s.recv(4) == b"\\x20\\x02\\x00\\x00"
        s.sendall(b"\\x30\\xff\\xff\\xff\\xff\\x01")  # a 5-byte Remaining Length
        assert s.recv(1) == b""  # closed by the broker
        s.close()
    broker.stop()
    deadline = time.monotonic() + 5
    while not any("broker stopped" in r[2] for r in records) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps(records))
    """
)


def run(*args: str) -> tuple[list[tuple[str, int, str]], str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    records = [tuple(r) for r in json.loads(proc.stdout)]
    return records, proc.stderr  # type: ignore[return-value]


def test_core_lines_reach_python_logging() -> None:
    """Per-module loggers (`pyo3mq.server`, `pyo3mq.connection`), the level mapped to
    logging's numbers, fields after the message, and nothing written to stderr."""
    records, stderr = run()
    names = {name for name, _, _ in records}
    assert {"pyo3mq.server", "pyo3mq.connection"} <= names, records
    listening = [r for r in records if r[2].startswith("listening on 127.0.0.1:")]
    assert listening and listening[0][:2] == ("pyo3mq.server", 20)
    connected = [r for r in records if r[2].startswith("client connected")]
    assert [r[1] for r in connected] == [20, 20]
    assert "client_id=log-1" in connected[0][2] and "client_id=log-2" in connected[1][2]
    closes = [r for r in records if "closing connection" in r[2]]
    assert len(closes) == 2 and all(r[:2] == ("pyo3mq.connection", 30) for r in closes)
    assert all("[MQTT-2.2.3] Remaining Length" in r[2] for r in closes), closes
    assert ("pyo3mq.server", 20, "broker stopped") in records
    assert "client connected" not in stderr


def test_a_failing_handler_does_not_stop_the_broker() -> None:
    """A handler that raises is reported the way `logging` reports it, and the broker
    serves on: both connections and the stop are still logged by the other handler."""
    records, stderr = run("--broken-handler")
    assert len([r for r in records if r[2].startswith("client connected")]) == 2
    assert ("pyo3mq.server", 20, "broker stopped") in records
    assert "a handler that fails" in stderr


PACKETS_SCRIPT = textwrap.dedent(
    """
    import sys
    import paho.mqtt.client as mqtt
    import pyo3mq

    level, to = sys.argv[1], sys.argv[2]
    if to == "python":
        import logging
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(message)s")
    pyo3mq.enable_logging(level, to=to)
    broker = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], sys_interval=0)
    broker.start()
    port = broker.addresses[0][1]
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub-1")
    sub.username_pw_set("dora")
    sub.on_message = lambda c, u, m: got.append(m.topic)
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    sub.subscribe("s/#", qos=1)[1]
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-1")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    import time
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        pub.publish("s/t", b"hello", qos=1).wait_for_publish(5)
        time.sleep(0.05)
    assert got, "no message delivered"
    # Stop the broker only once it has seen both DISCONNECTs: paho's disconnect() only
    # queues the packet, and a broker stopped first closes the connection itself.
    def wait_connected(n):
        deadline = time.monotonic() + 5
        while broker.stats()["clients_connected"] != n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.stats()["clients_connected"] == n, broker.stats()
    pub.disconnect(); pub.loop_stop()
    wait_connected(1)
    sub.disconnect(); sub.loop_stop()
    wait_connected(0)
    broker.stop()
    """
)


def run_packets(level: str, to: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PACKETS_SCRIPT, level, to],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_debug_logs_every_packet_with_its_fields() -> None:
    """At debug, as Mosquitto's `log_type all`: each packet received and sent, with the
    client id, packet id, topic, QoS and flags (paho-mqtt clients), and the connect line
    names the username."""
    out = run_packets("debug", "stderr")
    for line in (
        "received CONNECT (p4, c1, k60, u'dora') from 'sub-1'",
        "sending CONNACK (0, 0) to 'sub-1'",
        "received SUBSCRIBE (m1, 's/#' q1) from 'sub-1'",
        "sending SUBACK (m1, 1) to 'sub-1'",
        "received PUBLISH (d0, q1, r0, m1, 's/t', 5 bytes) from 'pub-1'",
        "sending PUBACK (m1) to 'pub-1'",
        "sending PUBLISH (d0, q1, r0, m1, 's/t', 5 bytes) to 'sub-1'",
        "received PUBACK (m1) from 'sub-1'",
        "received DISCONNECT from 'pub-1'",
    ):
        assert line in out, (line, out)
    assert re.search(r'INFO client connected client_id=sub-1 peer=\S+ username="dora" ', out)
    assert re.search(r"INFO client connected client_id=pub-1 peer=\S+ username=- ", out)


def test_packet_lines_reach_python_logging_on_their_own_logger() -> None:
    out = run_packets("debug", "python")
    assert "pyo3mq.packets received PUBLISH (d0, q1, r0, m1, 's/t', 5 bytes) from 'pub-1'" in out


def test_info_logs_no_packet_lines() -> None:
    out = run_packets("info", "stderr")
    assert "client connected client_id=sub-1" in out
    assert "received PUBLISH" not in out and "sending" not in out


async def test_python_side_messages_do_not_repeat_the_logger_name(
    serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The records of the `pyo3mq` logger (hook failures and timeouts) do not begin with
    "pyo3mq: ": with the usual `%(name)s: %(message)s` layout that read
    `pyo3mq: pyo3mq: authenticate(...) failed`."""

    def authenticate(client_id: str, username: str | None, password: bytes | None) -> bool:
        raise RuntimeError("database down")

    broker = await serve(authenticator=authenticate, allow_anonymous=False)
    port = broker.addresses[0][1]

    def login() -> bytes:
        with RawClient(port) as c:
            c.send(connect("who", username="u", password=b"p"))
            return c.recv().body

    with caplog.at_level(logging.ERROR, logger="pyo3mq"):
        assert await asyncio.to_thread(login) == b"\x00\x05"
    failed = [r for r in caplog.records if r.name == "pyo3mq"]
    assert failed and "authenticate('who') failed: denied" in failed[0].getMessage()
    formatter = logging.Formatter("%(name)s: %(message)s")
    assert all(not formatter.format(r).startswith("pyo3mq: pyo3mq:") for r in failed)
