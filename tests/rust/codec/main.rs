//! Byte-exact conformance vectors for `pyo3mq::codec`.
//!
//! Every vector in these files is derived by hand from the MQTT 3.1.1 specification (OASIS
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
//!
//! The parts, by the rule area they cover: `vectors` (the valid vectors), `header` (fixed
//! header and Remaining Length), `connect`, `rules` (PUBLISH, packet identifiers,
//! SUBSCRIBE, SUBACK, UNSUBSCRIBE), `strings`, `encoder` and `streaming`. The helpers they
//! share are here.

mod connect;
mod encoder;
mod header;
mod rules;
mod streaming;
mod strings;
mod v5;
mod vectors;

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
        properties: None,
    })
}

fn invalid_flags(packet: &'static str, flags: u8) -> Error {
    Error::InvalidFlags { packet, flags }
}

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
