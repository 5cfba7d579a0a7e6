//! Property tests for `pyo3mq::codec`.
//!
//! * Round trip: any valid packet, encoded, decodes to the same packet and uses every
//!   byte, for both protocol revisions; also as a stream split at arbitrary points.
//! * Hostile input: arbitrary bytes (pure noise, mutated valid packets, noise after a
//!   valid CONNECT) never panic, never make the decoder consume or buffer more than its
//!   maximum packet size, and never make it reserve memory in proportion to a Remaining
//!   Length it has refused. Any packet decoded from such input re-encodes to bytes that
//!   decode to the same packet.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use pyo3mq::codec::{
    ConnAck, Connect, ConnectReturnCode, Decoder, LastWill, Packet, Protocol, Publish, QoS, SubAck,
    Subscribe, SubscribeReturnCode, Unsubscribe,
};

// ---------------------------------------------------------------------------------------
// Strategies for valid packets
// ---------------------------------------------------------------------------------------

/// Any Unicode text without U+0000 (forbidden in MQTT strings, [MQTT-1.5.3-2]).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max_chars)
        .prop_map(|chars| chars.into_iter().filter(|&c| c != '\0').collect())
}

/// Text biased towards MQTT-looking topics ("/", "+", "#", "$", BOM, multi-byte).
fn mqtt_text(max_chars: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z0-9]{1,6}",
        2 => Just("/".to_string()),
        1 => Just("+".to_string()),
        1 => Just("#".to_string()),
        1 => Just("$SYS".to_string()),
        1 => Just("\u{FEFF}".to_string()),
        1 => text(4),
    ];
    prop::collection::vec(piece, 0..max_chars).prop_map(|pieces| pieces.concat())
}

/// A valid topic name: non-empty, no wildcard, no U+0000 ([MQTT-3.3.2-2], [MQTT-4.7.3-1]).
fn topic_name() -> impl Strategy<Value = ByteString> {
    mqtt_text(8).prop_map(|t| {
        let t: String = t.chars().filter(|&c| c != '+' && c != '#').collect();
        ByteString::from(if t.is_empty() { "t".to_string() } else { t })
    })
}

/// A topic filter as the codec carries it: any string without U+0000. Filter syntax is
/// the broker's business (it answers 0x80), so even "a#b" or "" must round-trip.
fn topic_filter() -> impl Strategy<Value = ByteString> {
    mqtt_text(8).prop_map(ByteString::from)
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

/// Mostly small payloads, sometimes one past the 2-byte Remaining Length boundary.
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        12 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 16_380..16_400),
    ]
    .prop_map(Bytes::from)
}

fn small_binary() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from)
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::V31), Just(Protocol::V311)]
}

fn last_will() -> impl Strategy<Value = LastWill> {
    (topic_name(), small_binary(), qos(), any::<bool>()).prop_map(
        |(topic, payload, qos, retain)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: None,
        },
    )
}

fn connect() -> impl Strategy<Value = Connect> {
    (
        protocol(),
        any::<bool>(),
        any::<u16>(),
        text(24),
        proptest::option::of(last_will()),
        proptest::option::of((text(12), proptest::option::of(small_binary()))),
    )
        .prop_map(
            |(protocol, clean_session, keep_alive, client_id, will, credentials)| {
                // A password needs a user name [MQTT-3.1.2-22].
                let (username, password) = match credentials {
                    Some((user, password)) => (Some(ByteString::from(user)), password),
                    None => (None, None),
                };
                Connect {
                    protocol,
                    clean_session,
                    keep_alive,
                    client_id: ByteString::from(client_id),
                    will,
                    username,
                    password,
                    properties: None,
                }
            },
        )
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        pkid(),
        payload(),
    )
        .prop_map(|(qos, dup, retain, topic, pkid, payload)| {
            // DUP only with QoS > 0 [MQTT-3.3.1-2]; an identifier exactly with QoS > 0.
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                pkid: (!at_most_once).then_some(pkid),
                payload,
                properties: None,
            }
        })
}

fn suback_code() -> impl Strategy<Value = SubscribeReturnCode> {
    prop_oneof![
        qos().prop_map(SubscribeReturnCode::Success),
        Just(SubscribeReturnCode::Failure),
    ]
}

fn return_code() -> impl Strategy<Value = ConnectReturnCode> {
    prop_oneof![
        Just(ConnectReturnCode::Accepted),
        Just(ConnectReturnCode::UnacceptableProtocolVersion),
        Just(ConnectReturnCode::IdentifierRejected),
        Just(ConnectReturnCode::ServerUnavailable),
        Just(ConnectReturnCode::BadUserNameOrPassword),
        Just(ConnectReturnCode::NotAuthorized),
    ]
}

/// Any valid packet for a connection speaking `protocol`. 3.1 allows SUBSCRIBE and
/// UNSUBSCRIBE without filters; 3.1.1 requires at least one.
fn packet(protocol: Protocol) -> impl Strategy<Value = Packet> {
    let min_filters = if protocol == Protocol::V31 { 0 } else { 1 };
    prop_oneof![
        1 => connect().prop_map(|c| Packet::Connect(Box::new(c))),
        1 => (any::<bool>(), return_code()).prop_map(|(session_present, code)| {
            Packet::ConnAck(ConnAck {
                session_present,
                code,
            })
        }),
        4 => publish().prop_map(Packet::Publish),
        1 => pkid().prop_map(Packet::PubAck),
        1 => pkid().prop_map(Packet::PubRec),
        1 => pkid().prop_map(Packet::PubRel),
        1 => pkid().prop_map(Packet::PubComp),
        1 => (
            pkid(),
            prop::collection::vec((topic_filter(), qos()), min_filters..6)
        )
            .prop_map(|(pkid, filters)| Packet::Subscribe(Subscribe { pkid, filters })),
        1 => (pkid(), prop::collection::vec(suback_code(), 0..6))
            .prop_map(|(pkid, codes)| Packet::SubAck(SubAck { pkid, codes })),
        1 => (pkid(), prop::collection::vec(topic_filter(), min_filters..6))
            .prop_map(|(pkid, filters)| Packet::Unsubscribe(Unsubscribe { pkid, filters })),
        1 => pkid().prop_map(Packet::UnsubAck),
        1 => Just(Packet::PingReq),
        1 => Just(Packet::PingResp),
        1 => Just(Packet::Disconnect),
    ]
}

/// A protocol and a packet valid for it.
fn protocol_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|protocol| (Just(protocol), packet(protocol)))
}

fn decoder(protocol: Protocol, max: usize) -> Decoder {
    let mut decoder = Decoder::new(max);
    decoder.set_protocol(protocol);
    decoder
}

fn encode(packet: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.encode(&mut buf).expect("valid packets encode");
    buf.to_vec()
}

// ---------------------------------------------------------------------------------------
// Hostile input harness
// ---------------------------------------------------------------------------------------

/// Maximum packet size for the hostile-input tests.
const MAX: usize = 1024;
/// Largest read the harness appends at once.
const MAX_CHUNK: usize = 64;

/// Feeds `data` to `decoder` in reads of `chunk` bytes, as a connection would, and checks
/// the decoder's invariants after every call. Returns the packets decoded before the
/// first error (after which a connection is closed and the stream abandoned).
fn feed(decoder: &Decoder, data: &[u8], chunk: usize) -> Result<Vec<Packet>, TestCaseError> {
    let max = decoder.max_packet_size();
    let mut packets = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for read in data.chunks(chunk.max(1)) {
        pending.extend_from_slice(read);
        loop {
            // A buffer of exactly the pending bytes, so any capacity beyond its length
            // after `decode` is what the decoder itself reserved.
            let mut buf = BytesMut::with_capacity(pending.len());
            buf.extend_from_slice(&pending);
            let len_before = buf.len();
            let result = decoder.decode(&mut buf);
            // The decoder may reserve the rest of a frame it has accepted (at most `max`
            // bytes in all); BytesMut may round that up by doubling its current buffer
            // (Vec's amortised growth, minimum 8). Nothing else may grow it: in
            // particular not a Remaining Length above the maximum (up to 256 MiB here).
            let allowed = max.max(2 * len_before).max(8);
            prop_assert!(
                buf.capacity() <= allowed,
                "capacity {} after decoding {} bytes (allowed {allowed})",
                buf.capacity(),
                len_before
            );
            prop_assert!(buf.capacity() <= 2 * (max + MAX_CHUNK));
            match result {
                Ok(Some(packet)) => {
                    let consumed = len_before - buf.len();
                    prop_assert!(consumed >= 2, "a packet is at least 2 bytes");
                    prop_assert!(consumed <= max, "consumed {consumed} > max {max}");
                    prop_assert_eq!(&buf[..], &pending[consumed..]);
                    check_reencodes(decoder, &packet, consumed)?;
                    pending.drain(..consumed);
                    packets.push(packet);
                }
                Ok(None) => {
                    // Nothing consumed, and no more than one packet's worth buffered.
                    prop_assert_eq!(&buf[..], &pending[..]);
                    prop_assert!(buf.len() < max, "{} bytes buffered undecided", buf.len());
                    break;
                }
                Err(_) => return Ok(packets),
            }
        }
    }
    Ok(packets)
}

/// A packet decoded from any input must re-encode, no longer than the bytes it came
/// from, to bytes that decode to the same packet.
fn check_reencodes(
    decoder: &Decoder,
    packet: &Packet,
    consumed: usize,
) -> Result<(), TestCaseError> {
    let mut wire = BytesMut::new();
    let encoded = packet.encode(&mut wire);
    prop_assert!(encoded.is_ok(), "re-encoding {packet:?}: {encoded:?}");
    prop_assert!(wire.len() <= consumed, "{} > {consumed}", wire.len());
    let again = decoder.decode(&mut wire);
    prop_assert_eq!(again, Ok(Some(packet.clone())));
    prop_assert!(wire.is_empty());
    Ok(())
}

/// Noise that often looks like MQTT: valid encodings, some with bytes overwritten, and
/// random bytes, concatenated.
fn structured_noise() -> impl Strategy<Value = Vec<u8>> {
    let part = prop_oneof![
        2 => protocol_and_packet().prop_map(|(_, p)| encode(&p)),
        2 => (
            protocol_and_packet(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)
        )
            .prop_map(|((_, p), edits)| {
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
    fn round_trip((protocol, packet) in protocol_and_packet()) {
        let wire = encode(&packet);
        if let Packet::Publish(p) = &packet {
            prop_assert_eq!(wire.len(), p.encoded_len());
        }
        let decoder = decoder(protocol, 1 << 20);
        let mut buf = BytesMut::from(&wire[..]);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(packet)));
        prop_assert!(buf.is_empty(), "{} bytes left", buf.len());
    }

    #[test]
    fn v311_packets_also_decode_under_v31(packet in packet(Protocol::V311)) {
        // 3.1 leniency only widens what is accepted.
        let wire = encode(&packet);
        let mut buf = BytesMut::from(&wire[..]);
        prop_assert_eq!(decoder(Protocol::V31, 1 << 20).decode(&mut buf), Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_strict_prefix_waits_and_consumes_nothing(
        (protocol, packet) in protocol_and_packet(),
        cut in any::<prop::sample::Index>(),
    ) {
        let wire = encode(&packet);
        let cut = cut.index(wire.len()); // 0 ..= len - 1
        let mut buf = BytesMut::from(&wire[..cut]);
        prop_assert_eq!(decoder(protocol, 1 << 20).decode(&mut buf), Ok(None));
        prop_assert_eq!(&buf[..], &wire[..cut]);
    }

    #[test]
    fn a_stream_of_packets_split_anywhere_decodes_in_order(
        (protocol, packets) in protocol().prop_flat_map(|protocol| {
            (Just(protocol), prop::collection::vec(packet(protocol), 1..8))
        }),
        chunk in 1usize..200,
    ) {
        let wire: Vec<u8> = packets.iter().flat_map(encode).collect();
        let decoder = decoder(protocol, 1 << 20);
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
    fn publish_header_plus_payload_equals_full_encoding(p in publish()) {
        let mut header = BytesMut::new();
        pyo3mq::codec::encode_publish_header(
            &mut header, &p.topic, p.qos, p.retain, p.dup, p.pkid, p.payload.len(),
        ).unwrap();
        header.extend_from_slice(&p.payload);
        prop_assert_eq!(&header[..], &encode(&Packet::Publish(p))[..]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_overallocate(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..=MAX_CHUNK,
        protocol in protocol(),
    ) {
        feed(&decoder(protocol, MAX), &data, chunk)?;
    }

    #[test]
    fn structured_noise_never_panics_nor_overallocates(
        data in structured_noise(),
        chunk in 1usize..=MAX_CHUNK,
        protocol in protocol(),
    ) {
        feed(&decoder(protocol, MAX), &data, chunk)?;
    }

    #[test]
    fn noise_after_a_valid_connect(
        connect in connect(),
        noise in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..=MAX_CHUNK,
    ) {
        // The session decodes CONNECT, learns the revision, then gets garbage.
        let protocol = connect.protocol;
        let connect = Packet::Connect(Box::new(connect));
        let mut data = encode(&connect);
        prop_assume!(data.len() < MAX);
        data.extend_from_slice(&noise);
        let mut decoder = decoder(Protocol::V311, MAX);
        let mut buf = BytesMut::from(&data[..]);
        prop_assert_eq!(decoder.decode(&mut buf), Ok(Some(connect)));
        decoder.set_protocol(protocol);
        feed(&decoder, &buf, chunk)?;
    }

    #[test]
    fn huge_announced_lengths_are_refused_without_reserving(
        first in (1u8..=14).prop_map(|t| t << 4),
        length in prop::collection::vec(0x80u8..=0xFF, 0..3),
        last in 0x08u8..=0x7F,
        tail in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        // A Remaining Length whose last byte is >= 8 in the top position announces at
        // least 8 * 128^k bytes; with k >= 1 that is over MAX (1 KiB) for any header.
        let mut data = vec![first];
        data.extend_from_slice(&length);
        data.push(last);
        let announced = length
            .iter()
            .chain([&last])
            .enumerate()
            .fold(0usize, |acc, (i, &b)| acc | (usize::from(b & 0x7F) << (7 * i)));
        let total = 1 + length.len() + 1 + announced;
        data.extend_from_slice(&tail);
        let mut buf = BytesMut::from(&data[..]);
        let result = decoder(Protocol::V311, MAX).decode(&mut buf);
        if total > MAX {
            prop_assert_eq!(
                result,
                Err(pyo3mq::codec::Error::PacketTooLarge { size: total, max: MAX })
            );
            prop_assert_eq!(buf.capacity(), data.len(), "reserved for a refused packet");
        } else {
            prop_assert!(buf.capacity() <= MAX.max(2 * data.len()));
        }
    }
}
