"""`pyo3mq passwd`: mosquitto_passwd's flags, and files both brokers accept."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pyo3mq
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.mosquitto import MOSQUITTO_PASSWD


def passwd(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyo3mq", "passwd", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


# paho 2 reports MQTT 3.1.1 return codes as 5.0 reason codes: 4 (bad user name or
# password) as 0x86 and 5 (not authorized) as 0x87.
BAD_CREDENTIALS, NOT_AUTHORIZED = 0x86, 0x87


def connack(port: int, user: str, password: str) -> int:
    """The CONNACK code a paho client gets for these credentials (0: accepted)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pw", protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    codes: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: codes.append(rc.value)
    client.connect("127.0.0.1", port)
    for _ in range(200):
        client.loop(0.05)
        if codes:
            break
    client.disconnect()
    assert codes, "no CONNACK"
    return codes[0]


def test_flags_create_add_change_delete(tmp_path: Path) -> None:
    """-c creates (replacing), -b takes the password, a second USER appends, the same
    USER keeps its line, -D deletes; a missing file without -c is an error."""
    f = tmp_path / "passwd"
    assert passwd("-b", str(f), "alice", "x").returncode == 1  # no file, no -c
    assert passwd("-c", "-b", str(f), "alice", "one").returncode == 0
    assert passwd("-b", str(f), "bob", "two").returncode == 0
    first = f.read_text().splitlines()
    assert [line.split(":")[0] for line in first] == ["alice", "bob"]
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in first)
    assert passwd("-b", str(f), "alice", "three").returncode == 0
    again = f.read_text().splitlines()
    assert [line.split(":")[0] for line in again] == ["alice", "bob"]
    assert again[0] != first[0] and again[1] == first[1]
    assert f.stat().st_mode & 0o777 == 0o600
    assert passwd("-D", str(f), "alice").returncode == 0
    assert [line.split(":")[0] for line in f.read_text().splitlines()] == ["bob"]
    gone = passwd("-D", str(f), "alice")
    assert gone.returncode == 1 and "not in" in gone.stderr
    assert passwd("-c", "-b", str(f), "carol", "four").returncode == 0
    assert [line.split(":")[0] for line in f.read_text().splitlines()] == ["carol"]
    assert passwd("-b", str(f), "a:b", "x").returncode == 1
    assert passwd("-I", "5000", "-b", str(f), "dave", "x").returncode == 0
    assert "dave:$7$5000$" in f.read_text()


def test_prompts_twice_without_b(tmp_path: Path) -> None:
    """Without -b the password is asked twice; a mismatch changes nothing. (getpass
    reads standard input when there is no terminal.)"""
    f = tmp_path / "passwd"
    bad = passwd("-c", str(f), "alice", stdin="one\ntwo\n")
    assert bad.returncode == 1 and "do not match" in bad.stderr
    assert not f.exists()
    assert passwd("-c", str(f), "alice", stdin="s3cret\ns3cret\n").returncode == 0
    assert f.read_text().startswith("alice:$7$")


def test_written_file_works_in_both_brokers(
    tmp_path: Path, mosquitto: Callable[..., int], make_broker: Callable[..., pyo3mq.Broker]
) -> None:
    """A file written by `pyo3mq passwd` authenticates against Debian's mosquitto and
    pyo3mq alike (right password 0, wrong one refused)."""
    f = tmp_path / "passwd"
    assert passwd("-c", "-b", str(f), "alice", "s3cret").returncode == 0
    assert passwd("-b", str(f), "bob", "p@ss:word").returncode == 0
    mosq = mosquitto("allow_anonymous false", f"password_file {f}")
    ours = make_broker(password_file=str(f)).addresses[0][1]
    for port in (mosq, ours):
        assert connack(port, "alice", "s3cret") == 0
        assert connack(port, "bob", "p@ss:word") == 0
        assert connack(port, "alice", "wrong") in (BAD_CREDENTIALS, NOT_AUTHORIZED)


def test_mosquitto_passwd_file_works_in_pyo3mq(
    tmp_path: Path, make_broker: Callable[..., pyo3mq.Broker]
) -> None:
    """And the other way: a file written by `mosquitto_passwd` authenticates here."""
    if not Path(MOSQUITTO_PASSWD).exists():
        pytest.skip("mosquitto_passwd is not installed")
    f = tmp_path / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(f), "eve", "pw1"], check=True)
    port = make_broker(password_file=str(f)).addresses[0][1]
    assert connack(port, "eve", "pw1") == 0
    assert connack(port, "eve", "pw2") == BAD_CREDENTIALS
