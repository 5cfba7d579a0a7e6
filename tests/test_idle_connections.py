"""Many idle connections, then traffic on all of them at once (issue 16).

An idle connection holds no read or output buffer: it gives them back to its worker
thread's spare lists when it goes quiet, and takes whichever spare is at hand when traffic
resumes. These tests prove the reuse loses and mixes up nothing: every connection's
messages arrive whole, in order and to the right client, burst after burst, with payloads
small enough to be copied next to their header, large enough to be written by reference
from the publisher's read buffer, and larger than one read.
"""

from __future__ import annotations

import hashlib

from support.mqtt_raw import RawClient, ack, publish, subscribe

CONNECTIONS = 120
# Copied beside its header (< 1 KiB), written by reference (>= 1 KiB), more than one
# 16 KiB read.
SIZES = (100, 3_000, 40_000)


def body(burst: int, sender: int, seq: int, size: int) -> bytes:
    """A payload no other (burst, sender, seq) shares, of exactly `size` bytes."""
    seed = hashlib.sha256(f"{burst}/{sender}/{seq}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def test_idle_connections_then_a_burst_on_all_of_them_deliver_everything(port: int) -> None:
    clients = [RawClient(port, timeout=30.0) for _ in range(CONNECTIONS)]
    try:
        for i, c in enumerate(clients):
            c.connect(f"idle-{i}")
            c.send(subscribe(1, (f"idle/{i}", 1)))
            assert c.recv().type == 9, "SUBACK"
        # Two bursts with idle time between: the second runs on buffers the first gave
        # back, so stale or shared bytes would show up as wrong payloads.
        for burst in range(2):
            # Everyone publishes to its neighbour before anyone reads: all connections
            # busy at once.
            for i, c in enumerate(clients):
                target = (i + 1) % CONNECTIONS
                c.send(
                    b"".join(
                        publish(
                            f"idle/{target}",
                            body(burst, i, seq, size),
                            qos=1,
                            pkid=seq + 1,
                        )
                        for seq, size in enumerate(SIZES)
                    )
                )
            for i, c in enumerate(clients):
                sender = (i - 1) % CONNECTIONS
                acked: set[int] = set()
                delivered: list[bytes] = []
                while len(acked) < len(SIZES) or len(delivered) < len(SIZES):
                    pkt = c.recv()
                    if pkt.type == 4:  # PUBACK for our own PUBLISH
                        acked.add(pkt.pkid)
                    else:
                        assert pkt.type == 3, f"client {i}: unexpected packet {pkt.first:#x}"
                        topic, pkid, payload = pkt.publish_fields()
                        assert topic == f"idle/{i}"
                        assert pkid is not None
                        c.send(ack(0x40, pkid))
                        delivered.append(payload)
                assert acked == {1, 2, 3}, f"client {i}: PUBACKs {sorted(acked)}"
                expected = [body(burst, sender, seq, size) for seq, size in enumerate(SIZES)]
                assert delivered == expected, f"client {i}, burst {burst}: payloads differ"
    finally:
        for c in clients:
            c.close()
