//! MQTT 3.1 and 3.1.1 control packets: decoding from a byte buffer and encoding into one.
//!
//! The decoder is check-then-parse (as in mini-redis): it first reads the fixed header and,
//! if the whole packet is not buffered yet, returns `Ok(None)` without consuming anything.
//! The maximum packet size is enforced from the fixed header alone, so an oversized packet
//! is refused before its body is ever buffered. A complete frame is split off the read
//! buffer and frozen, so a decoded PUBLISH's topic and payload are views into the bytes
//! that came off the socket: no copy.
//!
//! Validation is strict (3.1.1's rules) with the leniencies MQTT 3.1 peers need, which
//! the decoder applies once it knows the connection speaks 3.1 (see [`Decoder::set_protocol`]).
//! Every error names the rule broken so that the log line explains the close.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

/// Largest value the 4-byte Remaining Length can carry (spec 2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// Largest length of a length-prefixed string or binary field (spec 1.5.3).
pub const MAX_STRING_LEN: usize = 65_535;

/// The protocol revision a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
        }
    }

    fn name(self) -> &'static [u8] {
        match self {
            Protocol::V31 => b"MQIsdp",
            Protocol::V311 => b"MQTT",
        }
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// CONNACK return codes (spec table 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    pub fn from_u8(value: u8) -> Option<ConnectReturnCode> {
        Some(match value {
            0 => ConnectReturnCode::Accepted,
            1 => ConnectReturnCode::UnacceptableProtocolVersion,
            2 => ConnectReturnCode::IdentifierRejected,
            3 => ConnectReturnCode::ServerUnavailable,
            4 => ConnectReturnCode::BadUserNameOrPassword,
            5 => ConnectReturnCode::NotAuthorized,
            _ => return None,
        })
    }
}

/// One SUBACK return code: a granted QoS or failure (0x80).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    Success(QoS),
    Failure,
}

impl SubscribeReturnCode {
    pub fn to_u8(self) -> u8 {
        match self {
            SubscribeReturnCode::Success(qos) => qos as u8,
            SubscribeReturnCode::Failure => 0x80,
        }
    }
}

/// The will message a client leaves with its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: ByteString,
    /// Binary in 3.1.1 and a "string" in 3.1; the wire format is the same, so it is never
    /// UTF-8 validated (checklist part 2, item 11).
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
}

impl Connect {
    /// A copy that owns its strings instead of pointing into the read buffer. The broker
    /// keeps a CONNECT (client id, will) for the whole connection: a zero-copy view would
    /// pin the whole read buffer it came from for that long.
    pub fn detached(&self) -> Connect {
        let text = |s: &ByteString| ByteString::from(&**s);
        Connect {
            protocol: self.protocol,
            clean_session: self.clean_session,
            keep_alive: self.keep_alive,
            client_id: text(&self.client_id),
            will: self.will.as_ref().map(|w| LastWill {
                topic: text(&w.topic),
                payload: Bytes::copy_from_slice(&w.payload),
                qos: w.qos,
                retain: w.retain,
            }),
            username: self.username.as_ref().map(text),
            password: self.password.as_deref().map(Bytes::copy_from_slice),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: ByteString,
    /// Present exactly when `qos` is 1 or 2 [MQTT-2.3.1-5].
    pub pkid: Option<u16>,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    /// Filters as sent: their wildcard syntax is checked by the broker, which answers a bad
    /// filter with 0x80 in its SUBACK slot rather than closing the connection.
    pub filters: Vec<(ByteString, QoS)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub pkid: u16,
    pub codes: Vec<SubscribeReturnCode>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub pkid: u16,
    pub filters: Vec<ByteString>,
}

/// The fourteen MQTT 3.1.1 control packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

impl Packet {
    /// The packet's name, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect => "DISCONNECT",
        }
    }
}

/// Why a byte sequence is not an acceptable MQTT packet (or a packet cannot be encoded).
///
/// Each message names the spec rule where the spec numbers one, so the broker's log line
/// for a closed connection says exactly what the peer did wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("[MQTT-2.2.1] packet type {0} is reserved")]
    ReservedPacketType(u8),
    #[error("[MQTT-2.2.2-2] {packet} has invalid fixed header flags {flags:#06b}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("[MQTT-2.2.3] Remaining Length uses more than 4 bytes")]
    MalformedRemainingLength,
    #[error(
        "packet of {size} bytes exceeds the maximum packet size of {max} bytes: raise \
         max_packet_size to accept it"
    )]
    PacketTooLarge { size: usize, max: usize },
    #[error("[MQTT-2.2.3] {packet} has Remaining Length {actual}, expected {expected}")]
    BadRemainingLength {
        packet: &'static str,
        actual: usize,
        expected: usize,
    },
    #[error("{0} is truncated: a field runs past the Remaining Length")]
    Truncated(&'static str),
    #[error("{packet} has {extra} unexpected bytes after its last field")]
    TrailingBytes { packet: &'static str, extra: usize },
    #[error("[MQTT-3.3.1-4] PUBLISH with QoS 3, which is reserved")]
    InvalidQoS,
    #[error("[MQTT-3.3.1-2] DUP flag set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    #[error("[MQTT-2.3.1-1] {0} has packet identifier 0")]
    ZeroPacketId(&'static str),
    #[error("[MQTT-1.5.3-1] {0} is not well-formed UTF-8")]
    InvalidUtf8(&'static str),
    #[error("[MQTT-1.5.3-2] {0} contains the null character U+0000")]
    NullCharacter(&'static str),
    #[error("[MQTT-1.5.3] {0} is longer than 65,535 bytes")]
    StringTooLong(&'static str),
    #[error("[MQTT-3.1.2-1] unknown protocol name")]
    InvalidProtocolName,
    #[error("[MQTT-3.1.2-2] unsupported protocol level {level} for protocol name {name}")]
    UnsupportedProtocolLevel { name: &'static str, level: u8 },
    #[error("[MQTT-3.1.2-3] CONNECT flags reserved bit 0 is set")]
    ConnectReservedFlag,
    #[error("[MQTT-3.1.2-11] will QoS or will retain set without the will flag")]
    WillFlagsWithoutWill,
    #[error("[MQTT-3.1.2-14] will QoS 3 is invalid")]
    InvalidWillQoS,
    #[error("[MQTT-3.1.2-22] password flag set without the user name flag")]
    PasswordWithoutUsername,
    #[error("[MQTT-3.3.2-2] PUBLISH topic name contains a wildcard")]
    WildcardInTopicName,
    #[error("[MQTT-4.7.3-1] PUBLISH topic name is empty")]
    EmptyTopicName,
    #[error("[MQTT-3.8.3-3] SUBSCRIBE carries no topic filter")]
    EmptySubscribe,
    #[error("[MQTT-3.10.3-2] UNSUBSCRIBE carries no topic filter")]
    EmptyUnsubscribe,
    #[error("[MQTT-3.8.3-4] requested QoS byte {0:#04x} has reserved bits set or QoS 3")]
    InvalidRequestedQoS(u8),
    #[error("[MQTT-3.9.3-2] SUBACK return code {0:#04x} is not 0, 1, 2 or 0x80")]
    InvalidSubAckCode(u8),
    #[error("[MQTT-3.2.2] CONNACK has reserved acknowledge flags {0:#04x}")]
    InvalidConnAckFlags(u8),
    #[error("[MQTT-3.2.2-6] CONNACK return code {0} is not defined")]
    InvalidConnAckCode(u8),
    #[error("PUBLISH with QoS {0:?} needs a packet identifier to be encoded")]
    MissingPacketId(QoS),
    #[error("[MQTT-2.2.3] packet of {0} bytes is longer than Remaining Length can express")]
    TooLargeToEncode(usize),
}

/// Incremental decoder for one connection's byte stream.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_size: usize,
    protocol: Protocol,
}

impl Decoder {
    /// `max_packet_size` counts the whole packet, fixed header included.
    pub fn new(max_packet_size: usize) -> Decoder {
        Decoder {
            max_packet_size: max_packet_size.min(MAX_REMAINING_LENGTH + 5),
            protocol: Protocol::V311,
        }
    }

    /// Tells the decoder which revision the peer speaks (known once CONNECT is decoded):
    /// 3.1 peers may set DUP on PUBREL, SUBSCRIBE and UNSUBSCRIBE and may send an empty
    /// SUBSCRIBE or UNSUBSCRIBE (checklist part 2, items 6 and 9).
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole packet yet; nothing is consumed
    /// then. On success the packet's bytes are removed from `buf`. An error means the
    /// stream is unusable: the caller closes the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, Error> {
        if let Some(&first) = buf.first() {
            // Types 0 and 15 are refused at once instead of after buffering a body.
            if matches!(first >> 4, 0 | 15) {
                return Err(Error::ReservedPacketType(first >> 4));
            }
        }
        let Some((header_len, remaining)) = parse_fixed_header(buf)? else {
            return Ok(None);
        };
        let total = header_len + remaining;
        if total > self.max_packet_size {
            return Err(Error::PacketTooLarge {
                size: total,
                max: self.max_packet_size,
            });
        }
        if buf.len() < total {
            // Reserve for the rest of this frame so a large packet is read without many
            // reallocations, but at most 64 KiB ahead of what actually arrived: a peer
            // that sends only a header must not pin a max-size buffer per connection.
            buf.reserve((total - buf.len()).min(64 * 1024));
            return Ok(None);
        }
        let first = buf[0];
        let mut frame = buf.split_to(total).freeze();
        frame.advance(header_len);
        self.parse(first, frame).map(Some)
    }

    fn parse(&self, first: u8, body: Bytes) -> Result<Packet, Error> {
        let packet_type = first >> 4;
        let flags = first & 0x0F;
        let lenient = self.protocol == Protocol::V31;
        let expect_flags = |packet: &'static str, want: u8| -> Result<(), Error> {
            // 3.1 sets DUP (bit 3) when it resends PUBREL, SUBSCRIBE or UNSUBSCRIBE.
            let seen = if lenient && want == 0b0010 {
                flags & 0b0111
            } else {
                flags
            };
            if seen == want {
                Ok(())
            } else {
                Err(Error::InvalidFlags { packet, flags })
            }
        };
        match packet_type {
            1 => {
                expect_flags("CONNECT", 0)?;
                parse_connect(body).map(Packet::Connect)
            }
            2 => {
                expect_flags("CONNACK", 0)?;
                expect_len("CONNACK", &body, 2)?;
                let ack_flags = body[0];
                if ack_flags & 0xFE != 0 {
                    return Err(Error::InvalidConnAckFlags(ack_flags));
                }
                let code = ConnectReturnCode::from_u8(body[1])
                    .ok_or(Error::InvalidConnAckCode(body[1]))?;
                Ok(Packet::ConnAck(ConnAck {
                    session_present: ack_flags & 1 == 1,
                    code,
                }))
            }
            3 => parse_publish(flags, body).map(Packet::Publish),
            4 => {
                expect_flags("PUBACK", 0)?;
                ack_pkid("PUBACK", &body).map(Packet::PubAck)
            }
            5 => {
                expect_flags("PUBREC", 0)?;
                ack_pkid("PUBREC", &body).map(Packet::PubRec)
            }
            6 => {
                expect_flags("PUBREL", 0b0010)?;
                ack_pkid("PUBREL", &body).map(Packet::PubRel)
            }
            7 => {
                expect_flags("PUBCOMP", 0)?;
                ack_pkid("PUBCOMP", &body).map(Packet::PubComp)
            }
            8 => {
                expect_flags("SUBSCRIBE", 0b0010)?;
                parse_subscribe(body, lenient).map(Packet::Subscribe)
            }
            9 => {
                expect_flags("SUBACK", 0)?;
                parse_suback(body).map(Packet::SubAck)
            }
            10 => {
                expect_flags("UNSUBSCRIBE", 0b0010)?;
                parse_unsubscribe(body, lenient).map(Packet::Unsubscribe)
            }
            11 => {
                expect_flags("UNSUBACK", 0)?;
                ack_pkid("UNSUBACK", &body).map(Packet::UnsubAck)
            }
            12 => {
                expect_flags("PINGREQ", 0)?;
                expect_len("PINGREQ", &body, 0)?;
                Ok(Packet::PingReq)
            }
            13 => {
                expect_flags("PINGRESP", 0)?;
                expect_len("PINGRESP", &body, 0)?;
                Ok(Packet::PingResp)
            }
            14 => {
                expect_flags("DISCONNECT", 0)?;
                expect_len("DISCONNECT", &body, 0)?;
                Ok(Packet::Disconnect)
            }
            other => Err(Error::ReservedPacketType(other)),
        }
    }
}

/// Reads the fixed header: `Some((header length, remaining length))`, or `None` if more
/// bytes are needed to know.
fn parse_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    // The fourth length byte still had its continuation bit set.
    Err(Error::MalformedRemainingLength)
}

fn expect_len(packet: &'static str, body: &Bytes, expected: usize) -> Result<(), Error> {
    if body.len() == expected {
        Ok(())
    } else {
        Err(Error::BadRemainingLength {
            packet,
            actual: body.len(),
            expected,
        })
    }
}

fn ack_pkid(packet: &'static str, body: &Bytes) -> Result<u16, Error> {
    expect_len(packet, body, 2)?;
    nonzero_pkid(packet, u16::from_be_bytes([body[0], body[1]]))
}

fn nonzero_pkid(packet: &'static str, pkid: u16) -> Result<u16, Error> {
    if pkid == 0 {
        Err(Error::ZeroPacketId(packet))
    } else {
        Ok(pkid)
    }
}

/// A cursor over a packet body that turns every short read into `Truncated`.
struct Reader {
    packet: &'static str,
    body: Bytes,
}

impl Reader {
    fn u8(&mut self) -> Result<u8, Error> {
        if self.body.is_empty() {
            return Err(Error::Truncated(self.packet));
        }
        Ok(self.body.get_u8())
    }

    fn u16(&mut self) -> Result<u16, Error> {
        if self.body.len() < 2 {
            return Err(Error::Truncated(self.packet));
        }
        Ok(self.body.get_u16())
    }

    fn binary(&mut self) -> Result<Bytes, Error> {
        let len = usize::from(self.u16()?);
        if self.body.len() < len {
            return Err(Error::Truncated(self.packet));
        }
        Ok(self.body.split_to(len))
    }

    /// A length-prefixed UTF-8 string; `what` names the field for the error message.
    fn string(&mut self, what: &'static str) -> Result<ByteString, Error> {
        let raw = self.binary()?;
        let text = ByteString::try_from(raw).map_err(|_| Error::InvalidUtf8(what))?;
        if text.contains('\0') {
            return Err(Error::NullCharacter(what));
        }
        Ok(text)
    }

    fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    fn finish(self) -> Result<(), Error> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                packet: self.packet,
                extra: self.body.len(),
            })
        }
    }
}

fn parse_connect(body: Bytes) -> Result<Connect, Error> {
    let mut r = Reader {
        packet: "CONNECT",
        body,
    };
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", level) => {
            return Err(Error::UnsupportedProtocolLevel {
                name: "MQTT",
                level,
            })
        }
        (b"MQIsdp", level) => {
            return Err(Error::UnsupportedProtocolLevel {
                name: "MQIsdp",
                level,
            })
        }
        _ => return Err(Error::InvalidProtocolName),
    };
    let flags = r.u8()?;
    // 3.1 calls bit 0 merely "unused"; only 3.1.1 makes setting it a violation.
    if flags & 0x01 != 0 && protocol == Protocol::V311 {
        return Err(Error::ConnectReservedFlag);
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(Error::WillFlagsWithoutWill);
    }
    if password_flag && !username_flag {
        return Err(Error::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let qos = QoS::from_u8(will_qos).ok_or(Error::InvalidWillQoS)?;
        let topic = r.string("will topic")?;
        check_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos,
            retain: will_retain,
        })
    } else {
        None
    };
    // 3.1 clients may announce a user name or password and leave the field out; mosquitto
    // accepts that for 3.1 and so do we (checklist part 2, item 8).
    let lenient = protocol == Protocol::V31;
    let username = if username_flag && !(lenient && r.is_empty()) {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag && !(lenient && r.is_empty()) {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn check_topic_name(topic: &str) -> Result<(), Error> {
    if topic.is_empty() {
        return Err(Error::EmptyTopicName);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(Error::WildcardInTopicName);
    }
    Ok(())
}

fn parse_publish(flags: u8, body: Bytes) -> Result<Publish, Error> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(Error::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(Error::DupOnQoS0);
    }
    let mut r = Reader {
        packet: "PUBLISH",
        body,
    };
    let topic = r.string("topic name")?;
    check_topic_name(&topic)?;
    let pkid = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(nonzero_pkid("PUBLISH", r.u16()?)?)
    };
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        payload: r.body,
    })
}

fn parse_subscribe(body: Bytes, lenient: bool) -> Result<Subscribe, Error> {
    let mut r = Reader {
        packet: "SUBSCRIBE",
        body,
    };
    let pkid = nonzero_pkid("SUBSCRIBE", r.u16()?)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let requested = r.u8()?;
        let qos = QoS::from_u8(requested).ok_or(Error::InvalidRequestedQoS(requested))?;
        filters.push((filter, qos));
    }
    if filters.is_empty() && !lenient {
        return Err(Error::EmptySubscribe);
    }
    Ok(Subscribe { pkid, filters })
}

fn parse_unsubscribe(body: Bytes, lenient: bool) -> Result<Unsubscribe, Error> {
    let mut r = Reader {
        packet: "UNSUBSCRIBE",
        body,
    };
    let pkid = nonzero_pkid("UNSUBSCRIBE", r.u16()?)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() && !lenient {
        return Err(Error::EmptyUnsubscribe);
    }
    Ok(Unsubscribe { pkid, filters })
}

fn parse_suback(body: Bytes) -> Result<SubAck, Error> {
    let mut r = Reader {
        packet: "SUBACK",
        body,
    };
    let pkid = nonzero_pkid("SUBACK", r.u16()?)?;
    let mut codes = Vec::with_capacity(r.body.len());
    while !r.is_empty() {
        let code = r.u8()?;
        codes.push(match code {
            0x80 => SubscribeReturnCode::Failure,
            other => SubscribeReturnCode::Success(
                QoS::from_u8(other).ok_or(Error::InvalidSubAckCode(other))?,
            ),
        });
    }
    Ok(SubAck { pkid, codes })
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Number of bytes the Remaining Length field takes for `len`.
pub fn remaining_length_size(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes the fixed header and reserves room for `body` more bytes (the part of the
/// remaining length the caller is about to write into `dst`, which for a PUBLISH header
/// excludes the payload that travels separately).
fn put_fixed_header_for(
    dst: &mut BytesMut,
    first: u8,
    remaining: usize,
    body: usize,
) -> Result<(), Error> {
    if remaining > MAX_REMAINING_LENGTH {
        return Err(Error::TooLargeToEncode(remaining));
    }
    dst.reserve(1 + remaining_length_size(remaining) + body);
    dst.put_u8(first);
    let mut len = remaining;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if len == 0 {
            return Ok(());
        }
    }
}

fn put_fixed_header(dst: &mut BytesMut, first: u8, remaining: usize) -> Result<(), Error> {
    put_fixed_header_for(dst, first, remaining, remaining)
}

fn string_len(what: &'static str, s: &[u8]) -> Result<usize, Error> {
    if s.len() > MAX_STRING_LEN {
        Err(Error::StringTooLong(what))
    } else {
        Ok(2 + s.len())
    }
}

fn put_string(dst: &mut BytesMut, s: &[u8]) {
    // Lengths were checked by `string_len` before the header was written.
    dst.put_u16(s.len() as u16);
    dst.put_slice(s);
}

/// Writes a PUBLISH's fixed and variable header but not its payload.
///
/// This is what lets one message reach many subscribers with one payload buffer: each
/// subscriber's header (its own packet id, QoS, DUP and RETAIN) is written separately and
/// the shared `Bytes` payload follows it, by reference, in a vectored write.
pub fn encode_publish_header(
    dst: &mut BytesMut,
    topic: &str,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: Option<u16>,
    payload_len: usize,
) -> Result<(), Error> {
    let pkid_len = match (qos, pkid) {
        (QoS::AtMostOnce, _) => 0,
        (_, Some(0)) => return Err(Error::ZeroPacketId("PUBLISH")),
        (_, Some(_)) => 2,
        (qos, None) => return Err(Error::MissingPacketId(qos)),
    };
    let header = string_len("topic name", topic.as_bytes())? + pkid_len;
    let remaining = header + payload_len;
    let first = 0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain);
    put_fixed_header_for(dst, first, remaining, header)?;
    put_string(dst, topic.as_bytes());
    if let (true, Some(id)) = (pkid_len > 0, pkid) {
        dst.put_u16(id);
    }
    Ok(())
}

impl Publish {
    /// Size of the encoded packet, header included.
    pub fn encoded_len(&self) -> usize {
        let remaining = 2
            + self.topic.len()
            + if self.qos == QoS::AtMostOnce { 0 } else { 2 }
            + self.payload.len();
        1 + remaining_length_size(remaining) + remaining
    }
}

impl Packet {
    /// Appends the encoded packet to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        match self {
            Packet::Connect(c) => encode_connect(c, dst),
            Packet::ConnAck(a) => {
                put_fixed_header(dst, 0x20, 2)?;
                dst.put_u8(u8::from(a.session_present));
                dst.put_u8(a.code as u8);
                Ok(())
            }
            Packet::Publish(p) => {
                let qos = p.qos;
                let dup = p.dup && qos != QoS::AtMostOnce;
                dst.reserve(p.encoded_len());
                encode_publish_header(dst, &p.topic, qos, p.retain, dup, p.pkid, p.payload.len())?;
                dst.extend_from_slice(&p.payload);
                Ok(())
            }
            Packet::PubAck(id) => encode_ack(dst, 0x40, "PUBACK", *id),
            Packet::PubRec(id) => encode_ack(dst, 0x50, "PUBREC", *id),
            Packet::PubRel(id) => encode_ack(dst, 0x62, "PUBREL", *id),
            Packet::PubComp(id) => encode_ack(dst, 0x70, "PUBCOMP", *id),
            Packet::Subscribe(s) => {
                nonzero_pkid("SUBSCRIBE", s.pkid)?;
                let mut remaining = 2;
                for (filter, _) in &s.filters {
                    remaining += string_len("topic filter", filter.as_bytes())? + 1;
                }
                put_fixed_header(dst, 0x82, remaining)?;
                dst.put_u16(s.pkid);
                for (filter, qos) in &s.filters {
                    put_string(dst, filter.as_bytes());
                    dst.put_u8(*qos as u8);
                }
                Ok(())
            }
            Packet::SubAck(s) => {
                nonzero_pkid("SUBACK", s.pkid)?;
                put_fixed_header(dst, 0x90, 2 + s.codes.len())?;
                dst.put_u16(s.pkid);
                for code in &s.codes {
                    dst.put_u8(code.to_u8());
                }
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                nonzero_pkid("UNSUBSCRIBE", u.pkid)?;
                let mut remaining = 2;
                for filter in &u.filters {
                    remaining += string_len("topic filter", filter.as_bytes())?;
                }
                put_fixed_header(dst, 0xA2, remaining)?;
                dst.put_u16(u.pkid);
                for filter in &u.filters {
                    put_string(dst, filter.as_bytes());
                }
                Ok(())
            }
            Packet::UnsubAck(id) => encode_ack(dst, 0xB0, "UNSUBACK", *id),
            Packet::PingReq => put_fixed_header(dst, 0xC0, 0),
            Packet::PingResp => put_fixed_header(dst, 0xD0, 0),
            Packet::Disconnect => put_fixed_header(dst, 0xE0, 0),
        }
    }
}

fn encode_ack(dst: &mut BytesMut, first: u8, packet: &'static str, id: u16) -> Result<(), Error> {
    nonzero_pkid(packet, id)?;
    put_fixed_header(dst, first, 2)?;
    dst.put_u16(id);
    Ok(())
}

fn encode_connect(c: &Connect, dst: &mut BytesMut) -> Result<(), Error> {
    let name = c.protocol.name();
    let mut remaining = 2 + name.len() + 1 + 1 + 2;
    remaining += string_len("client identifier", c.client_id.as_bytes())?;
    let mut flags = 0u8;
    if c.clean_session {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        check_topic_name(&w.topic)?;
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
        remaining += string_len("will topic", w.topic.as_bytes())?;
        remaining += string_len("will message", &w.payload)?;
    }
    if let Some(u) = &c.username {
        flags |= 0x80;
        remaining += string_len("user name", u.as_bytes())?;
    }
    if let Some(p) = &c.password {
        if c.username.is_none() {
            return Err(Error::PasswordWithoutUsername);
        }
        flags |= 0x40;
        remaining += string_len("password", p)?;
    }
    put_fixed_header(dst, 0x10, remaining)?;
    put_string(dst, name);
    dst.put_u8(c.protocol.level());
    dst.put_u8(flags);
    dst.put_u16(c.keep_alive);
    put_string(dst, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        put_string(dst, w.topic.as_bytes());
        put_string(dst, &w.payload);
    }
    if let Some(u) = &c.username {
        put_string(dst, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_string(dst, p);
    }
    Ok(())
}
