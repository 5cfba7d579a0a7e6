//! Fuzz target: the MQTT decoder on arbitrary bytes.
//!
//! The first input byte picks the connection's protocol revision (bit 0) and the size of
//! each simulated socket read (bits 1-7, giving 1 to 128 bytes); the rest is the byte
//! stream. Checked on every call:
//!
//! * no panic, no runaway allocation (libFuzzer's RSS limit catches a decoder reserving
//!   for a refused 256 MiB Remaining Length; the buffer-capacity bound below catches it
//!   sooner);
//! * `Ok(None)` consumes nothing and leaves less than one maximum packet buffered;
//! * a decoded packet was at most the maximum packet size, re-encodes without error to no
//!   more bytes than it came from, and those bytes decode to the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pyo3mq::codec::{Decoder, Packet, Protocol};

const MAX_PACKET_SIZE: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new(MAX_PACKET_SIZE);
    if control & 1 == 1 {
        decoder.set_protocol(Protocol::V31);
    }
    let read_size = usize::from(control >> 1) + 1;

    let mut buf = BytesMut::new();
    for read in stream.chunks(read_size) {
        buf.extend_from_slice(read);
        loop {
            let before = buf.clone();
            let result = decoder.decode(&mut buf);
            assert!(
                buf.capacity() <= 8 * MAX_PACKET_SIZE,
                "buffer capacity {} for a {MAX_PACKET_SIZE}-byte maximum",
                buf.capacity()
            );
            match result {
                Ok(Some(packet)) => {
                    let consumed = before.len() - buf.len();
                    assert!(consumed <= MAX_PACKET_SIZE);
                    assert_eq!(&buf[..], &before[consumed..]);

                    let mut wire = BytesMut::new();
                    if let Err(e) = packet.encode(&mut wire) {
                        panic!("decoded {packet:?} but cannot re-encode it: {e}");
                    }
                    assert!(wire.len() <= consumed, "re-encoding grew the packet");
                    match decoder.decode(&mut wire) {
                        Ok(Some(again)) => assert_eq!(again, packet),
                        other => panic!("re-encoded {packet:?} decodes to {other:?}"),
                    }
                    assert!(wire.is_empty());

                    // The broker tells the decoder the revision once CONNECT is read.
                    if let Packet::Connect(connect) = &packet {
                        decoder.set_protocol(connect.protocol);
                    }
                }
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed input");
                    assert!(buf.len() < MAX_PACKET_SIZE);
                    break;
                }
                // The stream is unusable: the broker closes the connection.
                Err(_) => return,
            }
        }
    }
});
