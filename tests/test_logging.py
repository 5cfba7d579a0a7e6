"""`pyo3mq.enable_logging()`: the Rust core's log lines in Python's `logging`.

The choice is process-wide and the first call wins, and this test process already sends
the core's lines to stderr (conftest), so each case runs a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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
