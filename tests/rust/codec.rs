//! Byte-exact conformance vectors for `pyo3mq::codec`.
//!
//! Every vector below is derived by hand from the MQTT 3.1.1 specification (OASIS
//! Standard, 29 October 2014) and, for the 3.1 cases, the IBM MQTT V3.1 Protocol
//! Specification. The comments next to each byte say which field it is, so a reader can
//! check the derivation without running anything:
//!
//! * fixed header, spec 2.2: byte 1 is `type << 4 | flags`, then the Remaining Length,
//!   a base-128 varint of 1 to 4 bytes, least significant group first, bit 7 meaning
//!   "another byte follows" (2.2.3);
//! * strings and binary fields are a big-endian `u16` length followed by that many bytes
//!   (1.5.3); packet identifiers are big-endian `u16` (2.3.1).
//!
//! Valid vectors are checked in both directions (encode gives exactly these bytes, decode
//! gives exactly this packet and consumes every byte). Invalid vectors are complete
//! packets, so the decoder must answer with the precise `Error` variant, never `Ok(None)`.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use pyo3mq::codec::{
    encode_publish_header, remaining_length_size, ConnAck, Connect, ConnectReturnCode, Decoder,
    Error, LastWill, Packet, Protocol, Publish, QoS, SubAck, Subscribe, SubscribeReturnCode,
    Unsubscribe, MAX_REMAINING_LENGTH,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Maximum packet size used by the decoders below unless a test needs another one.
const MAX: usize = 1 << 20;

fn v311() -> Decoder {
    Decoder::new(MAX)
}

fn v31() -> Decoder {
    let mut decoder = Decoder::new(MAX);
    decoder.set_protocol(Protocol::V31);
    decoder
}

fn s(text: &str) -> ByteString {
    ByteString::from(text)
}

fn b(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

fn decode(decoder: &Decoder, wire: &[u8]) -> Result<Option<Packet>, Error> {
    let mut buf = BytesMut::from(wire);
    decoder.decode(&mut buf)
}

/// Decodes one complete packet and checks that it used every byte of `wire`.
fn decode_exact(decoder: &Decoder, wire: &[u8]) -> Packet {
    let mut buf = BytesMut::from(wire);
    let packet = match decoder.decode(&mut buf) {
        Ok(Some(packet)) => packet,
        other => panic!("decoding {wire:02X?} gave {other:?}"),
    };
    assert!(
        buf.is_empty(),
        "{} left {} bytes unconsumed",
        packet.name(),
        buf.len()
    );
    packet
}

fn encode(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet
        .encode(&mut buf)
        .unwrap_or_else(|e| panic!("encoding {packet:?}: {e}"));
    buf.to_vec()
}

/// Checks a valid vector in both directions.
fn check_vector(decoder: &Decoder, packet: &Packet, wire: &[u8]) {
    assert_eq!(
        encode(packet),
        wire,
        "encoding of {} differs from the spec vector",
        packet.name()
    );
    assert_eq!(&decode_exact(decoder, wire), packet, "decoding {wire:02X?}");
}

/// Checks that a complete packet is refused with exactly `expected`.
#[track_caller]
fn rejects(decoder: &Decoder, wire: &[u8], expected: Error) {
    assert_eq!(decode(decoder, wire), Err(expected), "decoding {wire:02X?}");
}

fn publish(
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: &str,
    pkid: Option<u16>,
    payload: &[u8],
) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic: s(topic),
        pkid,
        payload: b(payload),
    })
}

fn invalid_flags(packet: &'static str, flags: u8) -> Error {
    Error::InvalidFlags { packet, flags }
}

// ---------------------------------------------------------------------------------------
// Valid vectors: one or more per packet type
// ---------------------------------------------------------------------------------------

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
    Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_session: true,
        keep_alive: 60,
        client_id: s("cid"),
        will: Some(LastWill {
            topic: s("w/t"),
            payload: b(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        username: Some(s("user")),
        password: Some(b(&[0x70, 0x00, 0xFF])),
    })
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
    Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_session: false,
        keep_alive: 65_535,
        client_id: s("a"),
        will: None,
        username: None,
        password: None,
    })
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
    Packet::Connect(Connect {
        protocol: Protocol::V31,
        clean_session: true,
        keep_alive: 10,
        client_id: s("c31"),
        will: Some(LastWill {
            topic: s("a"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
        }),
        username: Some(s("u")),
        password: None,
    })
}

/// CONNACK (3.2): flags byte bit 0 is Session Present, then the return code.
const CONNACK_SESSION_PRESENT: &[u8] = &[0x20, 0x02, 0x01, 0x00];

/// PUBLISH QoS 0, topic "a/b", payload "hi": no packet identifier [MQTT-2.3.1-5].
const PUBLISH_QOS0: &[u8] = &[
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
const PUBLISH_QOS1: &[u8] = &[
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
const PUBACK: &[u8] = &[0x40, 0x02, 0x00, 0x01]; // 3.4: flags 0000
const PUBREC: &[u8] = &[0x50, 0x02, 0x12, 0x34]; // 3.5: flags 0000
const PUBREL: &[u8] = &[0x62, 0x02, 0xFF, 0xFF]; // 3.6: flags 0010 [MQTT-3.6.1-1]
const PUBCOMP: &[u8] = &[0x70, 0x02, 0x00, 0x2A]; // 3.7: flags 0000
const UNSUBACK: &[u8] = &[0xB0, 0x02, 0x00, 0x0B]; // 3.11: flags 0000

/// SUBSCRIBE with three filters, one per QoS.
const SUBSCRIBE: &[u8] = &[
    0x82, // type 8 << 4, flags 0010 [MQTT-3.8.1-1]
    0x12, // Remaining Length 18 = 2 + 6 + 4 + 6
    0x00, 0x0A, // packet identifier 10
    0x00, 0x03, 0x61, 0x2F, 0x2B, 0x01, // "a/+" requested QoS 1
    0x00, 0x01, 0x23, 0x00, // "#" requested QoS 0
    0x00, 0x03, 0x73, 0x2F, 0x78, 0x02, // "s/x" requested QoS 2
];

fn subscribe() -> Packet {
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

const PINGREQ: &[u8] = &[0xC0, 0x00]; // 3.12: type 12, flags 0000, no body
const PINGRESP: &[u8] = &[0xD0, 0x00]; // 3.13: type 13
const DISCONNECT: &[u8] = &[0xE0, 0x00]; // 3.14: type 14

/// Every valid vector of this file with its packet, for the streaming tests.
fn all_vectors() -> Vec<(Packet, &'static [u8])> {
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
    let packet = Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_session: true,
        keep_alive: 0,
        client_id: s(""),
        will: Some(LastWill {
            topic: s("a"),
            payload: b(&[0xFF, 0x00]),
            qos: QoS::ExactlyOnce,
            retain: false,
        }),
        username: None,
        password: None,
    });
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

// ---------------------------------------------------------------------------------------
// Fixed header: reserved packet types and flags
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// CONNECT rules
// ---------------------------------------------------------------------------------------

/// A 3.1.1 CONNECT with the given flags and keep alive 10 whose payload is `payload`.
fn connect_v311_with(flags: u8, payload: &[u8]) -> Vec<u8> {
    let remaining = 10 + payload.len();
    assert!(remaining < 128, "helper writes a 1-byte Remaining Length");
    let mut wire = vec![0x10, remaining as u8]; // CONNECT, Remaining Length
    wire.extend_from_slice(&[0x00, 0x04, 0x4D, 0x51, 0x54, 0x54]); // "MQTT"
    wire.extend_from_slice(&[0x04, flags, 0x00, 0x0A]); // level 4, flags, keep alive 10
    wire.extend_from_slice(payload);
    wire
}

#[test]
fn connect_helper_matches_a_hand_written_vector() {
    // The helper above is itself checked against bytes written out in full.
    assert_eq!(
        connect_v311_with(0x02, &[0x00, 0x01, 0x63]),
        [
            0x10, 0x0D, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x0A, 0x00, 0x01,
            0x63
        ]
    );
}

#[test]
fn connect_reserved_flag_bit_0() {
    // [MQTT-3.1.2-3]: 3.1.1 servers must treat reserved bit 0 set as malformed.
    let wire = [
        0x10, 0x0D, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, // "MQTT" level 4
        0x03, // flags: clean session + reserved bit 0
        0x00, 0x0A, 0x00, 0x01, 0x63, // keep alive 10, client identifier "c"
    ];
    rejects(&v311(), &wire, Error::ConnectReservedFlag);
    rejects(&v31(), &wire, Error::ConnectReservedFlag);
}

#[test]
fn connect_v31_tolerates_reserved_flag_bit_0() {
    // 3.1 only calls bit 0 "unused"; mosquitto accepts it set, so do we.
    let wire = [
        0x10, 0x0F, // Remaining Length 15 = 12 + 3
        0x00, 0x06, 0x4D, 0x51, 0x49, 0x73, 0x64, 0x70, 0x03, // "MQIsdp" version 3
        0x03, // flags: clean session + unused bit 0
        0x00, 0x0A, 0x00, 0x01, 0x63, // keep alive 10, client identifier "c"
    ];
    assert_eq!(
        decode_exact(&v311(), &wire),
        Packet::Connect(Connect {
            protocol: Protocol::V31,
            clean_session: true,
            keep_alive: 10,
            client_id: s("c"),
            will: None,
            username: None,
            password: None,
        })
    );
}

#[test]
fn connect_will_qos_or_retain_without_will_flag() {
    // [MQTT-3.1.2-13] / [MQTT-3.1.2-15]: with the will flag 0, will QoS and will retain
    // must be 0. Client identifier "c" follows in each case.
    let cid = [0x00, 0x01, 0x63];
    // 0x0A = 0000_1010: will QoS 01, clean session, will flag 0.
    rejects(
        &v311(),
        &connect_v311_with(0x0A, &cid),
        Error::WillFlagsWithoutWill,
    );
    // 0x22 = 0010_0010: will retain, clean session, will flag 0.
    rejects(
        &v311(),
        &connect_v311_with(0x22, &cid),
        Error::WillFlagsWithoutWill,
    );
    // 0x12 = 0001_0010: will QoS 10; 0x18 = 0001_1000: will QoS 11.
    rejects(
        &v311(),
        &connect_v311_with(0x12, &cid),
        Error::WillFlagsWithoutWill,
    );
    rejects(
        &v311(),
        &connect_v311_with(0x18, &cid),
        Error::WillFlagsWithoutWill,
    );
}

#[test]
fn connect_will_qos_3() {
    // [MQTT-3.1.2-14]: will QoS 3 is invalid. 0x1E = 0001_1110: will QoS 11, will, clean.
    let payload = [
        0x00, 0x01, 0x63, // client identifier "c"
        0x00, 0x01, 0x61, // will topic "a"
        0x00, 0x00, // will message: empty
    ];
    let wire = connect_v311_with(0x1E, &payload);
    rejects(&v311(), &wire, Error::InvalidWillQoS);
    // The same bytes with will QoS 10 (0x16) are fine: only the QoS bits made it invalid.
    let ok = connect_v311_with(0x16, &payload);
    match decode_exact(&v311(), &ok) {
        Packet::Connect(c) => assert_eq!(c.will.map(|w| w.qos), Some(QoS::ExactlyOnce)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn connect_password_without_user_name() {
    // [MQTT-3.1.2-22]: password flag 1 requires user name flag 1. 0x42 = password + clean.
    let payload = [
        0x00, 0x01, 0x63, // client identifier "c"
        0x00, 0x01, 0x70, // password "p"
    ];
    rejects(
        &v311(),
        &connect_v311_with(0x42, &payload),
        Error::PasswordWithoutUsername,
    );
}

#[test]
fn connect_missing_announced_fields_is_truncated() {
    let truncated = Error::Truncated("CONNECT");
    let cid = [0x00, 0x01, 0x63];
    // Will flag (0x06), nothing after the client identifier.
    rejects(&v311(), &connect_v311_with(0x06, &cid), truncated.clone());
    // Will topic present, will message missing.
    rejects(
        &v311(),
        &connect_v311_with(0x06, &[0x00, 0x01, 0x63, 0x00, 0x01, 0x61]),
        truncated.clone(),
    );
    // User name flag (0x82), no user name.
    rejects(&v311(), &connect_v311_with(0x82, &cid), truncated.clone());
    // User name and password flags (0xC2), user name "u", no password.
    rejects(
        &v311(),
        &connect_v311_with(0xC2, &[0x00, 0x01, 0x63, 0x00, 0x01, 0x75]),
        truncated.clone(),
    );
    // No client identifier at all.
    rejects(&v311(), &connect_v311_with(0x02, &[]), truncated.clone());
    // Client identifier length 3 but one byte.
    rejects(
        &v311(),
        &connect_v311_with(0x02, &[0x00, 0x03, 0x63]),
        truncated.clone(),
    );
    // The variable header itself cut short: after the level, and inside the name.
    let no_flags = [0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04];
    rejects(&v311(), &no_flags, truncated.clone());
    let no_keep_alive = [
        0x10, 0x09, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00,
    ];
    rejects(&v311(), &no_keep_alive, truncated.clone());
    rejects(&v311(), &[0x10, 0x03, 0x00, 0x04, 0x4D], truncated.clone());
    rejects(&v311(), &[0x10, 0x00], truncated);
}

#[test]
fn connect_v31_may_announce_a_user_name_and_leave_it_out() {
    // Old 3.1 clients set the user name flag with no user name field; mosquitto accepts
    // that for 3.1 only. 0x82 = user name + clean session.
    let v31_wire = [
        0x10, 0x0F, // Remaining Length 15 = 12 + 3
        0x00, 0x06, 0x4D, 0x51, 0x49, 0x73, 0x64, 0x70, 0x03, // "MQIsdp" version 3
        0x82, 0x00, 0x0A, 0x00, 0x01, 0x63, // flags, keep alive 10, client identifier "c"
    ];
    assert_eq!(
        decode_exact(&v311(), &v31_wire),
        Packet::Connect(Connect {
            protocol: Protocol::V31,
            clean_session: true,
            keep_alive: 10,
            client_id: s("c"),
            will: None,
            username: None,
            password: None,
        })
    );
    // The same CONNECT in 3.1.1 is truncated.
    rejects(
        &v311(),
        &connect_v311_with(0x82, &[0x00, 0x01, 0x63]),
        Error::Truncated("CONNECT"),
    );
}

#[test]
fn connect_trailing_bytes() {
    // One byte after the client identifier, with no flag announcing another field.
    rejects(
        &v311(),
        &connect_v311_with(0x02, &[0x00, 0x01, 0x63, 0xFF]),
        Error::TrailingBytes {
            packet: "CONNECT",
            extra: 1,
        },
    );
    // Three bytes after a full CONNECT with password.
    let mut payload = vec![0x00, 0x01, 0x63, 0x00, 0x01, 0x75, 0x00, 0x01, 0x70];
    payload.extend_from_slice(&[0x00, 0x01, 0x70]);
    rejects(
        &v311(),
        &connect_v311_with(0xC2, &payload),
        Error::TrailingBytes {
            packet: "CONNECT",
            extra: 3,
        },
    );
}

#[test]
fn connect_unknown_protocol_name() {
    // [MQTT-3.1.2-1]: anything but "MQTT" (and "MQIsdp" for 3.1) is refused.
    let mqts = [
        0x10, 0x0D, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x53, // "MQTS"
        0x04, 0x02, 0x00, 0x0A, 0x00, 0x01, 0x63,
    ];
    rejects(&v311(), &mqts, Error::InvalidProtocolName);
    let lowercase = [
        0x10, 0x0D, 0x00, 0x04, 0x6D, 0x71, 0x74, 0x74, // "mqtt"
        0x04, 0x02, 0x00, 0x0A, 0x00, 0x01, 0x63,
    ];
    rejects(&v311(), &lowercase, Error::InvalidProtocolName);
    let empty = [
        0x10, 0x09, 0x00, 0x00, // ""
        0x04, 0x02, 0x00, 0x0A, 0x00, 0x01, 0x63,
    ];
    rejects(&v311(), &empty, Error::InvalidProtocolName);
}

#[test]
fn connect_unsupported_protocol_level() {
    // [MQTT-3.1.2-2]: "MQTT" goes with level 4 and "MQIsdp" with 3; MQTT 5 is level 5.
    let mqtt_5 = connect_with_level(&[0x4D, 0x51, 0x54, 0x54], 0x05);
    rejects(
        &v311(),
        &mqtt_5,
        Error::UnsupportedProtocolLevel {
            name: "MQTT",
            level: 5,
        },
    );
    let mqtt_3 = connect_with_level(&[0x4D, 0x51, 0x54, 0x54], 0x03);
    rejects(
        &v311(),
        &mqtt_3,
        Error::UnsupportedProtocolLevel {
            name: "MQTT",
            level: 3,
        },
    );
    let mqisdp_4 = connect_with_level(&[0x4D, 0x51, 0x49, 0x73, 0x64, 0x70], 0x04);
    rejects(
        &v311(),
        &mqisdp_4,
        Error::UnsupportedProtocolLevel {
            name: "MQIsdp",
            level: 4,
        },
    );
}

/// CONNECT with protocol `name` and `level`, flags 0x02, keep alive 10, client id "c".
fn connect_with_level(name: &[u8], level: u8) -> Vec<u8> {
    let mut wire = vec![0x10, (2 + name.len() + 1 + 1 + 2 + 3) as u8];
    wire.extend_from_slice(&[0x00, name.len() as u8]);
    wire.extend_from_slice(name);
    wire.extend_from_slice(&[level, 0x02, 0x00, 0x0A, 0x00, 0x01, 0x63]);
    wire
}

#[test]
fn connect_with_level_matches_a_hand_written_vector() {
    assert_eq!(
        connect_with_level(&[0x4D, 0x51, 0x49, 0x73, 0x64, 0x70], 0x04),
        [
            0x10, 0x0F, 0x00, 0x06, 0x4D, 0x51, 0x49, 0x73, 0x64, 0x70, 0x04, 0x02, 0x00, 0x0A,
            0x00, 0x01, 0x63
        ]
    );
}

// ---------------------------------------------------------------------------------------
// PUBLISH rules
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Strings: UTF-8, U+0000, BOM
// ---------------------------------------------------------------------------------------

/// `ED A0 80` encodes the surrogate U+D800, `C0` is never a valid UTF-8 byte, and `C0 80`
/// is the overlong ("modified UTF-8") NUL: all ill-formed [MQTT-1.5.3-1].
const BAD_UTF8: [&[u8]; 3] = [&[0xED, 0xA0, 0x80], &[0xC0], &[0xC0, 0x80]];

/// A length-prefixed string (1.5.3) of `raw`.
fn string(raw: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, raw.len() as u8];
    out.extend_from_slice(raw);
    out
}

#[test]
fn string_helper_matches_spec_layout() {
    assert_eq!(string(&[0xED, 0xA0, 0x80]), [0x00, 0x03, 0xED, 0xA0, 0x80]);
}

#[test]
fn invalid_utf8_in_publish_topic() {
    for raw in BAD_UTF8 {
        let mut wire = vec![0x30, (2 + raw.len()) as u8];
        wire.extend(string(raw));
        rejects(&v311(), &wire, Error::InvalidUtf8("topic name"));
    }
    // Written out once in full: 30 05 00 03 ED A0 80.
    rejects(
        &v311(),
        &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80],
        Error::InvalidUtf8("topic name"),
    );
}

#[test]
fn invalid_utf8_in_client_identifier() {
    for raw in BAD_UTF8 {
        rejects(
            &v311(),
            &connect_v311_with(0x02, &string(raw)),
            Error::InvalidUtf8("client identifier"),
        );
    }
}

#[test]
fn invalid_utf8_in_will_topic() {
    for raw in BAD_UTF8 {
        let mut payload = string(b"c");
        payload.extend(string(raw)); // will topic
        payload.extend(string(b"")); // will message
        rejects(
            &v311(),
            &connect_v311_with(0x06, &payload),
            Error::InvalidUtf8("will topic"),
        );
    }
}

#[test]
fn invalid_utf8_in_user_name() {
    for raw in BAD_UTF8 {
        let mut payload = string(b"c");
        payload.extend(string(raw)); // user name
        rejects(
            &v311(),
            &connect_v311_with(0x82, &payload),
            Error::InvalidUtf8("user name"),
        );
    }
}

#[test]
fn invalid_utf8_in_topic_filters() {
    for raw in BAD_UTF8 {
        // SUBSCRIBE: packet identifier 1, filter, requested QoS 0.
        let mut body = vec![0x00, 0x01];
        body.extend(string(raw));
        body.push(0x00);
        let mut wire = vec![0x82, body.len() as u8];
        wire.extend(&body);
        rejects(&v311(), &wire, Error::InvalidUtf8("topic filter"));
        // UNSUBSCRIBE: packet identifier 1, filter.
        let mut body = vec![0x00, 0x01];
        body.extend(string(raw));
        let mut wire = vec![0xA2, body.len() as u8];
        wire.extend(&body);
        rejects(&v311(), &wire, Error::InvalidUtf8("topic filter"));
    }
    // Written out once in full: 82 08 00 01 00 03 ED A0 80 00.
    rejects(
        &v311(),
        &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 0xED, 0xA0, 0x80, 0x00],
        Error::InvalidUtf8("topic filter"),
    );
}

#[test]
fn null_character_in_strings() {
    // [MQTT-1.5.3-2]: U+0000 (encoded 00) in any string is malformed. "a\0b" = 61 00 62.
    let a_nul_b = [0x61, 0x00, 0x62];
    rejects(
        &v311(),
        &[0x30, 0x05, 0x00, 0x03, 0x61, 0x00, 0x62],
        Error::NullCharacter("topic name"),
    );
    rejects(
        &v311(),
        &connect_v311_with(0x02, &string(&a_nul_b)),
        Error::NullCharacter("client identifier"),
    );
    let mut will = string(b"c");
    will.extend(string(&a_nul_b));
    will.extend(string(b""));
    rejects(
        &v311(),
        &connect_v311_with(0x06, &will),
        Error::NullCharacter("will topic"),
    );
    let mut user = string(b"c");
    user.extend(string(&a_nul_b));
    rejects(
        &v311(),
        &connect_v311_with(0x82, &user),
        Error::NullCharacter("user name"),
    );
    rejects(
        &v311(),
        &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, 0x61, 0x00, 0x62, 0x00],
        Error::NullCharacter("topic filter"),
    );
    rejects(
        &v311(),
        &[0xA2, 0x07, 0x00, 0x01, 0x00, 0x03, 0x61, 0x00, 0x62],
        Error::NullCharacter("topic filter"),
    );
}

#[test]
fn bom_is_preserved_in_topics() {
    // [MQTT-1.5.3-3]: EF BB BF is U+FEFF wherever it appears and must not be stripped.
    let wire = [
        0x30, 0x08, // PUBLISH QoS 0, Remaining Length 8 = 6 + 2
        0x00, 0x04, 0xEF, 0xBB, 0xBF, 0x61, // topic "\u{FEFF}a"
        0x68, 0x69, // payload "hi"
    ];
    let packet = decode_exact(&v311(), &wire);
    let Packet::Publish(p) = &packet else {
        panic!("{packet:?}")
    };
    assert_eq!(p.topic.as_bytes().as_ref(), [0xEF, 0xBB, 0xBF, 0x61]);
    assert_eq!(&*p.topic, "\u{FEFF}a");
    assert_eq!(encode(&packet), wire);
    // A topic that is only a BOM is one character long, not empty.
    let bom_only = [0x30, 0x05, 0x00, 0x03, 0xEF, 0xBB, 0xBF];
    check_vector(
        &v311(),
        &publish(false, QoS::AtMostOnce, false, "\u{FEFF}", None, b""),
        &bom_only,
    );
    // Also in a filter.
    let sub = [
        0x82, 0x08, // SUBSCRIBE, Remaining Length 8 = 2 + 5 + 1
        0x00, 0x01, // packet identifier 1
        0x00, 0x03, 0xEF, 0xBB, 0xBF, // filter "\u{FEFF}"
        0x00, // requested QoS 0
    ];
    check_vector(
        &v311(),
        &Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: vec![(s("\u{FEFF}"), QoS::AtMostOnce)],
        }),
        &sub,
    );
}

#[test]
fn will_topic_rules_match_publish_topic_rules() {
    // The will topic is a topic name (3.1.3.2): no wildcards, not empty.
    let mut wildcard = string(b"c");
    wildcard.extend(string(b"#"));
    wildcard.extend(string(b""));
    rejects(
        &v311(),
        &connect_v311_with(0x06, &wildcard),
        Error::WildcardInTopicName,
    );
    let mut empty = string(b"c");
    empty.extend(string(b""));
    empty.extend(string(b""));
    rejects(
        &v311(),
        &connect_v311_with(0x06, &empty),
        Error::EmptyTopicName,
    );
}

// ---------------------------------------------------------------------------------------
// Encoder-side rules
// ---------------------------------------------------------------------------------------

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
    };
    let no_user = Connect {
        password: Some(b(b"p")),
        ..base.clone()
    };
    assert_eq!(
        Packet::Connect(no_user).encode(&mut dst),
        Err(Error::PasswordWithoutUsername)
    );
    let will = |topic: &str| LastWill {
        topic: s(topic),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
    };
    let wildcard_will = Connect {
        will: Some(will("a/#")),
        ..base.clone()
    };
    assert_eq!(
        Packet::Connect(wildcard_will).encode(&mut dst),
        Err(Error::WildcardInTopicName)
    );
    let empty_will = Connect {
        will: Some(will("")),
        ..base
    };
    assert_eq!(
        Packet::Connect(empty_will).encode(&mut dst),
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
// Streaming: incremental input, several packets per buffer, zero copy
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Error messages
// ---------------------------------------------------------------------------------------

#[test]
fn error_messages_name_the_rule() {
    assert_eq!(
        invalid_flags("PINGREQ", 0x01).to_string(),
        "[MQTT-2.2.2-2] PINGREQ has invalid fixed header flags 0b0001"
    );
    assert!(Error::ZeroPacketId("PUBACK")
        .to_string()
        .starts_with("[MQTT-2.3.1-1]"));
    assert!(Error::NullCharacter("topic name")
        .to_string()
        .contains("topic name"));
}
