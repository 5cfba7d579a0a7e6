"""The `pyo3mq` command: run the broker until SIGINT, SIGTERM or SIGQUIT.

Signals follow Mosquitto's: SIGHUP never stops the broker (logrotate and service
managers send it routinely) and reloads the password file, the ACL file and the TLS
certificates (`Broker.reload()`), SIGUSR1 saves
the durable session store now, SIGUSR2 logs the session and subscription counts.
Handlers only queue the signal: the main loop acts on it, outside the handler.
"""

from __future__ import annotations

import argparse
import json
import logging
import logging.handlers
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import tomllib

from pyo3mq import __version__
from pyo3mq._pyo3mq import BrokerStartError, check_config_files, init_logging
from pyo3mq.broker import Broker, BrokerConfig, ReloadError, ReloadResult

LOG_LEVELS = ("error", "warn", "info", "debug", "trace")
#: Where `--syslog` sends lines: the local syslog daemon's socket, or when there is none,
#: UDP port 514 on localhost.
SYSLOG_ADDRESS: str | tuple[str, int] = "/dev/log"
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
        help="cluster mode: nats://HOST:PORT[,...] of a NATS server with JetStream "
        "shared by every node",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics, /healthz and /readyz over HTTP on this port "
        "(on --host's address; metrics_listener in the config file)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file with broker settings")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="debug and trace also log every packet received and sent (default info)",
    )
    parser.add_argument(
        "--log-file",
        metavar="PATH",
        help="append log lines to PATH instead of stderr (reopened when logrotate moves it)",
    )
    parser.add_argument(
        "--syslog",
        action="store_true",
        help="send log lines to syslog (/dev/log, facility daemon) instead of stderr",
    )
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
    metrics_port: int | None = None,
) -> BrokerConfig:
    """Settings from the file, then the flags on top: --host/--port/--tls-port/--ws-port
    replace the listeners (MQTT on --port, default 1883, plus TLS and WebSocket on theirs),
    --certfile/--keyfile/--cafile/--cluster replace those settings, and --metrics-port sets
    `metrics_listener` (on --host's address, default loopback)."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_toml(path)
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
    if metrics_port is not None:
        bind = host or DEFAULT_HOST
        if ":" in bind and not bind.startswith("["):
            bind = f"[{bind}]"
        values["metrics_listener"] = f"http://{bind}:{metrics_port}"
    named = (("certfile", certfile), ("keyfile", keyfile), ("cafile", cafile), ("cluster", cluster))
    for name, value in named:
        if value is not None:
            values[name] = value
    try:
        return BrokerConfig.from_mapping(values)
    except (ValueError, TypeError) as exc:
        if path is None:
            raise
        raise type(exc)(f"{path}: {exc}") from None


def read_toml(path: str) -> dict[str, Any]:
    """The settings of a config file: at top level or under `[broker]`. A file that is
    not TOML is a ValueError naming the file, and the line, as tomllib reports it."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        values = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        where = ""
        if "(at end of document)" in str(exc):
            # tomllib names no line there: the last one is where the file stopped short.
            where = f" (the file ends at line {max(1, len(data.splitlines()))})"
        raise ValueError(f"{path}: not valid TOML: {exc}{where}") from None
    return dict(values.get("broker", values))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def effective_settings(config: BrokerConfig) -> str:
    """Every setting with the value the broker would run with, as a config file (unset
    ones as comments), so the output can itself be used as one."""
    lines = ["[broker]"]
    # Arrays of tables (`[[broker.listener]]`, `[[broker.bridge]]`) go after the keys.
    tables: list[tuple[str, dict[str, Any]]] = []
    for name, value in config.values().items():
        if name in ("listener", "bridge"):
            tables.extend((name, table) for table in value)
        elif value is None:
            lines.append(f"# {name} is not set")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    for name, table in tables:
        lines.append("")
        lines.append(f"[[broker.{name}]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


def check_config(argv: Sequence[str]) -> int:
    """`pyo3mq check-config FILE`: reads FILE as the broker would at start (settings,
    then the password file, ACL file and TLS files it names) without starting anything.
    Prints the effective settings and exits 0, or prints what is wrong and exits 1."""
    parser = argparse.ArgumentParser(
        prog="pyo3mq check-config",
        description="Check a config file and print the settings the broker would use.",
    )
    parser.add_argument("file", metavar="FILE", help="TOML config file")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.file, None, None)
        problems = check_config_files(config.values())
    except (OSError, ValueError, TypeError) as exc:
        print(f"pyo3mq: {exc}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"pyo3mq: {args.file}: {problem}", file=sys.stderr)
        return 1
    sys.stdout.write(f"# {args.file}: OK. The effective settings:\n")
    sys.stdout.write(effective_settings(config))
    return 0


class _Formatter(logging.Formatter):
    """The layout of the core's stderr lines (UTC timestamp, level, message), so the
    command's own lines read the same."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        micros = int((record.created % 1) * 1_000_000)
        level = {"WARNING": "WARN", "CRITICAL": "ERROR"}.get(record.levelname, record.levelname)
        return f"{stamp}.{micros:06d}Z {level:>5} {record.getMessage()}"


class _SyslogFormatter(logging.Formatter):
    """syslog adds the time; the tag names the program and its pid."""

    def format(self, record: logging.LogRecord) -> str:
        return f"pyo3mq[{os.getpid()}]: {record.getMessage()}"


def setup_logging(level: str, log_file: str | None = None, syslog: bool = False) -> None:
    """Where log lines go. By default the core writes its lines straight to stderr, and
    the command's own lines follow in the same layout. With `--log-file` or `--syslog`
    the core's lines go through Python's `logging` instead (a thread of their own hands
    them over; the broker never waits for it) and every line, the command's included,
    goes to the file (a WatchedFileHandler: reopened after logrotate moves the file)
    and/or to syslog."""
    python_level = {"warn": "WARNING", "trace": "DEBUG"}.get(level, level.upper())
    if log_file is None and not syslog:
        init_logging(level)
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter())
        log.addHandler(handler)
        log.setLevel(python_level)
        log.propagate = False
        return
    root = logging.getLogger("pyo3mq")
    root.setLevel(python_level)
    root.propagate = False
    if log_file is not None:
        handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        handler.setFormatter(_Formatter())
        root.addHandler(handler)
    if syslog:
        address = SYSLOG_ADDRESS
        if isinstance(address, str) and not os.path.exists(address):
            address = ("localhost", logging.handlers.SYSLOG_UDP_PORT)
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.setFormatter(_SyslogFormatter())
        root.addHandler(handler)
    init_logging(level, to_python=True)


# -- what each signal does -------------------------------------------------------------


def reload(broker: Broker) -> None:
    """SIGHUP: the one place a configuration reload happens. It reads the password file,
    the ACL file and the TLS listeners' certificate, key and CA files again (the settings
    themselves are read at start only); open connections are kept. A part that cannot be
    read keeps what it had, and the broker serves on either way."""
    try:
        result = broker.reload()
    except ReloadError as exc:
        result = exc.result
    done = [_RELOADED[part](result) for part in result.reloaded]
    # Why each failed is in the core's line just before this one: not repeated here.
    kept = [_KEPT[part] for part in result.failed]
    if kept:
        log.error("SIGHUP received: %s", "; ".join(done + kept))
    elif done:
        log.info("SIGHUP received: %s", "; ".join(done))
    else:
        log.info("SIGHUP received: nothing to reload")


_RELOADED: dict[str, Callable[[ReloadResult], str]] = {
    "password_file": lambda r: "password file reloaded",
    "acl_file": lambda r: "ACL file reloaded",
    "tls": lambda r: f"TLS certificates reloaded for {r.tls_listeners} listener(s)",
}
_KEPT = {
    "password_file": "password file not reloaded (the previous users stay)",
    "acl_file": "ACL file not reloaded (the previous rules stay)",
    "tls": "TLS files not reloaded (the previous ones stay)",
}


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
    if argv[:1] == ["check-config"]:
        return check_config(argv[1:])
    args = _parse_args(argv)
    try:
        setup_logging(args.log_level, args.log_file, args.syslog)
    except OSError as exc:
        print(f"pyo3mq: cannot log to {args.log_file or 'syslog'}: {exc}", file=sys.stderr)
        return 2
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
            metrics_port=args.metrics_port,
        )
        broker = Broker(config)
        broker.start()
    except (OSError, ValueError, TypeError, OverflowError, BrokerStartError) as exc:
        print(f"pyo3mq: {exc}", file=sys.stderr)
        return 2

    for host, port in broker.addresses:
        print(f"pyo3mq {__version__} listening on {host}:{port}", flush=True)
    if broker.metrics_address is not None:
        host, port = broker.metrics_address
        print(f"pyo3mq metrics on http://{host}:{port}/metrics", flush=True)
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
