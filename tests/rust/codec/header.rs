//! Fixed header: reserved packet types and flags, and the Remaining Length.

use super::*;

#[test]
fn reserved_packet_types_0_and_15() {
    // 2.2.1: types 0 and 15 are reserved ("Forbidden").
    rejects(&v311(), &[0x00, 0x00], Error::ReservedPacketType(0));
    rejects(&v311(), &[0xF0, 0x00], Error::ReservedPacketType(15));
    rejects(&v311(), &[0xFF, 0x00], Error::ReservedPacketType(15));
    // Refused from the first byte alone: no Remaining Length needed.
    rejects(&v311(), &[0x0F], Error::ReservedPacketType(0));
    rejects(&v311(), &[0xF3], Error::ReservedPacketType(15));
    rejects(&v31(), &[0xF0], Error::ReservedPacketType(15));
}

#[test]
fn reserved_flag_bits_per_packet_type() {
    // Table 2.2: every packet but PUBLISH has fixed flags; anything else is malformed
    // [MQTT-2.2.2-2].
    let d = v311();
    let connect_flags_1 = [
        0x11, 0x0C, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00,
    ];
    rejects(&d, &connect_flags_1, invalid_flags("CONNECT", 0x01));
    rejects(
        &d,
        &[0x21, 0x02, 0x00, 0x00],
        invalid_flags("CONNACK", 0x01),
    );
    rejects(
        &d,
        &[0x28, 0x02, 0x00, 0x00],
        invalid_flags("CONNACK", 0x08),
    );
    rejects(&d, &[0x41, 0x02, 0x00, 0x01], invalid_flags("PUBACK", 0x01));
    rejects(&d, &[0x42, 0x02, 0x00, 0x01], invalid_flags("PUBACK", 0x02));
    rejects(&d, &[0x52, 0x02, 0x00, 0x01], invalid_flags("PUBREC", 0x02));
    // PUBREL must carry 0010: both 0000 and 0011 are wrong.
    rejects(&d, &[0x60, 0x02, 0x00, 0x01], invalid_flags("PUBREL", 0x00));
    rejects(&d, &[0x63, 0x02, 0x00, 0x01], invalid_flags("PUBREL", 0x03));
    rejects(
        &d,
        &[0x72, 0x02, 0x00, 0x01],
        invalid_flags("PUBCOMP", 0x02),
    );
    // SUBSCRIBE 0x80 with a valid body ("#" QoS 0): only the flags are wrong.
    let subscribe_body = [0x06, 0x00, 0x01, 0x00, 0x01, 0x23, 0x00];
    let mut wire = vec![0x80];
    wire.extend_from_slice(&subscribe_body);
    rejects(&d, &wire, invalid_flags("SUBSCRIBE", 0x00));
    wire[0] = 0x83;
    rejects(&d, &wire, invalid_flags("SUBSCRIBE", 0x03));
    rejects(
        &d,
        &[0x92, 0x03, 0x00, 0x01, 0x00],
        invalid_flags("SUBACK", 0x02),
    );
    // UNSUBSCRIBE 0xA0 with a valid body ("#").
    let unsubscribe_flags_0 = [0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, 0x23];
    rejects(&d, &unsubscribe_flags_0, invalid_flags("UNSUBSCRIBE", 0x00));
    rejects(
        &d,
        &[0xB2, 0x02, 0x00, 0x01],
        invalid_flags("UNSUBACK", 0x02),
    );
    rejects(&d, &[0xC1, 0x00], invalid_flags("PINGREQ", 0x01));
    rejects(&d, &[0xD2, 0x00], invalid_flags("PINGRESP", 0x02));
    rejects(&d, &[0xE1, 0x00], invalid_flags("DISCONNECT", 0x01));
    rejects(&d, &[0xE8, 0x00], invalid_flags("DISCONNECT", 0x08));
}

#[test]
fn dup_on_pubrel_subscribe_unsubscribe_rejected_for_v311() {
    // 0x6A, 0x8A, 0xAA = flags 1010: the 3.1 DUP bit on top of the required 0010.
    let d = v311();
    rejects(&d, &[0x6A, 0x02, 0x00, 0x01], invalid_flags("PUBREL", 0x0A));
    rejects(
        &d,
        &[0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, 0x23, 0x00],
        invalid_flags("SUBSCRIBE", 0x0A),
    );
    rejects(
        &d,
        &[0xAA, 0x05, 0x00, 0x01, 0x00, 0x01, 0x23],
        invalid_flags("UNSUBSCRIBE", 0x0A),
    );
}

#[test]
fn dup_on_pubrel_subscribe_unsubscribe_accepted_for_v31() {
    // MQTT 3.1 gives these three packets a DUP flag and a QoS 1 header (bits 0010), and
    // sets DUP when it resends them.
    let d = v31();
    assert_eq!(
        decode_exact(&d, &[0x6A, 0x02, 0x00, 0x01]),
        Packet::PubRel(1)
    );
    assert_eq!(
        decode_exact(&d, &[0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, 0x23, 0x00]),
        Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(s("#"), QoS::AtMostOnce)],
        })
    );
    assert_eq!(
        decode_exact(&d, &[0xAA, 0x05, 0x00, 0x01, 0x00, 0x01, 0x23]),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 1,
            filters: vec![s("#")],
        })
    );
}

#[test]
fn v31_leniency_is_limited_to_the_dup_bit_of_those_three() {
    let d = v31();
    // The QoS 1 bits are still required, and other bits are still reserved.
    rejects(&d, &[0x60, 0x02, 0x00, 0x01], invalid_flags("PUBREL", 0x00));
    rejects(&d, &[0x6B, 0x02, 0x00, 0x01], invalid_flags("PUBREL", 0x0B));
    rejects(&d, &[0x6E, 0x02, 0x00, 0x01], invalid_flags("PUBREL", 0x0E));
    // Packets without the 3.1 DUP exemption keep their strict flags.
    rejects(&d, &[0x48, 0x02, 0x00, 0x01], invalid_flags("PUBACK", 0x08));
    rejects(&d, &[0xC8, 0x00], invalid_flags("PINGREQ", 0x08));
    // Switching back to 3.1.1 restores strictness.
    let mut d = v31();
    d.set_protocol(Protocol::V311);
    rejects(&d, &[0x6A, 0x02, 0x00, 0x01], invalid_flags("PUBREL", 0x0A));
}

// ---------------------------------------------------------------------------------------
// Remaining Length
// ---------------------------------------------------------------------------------------

#[test]
fn remaining_length_size_boundaries() {
    // Table 2.4: the ranges of 1, 2, 3 and 4 byte encodings.
    for (len, size) in [
        (0, 1),
        (127, 1),
        (128, 2),
        (16_383, 2),
        (16_384, 3),
        (2_097_151, 3),
        (2_097_152, 4),
        (268_435_455, 4),
    ] {
        assert_eq!(remaining_length_size(len), size, "length {len}");
    }
}

#[test]
fn remaining_length_zero() {
    // Table 2.4: 0 is the single byte 0x00 (PINGREQ has no variable header or payload).
    check_vector(&v311(), &Packet::PingReq, &[0xC0, 0x00]);
}

/// PUBLISH QoS 0 to topic "a": the variable header is 3 bytes (00 01 61), so a payload of
/// `remaining - 3` bytes gives exactly the Remaining Length `remaining`.
fn publish_header_for(remaining: usize) -> Vec<u8> {
    let mut dst = BytesMut::new();
    encode_publish_header(
        &mut dst,
        "a",
        QoS::AtMostOnce,
        false,
        false,
        None,
        remaining - 3,
    )
    .unwrap();
    dst.to_vec()
}

#[test]
fn remaining_length_boundaries_encode_and_decode() {
    // Table 2.4, each boundary of the 1 to 4 byte encodings below 2 MiB + 1; the encodings
    // are written out: 7 bits per byte, least significant group first, bit 7 = continue.
    let cases: [(usize, &[u8]); 6] = [
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
    ];
    let decoder = Decoder::new(4 << 20);
    for (remaining, length_bytes) in cases {
        let mut expected_header = vec![0x30];
        expected_header.extend_from_slice(length_bytes);
        expected_header.extend_from_slice(&[0x00, 0x01, 0x61]); // topic "a"
        assert_eq!(
            publish_header_for(remaining),
            expected_header,
            "header for {remaining}"
        );

        // The full packet, through Packet::encode and back.
        let payload = vec![0x5A; remaining - 3];
        let packet = publish(false, QoS::AtMostOnce, false, "a", None, &payload);
        let wire = encode(&packet);
        assert_eq!(wire.len(), 1 + length_bytes.len() + remaining);
        assert_eq!(&wire[..expected_header.len()], &expected_header[..]);
        assert_eq!(decode_exact(&decoder, &wire), packet);

        // The decoder reads the length from the header alone: with a maximum one byte
        // short of the packet, it names the exact packet size before any payload arrives.
        let total = 1 + length_bytes.len() + remaining;
        assert_eq!(
            decode(&Decoder::new(total - 1), &expected_header),
            Err(Error::PacketTooLarge {
                size: total,
                max: total - 1
            })
        );
    }
}

#[test]
fn remaining_length_maximum_268_435_455() {
    // Table 2.4: 268,435,455 = 0xFF 0xFF 0xFF 0x7F, the largest value 4 bytes hold.
    assert_eq!(MAX_REMAINING_LENGTH, 268_435_455);
    assert_eq!(
        publish_header_for(268_435_455),
        [0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0x00, 0x01, 0x61]
    );
    // Decoding: the whole packet would be 5 + 268,435,455 bytes. A decoder whose maximum
    // is one byte less names that size from the 5 header bytes alone.
    rejects(
        &Decoder::new(268_435_459),
        &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
        Error::PacketTooLarge {
            size: 268_435_460,
            max: 268_435_459,
        },
    );
    // And no decoder's maximum exceeds what the header can express.
    assert_eq!(Decoder::new(usize::MAX).max_packet_size(), 268_435_460);
}

#[test]
fn remaining_length_overflow_refused_on_encode() {
    // 268,435,456 cannot be expressed in 4 bytes; nothing may be written.
    let mut dst = BytesMut::new();
    let result = encode_publish_header(
        &mut dst,
        "a",
        QoS::AtMostOnce,
        false,
        false,
        None,
        268_435_453,
    );
    assert_eq!(result, Err(Error::TooLargeToEncode(268_435_456)));
    assert!(dst.is_empty());
}

#[test]
fn remaining_length_with_fifth_continuation_byte() {
    // 2.2.3: at most 4 bytes. If the 4th byte still has bit 7 set the stream is malformed,
    // whatever follows, and this is known from those 5 bytes alone.
    let d = Decoder::new(usize::MAX);
    rejects(
        &d,
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        Error::MalformedRemainingLength,
    );
    rejects(
        &d,
        &[0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
        Error::MalformedRemainingLength,
    );
    rejects(
        &d,
        &[0xC0, 0x80, 0x80, 0x80, 0x80],
        Error::MalformedRemainingLength,
    );
    // Four bytes with the continuation bit still set: not known yet, wait.
    assert_eq!(decode(&d, &[0x30, 0xFF, 0xFF, 0xFF]), Ok(None));
}

#[test]
fn packet_too_large_from_fixed_header_alone() {
    // Only the first 5 bytes of a 256 MiB PUBLISH are buffered: refused at once, and the
    // decoder must not reserve room for the announced body.
    let d = Decoder::new(1024);
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        d.decode(&mut buf),
        Err(Error::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        })
    );
    assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());

    // 3 header bytes (30 FE 07 = 1022) + 1022 = 1025 bytes: one too many.
    rejects(
        &d,
        &[0x30, 0xFE, 0x07],
        Error::PacketTooLarge {
            size: 1025,
            max: 1024,
        },
    );
    // 30 FD 07: Remaining Length 0x7D + 7 * 128 = 1021, total 1024: exactly the maximum.
    let mut wire = vec![0x30, 0xFD, 0x07, 0x00, 0x01, 0x61];
    assert_eq!(decode(&d, &wire), Ok(None));
    wire.resize(1024, 0x5A);
    assert_eq!(
        decode_exact(&d, &wire),
        publish(false, QoS::AtMostOnce, false, "a", None, &[0x5A; 1018])
    );
}

#[test]
fn waiting_for_a_body_reserves_it_once_but_not_more_than_the_maximum() {
    // Header of a 1,024-byte packet: the decoder reserves the rest of the frame (so the
    // body is read without reallocating) and never more than twice the maximum.
    let d = Decoder::new(1024);
    let mut buf = BytesMut::from(&[0x30, 0xFD, 0x07][..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(&buf[..], [0x30, 0xFD, 0x07]);
    assert!(buf.capacity() >= 1024, "capacity {}", buf.capacity());
    assert!(buf.capacity() <= 2048, "capacity {}", buf.capacity());
}

#[test]
fn body_length_must_match_fixed_size_packets() {
    let d = v311();
    let bad = |packet, actual, expected| Error::BadRemainingLength {
        packet,
        actual,
        expected,
    };
    rejects(&d, &[0x20, 0x03, 0x00, 0x00, 0x00], bad("CONNACK", 3, 2));
    rejects(&d, &[0x20, 0x01, 0x00], bad("CONNACK", 1, 2));
    rejects(&d, &[0x40, 0x03, 0x00, 0x01, 0x00], bad("PUBACK", 3, 2));
    rejects(&d, &[0x50, 0x00], bad("PUBREC", 0, 2));
    rejects(&d, &[0x62, 0x01, 0x01], bad("PUBREL", 1, 2));
    rejects(
        &d,
        &[0x70, 0x04, 0x00, 0x01, 0x00, 0x02],
        bad("PUBCOMP", 4, 2),
    );
    rejects(&d, &[0xB0, 0x01, 0x01], bad("UNSUBACK", 1, 2));
    rejects(&d, &[0xC0, 0x01, 0x00], bad("PINGREQ", 1, 0));
    rejects(&d, &[0xD0, 0x01, 0x00], bad("PINGRESP", 1, 0));
    rejects(&d, &[0xE0, 0x01, 0x00], bad("DISCONNECT", 1, 0));
}
