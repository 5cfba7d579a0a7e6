//! MQTT 5.0: byte-exact vectors (derived by hand from the OASIS MQTT 5.0 standard, each
//! byte commented) for every packet type, and one malformed-input test per rule, each
//! checking the error and the reason code a broker sends for it.
//!
//! 5.0 layout reminders: properties follow the variable header as a Variable Byte
//! Integer length and identifier/value pairs (2.2.2); acknowledgements add a reason code
//! after the packet identifier and may drop it (and the property length) when it is
//! Success without properties (3.4.2.1).

use super::*;
use pyo3mq::codec::{
    AckV5, Auth, ConnAckV5, DisconnectV5, Properties, PropertyContext, ReasonCode, RetainHandling,
    SubAckV5, SubscribeV5, SubscriptionOptions, UnsubAckV5, UnsubscribeV5,
};

fn v5() -> Decoder {
    let mut decoder = Decoder::new(MAX);
    decoder.set_protocol(Protocol::V5);
    decoder
}

fn encode_v5(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet
        .encode_for(Protocol::V5, &mut buf)
        .unwrap_or_else(|e| panic!("encoding {packet:?}: {e}"));
    buf.to_vec()
}

fn check_v5(packet: &Packet, wire: &[u8]) {
    assert_eq!(encode_v5(packet), wire, "encoding of {}", packet.name());
    assert_eq!(&decode_exact(&v5(), wire), packet, "decoding {wire:02X?}");
}

/// Refused with exactly `expected`, which tells the broker to send `reason`.
#[track_caller]
fn rejects_v5(wire: &[u8], expected: Error, reason: u8) {
    assert_eq!(
        decode(&v5(), wire),
        Err(expected.clone()),
        "decoding {wire:02X?}"
    );
    assert_eq!(expected.reason_code(), ReasonCode(reason), "{expected}");
}

fn props(f: impl FnOnce(&mut Properties)) -> Option<Box<Properties>> {
    let mut p = Properties::default();
    f(&mut p);
    Some(Box::new(p))
}

/// A QoS 0 PUBLISH to "t" whose property section is `props` (length prepended) and
/// whose payload is `payload`; lengths below 128.
fn publish_with(props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, b't', props.len() as u8];
    body.extend_from_slice(props);
    body.extend_from_slice(payload);
    let mut wire = vec![0x30, body.len() as u8];
    wire.extend_from_slice(&body);
    wire
}

/// A 5.0 CONNECT (client id "c", Clean Start, Keep Alive 60) with `props`.
fn connect_with(flags: u8, props: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, flags, 0x00, 0x3C];
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend_from_slice(&[0x00, 0x01, b'c']);
    body.extend_from_slice(rest);
    let mut wire = vec![0x10, body.len() as u8];
    wire.extend_from_slice(&body);
    wire
}

// ---------------------------------------------------------------------------------------
// Valid vectors, one or more per packet type
// ---------------------------------------------------------------------------------------

#[test]
fn v5_connect_minimal() {
    // The checklist's minimal v5 CONNECT: level 5, Clean Start, Keep Alive 60, property
    // length 0, client id "c". It is read by a decoder that does not know the revision
    // yet (level 5 says it).
    let wire = [
        0x10, 0x0E, // CONNECT, Remaining Length 14
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // protocol name, level 5
        0x02, 0x00, 0x3C, // Clean Start, Keep Alive 60
        0x00, // property length 0
        0x00, 0x01, b'c', // client id
    ];
    let packet = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_session: true,
        keep_alive: 60,
        client_id: s("c"),
        will: None,
        username: None,
        password: None,
        properties: None,
    }));
    check_vector(&v311(), &packet, &wire);
    check_v5(&packet, &wire);
}

#[test]
fn v5_connect_with_properties_will_and_password_only() {
    let wire = [
        0x10, 0x2D, // CONNECT, Remaining Length 45
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, // "MQTT", level 5
        0x4E, // password, will retain 0, will QoS 1, will, Clean Start
        0x00, 0x0A, // Keep Alive 10
        0x08, // property length 8
        0x11, 0x00, 0x00, 0x01, 0x2C, // Session Expiry Interval 300
        0x21, 0x00, 0x0A, // Receive Maximum 10
        0x00, 0x01, b'c', // client id
        0x0B, // will property length 11
        0x18, 0x00, 0x00, 0x00, 0x05, // Will Delay Interval 5
        0x26, 0x00, 0x01, b'k', 0x00, 0x00, // User Property ("k", "")
        0x00, 0x01, b'w', // will topic
        0x00, 0x02, 0xFF, 0x00, // will payload
        0x00, 0x02, b'p', b'w', // password without a user name [MQTT-3.1.2-19]
    ];
    let packet = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_session: true,
        keep_alive: 10,
        client_id: s("c"),
        will: Some(LastWill {
            topic: s("w"),
            payload: b(&[0xFF, 0x00]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: props(|p| {
                p.will_delay_interval = Some(5);
                p.user_properties = vec![(s("k"), s(""))];
            }),
        }),
        username: None,
        password: Some(b(b"pw")),
        properties: props(|p| {
            p.session_expiry_interval = Some(300);
            p.receive_maximum = Some(10);
        }),
    }));
    check_v5(&packet, &wire);
}

#[test]
fn v5_connack_minimal_and_full() {
    check_v5(
        &Packet::ConnAckV5(ConnAckV5 {
            session_present: false,
            reason: ReasonCode::SUCCESS,
            properties: None,
        }),
        &[0x20, 0x03, 0x00, 0x00, 0x00],
    );
    let wire = [
        0x20, 0x15, // CONNACK, Remaining Length 21
        0x01, 0x00, // Session Present, Success
        0x12, // property length 18 (the encoder writes identifiers in ascending order)
        0x12, 0x00, 0x02, b'i', b'd', // Assigned Client Identifier "id"
        0x13, 0x00, 0x1E, // Server Keep Alive 30
        0x21, 0x00, 0x14, // Receive Maximum 20
        0x22, 0x00, 0x00, // Topic Alias Maximum 0
        0x24, 0x01, // Maximum QoS 1
        0x2A, 0x00, // Shared Subscription Available 0
    ];
    check_v5(
        &Packet::ConnAckV5(ConnAckV5 {
            session_present: true,
            reason: ReasonCode::SUCCESS,
            properties: props(|p| {
                p.receive_maximum = Some(20);
                p.topic_alias_maximum = Some(0);
                p.maximum_qos = Some(1);
                p.assigned_client_identifier = Some(s("id"));
                p.server_keep_alive = Some(30);
                p.shared_subscription_available = Some(false);
            }),
        }),
        &wire,
    );
    // An error code always goes out with Session Present 0 [MQTT-3.2.2-6].
    let mut out = BytesMut::new();
    Packet::ConnAckV5(ConnAckV5 {
        session_present: true,
        reason: ReasonCode::NOT_AUTHORIZED,
        properties: None,
    })
    .encode(&mut out)
    .unwrap();
    assert_eq!(&out[..], [0x20, 0x03, 0x00, 0x87, 0x00]);
}

#[test]
fn v5_publish_without_and_with_properties() {
    // QoS 0 without properties: the property length byte follows the topic directly
    // [MQTT-2.2.1-2], [MQTT-2.2.2-1].
    check_v5(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("a/b"),
            pkid: None,
            payload: b(b"x"),
            properties: None,
        }),
        &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'x'],
    );
    let wire = [
        0x33, 0x15, // PUBLISH QoS 1 RETAIN, Remaining Length 21
        0x00, 0x01, b't', // topic
        0x00, 0x01, // packet id 1
        0x0D, // property length 13
        0x01, 0x01, // Payload Format Indicator 1 (UTF-8)
        0x03, 0x00, 0x01, b'j', // Content Type "j"
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // User Property ("k", "v")
        b'h', b'i', // payload
    ];
    check_v5(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: s("t"),
            pkid: Some(1),
            payload: b(b"hi"),
            properties: props(|p| {
                p.payload_format_indicator = Some(1);
                p.content_type = Some(s("j"));
                p.user_properties = vec![(s("k"), s("v"))];
            }),
        }),
        &wire,
    );
}

#[test]
fn v5_publish_repeats_user_properties_and_subscription_ids_in_order() {
    // [MQTT-3.3.2-17], [MQTT-3.3.2-18]: several User Properties, a repeated name, order
    // kept; several Subscription Identifiers [MQTT-3.3.4-4].
    let props_wire = [
        0x0B, 0x01, // Subscription Identifier 1
        0x0B, 0x80, 0x01, // Subscription Identifier 128 (two-byte VBI)
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'1', // ("k", "1")
        0x26, 0x00, 0x01, b'j', 0x00, 0x01, b'2', // ("j", "2")
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'3', // ("k", "3")
    ];
    let wire = publish_with(&props_wire, b"");
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: s("t"),
        pkid: None,
        payload: Bytes::new(),
        properties: props(|p| {
            p.subscription_identifiers = vec![1, 128];
            p.user_properties = vec![(s("k"), s("1")), (s("j"), s("2")), (s("k"), s("3"))];
        }),
    });
    check_v5(&packet, &wire);
}

#[test]
fn v5_publish_empty_topic_with_topic_alias() {
    let wire = [
        0x30, 0x06, // PUBLISH QoS 0
        0x00, 0x00, // empty topic name, stands for the alias
        0x03, 0x23, 0x00, 0x02, // Topic Alias 2
    ];
    check_v5(
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s(""),
            pkid: None,
            payload: Bytes::new(),
            properties: props(|p| p.topic_alias = Some(2)),
        }),
        &wire,
    );
}

#[test]
fn v5_acknowledgements_short_and_long_forms() {
    // Short forms are 3.1.1's bytes and decode to the shared variants.
    check_v5(&Packet::PubAck(7), &[0x40, 0x02, 0x00, 0x07]);
    check_v5(&Packet::PubRec(7), &[0x50, 0x02, 0x00, 0x07]);
    check_v5(&Packet::PubRel(7), &[0x62, 0x02, 0x00, 0x07]);
    check_v5(&Packet::PubComp(7), &[0x70, 0x02, 0x00, 0x07]);
    let ack = |reason: u8| AckV5 {
        pkid: 7,
        reason: ReasonCode(reason),
        properties: None,
    };
    // Remaining Length 3: a reason code, no property length.
    check_v5(
        &Packet::PubAckV5(ack(0x10)),
        &[0x40, 0x03, 0x00, 0x07, 0x10],
    );
    check_v5(
        &Packet::PubRecV5(ack(0x87)),
        &[0x50, 0x03, 0x00, 0x07, 0x87],
    );
    check_v5(
        &Packet::PubRelV5(ack(0x92)),
        &[0x62, 0x03, 0x00, 0x07, 0x92],
    );
    check_v5(
        &Packet::PubCompV5(ack(0x92)),
        &[0x70, 0x03, 0x00, 0x07, 0x92],
    );
    // With a Reason String.
    check_v5(
        &Packet::PubAckV5(AckV5 {
            pkid: 7,
            reason: ReasonCode::NOT_AUTHORIZED,
            properties: props(|p| p.reason_string = Some(s("no"))),
        }),
        &[
            0x40, 0x09, 0x00, 0x07, 0x87, 0x05, 0x1F, 0x00, 0x02, b'n', b'o',
        ],
    );
    // A reason code with an empty property section decodes as the code alone.
    assert_eq!(
        decode_exact(&v5(), &[0x40, 0x04, 0x00, 0x07, 0x00, 0x00]),
        Packet::PubAckV5(ack(0x00))
    );
}

#[test]
fn v5_subscribe_with_options_and_identifier() {
    let wire = [
        0x82, 0x0D, // SUBSCRIBE, Remaining Length 13
        0x00, 0x01, // packet id 1
        0x02, 0x0B, 0x05, // property length 2: Subscription Identifier 5
        0x00, 0x01, b'a', 0x2D, // "a": QoS 1, No Local, Retain As Published, Handling 2
        0x00, 0x01, b'b', 0x10, // "b": QoS 0, Handling 1
    ];
    check_v5(
        &Packet::SubscribeV5(SubscribeV5 {
            pkid: 1,
            filters: vec![
                (
                    s("a"),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                ),
                (
                    s("b"),
                    SubscriptionOptions {
                        qos: QoS::AtMostOnce,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: RetainHandling::SendIfNew,
                    },
                ),
            ],
            properties: props(|p| p.subscription_identifiers = vec![5]),
        }),
        &wire,
    );
}

#[test]
fn v5_suback_unsubscribe_unsuback() {
    check_v5(
        &Packet::SubAckV5(SubAckV5 {
            pkid: 1,
            reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
            properties: None,
        }),
        &[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x87],
    );
    check_v5(
        &Packet::UnsubscribeV5(UnsubscribeV5 {
            pkid: 2,
            filters: vec![s("a")],
            properties: None,
        }),
        &[0xA2, 0x06, 0x00, 0x02, 0x00, 0x00, 0x01, b'a'],
    );
    check_v5(
        &Packet::UnsubAckV5(UnsubAckV5 {
            pkid: 2,
            reasons: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: None,
        }),
        &[0xB0, 0x04, 0x00, 0x02, 0x00, 0x11],
    );
}

#[test]
fn v5_ping_disconnect_auth() {
    check_v5(&Packet::PingReq, &[0xC0, 0x00]);
    check_v5(&Packet::PingResp, &[0xD0, 0x00]);
    check_v5(&Packet::Disconnect, &[0xE0, 0x00]);
    check_v5(
        &Packet::DisconnectV5(DisconnectV5 {
            reason: ReasonCode::SESSION_TAKEN_OVER,
            properties: None,
        }),
        &[0xE0, 0x01, 0x8E],
    );
    check_v5(
        &Packet::DisconnectV5(DisconnectV5 {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties: props(|p| p.session_expiry_interval = Some(0)),
        }),
        &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
    );
    check_v5(
        &Packet::Auth(Auth {
            reason: ReasonCode::SUCCESS,
            properties: None,
        }),
        &[0xF0, 0x00],
    );
    check_v5(
        &Packet::Auth(Auth {
            reason: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: props(|p| {
                p.authentication_method = Some(s("S"));
                p.authentication_data = Some(b(&[0x01]));
            }),
        }),
        &[
            0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x01, b'S', 0x16, 0x00, 0x01, 0x01,
        ],
    );
    // AUTH is a reserved type to a 3.1.1 connection.
    rejects(&v311(), &[0xF0, 0x00], Error::ReservedPacketType(15));
}

#[test]
fn v311_packets_carry_no_property_structure() {
    // The 3.1.1 path allocates nothing for properties: the field is one null pointer.
    assert_eq!(
        std::mem::size_of::<Option<Box<Properties>>>(),
        std::mem::size_of::<usize>()
    );
    let wire = [0x32, 0x07, 0x00, 0x01, b't', 0x00, 0x01, b'h', b'i'];
    match decode_exact(&v311(), &wire) {
        Packet::Publish(p) => assert_eq!(p.properties, None),
        other => panic!("{other:?}"),
    }
    // And a 5.0 message encoded for a 3.1.1 subscriber leaves its properties out.
    let mut out = BytesMut::new();
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        pkid: Some(1),
        payload: b(b"hi"),
        properties: props(|p| p.content_type = Some(s("j"))),
    })
    .encode_for(Protocol::V311, &mut out)
    .unwrap();
    assert_eq!(&out[..], wire);
}

// ---------------------------------------------------------------------------------------
// Malformed input, one rule per test, with the reason code the broker sends
// ---------------------------------------------------------------------------------------

#[test]
fn v5_variable_byte_integers_must_be_minimal() {
    // [MQTT-1.5.5-1]: PINGREQ with Remaining Length "80 00" (0 padded to two bytes).
    rejects_v5(
        &[0xC0, 0x80, 0x00],
        Error::MalformedVariableByteInteger("Remaining Length"),
        0x81,
    );
    // A padded property length.
    rejects_v5(
        &[0x30, 0x05, 0x00, 0x01, b't', 0x80, 0x00],
        Error::MalformedVariableByteInteger("property length"),
        0x81,
    );
    // A padded Subscription Identifier.
    rejects_v5(
        &publish_with(&[0x0B, 0x81, 0x00], b""),
        Error::MalformedVariableByteInteger("Subscription Identifier"),
        0x81,
    );
    // A five-byte one.
    rejects_v5(
        &publish_with(&[0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], b""),
        Error::MalformedVariableByteInteger("Subscription Identifier"),
        0x81,
    );
}

#[test]
fn v5_once_only_properties_twice_are_a_protocol_error() {
    // Each property but User Property (and Subscription Identifier in PUBLISH) at most
    // once (2.2.2.2): one case per context kind.
    rejects_v5(
        &publish_with(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], b""),
        Error::DuplicateProperty {
            packet: "PUBLISH",
            name: "Message Expiry Interval",
        },
        0x82,
    );
    rejects_v5(
        &connect_with(0x02, &[0x21, 0x00, 0x01, 0x21, 0x00, 0x02], &[]),
        Error::DuplicateProperty {
            packet: "CONNECT",
            name: "Receive Maximum",
        },
        0x82,
    );
    rejects_v5(
        &[
            0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
        ],
        Error::DuplicateProperty {
            packet: "SUBSCRIBE",
            name: "Subscription Identifier",
        },
        0x82,
    );
    // User Property may repeat, with the same name.
    let twice = [
        0x26, 0x00, 0x01, b'k', 0x00, 0x00, 0x26, 0x00, 0x01, b'k', 0x00, 0x00,
    ];
    assert!(decode(&v5(), &publish_with(&twice, b"")).is_ok());
}

#[test]
fn v5_properties_outside_their_packet_are_malformed() {
    // 2.2.2.2: an identifier not valid for the packet makes it malformed.
    rejects_v5(
        &publish_with(&[0x11, 0, 0, 0, 1], b""),
        Error::UnknownProperty {
            packet: "PUBLISH",
            id: 0x11,
        },
        0x81,
    );
    rejects_v5(
        &publish_with(&[0x05, 0x00], b""),
        Error::UnknownProperty {
            packet: "PUBLISH",
            id: 0x05,
        },
        0x81,
    );
    // [MQTT-3.1.4-1]: Topic Alias inside CONNECT.
    rejects_v5(
        &connect_with(0x02, &[0x23, 0x00, 0x01], &[]),
        Error::UnknownProperty {
            packet: "CONNECT",
            id: 0x23,
        },
        0x81,
    );
    // A will carries only will properties.
    rejects_v5(
        &connect_with(0x06, &[], &[0x02, 0x21, 0x00, 0x01]),
        Error::UnknownProperty {
            packet: "will properties",
            id: 0x21,
        },
        0x81,
    );
}

#[test]
fn v5_property_values_out_of_range() {
    let invalid = |packet, name, rule, what, reason: u8| Error::InvalidProperty {
        packet,
        name,
        rule,
        what,
        reason: ReasonCode(reason),
    };
    // [MQTT-3.3.2-8]: Topic Alias 0 -> 0x94 Topic Alias invalid.
    rejects_v5(
        &publish_with(&[0x23, 0x00, 0x00], b""),
        invalid("PUBLISH", "Topic Alias", "MQTT-3.3.2-8", "is 0", 0x94),
        0x94,
    );
    // Receive Maximum 0, Maximum Packet Size 0 [MQTT-3.1.4-1].
    rejects_v5(
        &connect_with(0x02, &[0x21, 0x00, 0x00], &[]),
        invalid("CONNECT", "Receive Maximum", "MQTT-3.1.2", "is 0", 0x82),
        0x82,
    );
    rejects_v5(
        &connect_with(0x02, &[0x27, 0, 0, 0, 0], &[]),
        invalid("CONNECT", "Maximum Packet Size", "MQTT-3.1.2", "is 0", 0x82),
        0x82,
    );
    // Request Problem Information 2.
    rejects_v5(
        &connect_with(0x02, &[0x17, 0x02], &[]),
        invalid(
            "CONNECT",
            "Request Problem Information",
            "MQTT-2.2.2",
            "is not 0 or 1",
            0x82,
        ),
        0x82,
    );
    // Payload Format Indicator 2.
    rejects_v5(
        &publish_with(&[0x01, 0x02], b""),
        invalid(
            "PUBLISH",
            "Payload Format Indicator",
            "MQTT-3.3.2",
            "is not 0 or 1",
            0x82,
        ),
        0x82,
    );
    // [MQTT-3.3.2-14]: Response Topic with a wildcard.
    rejects_v5(
        &publish_with(&[0x08, 0x00, 0x03, b'r', b'/', b'#'], b""),
        invalid(
            "PUBLISH",
            "Response Topic",
            "MQTT-3.3.2-14",
            "is not a topic name",
            0x82,
        ),
        0x82,
    );
    // Subscription Identifier 0.
    rejects_v5(
        &publish_with(&[0x0B, 0x00], b""),
        invalid(
            "PUBLISH",
            "Subscription Identifier",
            "MQTT-3.8.2",
            "is 0",
            0x82,
        ),
        0x82,
    );
    // Authentication Data without Authentication Method.
    rejects_v5(
        &connect_with(0x02, &[0x16, 0x00, 0x00], &[]),
        invalid(
            "CONNECT",
            "Authentication Data",
            "MQTT-3.1.2",
            "is present without an Authentication Method",
            0x82,
        ),
        0x82,
    );
}

#[test]
fn v5_strings_in_properties_follow_the_utf8_rules() {
    // [MQTT-1.5.7-1]: both halves of a User Property; [MQTT-1.5.4-1] ill-formed UTF-8
    // (a surrogate), [MQTT-1.5.4-2] U+0000; [MQTT-3.3.2-19] Content Type.
    rejects_v5(
        &publish_with(&[0x26, 0x00, 0x01, b'k', 0x00, 0x03, 0xED, 0xA0, 0x80], b""),
        Error::InvalidUtf8("user property value"),
        0x81,
    );
    rejects_v5(
        &publish_with(&[0x26, 0x00, 0x01, 0x00, 0x00, 0x00], b""),
        Error::NullCharacter("user property name"),
        0x81,
    );
    rejects_v5(
        &publish_with(&[0x03, 0x00, 0x01, 0xC3], b""),
        Error::InvalidUtf8("Content Type"),
        0x81,
    );
    assert_eq!(Error::InvalidUtf8("x").v5_rule(), Some("MQTT-1.5.4-1"));
}

#[test]
fn v5_payload_marked_utf8_must_be_utf8() {
    // 3.3.2.3.2: Payload Format Indicator 1 with a non-UTF-8 payload -> 0x99.
    rejects_v5(
        &publish_with(&[0x01, 0x01], &[0xC3]),
        Error::PayloadFormatInvalid("PUBLISH payload"),
        0x99,
    );
    assert!(decode(&v5(), &publish_with(&[0x01, 0x00], &[0xC3])).is_ok());
}

#[test]
fn v5_truncated_property_sections_are_malformed() {
    // Property length 5 with 2 bytes left.
    rejects_v5(
        &[0x30, 0x06, 0x00, 0x01, b't', 0x05, 0x02, 0x00],
        Error::Truncated("PUBLISH"),
        0x81,
    );
    // A four-byte property cut after two.
    rejects_v5(
        &publish_with(&[0x02, 0x00, 0x00], b""),
        Error::Truncated("PUBLISH"),
        0x81,
    );
}

#[test]
fn v5_empty_topic_needs_an_alias() {
    rejects_v5(
        &[0x30, 0x03, 0x00, 0x00, 0x00],
        Error::EmptyTopicWithoutAlias,
        0x82,
    );
}

#[test]
fn v5_reason_codes_outside_their_table_are_refused() {
    // [MQTT-3.4.2-1], [MQTT-3.6.2-1], [MQTT-3.9.3-2], [MQTT-3.2.2-8].
    let bad = |packet, rule, code| Error::InvalidReasonCode { packet, rule, code };
    rejects_v5(
        &[0x40, 0x03, 0x00, 0x01, 0x05],
        bad("PUBACK", "MQTT-3.4.2-1", 0x05),
        0x81,
    );
    rejects_v5(
        &[0x62, 0x03, 0x00, 0x01, 0x10],
        bad("PUBREL", "MQTT-3.6.2-1", 0x10),
        0x81,
    );
    rejects_v5(
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x03],
        bad("SUBACK", "MQTT-3.9.3-2", 0x03),
        0x81,
    );
    rejects_v5(
        &[0x20, 0x03, 0x00, 0x01, 0x00],
        bad("CONNACK", "MQTT-3.2.2-8", 0x01),
        0x81,
    );
    rejects_v5(
        &[0xF0, 0x02, 0x80, 0x00],
        bad("AUTH", "MQTT-3.15.2", 0x80),
        0x81,
    );
    // The encoder refuses them too.
    let mut out = BytesMut::new();
    assert!(Packet::PubAckV5(AckV5 {
        pkid: 1,
        reason: ReasonCode(0x05),
        properties: None
    })
    .encode(&mut out)
    .is_err());
}

#[test]
fn v5_subscription_options_rules() {
    let subscribe = |opts: u8| [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', opts];
    // [MQTT-3.8.3-5]: reserved bits 6-7.
    rejects_v5(
        &subscribe(0xC1),
        Error::InvalidSubscriptionOptions(0xC1),
        0x81,
    );
    // Retain Handling 3 and QoS 3 are Protocol Errors (3.8.3.1).
    rejects_v5(
        &subscribe(0x30),
        Error::InvalidSubscriptionOption(0x30),
        0x82,
    );
    rejects_v5(
        &subscribe(0x03),
        Error::InvalidSubscriptionOption(0x03),
        0x82,
    );
}

#[test]
fn v5_subscribe_and_unsubscribe_need_a_filter() {
    // [MQTT-3.8.3-2], [MQTT-3.10.3-2]: a packet id and properties only.
    rejects_v5(&[0x82, 0x03, 0x00, 0x01, 0x00], Error::EmptySubscribe, 0x82);
    rejects_v5(
        &[0xA2, 0x03, 0x00, 0x01, 0x00],
        Error::EmptyUnsubscribe,
        0x82,
    );
}

#[test]
fn v5_fixed_header_flags() {
    // [MQTT-2.1.3-1], [MQTT-3.6.1-1]; 5.0 has no 3.1-style leniency.
    rejects_v5(&[0xC1, 0x00], invalid_flags("PINGREQ", 0x01), 0x81);
    rejects_v5(&[0xE2, 0x00], invalid_flags("DISCONNECT", 0x02), 0x81);
    rejects_v5(
        &[0x60, 0x02, 0x00, 0x01],
        invalid_flags("PUBREL", 0x00),
        0x81,
    );
    rejects_v5(&[0xF1, 0x00], invalid_flags("AUTH", 0x01), 0x81);
    // [MQTT-3.3.1-4]: QoS 3.
    rejects_v5(
        &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01],
        Error::InvalidQoS,
        0x81,
    );
    // Reserved type 0.
    rejects_v5(&[0x00, 0x00], Error::ReservedPacketType(0), 0x81);
}

#[test]
fn v5_connect_rules() {
    // [MQTT-3.1.2-3]: reserved flag bit.
    rejects_v5(
        &connect_with(0x03, &[], &[]),
        Error::ConnectReservedFlag,
        0x81,
    );
    // [MQTT-3.1.2-12]: will QoS 3.
    rejects_v5(
        &connect_with(0x1E, &[], &[0x00, 0x00, 0x01, b'w', 0x00, 0x00]),
        Error::InvalidWillQoS,
        0x81,
    );
    // [MQTT-3.1.2-9]: will flag, payload ends after the client id.
    rejects_v5(
        &connect_with(0x06, &[], &[]),
        Error::Truncated("CONNECT"),
        0x81,
    );
    // [MQTT-3.1.2-2]: level 6 -> 0x84 in CONNACK.
    let mut level6 = connect_with(0x02, &[], &[]);
    level6[8] = 0x06;
    rejects(
        &v311(),
        &level6,
        Error::UnsupportedProtocolLevel {
            name: "MQTT",
            level: 6,
        },
    );
    assert_eq!(
        Error::UnsupportedProtocolLevel {
            name: "MQTT",
            level: 6
        }
        .reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    // A will payload marked UTF-8 must be UTF-8.
    rejects_v5(
        &connect_with(
            0x06,
            &[],
            &[0x02, 0x01, 0x01, 0x00, 0x01, b'w', 0x00, 0x01, 0xFF],
        ),
        Error::PayloadFormatInvalid("will payload"),
        0x99,
    );
}

#[test]
fn v5_packet_too_large_is_0x95() {
    let mut decoder = Decoder::new(16);
    decoder.set_protocol(Protocol::V5);
    let wire = publish_with(&[], &[0u8; 32]);
    assert_eq!(
        decode(&decoder, &wire).map_err(|e| e.reason_code()),
        Err(ReasonCode::PACKET_TOO_LARGE)
    );
}

#[test]
fn v5_encoder_refuses_properties_outside_their_packet() {
    let mut out = BytesMut::new();
    let err = Packet::ConnAckV5(ConnAckV5 {
        session_present: false,
        reason: ReasonCode::SUCCESS,
        properties: props(|p| p.topic_alias = Some(1)),
    })
    .encode(&mut out)
    .unwrap_err();
    assert_eq!(
        err,
        Error::UnknownProperty {
            packet: "CONNACK",
            id: 0x23
        }
    );
    assert!(PropertyContext::Publish.allows(0x23));
    assert!(!PropertyContext::Will.allows(0x23));
}
