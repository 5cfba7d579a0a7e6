"""Debian's mosquitto as a test peer: started on a free loopback port with the given
config lines, stopped at teardown."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0, name: str = "mosquitto"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{name} did not start listening")


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stops one process this test started (SIGTERM, then SIGKILL after 5 s)."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(conf: Path, port: int, lines: list[str]) -> subprocess.Popen[bytes]:
    """Writes `conf` (a listener on `port` plus `lines`), starts mosquitto on it and waits
    until it listens."""
    head = [f"listener {port} 127.0.0.1"]
    if os.name == "posix" and os.geteuid() == 0:
        # As root, mosquitto switches to the `mosquitto` user, which cannot read
        # pytest's private temporary directory (password files live there).
        head.append("user root")
    conf.write_text("\n".join([*head, *lines]) + "\n")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
    except BaseException:
        terminate(proc)
        raise
    return proc


@contextmanager
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """`start("allow_anonymous true")` runs mosquitto with those config lines and returns
    its port; every one started is stopped on exit. Skips the test without mosquitto."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("Debian's mosquitto is not installed")
    procs: list[subprocess.Popen[bytes]] = []

    def start(*lines: str) -> int:
        port = free_port()
        procs.append(run(tmp_path / f"mosquitto-{port}.conf", port, list(lines)))
        return port

    try:
        yield start
    finally:
        for proc in procs:
            terminate(proc)
