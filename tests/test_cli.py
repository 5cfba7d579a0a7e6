"""The `pyo3mq` command as a user runs it: a subprocess, signals, exit codes, config files."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyo3mq
import pytest
import tomllib
from support.mqtt_raw import DISCONNECT, PINGREQ, RawClient, publish, subscribe

SCRIPT = Path(sys.executable).with_name("pyo3mq")
COMMANDS = {
    "python-m": [sys.executable, "-m", "pyo3mq"],
    "script": [str(SCRIPT)],
}
LISTENING = re.compile(r"^pyo3mq (\S+) listening on (\S+):(\d+)$")


def run(cmd: list[str], *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Running:
    """A `pyo3mq` process started in the background, with its address once it listens."""

    def __init__(self, cmd: list[str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [*cmd, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout_lines: list[str] = []
        # stderr read so far (raw, from the descriptor: see `wait_stderr`), and how much
        # of it `wait_stderr` has already matched against.
        self._stderr = b""
        self._matched = 0
        self.host, self.port = self._wait_listening(timeout=15.0)

    def _wait_listening(self, timeout: float) -> tuple[str, int]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not sel.select(timeout=deadline - time.monotonic()):
                    continue
                line = self.proc.stdout.readline()
                if not line:
                    _out, err = self.proc.communicate(timeout=5)
                    pytest.fail(f"pyo3mq exited ({self.proc.returncode}) before listening: {err}")
                self.stdout_lines.append(line)
                m = LISTENING.match(line.rstrip("\n"))
                if m:
                    return m.group(2), int(m.group(3))
        finally:
            sel.close()
        self.proc.kill()
        pytest.fail(f"no 'listening on' line within {timeout} s: {self.stdout_lines!r}")

    def wait_stderr(self, text: str, timeout: float = 10.0) -> str:
        """Reads stderr while the process runs until a line containing `text` arrives
        after the last one matched; returns that line. Reads the descriptor itself, so no
        bytes sit in a Python buffer that the selector cannot see."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                text_so_far = self._stderr.decode("utf-8", "replace")
                lines = text_so_far[self._matched :].splitlines(keepends=True)
                offset = self._matched
                for line in lines:
                    offset += len(line)
                    if line.endswith("\n") and text in line:
                        self._matched = offset
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no stderr line with {text!r} within {timeout} s: {text_so_far}")
                if sel.select(timeout=remaining):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        self.proc.wait(timeout=5)
                        pytest.fail(
                            f"pyo3mq exited ({self.proc.returncode}) before logging {text!r}: "
                            f"{text_so_far}"
                        )
                    self._stderr += chunk

    def stop(self, sig: int, timeout: float = 5.0) -> tuple[int, str, str]:
        """Sends `sig`; returns (exit code, rest of stdout, stderr)."""
        self.proc.send_signal(sig)
        started = time.monotonic()
        out, err = self.proc.communicate(timeout=timeout)
        assert time.monotonic() - started < timeout
        assert self.proc.returncode is not None
        return self.proc.returncode, out, self._stderr.decode("utf-8", "replace") + err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Collects started processes so a failing test never leaves one behind."""
    procs: list[Running] = []
    yield procs
    for p in procs:
        p.kill()


def start(procs: list[Running], cmd: list[str], *args: str) -> Running:
    r = Running(cmd, *args)
    procs.append(r)
    return r


def roundtrip(port: int, host: str = "127.0.0.1") -> None:
    """Subscriber and publisher on separate raw connections; exact bytes at each step."""
    with RawClient(port, host=host) as sub, RawClient(port, host=host) as pub:
        assert sub.connect("cli-sub").body == b"\x00\x00"
        sub.send(subscribe(1, ("cli/t", 1)))
        ack = sub.recv()
        assert (ack.first, ack.body) == (0x90, b"\x00\x01\x01")
        assert pub.connect("cli-pub").body == b"\x00\x00"
        pub.send(publish("cli/t", b"hello", qos=1, pkid=3))
        puback = pub.recv()
        assert (puback.first, puback.body) == (0x40, b"\x00\x03")
        got = sub.recv()
        assert got.first == 0x32
        topic, pkid, payload = got.publish_fields()
        assert (topic, payload) == ("cli/t", b"hello")
        assert pkid


# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", list(COMMANDS))
def test_help_lists_options(how: str) -> None:
    """[MQTT-7.1.1-1] `pyo3mq --help` exits 0 and documents --host, --port, --config and
    --log-level."""
    res = run(COMMANDS[how], "--help")
    assert res.returncode == 0, res.stderr
    for option in ("--host", "--port", "--config", "--log-level", "--version"):
        assert option in res.stdout
    assert res.stdout.startswith("usage: pyo3mq")


@pytest.mark.parametrize("how", list(COMMANDS))
def test_version(how: str) -> None:
    """[MQTT-7.1.1-1] `pyo3mq --version` prints the package version and exits 0."""
    import pyo3mq

    res = run(COMMANDS[how], "--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"pyo3mq {pyo3mq.__version__}"


@pytest.mark.parametrize(
    "how, sig",
    [
        pytest.param("python-m", signal.SIGTERM, id="python-m-SIGTERM"),
        pytest.param("script", signal.SIGTERM, id="script-SIGTERM"),
        pytest.param("python-m", signal.SIGINT, id="python-m-SIGINT"),
        pytest.param("script", signal.SIGINT, id="script-SIGINT"),
        pytest.param("script", signal.SIGQUIT, id="script-SIGQUIT"),
    ],
)
def test_serve_roundtrip_then_signal_stops(running: list[Running], how: str, sig: int) -> None:
    """[MQTT-7.1.1-1] [MQTT-3.1.4-4] `pyo3mq --host 127.0.0.1 --port 0 --log-level info` prints
    its address, serves a pub/sub round trip, and on SIGTERM/SIGINT/SIGQUIT closes its
    clients, logs "broker stopped" and exits 0 within a few seconds."""
    r = start(running, COMMANDS[how], "--host", "127.0.0.1", "--port", "0", "--log-level", "info")
    assert r.host == "127.0.0.1"
    assert r.port != 0
    roundtrip(r.port)
    with RawClient(r.port) as idle:
        assert idle.connect("idle").body == b"\x00\x00"
        idle.send(PINGREQ)
        pong = idle.recv()
        assert (pong.first, pong.body) == (0xD0, b"")
        code, _out, err = r.stop(sig)
        # The connected client is closed as part of the shutdown.
        assert idle.expect_closed(timeout=5.0) == b""
    assert code == 0, err
    assert "broker stopped" in err
    assert "listening on 127.0.0.1:" in err
    assert f"{signal.Signals(sig).name} received: stopping" in err


def test_default_host_is_loopback(running: list[Running]) -> None:
    """[MQTT-7.1.1-1] Without --host (and without a config file) the command listens on
    127.0.0.1 only, as Mosquitto 2.0 does with no listener configured: exposing the
    broker to the network is a decision (--host 0.0.0.0), not a default. --help says so."""
    r = start(running, COMMANDS["script"], "--port", "0")
    assert r.host == "127.0.0.1"
    roundtrip(r.port)
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err
    assert "default 127.0.0.1" in run(COMMANDS["script"], "--help").stdout


# -- signals: only SIGINT, SIGTERM and SIGQUIT stop the broker -------------------------


def store_config(tmp_path: Path, persist_interval: float = 0.0) -> Path:
    """A config with a SQLite store that is written only at stop (persist_interval = 0)
    unless something asks, and no $SYS traffic, so every count and save is the test's."""
    config = tmp_path / "broker.toml"
    config.write_text(
        'listeners = ["tcp://127.0.0.1:0"]\n'
        f'session_store = "sqlite:{tmp_path / "sessions.db"}"\n'
        f"persist_interval = {persist_interval}\n"
        "sys_interval = 0\n"
    )
    return config


def leave_queued_message(port: int, client_id: str = "keeper") -> None:
    """A persistent session subscribed to keep/# goes offline; a QoS 1 message is then
    queued for it. Exact bytes at each step."""
    with RawClient(port) as keeper:
        assert keeper.connect(client_id, clean=False).body in (b"\x00\x00", b"\x01\x00")
        keeper.send(subscribe(1, ("keep/#", 1)))
        ack = keeper.recv()
        assert (ack.first, ack.body) == (0x90, b"\x00\x01\x01")
        keeper.send(DISCONNECT)
        assert keeper.expect_closed() == b""
    with RawClient(port) as pub:
        assert pub.connect("keep-pub").body == b"\x00\x00"
        pub.send(publish("keep/a", b"queued", qos=1, pkid=7))
        puback = pub.recv()
        assert (puback.first, puback.body) == (0x40, b"\x00\x07")


def resume(port: int, client_id: str = "keeper") -> tuple[bool, list[tuple[str, bytes]]]:
    """Reconnects the persistent session: (session present, messages delivered)."""
    with RawClient(port) as keeper:
        connack = keeper.connect(client_id, clean=False)
        present = connack.body == b"\x01\x00"
        assert connack.body in (b"\x00\x00", b"\x01\x00")
        got: list[tuple[str, bytes]] = []
        if present:
            msg = keeper.recv()
            assert msg.first & 0xF6 == 0x32, f"expected a QoS 1 PUBLISH, got {msg.first:#x}"
            topic, pkid, payload = msg.publish_fields()
            assert pkid is not None
            keeper.send(bytes([0x40, 2]) + pkid.to_bytes(2, "big"))
            got.append((topic, payload))
        keeper.send(DISCONNECT)
    return present, got


@pytest.mark.parametrize(
    "sig, logged",
    [
        pytest.param(signal.SIGHUP, "SIGHUP received: nothing to reload", id="SIGHUP"),
        pytest.param(signal.SIGUSR1, "SIGUSR1 received: session store saved", id="SIGUSR1"),
        pytest.param(
            signal.SIGUSR2,
            "SIGUSR2 received: 1 clients connected, 0 offline persistent sessions, "
            "1 subscriptions, 0 retained messages",
            id="SIGUSR2",
        ),
    ],
)
def test_signal_leaves_the_broker_serving(
    running: list[Running], tmp_path: Path, sig: int, logged: str
) -> None:
    """[MQTT-7.1.1-1] SIGHUP (logrotate, service managers), SIGUSR1 and SIGUSR2 never stop
    the command (their default action would kill it with no final save): each is logged,
    twice in a row too, the connected client keeps its connection, and new clients still
    get CONNACK and a pub/sub round trip."""
    r = start(running, COMMANDS["script"], "--config", str(store_config(tmp_path)))
    with RawClient(r.port) as watcher:
        assert watcher.connect("watcher").body == b"\x00\x00"
        watcher.send(subscribe(1, ("w/#", 0)))
        ack = watcher.recv()
        assert (ack.first, ack.body) == (0x90, b"\x00\x01\x00")
        for _ in range(2):
            r.proc.send_signal(sig)
            assert logged in r.wait_stderr(logged)
        assert r.proc.poll() is None
        watcher.send(PINGREQ)
        pong = watcher.recv()
        assert (pong.first, pong.body) == (0xD0, b"")
        roundtrip(r.port)
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err
    assert "broker stopped" in err


def test_sigusr1_saves_the_store_now(running: list[Running], tmp_path: Path) -> None:
    """[MQTT-3.1.2-4] SIGUSR1 writes the durable store at once (Mosquitto writes its
    persistence file): a broker killed with SIGKILL right after it comes back with the
    offline session and its queued message. Without SIGUSR1 the same kill loses them (this
    config saves only at stop), which shows the save was the signal's doing."""
    config = str(store_config(tmp_path))
    r = start(running, COMMANDS["script"], "--config", config)
    leave_queued_message(r.port)
    r.kill()
    r = start(running, COMMANDS["script"], "--config", config)
    assert resume(r.port) == (False, [])

    leave_queued_message(r.port)
    r.proc.send_signal(signal.SIGUSR1)
    r.wait_stderr("SIGUSR1 received: session store saved")
    r.kill()
    assert r.proc.returncode == -signal.SIGKILL
    r = start(running, COMMANDS["script"], "--config", config)
    assert resume(r.port) == (True, [("keep/a", b"queued")])
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err


def test_sigquit_stops_gracefully_with_the_final_save(
    running: list[Running], tmp_path: Path
) -> None:
    """[MQTT-3.1.2-4] SIGQUIT (whose default action dumps core) stops the command like
    SIGTERM: exit 0, connected clients closed, and the final save keeps the offline
    session and its queued message for the next start."""
    config = str(store_config(tmp_path))
    r = start(running, COMMANDS["script"], "--config", config)
    leave_queued_message(r.port)
    with RawClient(r.port) as idle:
        assert idle.connect("idle").body == b"\x00\x00"
        code, _out, err = r.stop(signal.SIGQUIT)
        assert idle.expect_closed(timeout=5.0) == b""
    assert code == 0, err
    assert "SIGQUIT received: stopping" in err
    assert "broker stopped" in err
    r = start(running, COMMANDS["script"], "--config", config)
    assert resume(r.port) == (True, [("keep/a", b"queued")])
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err


def test_embedded_broker_leaves_signal_handlers_alone() -> None:
    """[MQTT-7.1.1-1] A `Broker` inside someone's program installs no signal handler: the
    program owns its signals. Only the `pyo3mq` command handles them."""
    names = ("SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2")
    before = {n: signal.getsignal(getattr(signal, n)) for n in names}
    plain = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"])
    hooked = pyo3mq.Broker(listeners=["tcp://127.0.0.1:0"], authenticator=lambda c, u, p: True)
    for broker in (plain, hooked):
        broker.start()
        try:
            assert {n: signal.getsignal(getattr(signal, n)) for n in names} == before
        finally:
            broker.stop()


def test_config_file_takes_effect(running: list[Running], tmp_path: Path) -> None:
    """[MQTT-4.8.0-1] `--config FILE` applies its settings: the listener it names, and
    max_packet_size = 1024, so a 2 KiB PUBLISH closes that connection while small ones work."""
    config = tmp_path / "broker.toml"
    config.write_text('listeners = ["tcp://127.0.0.1:0"]\nmax_packet_size = 1024\n')
    r = start(running, COMMANDS["script"], "--config", str(config), "--log-level", "info")
    assert r.host == "127.0.0.1"
    roundtrip(r.port)
    with RawClient(r.port) as c:
        assert c.connect("big").body == b"\x00\x00"
        small = publish("cfg/t", b"x" * 900, qos=1, pkid=1)
        c.send(small)
        ack = c.recv()
        assert (ack.first, ack.body) == (0x40, b"\x00\x01")
        big = publish("cfg/t", b"x" * 2048, qos=1, pkid=2)
        c.send(big)
        assert c.expect_closed() == b""
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err
    assert "exceeds the maximum packet size of 1024 bytes" in err


def test_config_file_broker_table(running: list[Running], tmp_path: Path) -> None:
    """[MQTT-7.1.1-1] Settings may also sit in a [broker] table; --host/--port replace the
    file's listeners."""
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nlisteners = ["tcp://127.0.0.1:1"]\nmax_packet_size = 1024\n')
    r = start(
        running, COMMANDS["python-m"], "--config", str(config), "--port", "0", "--host", "127.0.0.1"
    )
    assert r.port not in (0, 1)
    with RawClient(r.port) as c:
        assert c.connect("tbl").body == b"\x00\x00"
        c.send(publish("cfg/t", b"x" * 2048))
        assert c.expect_closed() == b""
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err


def test_unknown_config_key_exits_2(tmp_path: Path) -> None:
    """[MQTT-7.1.1-1] An unknown key in the config file: exit code 2 and a message naming it."""
    config = tmp_path / "broker.toml"
    config.write_text('listeners = ["tcp://127.0.0.1:0"]\nmax_pakcet_size = 1024\n')
    res = run(COMMANDS["script"], "--config", str(config))
    assert res.returncode == 2
    assert "max_pakcet_size" in res.stderr
    assert "listening" not in res.stdout


@pytest.mark.parametrize(
    "line, key",
    [
        pytest.param("max_packet_size = 1", "max_packet_size", id="too-small"),
        pytest.param("max_packet_size = -1", "max_packet_size", id="negative"),
        pytest.param('max_packet_size = "big"', "max_packet_size", id="string-for-int"),
        pytest.param("worker_threads = 99999999999999999999", "worker_threads", id="huge-int"),
        pytest.param('queue_overflow = "never"', "queue_overflow", id="bad-policy"),
        pytest.param("connect_timeout = -1.0", "connect_timeout", id="negative-timeout"),
        pytest.param('allow_anonymous = "yes"', "allow_anonymous", id="string-for-bool"),
    ],
)
def test_invalid_config_value_exits_2(tmp_path: Path, line: str, key: str) -> None:
    """[MQTT-7.1.1-1] A config value of the wrong type or out of range: exit code 2 with a
    one-line message naming the setting, never a traceback."""
    config = tmp_path / "broker.toml"
    config.write_text(f'listeners = ["tcp://127.0.0.1:0"]\n{line}\n')
    res = run(COMMANDS["script"], "--config", str(config))
    assert "Traceback" not in res.stderr
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("pyo3mq: ")
    assert key in res.stderr
    assert "listening" not in res.stdout


def test_listeners_must_be_a_list(tmp_path: Path) -> None:
    """[MQTT-7.1.1-1] `listeners = "tcp://..."` (a string, not a list) is refused with a message
    naming `listeners`, not read as a list of one-character listeners."""
    config = tmp_path / "broker.toml"
    config.write_text('listeners = "tcp://127.0.0.1:0"\n')
    res = run(COMMANDS["script"], "--config", str(config))
    assert res.returncode == 2, res.stderr
    assert "listeners" in res.stderr
    assert "Traceback" not in res.stderr


def test_invalid_toml_exits_2(tmp_path: Path) -> None:
    """[MQTT-7.1.1-1] A config file that is not TOML: exit code 2, no traceback."""
    config = tmp_path / "broker.toml"
    config.write_text("listeners = [\n")
    res = run(COMMANDS["python-m"], "--config", str(config))
    assert res.returncode == 2
    assert res.stderr.startswith("pyo3mq: ")
    assert "Traceback" not in res.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    """[MQTT-7.1.1-1] A config path that does not exist: exit code 2, no traceback."""
    res = run(COMMANDS["python-m"], "--config", str(tmp_path / "nope.toml"))
    assert res.returncode == 2
    assert "nope.toml" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("how", list(COMMANDS))
def test_port_in_use_exits_2(how: str) -> None:
    """[MQTT-7.1.1-1] A port already in use: exit code 2 with a message, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        res = run(COMMANDS[how], "--host", "127.0.0.1", "--port", str(taken))
    assert res.returncode == 2
    assert str(taken) in res.stderr
    assert "Traceback" not in res.stderr
    assert "listening" not in res.stdout


def test_bad_log_level_is_a_usage_error() -> None:
    """[MQTT-7.1.1-1] An unknown --log-level is refused by the argument parser (exit 2)."""
    res = run(COMMANDS["python-m"], "--log-level", "loud")
    assert res.returncode == 2
    assert "--log-level" in res.stderr


def test_script_is_the_venv_entry_point() -> None:
    """[MQTT-7.1.1-1] The console script exists next to the interpreter and is executable."""
    assert SCRIPT.exists()
    assert os.access(SCRIPT, os.X_OK)


# -- SIGHUP reloads the password and ACL files ---------------------------------------------


def test_sighup_reloads_password_and_acl_files(running: list[Running], tmp_path: Path) -> None:
    """SIGHUP re-reads the password file and the ACL file: a user removed from the
    password file stays connected but cannot log in again, an ACL change denies the next
    subscription of a connected client, and a file that no longer parses keeps the
    previous rules, with the reason (file and line) logged before the SIGHUP line."""
    from pyo3mq.passwd import hash_password

    passwd, acl = tmp_path / "passwd", tmp_path / "acl"

    def users(*names: str) -> None:
        passwd.write_text("".join(f"{n}:{hash_password('pw', iterations=101)}\n" for n in names))

    users("alice", "bob")
    acl.write_text("user alice\ntopic a/#\ntopic b/#\n")
    config = tmp_path / "broker.toml"
    config.write_text(
        f'listeners = ["tcp://127.0.0.1:0"]\npassword_file = "{passwd}"\nacl_file = "{acl}"\n'
    )
    r = start(running, COMMANDS["script"], "--config", str(config))
    with RawClient(r.port) as alice:
        assert alice.connect("alice", username="alice", password=b"pw").body == b"\x00\x00"
        users("bob")
        acl.write_text("user alice\ntopic a/#\n")
        r.proc.send_signal(signal.SIGHUP)
        line = r.wait_stderr("SIGHUP received")
        assert "SIGHUP received: password file reloaded; ACL file reloaded" in line
        with RawClient(r.port) as again:
            assert again.connect("alice-2", username="alice", password=b"pw").body == b"\x00\x04"
        alice.send(subscribe(1, ("b/#", 1), ("a/#", 1)))
        ack = alice.recv()
        assert (ack.first, ack.body) == (0x90, b"\x00\x01\x80\x01")

        acl.write_text("user alice\ntopic a/#\nbogus line\n")
        r.proc.send_signal(signal.SIGHUP)
        why = r.wait_stderr("not reloaded, the previous rules stay")
        assert f"ACL file {acl}: line 3" in why
        line = r.wait_stderr("SIGHUP received")
        assert "password file reloaded; ACL file not reloaded (the previous rules stay)" in line
        assert " ERROR " in line
        alice.send(subscribe(2, ("b/#", 1), ("a/#", 1)))
        ack = alice.recv()
        assert (ack.first, ack.body) == (0x90, b"\x00\x02\x80\x01")
        alice.send(PINGREQ)
        assert alice.recv().first == 0xD0
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err


# -- check-config ------------------------------------------------------------------------


def test_check_config_prints_the_effective_settings(tmp_path: Path) -> None:
    """`pyo3mq check-config FILE` exits 0 and prints every setting with the value the
    broker would use (defaults included), as a config file that reads back the same."""
    config = tmp_path / "broker.toml"
    config.write_text(
        '[broker]\nlisteners = ["tcp://127.0.0.1:0"]\nmax_inflight = 7\n'
        'persistent_client_expiration = "2d"\n\n'
        '[[broker.listener]]\nuri = "tcp://127.0.0.1:0"\n'
    )
    res = run(COMMANDS["script"], "check-config", str(config))
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "max_inflight = 7\n" in res.stdout
    assert "max_queued_messages = 1000\n" in res.stdout  # a default
    assert "# password_file is not set\n" in res.stdout
    printed = tomllib.loads(res.stdout)["broker"]
    assert pyo3mq.BrokerConfig.from_mapping(printed) == pyo3mq.BrokerConfig.from_mapping(
        tomllib.loads(config.read_text())["broker"]
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("listeners = [\n", "not valid TOML", id="toml-end"),
        pytest.param("listeners foo\n", "(at line 1, column 11)", id="toml-line"),
        pytest.param("max_pakcet_size = 1\n", "unknown setting(s): max_pakcet_size", id="unknown"),
        pytest.param("max_inflight = 70000\n", "max_inflight", id="range"),
        pytest.param('session_store = "sqlite:"\n', "session_store", id="sqlite-no-path"),
        pytest.param('acl_file = "/nonexistent/acl"\n', "cannot read ACL file", id="acl"),
        pytest.param('password_file = "PASSWD"\n', "password file", id="passwd-parse"),
        pytest.param(
            'listeners = ["tls://127.0.0.1:0"]\ncertfile = "/nonexistent.pem"\n'
            'keyfile = "/nonexistent.key"\n',
            "/nonexistent.pem",
            id="tls",
        ),
    ],
)
def test_check_config_names_the_problem_and_exits_1(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A config file with a problem the broker would only meet at start (a TOML error, a
    bad value, a file it names that cannot be read or parsed): exit 1, one line per
    problem naming the config file, nothing on stdout, no traceback."""
    bad_passwd = tmp_path / "passwd"
    bad_passwd.write_text("alice-without-hash\n")
    config = tmp_path / "broker.toml"
    config.write_text(text.replace("PASSWD", str(bad_passwd)))
    res = run(COMMANDS["python-m"], "check-config", str(config))
    assert res.returncode == 1, res.stdout
    assert res.stdout == ""
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith(f"pyo3mq: {config}: ")
    assert expected in res.stderr
    assert "pyo3mq: pyo3mq:" not in res.stderr


def test_toml_error_names_the_file_and_line(tmp_path: Path) -> None:
    """The broker itself (not only check-config) names the file and line of a TOML error."""
    config = tmp_path / "broker.toml"
    config.write_text('listeners = ["tcp://127.0.0.1:0"]\nmax_inflight 3\n')
    res = run(COMMANDS["script"], "--config", str(config))
    assert res.returncode == 2
    assert res.stderr.startswith(f"pyo3mq: {config}: not valid TOML: ")
    assert "(at line 2, column 14)" in res.stderr


# -- where log lines go ------------------------------------------------------------------


def test_log_file_gets_every_line_and_follows_logrotate(
    running: list[Running], tmp_path: Path
) -> None:
    """`--log-file PATH`: the core's lines and the command's own go to the file, in the
    stderr layout, nothing to stderr; after logrotate moves the file (and before any
    SIGHUP), new lines go to a new file at PATH."""
    log_file = tmp_path / "pyo3mq.log"
    r = start(running, COMMANDS["script"], "--port", "0", "--log-file", str(log_file))
    with RawClient(r.port) as c:
        assert c.connect("logged", username="carol").body == b"\x00\x00"
        c.send(DISCONNECT)

    def wait_for(path: Path, text: str) -> str:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            content = path.read_text() if path.exists() else ""
            if text in content:
                return content
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in {path}: {content!r}")

    content = wait_for(log_file, "client disconnected client_id=logged")
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z  INFO client connected client_id=logged "
        r'peer=127\.0\.0\.1:\d+ username="carol" ',
        content,
        re.M,
    ), content
    log_file.rename(tmp_path / "pyo3mq.log.1")
    r.proc.send_signal(signal.SIGUSR2)
    assert "SIGUSR2 received: 0 clients connected" in wait_for(log_file, "SIGUSR2 received")
    code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0, err
    assert "broker stopped" in wait_for(log_file, "broker stopped")
    assert err == ""


def test_unwritable_log_file_exits_2(tmp_path: Path) -> None:
    res = run(COMMANDS["script"], "--port", "0", "--log-file", str(tmp_path / "no" / "x.log"))
    assert res.returncode == 2
    assert res.stderr.startswith("pyo3mq: cannot log to ")
    assert "listening" not in res.stdout


SYSLOG_SCRIPT = """
import sys
import pyo3mq.cli as cli
cli.SYSLOG_ADDRESS = ("127.0.0.1", int(sys.argv[1]))
sys.exit(cli.main(["--port", "0", "--syslog"]))
"""


def test_syslog_gets_every_line(running: list[Running]) -> None:
    """`--syslog`: the core's lines and the command's go to syslog (a UDP socket standing
    in for the daemon here), facility daemon, tagged `pyo3mq[PID]`, nothing to stderr."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as syslogd:
        syslogd.bind(("127.0.0.1", 0))
        syslogd.settimeout(10)
        r = start(running, [sys.executable, "-c", SYSLOG_SCRIPT, str(syslogd.getsockname()[1])])
        with RawClient(r.port) as c:
            assert c.connect("via-syslog").body == b"\x00\x00"
            c.send(DISCONNECT)
        r.proc.send_signal(signal.SIGUSR2)
        received: list[str] = []
        # The core's lines reach Python's logging through the forwarding thread and the
        # command's own lines do not, so the two may interleave in either order: wait
        # for both (each recv is bounded by the socket's timeout).
        while not (
            any("SIGUSR2 received" in m for m in received)
            and any("client connected client_id=via-syslog" in m for m in received)
        ):
            received.append(syslogd.recv(65536).decode())
        code, _out, err = r.stop(signal.SIGTERM)
    assert code == 0 and err == "", err
    pid = r.proc.pid
    # <30>: facility daemon (3) * 8 + severity info (6).
    connected = [m for m in received if "client connected client_id=via-syslog" in m]
    assert connected and connected[0].startswith(f"<30>pyo3mq[{pid}]: "), received
    assert any(m.startswith(f"<30>pyo3mq[{pid}]: SIGUSR2 received") for m in received)
