"""The `pyo3mq` command: run the broker until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from pyo3mq import __version__
from pyo3mq._pyo3mq import BrokerStartError, init_logging
from pyo3mq.broker import Broker, BrokerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.9/3.10
    import tomli as tomllib

LOG_LEVELS = ("error", "warn", "info", "debug", "trace")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pyo3mq", description="Run the pyo3mq MQTT 3.1/3.1.1 broker."
    )
    parser.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="TCP port (default 1883; 0 picks a free one)")
    parser.add_argument("--tls-port", type=int, help="also listen for MQTT over TLS on this port")
    parser.add_argument("--ws-port", type=int, help="also listen for MQTT over WebSocket (/mqtt)")
    parser.add_argument("--certfile", metavar="FILE", help="PEM certificate chain for TLS")
    parser.add_argument("--keyfile", metavar="FILE", help="PEM private key of --certfile")
    parser.add_argument(
        "--cafile",
        metavar="FILE",
        help="PEM CA certificates that client certificates must chain to",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with broker settings")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--version", action="version", version=f"pyo3mq {__version__}")
    return parser.parse_args(argv)


def load_config(
    path: str | None,
    host: str | None,
    port: int | None,
    *,
    tls_port: int | None = None,
    ws_port: int | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    cafile: str | None = None,
) -> BrokerConfig:
    """Settings from the file, then the flags on top: --host/--port/--tls-port/--ws-port
    replace the listeners (MQTT on --port, default 1883, plus TLS and WebSocket on theirs),
    --certfile/--keyfile/--cafile replace those settings."""
    values: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as f:
            values = tomllib.load(f)
        values = dict(values.get("broker", values))
    if any(flag is not None for flag in (host, port, tls_port, ws_port)):
        bind = host or "0.0.0.0"
        if ":" in bind and not bind.startswith("["):
            bind = f"[{bind}]"  # an IPv6 address
        values["listeners"] = [f"tcp://{bind}:{1883 if port is None else port}"]
        if tls_port is not None:
            values["listeners"].append(f"tls://{bind}:{tls_port}")
        if ws_port is not None:
            values["listeners"].append(f"ws://{bind}:{ws_port}/mqtt")
        values.pop("listener", None)  # its tables name the file's listeners
    for name, value in (("certfile", certfile), ("keyfile", keyfile), ("cafile", cafile)):
        if value is not None:
            values[name] = value
    return BrokerConfig.from_mapping(values)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["passwd"]:
        from pyo3mq.passwd import main as passwd

        return passwd(argv[1:])
    args = _parse_args(argv)
    init_logging(args.log_level)
    try:
        config = load_config(
            args.config,
            args.host,
            args.port,
            tls_port=args.tls_port,
            ws_port=args.ws_port,
            certfile=args.certfile,
            keyfile=args.keyfile,
            cafile=args.cafile,
        )
        broker = Broker(config)
        broker.start()
    except (
        OSError,
        ValueError,
        TypeError,
        OverflowError,
        BrokerStartError,
        tomllib.TOMLDecodeError,
    ) as exc:
        print(f"pyo3mq: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    for host, port in broker.addresses:
        print(f"pyo3mq {__version__} listening on {host}:{port}", flush=True)
    # A timed wait keeps the main thread responsive to signals.
    while not stop.wait(0.5):
        pass
    broker.stop()
    return 0
