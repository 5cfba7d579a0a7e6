//! Valid vectors: one or more per packet type, checked in both directions.

use super::*;

/// CONNECT (3.1.1) with every optional field: will (QoS 1, retained), user name, password,
/// clean session, keep alive 60 s.
const CONNECT_V311_FULL: &[u8] = &[
    0x10, // type 1 (CONNECT) << 4, flags 0000 (table 2.2)
    0x24, // Remaining Length 36 = 10 (variable header) + 5 + 5 + 5 + 6 + 5 (payload)
    0x00, 0x04, // protocol name length 4
    0x4D, 0x51, 0x54, 0x54, // "MQTT"
    0x04, // protocol level 4 (3.1.1)
    0xEE, // flags 1110_1110: user name, password, will retain, will QoS 01, will, clean, reserved 0
    0x00, 0x3C, // keep alive 60
    0x00, 0x03, 0x63, 0x69, 0x64, // client identifier "cid"
    0x00, 0x03, 0x77, 0x2F, 0x74, // will topic "w/t"
    0x00, 0x03, 0x62, 0x79, 0x65, // will message "bye"
    0x00, 0x04, 0x75, 0x73, 0x65, 0x72, // user name "user"
    0x00, 0x03, 0x70, 0x00, 0xFF, // password: binary data, NUL and 0xFF are fine (3.1.3.5)
];

fn connect_v311_full() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_session: true,
        keep_alive: 60,
        client_id: s("cid"),
        will: Some(LastWill {
            topic: s("w/t"),
            payload: b(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
        }),
        username: Some(s("user")),
        password: Some(b(&[0x70, 0x00, 0xFF])),
        properties: None,
    }))
}

/// CONNECT (3.1.1), persistent session (clean session 0), maximum keep alive, no options.
const CONNECT_V311_BARE: &[u8] = &[
    0x10, 0x0D, // CONNECT, Remaining Length 13 = 10 + 3
    0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, // "MQTT"
    0x04, // level 4
    0x00, // flags: nothing, clean session 0
    0xFF, 0xFF, // keep alive 65,535
    0x00, 0x01, 0x61, // client identifier "a"
];

fn connect_v311_bare() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_session: false,
        keep_alive: 65_535,
        client_id: s("a"),
        will: None,
        username: None,
        password: None,
        properties: None,
    }))
}

/// CONNECT (3.1): protocol name "MQIsdp", level 3, will QoS 2 (not retained), user name.
const CONNECT_V31: &[u8] = &[
    0x10, 0x19, // CONNECT, Remaining Length 25 = 12 + 5 + 3 + 2 + 3
    0x00, 0x06, 0x4D, 0x51, 0x49, 0x73, 0x64, 0x70, // "MQIsdp"
    0x03, // protocol version 3
    0x96, // flags 1001_0110: user name, will QoS 10, will, clean session
    0x00, 0x0A, // keep alive 10
    0x00, 0x03, 0x63, 0x33, 0x31, // client identifier "c31"
    0x00, 0x01, 0x61, // will topic "a"
    0x00, 0x00, // will message: empty
    0x00, 0x01, 0x75, // user name "u"
];

fn connect_v31() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: Protocol::V31,
        clean_session: true,
        keep_alive: 10,
        client_id: s("c31"),
        will: Some(LastWill {
            topic: s("a"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: None,
        }),
        username: Some(s("u")),
        password: None,
        properties: None,
    }))
}

/// CONNACK (3.2): flags byte bit 0 is Session Present, then the return code.
const CONNACK_SESSION_PRESENT: &[u8] = &[0x20, 0x02, 0x01, 0x00];

/// PUBLISH QoS 0, topic "a/b", payload "hi": no packet identifier [MQTT-2.3.1-5].
pub(crate) const PUBLISH_QOS0: &[u8] = &[
    0x30, // type 3 << 4, DUP 0, QoS 00, RETAIN 0
    0x07, // Remaining Length 7 = 5 (topic) + 2 (payload)
    0x00, 0x03, 0x61, 0x2F, 0x62, // topic "a/b"
    0x68, 0x69, // payload "hi"
];

/// PUBLISH QoS 0 retained.
const PUBLISH_QOS0_RETAIN: &[u8] = &[
    0x31, // DUP 0, QoS 00, RETAIN 1
    0x07, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x68, 0x69,
];

/// PUBLISH QoS 1, DUP and RETAIN, packet identifier 0x1234.
const PUBLISH_QOS1_DUP_RETAIN: &[u8] = &[
    0x3B, // 0011_1011: type 3, DUP 1, QoS 01, RETAIN 1
    0x09, // Remaining Length 9 = 5 + 2 (packet id) + 2
    0x00, 0x03, 0x61, 0x2F, 0x62, // topic "a/b"
    0x12, 0x34, // packet identifier 4660
    0x68, 0x69, // payload "hi"
];

/// PUBLISH QoS 1, no flags, packet identifier 42.
pub(crate) const PUBLISH_QOS1: &[u8] = &[
    0x32, // DUP 0, QoS 01, RETAIN 0
    0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, // topic "a/b"
    0x00, 0x2A, // packet identifier 42
    0x68, 0x69,
];

/// PUBLISH QoS 2 with DUP, packet identifier 1.
const PUBLISH_QOS2_DUP: &[u8] = &[
    0x3C, // 0011_1100: DUP 1, QoS 10, RETAIN 0
    0x09, 0x00, 0x03, 0x61, 0x2F, 0x62, 0x00, 0x01, 0x68, 0x69,
];

/// PUBLISH QoS 2 retained with an empty payload (a retained-message delete) and id 65,535.
const PUBLISH_QOS2_RETAIN_EMPTY: &[u8] = &[
    0x35, // 0011_0101: DUP 0, QoS 10, RETAIN 1
    0x07, // Remaining Length 7 = 5 + 2, zero-length payload (3.3.3)
    0x00, 0x03, 0x61, 0x2F, 0x62, 0xFF, 0xFF,
];

/// The four acknowledgements and UNSUBACK: fixed header then a 2-byte packet identifier.
pub(crate) const PUBACK: &[u8] = &[0x40, 0x02, 0x00, 0x01]; // 3.4: flags 0000
const PUBREC: &[u8] = &[0x50, 0x02, 0x12, 0x34]; // 3.5: flags 0000
const PUBREL: &[u8] = &[0x62, 0x02, 0xFF, 0xFF]; // 3.6: flags 0010 [MQTT-3.6.1-1]
const PUBCOMP: &[u8] = &[0x70, 0x02, 0x00, 0x2A]; // 3.7: flags 0000
const UNSUBACK: &[u8] = &[0xB0, 0x02, 0x00, 0x0B]; // 3.11: flags 0000

/// SUBSCRIBE with three filters, one per QoS.
pub(crate) const SUBSCRIBE: &[u8] = &[
    0x82, // type 8 << 4, flags 0010 [MQTT-3.8.1-1]
    0x12, // Remaining Length 18 = 2 + 6 + 4 + 6
    0x00, 0x0A, // packet identifier 10
    0x00, 0x03, 0x61, 0x2F, 0x2B, 0x01, // "a/+" requested QoS 1
    0x00, 0x01, 0x23, 0x00, // "#" requested QoS 0
    0x00, 0x03, 0x73, 0x2F, 0x78, 0x02, // "s/x" requested QoS 2
];

pub(crate) fn subscribe() -> Packet {
    Packet::Subscribe(Subscribe {
        pkid: 10,
        filters: vec![
            (s("a/+"), QoS::AtLeastOnce),
            (s("#"), QoS::AtMostOnce),
            (s("s/x"), QoS::ExactlyOnce),
        ],
    })
}

/// SUBACK granting 0, 1, 2 and refusing one filter (0x80, 3.9.3).
const SUBACK: &[u8] = &[
    0x90, // type 9 << 4, flags 0000
    0x06, // Remaining Length 6 = 2 + 4 return codes
    0x00, 0x0A, // packet identifier 10
    0x00, 0x01, 0x02, 0x80, // granted 0, 1, 2, failure
];

fn suback() -> Packet {
    Packet::SubAck(SubAck {
        pkid: 10,
        codes: vec![
            SubscribeReturnCode::Success(QoS::AtMostOnce),
            SubscribeReturnCode::Success(QoS::AtLeastOnce),
            SubscribeReturnCode::Success(QoS::ExactlyOnce),
            SubscribeReturnCode::Failure,
        ],
    })
}

/// UNSUBSCRIBE with two filters.
const UNSUBSCRIBE: &[u8] = &[
    0xA2, // type 10 << 4, flags 0010 [MQTT-3.10.1-1]
    0x0A, // Remaining Length 10 = 2 + 5 + 3
    0x00, 0x0B, // packet identifier 11
    0x00, 0x03, 0x61, 0x2F, 0x2B, // "a/+"
    0x00, 0x01, 0x23, // "#"
];

fn unsubscribe() -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        pkid: 11,
        filters: vec![s("a/+"), s("#")],
    })
}

pub(crate) const PINGREQ: &[u8] = &[0xC0, 0x00]; // 3.12: type 12, flags 0000, no body
const PINGRESP: &[u8] = &[0xD0, 0x00]; // 3.13: type 13
const DISCONNECT: &[u8] = &[0xE0, 0x00]; // 3.14: type 14

/// Every valid vector of this file with its packet, for the streaming tests.
pub(crate) fn all_vectors() -> Vec<(Packet, &'static [u8])> {
    vec![
        (connect_v311_full(), CONNECT_V311_FULL),
        (connect_v311_bare(), CONNECT_V311_BARE),
        (connect_v31(), CONNECT_V31),
        (
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::Accepted,
            }),
            CONNACK_SESSION_PRESENT,
        ),
        (
            publish(false, QoS::AtMostOnce, false, "a/b", None, b"hi"),
            PUBLISH_QOS0,
        ),
        (
            publish(false, QoS::AtMostOnce, true, "a/b", None, b"hi"),
            PUBLISH_QOS0_RETAIN,
        ),
        (
            publish(true, QoS::AtLeastOnce, true, "a/b", Some(0x1234), b"hi"),
            PUBLISH_QOS1_DUP_RETAIN,
        ),
        (
            publish(false, QoS::AtLeastOnce, false, "a/b", Some(42), b"hi"),
            PUBLISH_QOS1,
        ),
        (
            publish(true, QoS::ExactlyOnce, false, "a/b", Some(1), b"hi"),
            PUBLISH_QOS2_DUP,
        ),
        (
            publish(false, QoS::ExactlyOnce, true, "a/b", Some(65_535), b""),
            PUBLISH_QOS2_RETAIN_EMPTY,
        ),
        (Packet::PubAck(1), PUBACK),
        (Packet::PubRec(0x1234), PUBREC),
        (Packet::PubRel(65_535), PUBREL),
        (Packet::PubComp(42), PUBCOMP),
        (subscribe(), SUBSCRIBE),
        (suback(), SUBACK),
        (unsubscribe(), UNSUBSCRIBE),
        (Packet::UnsubAck(11), UNSUBACK),
        (Packet::PingReq, PINGREQ),
        (Packet::PingResp, PINGRESP),
        (Packet::Disconnect, DISCONNECT),
    ]
}

#[test]
fn connect_v311_with_every_field() {
    check_vector(&v311(), &connect_v311_full(), CONNECT_V311_FULL);
}

#[test]
fn connect_v311_persistent_session_without_options() {
    check_vector(&v311(), &connect_v311_bare(), CONNECT_V311_BARE);
}

#[test]
fn connect_v31_mqisdp_level_3() {
    check_vector(&v311(), &connect_v31(), CONNECT_V31);
    // The CONNECT itself is what tells the decoder the revision; a decoder already
    // switched to 3.1 reads it the same way.
    check_vector(&v31(), &connect_v31(), CONNECT_V31);
}

#[test]
fn connect_will_qos_2_and_binary_will_message() {
    // Flags 0001_0110: will QoS 10, will flag, clean session. The will message is binary
    // (3.1.3.3), so 0xFF 0x00 is accepted even though it is not UTF-8.
    let wire = [
        0x10, 0x13, // CONNECT, Remaining Length 19 = 10 + 2 + 3 + 4
        0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, // "MQTT" level 4
        0x16, // flags
        0x00, 0x00, // keep alive 0 (disabled)
        0x00, 0x00, // client identifier: empty (allowed with clean session, 3.1.3.1)
        0x00, 0x01, 0x61, // will topic "a"
        0x00, 0x02, 0xFF, 0x00, // will message, binary
    ];
    let packet = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_session: true,
        keep_alive: 0,
        client_id: s(""),
        will: Some(LastWill {
            topic: s("a"),
            payload: b(&[0xFF, 0x00]),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: None,
        }),
        username: None,
        password: None,
        properties: None,
    }));
    check_vector(&v311(), &packet, &wire);
}

#[test]
fn connack_session_present_and_every_return_code() {
    check_vector(
        &v311(),
        &Packet::ConnAck(ConnAck {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        }),
        CONNACK_SESSION_PRESENT,
    );
    // Table 3.1: return codes 0 to 5, each with Session Present 0.
    let codes = [
        (0x00, ConnectReturnCode::Accepted),
        (0x01, ConnectReturnCode::UnacceptableProtocolVersion),
        (0x02, ConnectReturnCode::IdentifierRejected),
        (0x03, ConnectReturnCode::ServerUnavailable),
        (0x04, ConnectReturnCode::BadUserNameOrPassword),
        (0x05, ConnectReturnCode::NotAuthorized),
    ];
    for (byte, code) in codes {
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            code,
        });
        check_vector(&v311(), &packet, &[0x20, 0x02, 0x00, byte]);
    }
}

#[test]
fn publish_qos0_plain_and_retained() {
    check_vector(
        &v311(),
        &publish(false, QoS::AtMostOnce, false, "a/b", None, b"hi"),
        PUBLISH_QOS0,
    );
    check_vector(
        &v311(),
        &publish(false, QoS::AtMostOnce, true, "a/b", None, b"hi"),
        PUBLISH_QOS0_RETAIN,
    );
}

#[test]
fn publish_qos1_with_and_without_dup_retain() {
    check_vector(
        &v311(),
        &publish(true, QoS::AtLeastOnce, true, "a/b", Some(0x1234), b"hi"),
        PUBLISH_QOS1_DUP_RETAIN,
    );
    check_vector(
        &v311(),
        &publish(false, QoS::AtLeastOnce, false, "a/b", Some(42), b"hi"),
        PUBLISH_QOS1,
    );
}

#[test]
fn publish_qos2_dup_and_retained_empty_payload() {
    check_vector(
        &v311(),
        &publish(true, QoS::ExactlyOnce, false, "a/b", Some(1), b"hi"),
        PUBLISH_QOS2_DUP,
    );
    check_vector(
        &v311(),
        &publish(false, QoS::ExactlyOnce, true, "a/b", Some(65_535), b""),
        PUBLISH_QOS2_RETAIN_EMPTY,
    );
}

#[test]
fn publish_topic_with_four_byte_utf8_character() {
    // U+1F600 is F0 9F 98 80 in UTF-8: well-formed, so it must be accepted (1.5.3).
    let wire = [
        0x30, 0x06, // PUBLISH QoS 0, Remaining Length 6 = 2 + 4
        0x00, 0x04, 0xF0, 0x9F, 0x98, 0x80, // topic "\u{1F600}"
    ];
    check_vector(
        &v311(),
        &publish(false, QoS::AtMostOnce, false, "\u{1F600}", None, b""),
        &wire,
    );
}

#[test]
fn puback_pubrec_pubrel_pubcomp_unsuback() {
    check_vector(&v311(), &Packet::PubAck(1), PUBACK);
    check_vector(&v311(), &Packet::PubRec(0x1234), PUBREC);
    check_vector(&v311(), &Packet::PubRel(65_535), PUBREL);
    check_vector(&v311(), &Packet::PubComp(42), PUBCOMP);
    check_vector(&v311(), &Packet::UnsubAck(11), UNSUBACK);
}

#[test]
fn subscribe_with_several_filters() {
    check_vector(&v311(), &subscribe(), SUBSCRIBE);
}

#[test]
fn suback_with_failure_code() {
    check_vector(&v311(), &suback(), SUBACK);
}

#[test]
fn unsubscribe_with_several_filters() {
    check_vector(&v311(), &unsubscribe(), UNSUBSCRIBE);
}

#[test]
fn pingreq_pingresp_disconnect() {
    check_vector(&v311(), &Packet::PingReq, PINGREQ);
    check_vector(&v311(), &Packet::PingResp, PINGRESP);
    check_vector(&v311(), &Packet::Disconnect, DISCONNECT);
}

#[test]
fn every_vector_also_decodes_under_v31() {
    // 3.1 leniency only widens what is accepted: every strict 3.1.1 vector still decodes.
    for (packet, wire) in all_vectors() {
        assert_eq!(decode_exact(&v31(), wire), packet);
    }
}
