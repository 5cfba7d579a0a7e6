"""MQTT 5.0 enhanced authentication with SCRAM-SHA-256 (RFC 5802, RFC 7677): the
password never crosses the wire, and the client checks that the broker knows it too.

The broker side is a hook for `pyo3mq.Broker(enhanced_auth={"SCRAM-SHA-256": ...})`;
the client side speaks MQTT 5.0 over a plain socket, since common client libraries
(paho-mqtt among them) cannot answer the broker's AUTH packets. Both use only hashlib,
hmac and secrets. Run the broker, then log in from another shell:

    python examples/scram_auth.py --port 1883
    python examples/scram_auth.py --port 1883 --login alice wonderland

The exchange: CONNECT carries the client-first message (Authentication Data), the broker
answers AUTH 0x18 with its salt, iteration count and nonce, the client proves it knows
the password in AUTH 0x18, and the CONNACK 0x00 carries the broker's signature, which the
client verifies. A wrong password gets CONNACK 0x87. A connected client can prove itself
again with AUTH 0x19 (re-authentication); a failure there is DISCONNECT 0x87.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import signal
import socket
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pyo3mq
from pyo3mq import AuthResult, EnhancedAuthRequest

METHOD = "SCRAM-SHA-256"
#: Demo users (user name -> password). A real broker stores only `Credentials`.
USERS: dict[str, str] = {"alice": "wonderland", "bob": "builder"}
ITERATIONS = 4096


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _fields(message: str) -> dict[str, str]:
    """`a=1,b=2` as a dict (SCRAM attribute-value pairs; values may contain '=')."""
    out = {}
    for part in message.split(","):
        key, sep, value = part.partition("=")
        if sep and len(key) == 1:
            out[key] = value
    return out


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _unsaslname(name: str) -> str:
    return name.replace("=2C", ",").replace("=3D", "=")


@dataclass(frozen=True)
class Credentials:
    """What the broker stores per user (RFC 5802, section 3): never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def derive(
        cls, password: str, salt: bytes | None = None, iterations: int = ITERATIONS
    ) -> Credentials:
        salt = salt if salt is not None else secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        stored_key = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
        return cls(salt, iterations, stored_key, _hmac(salted, b"Server Key"))


@dataclass(frozen=True)
class _Challenged:
    """The server's state between its challenge and the client's proof."""

    user: str
    nonce: str
    client_first_bare: str
    server_first: str


class ScramServer:
    """The broker's half: an `enhanced_auth` hook. Steps are cheap (a few HMACs), so it
    is an `async def` and runs on the event loop; PBKDF2 runs once per user, here."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._credentials = {user: Credentials.derive(pw) for user, pw in users.items()}

    async def __call__(self, request: EnhancedAuthRequest) -> AuthResult:
        if isinstance(request.state, _Challenged):
            return self._final(request.state, request.data or b"")
        return self._first(request.data or b"")

    def _first(self, data: bytes) -> AuthResult:
        message = data.decode("utf-8", "replace")
        # GS2 header: no channel binding ("n"), no authzid.
        if not message.startswith("n,,"):
            return AuthResult.failure()
        bare = message[3:]
        fields = _fields(bare)
        user, client_nonce = _unsaslname(fields.get("n", "")), fields.get("r", "")
        credentials = self._credentials.get(user)
        if credentials is None or not client_nonce:
            # An unknown user fails here; a real deployment may prefer to fake a salt
            # so that user names cannot be probed.
            return AuthResult.failure()
        nonce = client_nonce + secrets.token_urlsafe(18)
        salt = base64.b64encode(credentials.salt).decode()
        server_first = f"r={nonce},s={salt},i={credentials.iterations}"
        state = _Challenged(user, nonce, bare, server_first)
        return AuthResult.continue_with(server_first.encode(), state)

    def _final(self, state: _Challenged, data: bytes) -> AuthResult:
        message = data.decode("utf-8", "replace")
        without_proof, sep, proof_field = message.rpartition(",p=")
        fields = _fields(without_proof)
        if not sep or fields.get("r") != state.nonce or fields.get("c") != "biws":
            return AuthResult.failure()
        try:
            proof = base64.b64decode(proof_field, validate=True)
        except ValueError:
            return AuthResult.failure()
        credentials = self._credentials[state.user]
        auth_message = f"{state.client_first_bare},{state.server_first},{without_proof}"
        signature = _hmac(credentials.stored_key, auth_message.encode())
        if len(proof) != len(signature):
            return AuthResult.failure()
        client_key = _xor(proof, signature)
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), credentials.stored_key):
            return AuthResult.failure()
        server_signature = _hmac(credentials.server_key, auth_message.encode())
        return AuthResult.success(b"v=" + base64.b64encode(server_signature))


# -- the client half: MQTT 5.0 over a socket -------------------------------------------


class AuthFailed(Exception):
    """The broker refused (CONNACK or DISCONNECT reason `code`), or could not prove it
    knows the password."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def _auth_properties(data: bytes) -> bytes:
    body = b"\x15" + _utf8(METHOD) + b"\x16" + _utf8(data)
    return _vbi(len(body)) + body


#: Property id -> its size: 1, 2 or 4 bytes, "vbi", "str" (length-prefixed) or "pair".
_PROPERTY_SIZES: dict[int, int | str] = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
    0x0B: "vbi",
    0x26: "pair",
}


def _properties(data: bytes) -> dict[int, bytes]:
    """The string and binary properties of a section (at the start of `data`), by id;
    numbers and user properties are skipped."""
    length, shift, i = 0, 0, 0
    while True:
        byte = data[i]
        i += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    section, j = data[i : i + length], 0
    out: dict[int, bytes] = {}
    while j < len(section):
        pid, j = section[j], j + 1
        size = _PROPERTY_SIZES.get(pid, "str")
        if isinstance(size, int):
            j += size
        elif size == "vbi":
            while section[j] & 0x80:
                j += 1
            j += 1
        else:
            for _ in range(2 if size == "pair" else 1):
                (n,) = struct.unpack("!H", section[j : j + 2])
                if size == "str":
                    out[pid] = section[j + 2 : j + 2 + n]
                j += 2 + n
    return out


class ScramClient:
    """An MQTT 5.0 client that logs in with SCRAM-SHA-256 over a blocking socket."""

    def __init__(
        self, host: str, port: int, user: str, password: str, timeout: float = 10.0
    ) -> None:
        self.user, self.password = user, password
        self.sock = socket.create_connection((host, port), timeout=timeout)

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise AuthFailed("the broker closed the connection")
            out += chunk
        return out

    def read_packet(self) -> tuple[int, bytes]:
        """The next packet: (first byte, body)."""
        first = self._recv_exact(1)[0]
        length, shift = 0, 0
        while True:
            byte = self._recv_exact(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._recv_exact(length)

    def send(self, first: int, body: bytes) -> None:
        self.sock.sendall(bytes([first]) + _vbi(len(body)) + body)

    def _send_auth(self, reason: int, data: bytes) -> None:
        self.send(0xF0, bytes([reason]) + _auth_properties(data))

    def _exchange(self, start: Callable[[bytes], None], final_type: int) -> dict[int, bytes]:
        """Runs SCRAM: `start(client_first)` sends the packet that opens the exchange
        (CONNECT, or AUTH 0x19); returns the properties of the packet that ends it
        (CONNACK, or AUTH 0x00)."""
        client_nonce = secrets.token_urlsafe(18)
        bare = f"n={_saslname(self.user)},r={client_nonce}"
        start(f"n,,{bare}".encode())
        first, body = self._expect((0xF0, final_type))
        if first != 0xF0 or body[0] != 0x18:
            raise AuthFailed(f"expected AUTH 0x18, got {first:#x} {body[:1].hex()}")
        server_first = _properties(body[1:]).get(0x16, b"").decode()
        fields = _fields(server_first)
        nonce, salt, iterations = fields["r"], base64.b64decode(fields["s"]), int(fields["i"])
        if not nonce.startswith(client_nonce):
            raise AuthFailed("the broker's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = base64.b64encode(_xor(client_key, signature)).decode()
        self._send_auth(0x18, f"{without_proof},p={proof}".encode())
        first, body = self._expect((final_type,))
        reason = body[1] if first >> 4 == 2 else body[0]
        if reason != 0:
            raise AuthFailed(f"refused with reason {reason:#x}", reason)
        properties = _properties(body[2:] if first >> 4 == 2 else body[1:])
        expected = b"v=" + base64.b64encode(_hmac(_hmac(salted, b"Server Key"), auth_message))
        if not hmac.compare_digest(properties.get(0x16, b""), expected):
            raise AuthFailed("the broker could not prove it knows the password")
        return properties

    def _expect(self, types: tuple[int, ...]) -> tuple[int, bytes]:
        first, body = self.read_packet()
        if first == 0xE0:  # DISCONNECT
            raise AuthFailed(f"DISCONNECT {body[:1].hex()}", body[0] if body else 0)
        if first >> 4 == 2 and body[1] >= 0x80:  # refusing CONNACK
            raise AuthFailed(f"CONNACK {body[1]:#x}", body[1])
        if first not in types:
            raise AuthFailed(f"unexpected packet {first:#x}")
        return first, body

    def connect(self, client_id: str, keepalive: int = 60) -> dict[int, bytes]:
        """CONNECT and the whole exchange; the CONNACK's properties."""
        header = _utf8("MQTT") + bytes([5, 0x02]) + struct.pack("!H", keepalive)

        def start(data: bytes) -> None:
            self.send(0x10, header + _auth_properties(data) + _utf8(client_id))

        return self._exchange(start, 0x20)

    def reauthenticate(self) -> dict[int, bytes]:
        """AUTH 0x19 and the exchange again on the open connection; the properties of
        the broker's AUTH 0x00."""
        return self._exchange(lambda data: self._send_auth(0x19, data), 0xF0)


# -- the broker ------------------------------------------------------------------------


def make_broker(
    host: str = "127.0.0.1", port: int = 1883, users: Mapping[str, str] = USERS
) -> pyo3mq.Broker:
    """A broker (not yet started) that logs in the users of `users` with SCRAM-SHA-256."""
    return pyo3mq.Broker(
        listeners=[f"tcp://{host}:{port}"], enhanced_auth={METHOD: ScramServer(users)}
    )


async def run(
    host: str = "127.0.0.1",
    port: int = 1883,
    users: Mapping[str, str] = USERS,
    *,
    duration: float | None = None,
    handle_signals: bool = False,
    ready: Callable[[pyo3mq.Broker], object] | None = None,
) -> None:
    """Serves until `duration` elapses, a signal (with `handle_signals`) or cancellation.
    `ready(broker)` is called once the broker listens (port 0 picks a free port)."""
    async with make_broker(host, port, users) as broker:
        for bound_host, bound_port in broker.addresses:
            print(f"listening on {bound_host}:{bound_port}", flush=True)
        if ready is not None:
            ready(broker)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MQTT 5.0 broker with SCRAM-SHA-256 logins.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on / connect to")
    parser.add_argument("--port", type=int, default=1883, help="TCP port; 0 picks a free one")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--login", nargs=2, metavar=("USER", "PASSWORD"), help="log in to a running broker"
    )
    args = parser.parse_args(argv)
    if args.login:
        client = ScramClient(args.host, args.port, *args.login)
        try:
            client.connect("scram-example")
        except AuthFailed as err:
            print(f"login failed: {err}", file=sys.stderr)
            return 1
        finally:
            client.close()
        print("logged in; the broker proved it knows the password")
        return 0
    asyncio.run(run(args.host, args.port, duration=args.duration, handle_signals=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
