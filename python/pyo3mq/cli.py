"""The `pyo3mq` command: run the broker until SIGINT, SIGTERM or SIGQUIT.

Signals follow Mosquitto's: SIGHUP never stops the broker (logrotate and service
managers send it routinely) and reloads the TLS certificates, SIGUSR1 saves
the durable session store now, SIGUSR2 logs the session and subscription counts.
Handlers only queue the signal: the main loop acts on it, outside the handler.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sys
import time
from collections.abc import Callable, Sequence
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
DEFAULT_HOST = "127.0.0.1"

log = logging.getLogger("pyo3mq.cli")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pyo3mq", description="Run the pyo3mq MQTT 3.1/3.1.1 broker."
    )
    parser.add_argument(
        "--host",
        help=f"address to listen on (default {DEFAULT_HOST}, this machine only; "
        "0.0.0.0 for every interface)",
    )
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
    parser.add_argument(
        "--cluster",
        metavar="URLS",
        help="cluster mode (preview): nats://HOST:PORT[,...] of a NATS server with JetStream "
        "shared by every node",
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
    cluster: str | None = None,
) -> BrokerConfig:
    """Settings from the file, then the flags on top: --host/--port/--tls-port/--ws-port
    replace the listeners (MQTT on --port, default 1883, plus TLS and WebSocket on theirs),
    --certfile/--keyfile/--cafile/--cluster replace those settings."""
    values: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as f:
            values = tomllib.load(f)
        values = dict(values.get("broker", values))
    if any(flag is not None for flag in (host, port, tls_port, ws_port)):
        bind = host or DEFAULT_HOST
        if ":" in bind and not bind.startswith("["):
            bind = f"[{bind}]"  # an IPv6 address
        values["listeners"] = [f"tcp://{bind}:{1883 if port is None else port}"]
        if tls_port is not None:
            values["listeners"].append(f"tls://{bind}:{tls_port}")
        if ws_port is not None:
            values["listeners"].append(f"ws://{bind}:{ws_port}/mqtt")
        values.pop("listener", None)  # its tables name the file's listeners
    named = (("certfile", certfile), ("keyfile", keyfile), ("cafile", cafile), ("cluster", cluster))
    for name, value in named:
        if value is not None:
            values[name] = value
    return BrokerConfig.from_mapping(values)


class _Formatter(logging.Formatter):
    """The layout of the core's stderr lines (UTC timestamp, level, message), so the
    command's own lines read the same."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        level = {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(record.levelname, record.levelname)
        return f"{stamp}.{micros:06d}Z {level:>5} {record.getMessage()}"


def _log_to_stderr(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.setLevel({"warn": "WARNING", "trace": "DEBUG"}.get(level, level.upper()))
    log.propagate = False


# -- what each signal does -------------------------------------------------------------


def reload(broker: Broker) -> None:
    """SIGHUP: the one place a configuration reload happens. What is reloadable is the
    TLS listeners' certificate, key and CA files (a renewed certificate): new connections
    get them, open ones are kept. The broker keeps serving either way; a file that cannot
    be read leaves the old ones in place."""
    try:
        count = broker.reload_tls()
    except ValueError as exc:
        log.error("SIGHUP received: TLS files not reloaded, the previous ones stay: %s", exc)
        return
    if count:
        log.info("SIGHUP received: TLS certificates reloaded for %d listener(s)", count)
    else:
        log.info("SIGHUP received: nothing to reload")


def save_now(broker: Broker) -> None:
    """SIGUSR1 (Mosquitto writes its persistence file): save the durable store now."""
    if broker.config.session_store == "memory":
        log.info("SIGUSR1 received: nothing to save (session_store = memory)")
    elif broker.save():
        log.info("SIGUSR1 received: session store saved")
    else:
        log.error("SIGUSR1 received: saving the session store failed (see above)")


def report(broker: Broker) -> None:
    """SIGUSR2 (Mosquitto logs its subscription tree): log the counts."""
    s = broker.stats()
    log.info(
        "SIGUSR2 received: %d clients connected, %d offline persistent sessions, "
        "%d subscriptions, %d retained messages",
        s.get("clients_connected", 0),
        s.get("clients_disconnected", 0),
        s.get("subscriptions_count", 0),
        s.get("retained_messages_count", 0),
    )


def _signals(*names: str) -> list[signal.Signals]:
    # Not every platform has every signal (Windows has no SIGHUP).
    return [getattr(signal, n) for n in names if hasattr(signal, n)]


#: Signals that stop the broker gracefully: clients closed, wills published, final save.
STOP_SIGNALS = _signals("SIGINT", "SIGTERM", "SIGQUIT")
#: Signals that must never stop it, and what they do instead.
ACTIONS: dict[int, Callable[[Broker], None]] = {
    sig: action
    for sig, action in zip(_signals("SIGHUP", "SIGUSR1", "SIGUSR2"), (reload, save_now, report))
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["passwd"]:
        from pyo3mq.passwd import main as passwd

        return passwd(argv[1:])
    args = _parse_args(argv)
    init_logging(args.log_level)
    _log_to_stderr(args.log_level)
    # Installed before the broker starts: a signal during startup is acted on once it
    # serves, never the default action (which for SIGHUP and SIGUSR1/2 is to die).
    received: queue.SimpleQueue[int] = queue.SimpleQueue()

    def queue_signal(signum: int, frame: FrameType | None) -> None:
        received.put(signum)  # SimpleQueue.put may be called from a signal handler

    for sig in [*STOP_SIGNALS, *ACTIONS]:
        signal.signal(sig, queue_signal)
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
            cluster=args.cluster,
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

    for host, port in broker.addresses:
        print(f"pyo3mq {__version__} listening on {host}:{port}", flush=True)
    while True:
        try:
            # A timed wait keeps the main thread responsive to signals.
            signum = received.get(timeout=0.5)
        except queue.Empty:
            continue
        if signum in STOP_SIGNALS:
            log.info("%s received: stopping", signal.Signals(signum).name)
            break
        try:
            ACTIONS[signum](broker)
        except Exception:
            # A failed save or report must not end the broker it was meant to help.
            log.exception("handling %s failed", signal.Signals(signum).name)
    broker.stop()
    return 0
