//! PUBLISH rules, packet identifiers, and the SUBSCRIBE, SUBACK and UNSUBSCRIBE rules.

use super::*;

#[test]
fn publish_qos_3() {
    // [MQTT-3.3.1-4]: both QoS bits set is malformed, with or without DUP and RETAIN.
    let body = [0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x01];
    for first in [0x36, 0x37, 0x3E, 0x3F] {
        let mut wire = vec![first];
        wire.extend_from_slice(&body);
        rejects(&v311(), &wire, Error::InvalidQoS);
        rejects(&v31(), &wire, Error::InvalidQoS);
    }
}

#[test]
fn publish_dup_on_qos0() {
    // [MQTT-3.3.1-2]: DUP must be 0 for QoS 0. 0x38 = DUP, 0x39 = DUP + RETAIN.
    let wire = [0x38, 0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x68, 0x69];
    rejects(&v311(), &wire, Error::DupOnQoS0);
    let wire = [0x39, 0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x68, 0x69];
    rejects(&v311(), &wire, Error::DupOnQoS0);
}

#[test]
fn publish_wildcard_in_topic_name() {
    // [MQTT-3.3.2-2]: no '+' or '#' anywhere in a topic name.
    rejects(
        &v311(),
        &[0x30, 0x05, 0x00, 0x03, 0x61, 0x2F, 0x2B], // "a/+"
        Error::WildcardInTopicName,
    );
    rejects(
        &v311(),
        &[0x30, 0x03, 0x00, 0x01, 0x23], // "#"
        Error::WildcardInTopicName,
    );
    rejects(
        &v311(),
        &[0x32, 0x07, 0x00, 0x03, 0x61, 0x2B, 0x62, 0x00, 0x01], // "a+b", QoS 1
        Error::WildcardInTopicName,
    );
}

#[test]
fn publish_zero_length_topic() {
    // [MQTT-4.7.3-1]: topic names are at least one character long.
    rejects(&v311(), &[0x30, 0x02, 0x00, 0x00], Error::EmptyTopicName);
    rejects(
        &v311(),
        &[0x30, 0x04, 0x00, 0x00, 0x68, 0x69],
        Error::EmptyTopicName,
    );
    rejects(
        &v311(),
        &[0x32, 0x04, 0x00, 0x00, 0x00, 0x01],
        Error::EmptyTopicName,
    );
}

#[test]
fn publish_truncated_fields() {
    let truncated = Error::Truncated("PUBLISH");
    // Topic length 5 with 1 byte of topic.
    rejects(&v311(), &[0x30, 0x03, 0x00, 0x05, 0x61], truncated.clone());
    // Half a topic length.
    rejects(&v311(), &[0x30, 0x01, 0x00], truncated.clone());
    // QoS 1 without its packet identifier, and with half of one.
    rejects(
        &v311(),
        &[0x32, 0x05, 0x00, 0x03, 0x61, 0x2F, 0x62],
        truncated.clone(),
    );
    rejects(
        &v311(),
        &[0x34, 0x06, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00],
        truncated,
    );
}

// ---------------------------------------------------------------------------------------
// Packet identifiers
// ---------------------------------------------------------------------------------------

#[test]
fn packet_identifier_zero() {
    // [MQTT-2.3.1-1]: packets with an identifier need a non-zero one.
    let d = v311();
    let zero = Error::ZeroPacketId;
    rejects(
        &d,
        &[0x32, 0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x00],
        zero("PUBLISH"),
    );
    rejects(
        &d,
        &[0x34, 0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x00],
        zero("PUBLISH"),
    );
    rejects(
        &d,
        &[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, 0x23, 0x00],
        zero("SUBSCRIBE"),
    );
    rejects(
        &d,
        &[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, 0x23],
        zero("UNSUBSCRIBE"),
    );
    rejects(&d, &[0x40, 0x02, 0x00, 0x00], zero("PUBACK"));
    rejects(&d, &[0x50, 0x02, 0x00, 0x00], zero("PUBREC"));
    rejects(&d, &[0x62, 0x02, 0x00, 0x00], zero("PUBREL"));
    rejects(&d, &[0x70, 0x02, 0x00, 0x00], zero("PUBCOMP"));
    rejects(&d, &[0x90, 0x03, 0x00, 0x00, 0x00], zero("SUBACK"));
    rejects(&d, &[0xB0, 0x02, 0x00, 0x00], zero("UNSUBACK"));
}

#[test]
fn packet_identifier_zero_refused_on_encode() {
    let mut dst = BytesMut::new();
    let zero = Error::ZeroPacketId;
    for (packet, name) in [
        (Packet::PubAck(0), "PUBACK"),
        (Packet::PubRec(0), "PUBREC"),
        (Packet::PubRel(0), "PUBREL"),
        (Packet::PubComp(0), "PUBCOMP"),
        (Packet::UnsubAck(0), "UNSUBACK"),
        (
            publish(false, QoS::AtLeastOnce, false, "a", Some(0), b""),
            "PUBLISH",
        ),
        (
            Packet::Subscribe(Subscribe {
                pkid: 0,
                filters: vec![(s("#"), QoS::AtMostOnce)],
            }),
            "SUBSCRIBE",
        ),
        (
            Packet::SubAck(SubAck {
                pkid: 0,
                codes: vec![SubscribeReturnCode::Failure],
            }),
            "SUBACK",
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                pkid: 0,
                filters: vec![s("#")],
            }),
            "UNSUBSCRIBE",
        ),
    ] {
        assert_eq!(packet.encode(&mut dst), Err(zero(name)));
        assert!(dst.is_empty(), "{name}: nothing may be written on error");
    }
}

// ---------------------------------------------------------------------------------------
// SUBSCRIBE, SUBACK, UNSUBSCRIBE rules
// ---------------------------------------------------------------------------------------

#[test]
fn subscribe_and_unsubscribe_without_filters() {
    // [MQTT-3.8.3-3] and [MQTT-3.10.3-2]: at least one filter in 3.1.1.
    rejects(&v311(), &[0x82, 0x02, 0x00, 0x01], Error::EmptySubscribe);
    rejects(&v311(), &[0xA2, 0x02, 0x00, 0x01], Error::EmptyUnsubscribe);
}

#[test]
fn subscribe_and_unsubscribe_without_filters_accepted_for_v31() {
    // 3.1 has no such rule; some 3.1 clients send them.
    assert_eq!(
        decode_exact(&v31(), &[0x82, 0x02, 0x00, 0x01]),
        Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![],
        })
    );
    assert_eq!(
        decode_exact(&v31(), &[0xA2, 0x02, 0x00, 0x01]),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 1,
            filters: vec![],
        })
    );
}

#[test]
fn subscribe_requested_qos_byte() {
    // [MQTT-3.8.3-4]: the 6 upper bits are reserved and QoS 3 is invalid.
    for byte in [0x03, 0x04, 0x80, 0x41, 0xFF] {
        let wire = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x23, byte];
        rejects(&v311(), &wire, Error::InvalidRequestedQoS(byte));
        rejects(&v31(), &wire, Error::InvalidRequestedQoS(byte));
    }
    // The second filter's byte is checked too.
    let wire = [
        0x82, 0x0A, 0x00, 0x01, // Remaining Length 10, packet identifier 1
        0x00, 0x01, 0x23, 0x01, // "#" QoS 1
        0x00, 0x01, 0x61, 0x03, // "a" QoS 3
    ];
    rejects(&v311(), &wire, Error::InvalidRequestedQoS(0x03));
}

#[test]
fn subscribe_truncated() {
    let truncated = Error::Truncated("SUBSCRIBE");
    // Filter "#" without its requested QoS byte.
    rejects(
        &v311(),
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 0x23],
        truncated.clone(),
    );
    // Filter length 4 with 1 byte.
    rejects(
        &v311(),
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x04, 0x23, 0x00],
        truncated.clone(),
    );
    // Half a packet identifier.
    rejects(&v311(), &[0x82, 0x01, 0x00], truncated);
    rejects(
        &v311(),
        &[0xA2, 0x05, 0x00, 0x01, 0x00, 0x05, 0x23],
        Error::Truncated("UNSUBSCRIBE"),
    );
    rejects(&v311(), &[0x90, 0x01, 0x00], Error::Truncated("SUBACK"));
}

#[test]
fn suback_return_codes() {
    // 3.9.3: only 0x00, 0x01, 0x02 and 0x80 are allowed [MQTT-3.9.3-2].
    for code in [0x03, 0x04, 0x7F, 0x81, 0xFF] {
        rejects(
            &v311(),
            &[0x90, 0x03, 0x00, 0x01, code],
            Error::InvalidSubAckCode(code),
        );
    }
}

#[test]
fn connack_reserved_flags_and_unknown_code() {
    // 3.2.2.1: bits 7-1 of the acknowledge flags are reserved; table 3.1: codes 6-255
    // are reserved.
    rejects(
        &v311(),
        &[0x20, 0x02, 0x02, 0x00],
        Error::InvalidConnAckFlags(0x02),
    );
    rejects(
        &v311(),
        &[0x20, 0x02, 0x81, 0x00],
        Error::InvalidConnAckFlags(0x81),
    );
    rejects(
        &v311(),
        &[0x20, 0x02, 0x00, 0x06],
        Error::InvalidConnAckCode(6),
    );
    rejects(
        &v311(),
        &[0x20, 0x02, 0x01, 0xFF],
        Error::InvalidConnAckCode(255),
    );
}
