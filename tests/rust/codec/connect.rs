//! CONNECT rules.

use super::*;

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
        Packet::Connect(Box::new(Connect {
            protocol: Protocol::V31,
            clean_session: true,
            keep_alive: 10,
            client_id: s("c"),
            will: None,
            username: None,
            password: None,
            properties: None,
        }))
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
        Packet::Connect(Box::new(Connect {
            protocol: Protocol::V31,
            clean_session: true,
            keep_alive: 10,
            client_id: s("c"),
            will: None,
            username: None,
            password: None,
            properties: None,
        }))
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
    // [MQTT-3.1.2-2]: "MQTT" goes with level 4 (or 5, MQTT 5.0, tested in the v5 module)
    // and "MQIsdp" with 3; level 6 is no revision at all.
    let mqtt_6 = connect_with_level(&[0x4D, 0x51, 0x54, 0x54], 0x06);
    rejects(
        &v311(),
        &mqtt_6,
        Error::UnsupportedProtocolLevel {
            name: "MQTT",
            level: 6,
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

#[test]
fn connect_with_mosquittos_bridge_bit() {
    // Mosquitto's `try_private`: level 4 with the high bit (0x84) marks a bridge. It is
    // MQTT 3.1.1 otherwise, and encodes back to the same bytes.
    let wire = connect_with_level(&[0x4D, 0x51, 0x54, 0x54], 0x84);
    let Packet::Connect(connect) = decode_exact(&v311(), &wire) else {
        panic!("not a CONNECT");
    };
    assert_eq!(connect.protocol, Protocol::V311Bridge);
    assert!(connect.protocol.is_bridge());
    assert_eq!(connect.protocol.base(), Protocol::V311);
    assert_eq!(encode(&Packet::Connect(connect)), wire);
    // Only on MQTT 3.1.1's level: 0x85 is still an unsupported level.
    let v5_bridge = connect_with_level(&[0x4D, 0x51, 0x54, 0x54], 0x85);
    rejects(
        &v311(),
        &v5_bridge,
        Error::UnsupportedProtocolLevel {
            name: "MQTT",
            level: 0x85,
        },
    );
}
