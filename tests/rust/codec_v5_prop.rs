//! Property tests for the MQTT 5.0 side of `pyo3mq::codec`, following `codec_prop.rs`.
//!
//! * Round trip: any valid 5.0 packet (all 15 types, every property each packet may
//!   carry, repeated User Properties and Subscription Identifiers), encoded for 5.0,
//!   decodes to the same packet and uses every byte; also as a stream split anywhere.
//! * The at-most-once rule: repeating any once-only property a packet carries is refused
//!   as a Protocol Error (0x82); repeating User Property (and Subscription Identifier in
//!   PUBLISH) is not.
//! * Property context: a property a packet may not carry is a Malformed Packet (0x81).
//! * Hostile input: noise on a 5.0 connection never panics nor buffers more than the
//!   maximum packet size, and what decodes re-encodes to the same packet.
//! * The fan-out header: shared encoded properties plus a subscriber's Subscription
//!   Identifiers, in front of the payload, decode as the message with those identifiers.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use pyo3mq::codec::{
    AckV5, Auth, ConnAckV5, Connect, Decoder, DisconnectV5, Error, LastWill, Packet, Properties,
    PropertyContext, Protocol, Publish, QoS, ReasonCode, ReasonPacket, RetainHandling, SubAckV5,
    SubscribeV5, SubscriptionOptions, UnsubAckV5, UnsubscribeV5, MAX_VARIABLE_BYTE_INTEGER,
};

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Any Unicode text without U+0000 ([MQTT-1.5.4-2]).
fn text(max_chars: usize) -> impl Strategy<Value = ByteString> {
    prop::collection::vec(any::<char>(), 0..max_chars).prop_map(|chars| {
        ByteString::from(chars.into_iter().filter(|&c| c != '\0').collect::<String>())
    })
}

/// A valid topic name: non-empty, no wildcard, no U+0000.
fn topic_name() -> impl Strategy<Value = ByteString> {
    prop_oneof![
        3 => "[a-z0-9/]{1,12}".prop_map(ByteString::from),
        1 => text(8).prop_map(|t| {
            let t: String = t.chars().filter(|&c| c != '+' && c != '#').collect();
            ByteString::from(if t.is_empty() { "t".to_string() } else { t })
        }),
    ]
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn subscription_id() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..200, 1u32..=MAX_VARIABLE_BYTE_INTEGER]
}

/// Every property with a random valid value, then cut down to what `ctx` may carry;
/// `None` when nothing is left (an empty set decodes as `None`).
fn properties(ctx: PropertyContext) -> impl Strategy<Value = Option<Box<Properties>>> {
    use proptest::option::of;
    let messages = (
        of(0u8..=1),
        of(any::<u32>()),
        of(text(12)),
        of(topic_name()),
        of(binary(16)),
        prop::collection::vec(subscription_id(), 0..3),
    );
    let session = (
        of(any::<u32>()),
        of(text(12)),
        of(any::<u16>()),
        of(text(8)),
        of(binary(8)),
        of(any::<bool>()),
        of(any::<u32>()),
        of(any::<bool>()),
        of(text(8)),
        of(text(8)),
        of(text(16)),
    );
    let limits = (
        of(1..=u16::MAX),
        of(any::<u16>()),
        of(1..=u16::MAX),
        of(0u8..=1),
        of(any::<bool>()),
        prop::collection::vec((text(6), text(6)), 0..4),
        of(1..=u32::MAX),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
    );
    (messages, session, limits).prop_map(move |(m, s, l)| {
        let mut p = Properties {
            payload_format_indicator: m.0,
            message_expiry_interval: m.1,
            content_type: m.2,
            response_topic: m.3,
            correlation_data: m.4,
            subscription_identifiers: m.5,
            session_expiry_interval: s.0,
            assigned_client_identifier: s.1,
            server_keep_alive: s.2,
            authentication_method: s.3,
            authentication_data: s.4,
            request_problem_information: s.5,
            will_delay_interval: s.6,
            request_response_information: s.7,
            response_information: s.8,
            server_reference: s.9,
            reason_string: s.10,
            receive_maximum: l.0,
            topic_alias_maximum: l.1,
            topic_alias: l.2,
            maximum_qos: l.3,
            retain_available: l.4,
            user_properties: l.5,
            maximum_packet_size: l.6,
            wildcard_subscription_available: l.7,
            subscription_identifier_available: l.8,
            shared_subscription_available: l.9,
        };
        restrict(&mut p, ctx);
        (!p.is_empty()).then(|| Box::new(p))
    })
}

/// Clears what `ctx` may not carry, and fixes the cross-property rules.
fn restrict(p: &mut Properties, ctx: PropertyContext) {
    macro_rules! keep {
        ($($id:literal => $field:ident),* $(,)?) => {
            $(if !ctx.allows($id) { p.$field = Default::default(); })*
        };
    }
    keep! {
        0x01 => payload_format_indicator, 0x02 => message_expiry_interval,
        0x03 => content_type, 0x08 => response_topic, 0x09 => correlation_data,
        0x0B => subscription_identifiers, 0x11 => session_expiry_interval,
        0x12 => assigned_client_identifier, 0x13 => server_keep_alive,
        0x15 => authentication_method, 0x16 => authentication_data,
        0x17 => request_problem_information, 0x18 => will_delay_interval,
        0x19 => request_response_information, 0x1A => response_information,
        0x1C => server_reference, 0x1F => reason_string, 0x21 => receive_maximum,
        0x22 => topic_alias_maximum, 0x23 => topic_alias, 0x24 => maximum_qos,
        0x25 => retain_available, 0x26 => user_properties, 0x27 => maximum_packet_size,
        0x28 => wildcard_subscription_available, 0x29 => subscription_identifier_available,
        0x2A => shared_subscription_available,
    }
    if ctx == PropertyContext::Subscribe {
        p.subscription_identifiers.truncate(1);
    }
    // Authentication Data needs an Authentication Method.
    if p.authentication_method.is_none() {
        p.authentication_data = None;
    }
}

/// A payload valid under its properties: UTF-8 when the Payload Format Indicator says so.
fn payload_for(props: &Option<Box<Properties>>, raw: Bytes, text: ByteString) -> Bytes {
    match props.as_deref().and_then(|p| p.payload_format_indicator) {
        Some(1) => text.into_bytes(),
        _ => raw,
    }
}

fn reason(packet: ReasonPacket) -> impl Strategy<Value = ReasonCode> {
    let table: Vec<ReasonCode> = (0..=255u8)
        .map(ReasonCode)
        .filter(|code| code.allowed_in(packet))
        .collect();
    prop::sample::select(table)
}

fn last_will() -> impl Strategy<Value = LastWill> {
    (
        topic_name(),
        binary(24),
        text(12),
        qos(),
        any::<bool>(),
        properties(PropertyContext::Will),
    )
        .prop_map(|(topic, raw, text, qos, retain, properties)| LastWill {
            topic,
            payload: payload_for(&properties, raw, text),
            qos,
            retain,
            properties,
        })
}

fn connect() -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        text(24),
        proptest::option::of(last_will()),
        proptest::option::of(text(12)),
        proptest::option::of(binary(12)),
        properties(PropertyContext::Connect),
    )
        .prop_map(
            |(clean_session, keep_alive, client_id, will, username, password, properties)| {
                // 5.0 allows a password without a user name [MQTT-3.1.2-19].
                Connect {
                    protocol: Protocol::V5,
                    clean_session,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        (qos(), any::<bool>(), any::<bool>()),
        topic_name(),
        any::<bool>(),
        pkid(),
        binary(64),
        text(16),
        properties(PropertyContext::Publish),
    )
        .prop_map(
            |((qos, dup, retain), topic, alias_only, pkid, raw, text, properties)| {
                let at_most_once = qos == QoS::AtMostOnce;
                // An empty topic name stands for a Topic Alias (3.3.2.1).
                let has_alias = properties.as_ref().and_then(|p| p.topic_alias).is_some();
                Publish {
                    dup: dup && !at_most_once,
                    qos,
                    retain,
                    topic: if alias_only && has_alias {
                        ByteString::new()
                    } else {
                        topic
                    },
                    pkid: (!at_most_once).then_some(pkid),
                    payload: payload_for(&properties, raw, text),
                    properties,
                }
            },
        )
}

fn options() -> impl Strategy<Value = SubscriptionOptions> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            Just(RetainHandling::SendAtSubscribe),
            Just(RetainHandling::SendIfNew),
            Just(RetainHandling::DoNotSend)
        ],
    )
        .prop_map(|(qos, no_local, retain_as_published, retain_handling)| {
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            }
        })
}

fn ack(packet: ReasonPacket, ctx: PropertyContext) -> impl Strategy<Value = AckV5> {
    (pkid(), reason(packet), properties(ctx)).prop_map(|(pkid, reason, properties)| AckV5 {
        pkid,
        reason,
        properties,
    })
}

/// Any valid 5.0 packet.
fn packet() -> impl Strategy<Value = Packet> {
    use PropertyContext as C;
    use ReasonPacket as R;
    prop_oneof![
        2 => connect().prop_map(|c| Packet::Connect(Box::new(c))),
        2 => (any::<bool>(), reason(R::ConnAck), properties(C::ConnAck)).prop_map(
            |(session_present, reason, properties)| Packet::ConnAckV5(ConnAckV5 {
                // Session Present is 0 with an error code [MQTT-3.2.2-6].
                session_present: session_present && !reason.is_error(),
                reason,
                properties,
            })
        ),
        6 => publish().prop_map(Packet::Publish),
        1 => pkid().prop_map(Packet::PubAck),
        1 => pkid().prop_map(Packet::PubRec),
        1 => pkid().prop_map(Packet::PubRel),
        1 => pkid().prop_map(Packet::PubComp),
        1 => ack(R::PubAck, C::PubAck).prop_map(Packet::PubAckV5),
        1 => ack(R::PubRec, C::PubRec).prop_map(Packet::PubRecV5),
        1 => ack(R::PubRel, C::PubRel).prop_map(Packet::PubRelV5),
        1 => ack(R::PubComp, C::PubComp).prop_map(Packet::PubCompV5),
        2 => (
            pkid(),
            prop::collection::vec((text(10), options()), 1..5),
            properties(C::Subscribe)
        )
            .prop_map(|(pkid, filters, properties)| Packet::SubscribeV5(SubscribeV5 {
                pkid,
                filters,
                properties
            })),
        1 => (pkid(), prop::collection::vec(reason(R::SubAck), 0..5), properties(C::SubAck))
            .prop_map(|(pkid, reasons, properties)| Packet::SubAckV5(SubAckV5 {
                pkid,
                reasons,
                properties
            })),
        1 => (pkid(), prop::collection::vec(text(10), 1..5), properties(C::Unsubscribe))
            .prop_map(|(pkid, filters, properties)| Packet::UnsubscribeV5(UnsubscribeV5 {
                pkid,
                filters,
                properties
            })),
        1 => (pkid(), prop::collection::vec(reason(R::UnsubAck), 0..5), properties(C::UnsubAck))
            .prop_map(|(pkid, reasons, properties)| Packet::UnsubAckV5(UnsubAckV5 {
                pkid,
                reasons,
                properties
            })),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => Just(Packet::Disconnect),
        1 => (reason(R::Disconnect), properties(C::Disconnect))
            .prop_map(|(reason, properties)| Packet::DisconnectV5(DisconnectV5 {
                reason,
                properties
            })),
        1 => (reason(R::Auth), properties(C::Auth))
            .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties })),
    ]
}

fn v5(max: usize) -> Decoder {
    let mut decoder = Decoder::new(max);
    decoder.set_protocol(Protocol::V5);
    decoder
}

fn encode(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet
        .encode_for(Protocol::V5, &mut buf)
        .unwrap_or_else(|e| panic!("encoding {packet:?}: {e}"));
    buf.to_vec()
}

/// Where a packet's property section starts in its encoding, and the context; `None`
/// for packets without one (or whose encoding leaves it out).
fn property_section(packet: &Packet, wire: &[u8]) -> Option<(usize, PropertyContext)> {
    // The fixed header: the type byte, then the Remaining Length up to its last byte.
    let header = (1..=4).find(|&i| wire[i] & 0x80 == 0)? + 1;
    let (offset, ctx) = match packet {
        Packet::Publish(p) => (
            2 + p.topic.len() + if p.pkid.is_some() { 2 } else { 0 },
            PropertyContext::Publish,
        ),
        Packet::ConnAckV5(_) => (2, PropertyContext::ConnAck),
        Packet::PubAckV5(a) if a.properties.is_some() => (3, PropertyContext::PubAck),
        Packet::SubAckV5(_) => (2, PropertyContext::SubAck),
        Packet::UnsubAckV5(_) => (2, PropertyContext::UnsubAck),
        Packet::SubscribeV5(_) => (2, PropertyContext::Subscribe),
        Packet::UnsubscribeV5(_) => (2, PropertyContext::Unsubscribe),
        Packet::DisconnectV5(d) if d.properties.is_some() => (1, PropertyContext::Disconnect),
        _ => return None,
    };
    Some((header + offset, ctx))
}

/// Inserts raw property bytes at the front of a packet's property section, fixing the
/// property length and the Remaining Length (all kept below 128 by the callers).
fn insert_property(wire: &[u8], at: usize, extra: &[u8]) -> Option<Vec<u8>> {
    let header = (1..=4).find(|&i| wire[i] & 0x80 == 0)? + 1;
    if header != 2 || wire[at] & 0x80 != 0 {
        return None; // keep the arithmetic simple: 1-byte lengths only
    }
    let remaining = usize::from(wire[1]) + extra.len();
    let props = usize::from(wire[at]) + extra.len();
    if remaining > 127 || props > 127 {
        return None;
    }
    let mut out = vec![wire[0], remaining as u8];
    out.extend_from_slice(&wire[2..at]);
    out.push(props as u8);
    out.extend_from_slice(extra);
    out.extend_from_slice(&wire[at + 1..]);
    Some(out)
}

/// One instance of each property with a valid value, by identifier.
fn sample_property(id: u8) -> Vec<u8> {
    let mut out = vec![id];
    match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => out.push(0),
        0x02 | 0x11 | 0x18 | 0x27 => out.extend_from_slice(&[0, 0, 0, 9]),
        0x13 | 0x21 | 0x22 | 0x23 => out.extend_from_slice(&[0, 3]),
        0x0B => out.push(7),
        0x26 => out.extend_from_slice(&[0, 1, b'k', 0, 1, b'v']),
        0x09 | 0x16 => out.extend_from_slice(&[0, 1, 0xFF]),
        _ => out.extend_from_slice(&[0, 1, b'x']), // strings; 0x08 "x" is a topic name
    }
    out
}

const ALL_PROPERTIES: [u8; 27] = [
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C,
    0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
];

// ---------------------------------------------------------------------------------------
// Hostile input harness (as in codec_prop.rs)
// ---------------------------------------------------------------------------------------

const MAX: usize = 1024;
const MAX_CHUNK: usize = 64;

fn feed(decoder: &Decoder, data: &[u8], chunk: usize) -> Result<(), TestCaseError> {
    let max = decoder.max_packet_size();
    let mut pending: Vec<u8> = Vec::new();
    for read in data.chunks(chunk.max(1)) {
        pending.extend_from_slice(read);
        loop {
            let mut buf = BytesMut::with_capacity(pending.len());
            buf.extend_from_slice(&pending);
            let len_before = buf.len();
            let result = decoder.decode(&mut buf);
            let allowed = max.max(2 * len_before).max(8);
            prop_assert!(buf.capacity() <= allowed);
            match result {
                Ok(Some(packet)) => {
                    let consumed = len_before - buf.len();
                    prop_assert!((2..=max).contains(&consumed));
                    // Re-encodes to bytes that decode to the same packet.
                    let mut wire = BytesMut::new();
                    let encoded = packet.encode_for(Protocol::V5, &mut wire);
                    prop_assert!(encoded.is_ok(), "re-encoding {packet:?}: {encoded:?}");
                    prop_assert_eq!(decoder.decode(&mut wire), Ok(Some(packet)));
                    prop_assert!(wire.is_empty());
                    pending.drain(..consumed);
                }
                Ok(None) => {
                    prop_assert_eq!(&buf[..], &pending[..]);
                    prop_assert!(buf.len() < max);
                    break;
                }
                // Every error knows the reason code to send: an error one (>= 0x80).
                Err(err) => {
                    prop_assert!(err.reason_code().is_error(), "{err}");
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

fn structured_noise() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        2 => packet().prop_map(|p| encode(&p)),
        2 => (packet(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4))
            .prop_map(|(p, edits)| {
                let mut wire = encode(&p);
                for (at, byte) in edits {
                    let i = at.index(wire.len());
                    wire[i] = byte;
                }
                wire
            }),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ];
    prop::collection::vec(part, 1..8).prop_map(|parts| parts.concat())
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn round_trip(packet in packet()) {
        let wire = encode(&packet);
        let mut buf = BytesMut::from(&wire[..]);
        prop_assert_eq!(v5(1 << 20).decode(&mut buf), Ok(Some(packet)));
        prop_assert!(buf.is_empty(), "{} bytes left", buf.len());
    }

    #[test]
    fn every_strict_prefix_waits(packet in packet(), cut in any::<prop::sample::Index>()) {
        let wire = encode(&packet);
        let cut = cut.index(wire.len());
        let mut buf = BytesMut::from(&wire[..cut]);
        prop_assert_eq!(v5(1 << 20).decode(&mut buf), Ok(None));
        prop_assert_eq!(&buf[..], &wire[..cut]);
    }

    #[test]
    fn a_stream_split_anywhere_decodes_in_order(
        packets in prop::collection::vec(packet(), 1..8),
        chunk in 1usize..200,
    ) {
        let wire: Vec<u8> = packets.iter().flat_map(encode).collect();
        let decoder = v5(1 << 20);
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for read in wire.chunks(chunk) {
            buf.extend_from_slice(read);
            while let Some(packet) = decoder.decode(&mut buf).expect("valid stream") {
                decoded.push(packet);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, packets);
    }

    #[test]
    fn a_connect_decodes_before_the_protocol_is_known(c in connect()) {
        // The first packet reaches a decoder still set to 3.1.1: level 5 speaks for it.
        let packet = Packet::Connect(Box::new(c));
        let wire = encode(&packet);
        let mut buf = BytesMut::from(&wire[..]);
        prop_assert_eq!(Decoder::new(1 << 20).decode(&mut buf), Ok(Some(packet)));
    }

    #[test]
    fn a_publish_encodes_for_311_without_its_properties(p in publish()) {
        // The 3.1.1 mapping: the same message, no properties; an alias-only topic has
        // nothing to stand for in 3.1.1, so that case is left to the broker.
        prop_assume!(!p.topic.is_empty());
        let mut wire = BytesMut::new();
        Packet::Publish(p.clone()).encode_for(Protocol::V311, &mut wire).unwrap();
        let decoded = Decoder::new(1 << 20).decode(&mut wire).unwrap();
        prop_assert_eq!(decoded, Some(Packet::Publish(Publish { properties: None, ..p })));
    }

    #[test]
    fn shared_header_plus_subscription_ids_decodes_as_the_message(
        p in publish(),
        ids in prop::collection::vec(subscription_id(), 0..3),
    ) {
        // The broker encodes a message's properties once (`to_bytes`) and writes each
        // 5.0 subscriber's header with its own Subscription Identifiers after them.
        prop_assume!(!p.topic.is_empty());
        let shared = match &p.properties {
            Some(props) => props.to_bytes(PropertyContext::Publish).unwrap(),
            None => Bytes::new(),
        };
        let mut header = BytesMut::new();
        pyo3mq::codec::encode_publish_header_v5(
            &mut header, &p.topic, p.qos, p.retain, p.dup, p.pkid, &shared, &ids,
            p.payload.len(),
        ).unwrap();
        header.extend_from_slice(&p.payload);
        let mut expected = p.clone();
        let mut props = expected.properties.take().map(|b| *b).unwrap_or_default();
        props.subscription_identifiers.extend_from_slice(&ids);
        expected.properties = (!props.is_empty()).then(|| Box::new(props));
        // The identifiers sit after the shared properties rather than in field order,
        // so compare what a subscriber decodes.
        let decoded = v5(1 << 20).decode(&mut header).unwrap();
        prop_assert_eq!(decoded, Some(Packet::Publish(expected)));
        prop_assert!(header.is_empty());
    }

    #[test]
    fn once_only_properties_are_refused_twice(packet in packet(), pick in any::<prop::sample::Index>()) {
        let wire = encode(&packet);
        let Some((at, ctx)) = property_section(&packet, &wire) else { return Ok(()); };
        let allowed: Vec<u8> = ALL_PROPERTIES.iter().copied().filter(|&id| ctx.allows(id)).collect();
        let id = allowed[pick.index(allowed.len())];
        let one = sample_property(id);
        let twice = [one.clone(), one].concat();
        let Some(mangled) = insert_property(&wire, at, &twice) else { return Ok(()); };
        let result = v5(1 << 20).decode(&mut BytesMut::from(&mangled[..]));
        let repeatable = id == 0x26 || (id == 0x0B && ctx == PropertyContext::Publish);
        if repeatable {
            prop_assert!(result.is_ok(), "{} twice in {ctx:?}: {result:?}", pyo3mq::codec::property_name(id));
        } else {
            let err = result.expect_err("a repeated property must be refused");
            prop_assert!(
                matches!(err, Error::DuplicateProperty { .. }),
                "{} twice in {ctx:?}: {err:?}", pyo3mq::codec::property_name(id)
            );
            prop_assert_eq!(err.reason_code(), ReasonCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn properties_outside_their_packet_are_malformed(packet in packet(), pick in any::<prop::sample::Index>()) {
        let wire = encode(&packet);
        let Some((at, ctx)) = property_section(&packet, &wire) else { return Ok(()); };
        let foreign: Vec<u8> = ALL_PROPERTIES.iter().copied().filter(|&id| !ctx.allows(id)).collect();
        prop_assume!(!foreign.is_empty());
        let id = foreign[pick.index(foreign.len())];
        let Some(mangled) = insert_property(&wire, at, &sample_property(id)) else { return Ok(()); };
        let result = v5(1 << 20).decode(&mut BytesMut::from(&mangled[..]));
        prop_assert_eq!(
            result.as_ref().map_err(Error::reason_code),
            Err(ReasonCode::MALFORMED_PACKET),
            "{} in {:?}: {:?}", pyo3mq::codec::property_name(id), ctx, result
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_overallocate(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..=MAX_CHUNK,
    ) {
        feed(&v5(MAX), &data, chunk)?;
    }

    #[test]
    fn structured_noise_never_panics_nor_overallocates(
        data in structured_noise(),
        chunk in 1usize..=MAX_CHUNK,
    ) {
        feed(&v5(MAX), &data, chunk)?;
    }
}

proptest! {
    /// A routed message keeps its properties encoded without their length prefix
    /// (`Properties::to_bytes`); `Properties::from_bytes` reads them back unchanged, for
    /// the Python API (`pyo3mq.MessageProperties`), which decodes them only on demand.
    #[test]
    fn stored_message_properties_read_back(props in properties(PropertyContext::Publish)) {
        let props = props.map(|p| *p).unwrap_or_default();
        let stored = props.to_bytes(PropertyContext::Publish).unwrap();
        prop_assert_eq!(
            Properties::from_bytes(stored.clone(), PropertyContext::Publish).unwrap(),
            props
        );
        // Cut short, the set is an error, never a panic or a guess.
        if !stored.is_empty() {
            prop_assert!(
                Properties::from_bytes(stored.slice(..stored.len() - 1), PropertyContext::Publish)
                    .is_err()
            );
        }
    }
}
