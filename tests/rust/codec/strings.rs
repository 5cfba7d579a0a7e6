//! Strings: UTF-8, U+0000, BOM.

use super::*;

/// `ED A0 80` encodes the surrogate U+D800, `C0` is never a valid UTF-8 byte, and `C0 80`
/// is the overlong ("modified UTF-8") NUL: all ill-formed [MQTT-1.5.3-1].
const BAD_UTF8: [&[u8]; 3] = [&[0xED, 0xA0, 0x80], &[0xC0], &[0xC0, 0x80]];

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
fn null_character_outranks_a_wildcard_in_a_topic_name() {
    // A topic name with both U+0000 and a wildcard is refused for the U+0000, as every
    // string is checked for it first: "+\0" = 2B 00, then "\0#" = 00 23.
    rejects(
        &v311(),
        &[0x30, 0x04, 0x00, 0x02, 0x2B, 0x00],
        Error::NullCharacter("topic name"),
    );
    rejects(
        &v311(),
        &[0x30, 0x04, 0x00, 0x02, 0x00, 0x23],
        Error::NullCharacter("topic name"),
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
