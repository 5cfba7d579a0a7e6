//! Streaming: incremental input, several packets per buffer, zero copy.

use super::*;
use crate::vectors::{all_vectors, subscribe, PINGREQ, PUBACK, PUBLISH_QOS1, SUBSCRIBE};

#[test]
fn one_byte_at_a_time_consumes_nothing_until_complete() {
    let d = v311();
    for (packet, wire) in all_vectors() {
        let mut buf = BytesMut::new();
        for (i, &byte) in wire.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            let result = d.decode(&mut buf);
            if i + 1 < wire.len() {
                assert_eq!(result, Ok(None), "{} after {} bytes", packet.name(), i + 1);
                assert_eq!(&buf[..], &wire[..=i], "{} consumed input", packet.name());
            } else {
                assert_eq!(result, Ok(Some(packet.clone())));
                assert!(buf.is_empty());
            }
        }
    }
}

#[test]
fn several_packets_in_one_buffer() {
    let d = v311();
    // Every vector back to back, then decoded one after another.
    let vectors = all_vectors();
    let mut buf = BytesMut::new();
    for (_, wire) in &vectors {
        buf.extend_from_slice(wire);
    }
    for (packet, wire) in &vectors {
        let before = buf.len();
        assert_eq!(d.decode(&mut buf), Ok(Some(packet.clone())));
        assert_eq!(before - buf.len(), wire.len(), "{}", packet.name());
    }
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());

    // A complete PUBLISH, a complete PINGREQ and the first 3 bytes of a SUBSCRIBE.
    let mut buf = BytesMut::new();
    buf.extend_from_slice(PUBLISH_QOS1);
    buf.extend_from_slice(PINGREQ);
    buf.extend_from_slice(&SUBSCRIBE[..3]);
    assert_eq!(
        d.decode(&mut buf),
        Ok(Some(publish(
            false,
            QoS::AtLeastOnce,
            false,
            "a/b",
            Some(42),
            b"hi"
        )))
    );
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PingReq)));
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], &SUBSCRIBE[..3]);
    buf.extend_from_slice(&SUBSCRIBE[3..]);
    assert_eq!(d.decode(&mut buf), Ok(Some(subscribe())));
    assert!(buf.is_empty());
}

#[test]
fn an_error_in_a_later_packet_does_not_affect_an_earlier_one() {
    let d = v311();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(PUBACK);
    buf.extend_from_slice(&[0xC1, 0x00]); // PINGREQ with a reserved flag set
    assert_eq!(d.decode(&mut buf), Ok(Some(Packet::PubAck(1))));
    assert_eq!(d.decode(&mut buf), Err(invalid_flags("PINGREQ", 0x01)));
}

#[test]
fn publish_payload_is_a_view_into_the_read_buffer() {
    // QoS 1 PUBLISH to "a/b" with a 1,024-byte payload: R = 5 + 2 + 1024 = 1031
    // = 0x07 + 0x08 * 128, so the Remaining Length is 87 08.
    let header = [
        0x32, 0x87, 0x08, // PUBLISH QoS 1, Remaining Length 1031
        0x00, 0x03, 0x61, 0x2F, 0x62, // topic "a/b"
        0x00, 0x07, // packet identifier 7
    ];
    let payload: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let mut buf = BytesMut::with_capacity(2 * (header.len() + payload.len()));
    for _ in 0..2 {
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&payload);
    }
    let start = buf.as_ptr() as usize;
    let end = start + buf.capacity();
    let frame = header.len() + payload.len();

    for n in 0..2 {
        let Ok(Some(Packet::Publish(p))) = v311().decode(&mut buf) else {
            panic!("expected a PUBLISH");
        };
        assert_eq!(p.payload.as_ref(), &payload[..]);
        // The payload begins exactly 10 bytes into the n-th frame of the original
        // allocation, and the topic 5 bytes in: nothing was copied.
        assert_eq!(
            p.payload.as_ptr() as usize,
            start + n * frame + header.len()
        );
        assert_eq!(p.topic.as_ptr() as usize, start + n * frame + 5);
        assert!(p.payload.as_ptr() as usize + p.payload.len() <= end);
    }
}
