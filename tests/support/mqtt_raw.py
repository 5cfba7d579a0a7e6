"""A tiny, independent MQTT 3.1.1 packet writer/reader for wire-level tests.

Deliberately separate from the broker's codec: tests speak bytes as the spec defines them,
so a bug shared by encoder and decoder cannot hide.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out.append(byte)
        if not n:
            return bytes(out)


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + remaining_length(len(body)) + body


def connect(
    client_id: str | bytes = "",
    *,
    clean: bool = True,
    keepalive: int = 60,
    will: tuple[str, bytes, int, bool] | None = None,
    username: str | None = None,
    password: bytes | None = None,
    protocol: tuple[bytes, int] = (b"MQTT", 4),
    flags_override: int | None = None,
) -> bytes:
    flags = 0x02 if clean else 0
    payload = s(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += s(topic) + s(message)
    if username is not None:
        flags |= 0x80
        payload += s(username)
    if password is not None:
        flags |= 0x40
        payload += s(password)
    if flags_override is not None:
        flags = flags_override
    name, level = protocol
    body = s(name) + bytes([level, flags]) + struct.pack("!H", keepalive) + payload
    return packet(0x10, body)


def publish(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pkid: int | None = None,
) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = s(topic)
    if qos:
        body += struct.pack("!H", pkid if pkid is not None else 1)
    return packet(first, body + payload)


def subscribe(pkid: int, *filters: tuple[str | bytes, int]) -> bytes:
    body = struct.pack("!H", pkid)
    for f, q in filters:
        body += s(f) + bytes([q])
    return packet(0x82, body)


def unsubscribe(pkid: int, *filters: str | bytes) -> bytes:
    body = struct.pack("!H", pkid) + b"".join(s(f) for f in filters)
    return packet(0xA2, body)


def ack(kind: int, pkid: int) -> bytes:
    """kind: 0x40 PUBACK, 0x50 PUBREC, 0x62 PUBREL, 0x70 PUBCOMP."""
    return bytes([kind, 2]) + struct.pack("!H", pkid)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


@dataclass
class Packet:
    first: int
    body: bytes

    @property
    def type(self) -> int:
        return self.first >> 4

    @property
    def qos(self) -> int:
        return (self.first >> 1) & 3

    @property
    def dup(self) -> bool:
        return bool(self.first & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.first & 0x01)

    def publish_fields(self) -> tuple[str, int | None, bytes]:
        """(topic, packet id or None, payload) of a PUBLISH."""
        assert self.type == 3, f"not a PUBLISH: {self.first:#x}"
        (tlen,) = struct.unpack("!H", self.body[:2])
        topic = self.body[2 : 2 + tlen].decode()
        rest = self.body[2 + tlen :]
        if self.qos:
            (pkid,) = struct.unpack("!H", rest[:2])
            return topic, pkid, rest[2:]
        return topic, None, rest

    @property
    def pkid(self) -> int:
        (pkid,) = struct.unpack("!H", self.body[:2])
        return pkid


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A socket speaking raw MQTT bytes, with a reader that frames packets."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no packet from the broker in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as exc:
            raise TimeoutError("no packet from the broker in time") from exc
        except ConnectionResetError as exc:
            raise Closed("connection reset") from exc
        if not chunk:
            raise Closed("connection closed by the broker")
        self.buf += chunk

    def recv(self, timeout: float | None = None) -> Packet:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            if len(self.buf) >= 2:
                mult, length, i = 1, 0, 1
                complete = False
                while i < len(self.buf) and i <= 4:
                    byte = self.buf[i]
                    length += (byte & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not byte & 0x80:
                        complete = True
                        break
                if complete and len(self.buf) >= i + length:
                    pkt = Packet(self.buf[0], self.buf[i : i + length])
                    self.buf = self.buf[i + length :]
                    return pkt
            self._fill(deadline)

    def expect_closed(self, timeout: float = 5.0) -> bytes:
        """Waits for EOF; returns whatever bytes arrived before it."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except Closed:
            data, self.buf = self.buf, b""
            return data

    def connect(self, client_id: str = "", **kwargs: object) -> Packet:
        self.send(connect(client_id, **kwargs))  # type: ignore[arg-type]
        pkt = self.recv()
        assert pkt.type == 2, f"expected CONNACK, got {pkt.first:#x}"
        return pkt

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
