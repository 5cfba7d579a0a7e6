//! Encoder-side rules.

use super::*;
use crate::vectors::PUBLISH_QOS0;

#[test]
fn publish_qos1_and_qos2_need_a_packet_identifier_to_encode() {
    let mut dst = BytesMut::new();
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let packet = publish(false, qos, false, "a", None, b"x");
        assert_eq!(packet.encode(&mut dst), Err(Error::MissingPacketId(qos)));
        assert!(dst.is_empty());
    }
}

#[test]
fn encoder_never_sets_dup_on_qos0() {
    // [MQTT-3.3.1-2] binds the sender too: the encoder clears DUP for QoS 0.
    let packet = publish(true, QoS::AtMostOnce, false, "a/b", None, b"hi");
    assert_eq!(encode(&packet), PUBLISH_QOS0);
}

#[test]
fn strings_longer_than_65535_bytes_refused_on_encode() {
    let mut dst = BytesMut::new();
    let long = "x".repeat(65_536);
    let packet = publish(false, QoS::AtMostOnce, false, &long, None, b"");
    assert_eq!(
        packet.encode(&mut dst),
        Err(Error::StringTooLong("topic name"))
    );
    assert!(dst.is_empty());
    let packet = Packet::Unsubscribe(Unsubscribe {
        pkid: 1,
        filters: vec![s(&long)],
    });
    assert_eq!(
        packet.encode(&mut dst),
        Err(Error::StringTooLong("topic filter"))
    );
    assert!(dst.is_empty());

    // 65,535 bytes is the largest allowed: 30 81 80 04 FF FF is PUBLISH with Remaining
    // Length 65,537 = 0x01 + 0x00 * 128 + 0x04 * 16,384, then the length prefix FF FF.
    let longest = "x".repeat(65_535);
    let packet = publish(false, QoS::AtMostOnce, false, &longest, None, b"");
    let wire = encode(&packet);
    assert_eq!(&wire[..6], [0x30, 0x81, 0x80, 0x04, 0xFF, 0xFF]);
    assert_eq!(decode_exact(&v311(), &wire), packet);
}

#[test]
fn connect_encoder_refuses_what_the_decoder_refuses() {
    let mut dst = BytesMut::new();
    let base = Connect {
        protocol: Protocol::V311,
        clean_session: true,
        keep_alive: 0,
        client_id: s("c"),
        will: None,
        username: None,
        password: None,
        properties: None,
    };
    let no_user = Connect {
        password: Some(b(b"p")),
        ..base.clone()
    };
    assert_eq!(
        Packet::Connect(Box::new(no_user)).encode(&mut dst),
        Err(Error::PasswordWithoutUsername)
    );
    let will = |topic: &str| LastWill {
        topic: s(topic),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
    };
    let wildcard_will = Connect {
        will: Some(will("a/#")),
        ..base.clone()
    };
    assert_eq!(
        Packet::Connect(Box::new(wildcard_will)).encode(&mut dst),
        Err(Error::WildcardInTopicName)
    );
    // The will topic goes through the topic-name validation on both sides, so a U+0000
    // [MQTT-1.5.3-2] the decoder would refuse is not encoded either.
    let nul_will = Connect {
        will: Some(will("a\0b")),
        ..base.clone()
    };
    assert_eq!(
        Packet::Connect(Box::new(nul_will)).encode(&mut dst),
        Err(Error::NullCharacter("will topic"))
    );
    let empty_will = Connect {
        will: Some(will("")),
        ..base
    };
    assert_eq!(
        Packet::Connect(Box::new(empty_will)).encode(&mut dst),
        Err(Error::EmptyTopicName)
    );
    assert!(dst.is_empty());
}

#[test]
fn publish_header_plus_shared_payload_equals_full_encoding() {
    // encode_publish_header + payload bytes must equal Packet::encode byte for byte.
    let payload = b"hello";
    let mut dst = BytesMut::new();
    encode_publish_header(
        &mut dst,
        "a/b",
        QoS::AtLeastOnce,
        true,
        true,
        Some(0x1234),
        payload.len(),
    )
    .unwrap();
    assert_eq!(
        &dst[..],
        [0x3B, 0x0C, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x12, 0x34] // R = 5 + 2 + 5 = 12
    );
    dst.extend_from_slice(payload);
    let packet = publish(true, QoS::AtLeastOnce, true, "a/b", Some(0x1234), payload);
    assert_eq!(&dst[..], &encode(&packet)[..]);
}

#[test]
fn publish_header_reserves_only_the_header() {
    // encode_publish_header exists so that one payload buffer can follow many headers by
    // reference. Writing a 7-byte header for a 1 MiB payload must not reserve 1 MiB in
    // the header buffer (otherwise a fan-out to N subscribers pins N payload-sized
    // allocations). R = 3 + 1,048,576 = 1,048,579 = 0x03 + 0x00 * 128 + 0x40 * 16,384.
    let mut dst = BytesMut::new();
    encode_publish_header(&mut dst, "a", QoS::AtMostOnce, false, false, None, 1 << 20).unwrap();
    assert_eq!(&dst[..], [0x30, 0x83, 0x80, 0x40, 0x00, 0x01, 0x61]);
    assert!(
        dst.capacity() < 4096,
        "a 7-byte header reserved {} bytes",
        dst.capacity()
    );
}

// ---------------------------------------------------------------------------------------
