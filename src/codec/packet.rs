//! The packet types: what a decoded packet carries and what an encoder is given.

use bytes::Bytes;
use bytestring::ByteString;

use super::{Error, Properties, ReasonCode};

/// Largest value the 4-byte Remaining Length can carry (spec 2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// Largest length of a length-prefixed string or binary field (spec 1.5.3).
pub(crate) const MAX_STRING_LEN: usize = 65_535;

/// The protocol revision a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
    /// MQTT 3.1.1 from a bridge: level 4 with the high bit set (0x84), Mosquitto's
    /// `try_private`, which tells the server the client is a bridge so it does not send
    /// the bridge's own messages back to it. Servers normalise it with [`Protocol::base`].
    V311Bridge,
}

impl Protocol {
    pub(crate) fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
            Protocol::V311Bridge => 0x84,
        }
    }

    /// The revision without the bridge marker.
    pub fn base(self) -> Protocol {
        match self {
            Protocol::V311Bridge => Protocol::V311,
            other => other,
        }
    }

    /// Whether the CONNECT carried Mosquitto's bridge bit (0x80 in the level).
    pub fn is_bridge(self) -> bool {
        self == Protocol::V311Bridge
    }

    pub(super) fn name(self) -> &'static [u8] {
        match self {
            Protocol::V31 => b"MQIsdp",
            Protocol::V311 | Protocol::V311Bridge | Protocol::V5 => b"MQTT",
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
    pub(crate) fn from_u8(value: u8) -> Option<ConnectReturnCode> {
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
    pub(crate) fn to_u8(self) -> u8 {
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
    /// 5.0 will properties; `None` in 3.1/3.1.1 and when a 5.0 will has none.
    pub properties: Option<Box<Properties>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean Session in 3.1/3.1.1, Clean Start in 5.0 (the same bit).
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: ByteString,
    pub will: Option<LastWill>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    /// 5.0 CONNECT properties; `None` in 3.1/3.1.1 and when a 5.0 CONNECT has none.
    pub properties: Option<Box<Properties>>,
}

impl Connect {
    /// A copy that owns its strings instead of pointing into the read buffer. The broker
    /// keeps a CONNECT (client id, will) for the whole connection: a zero-copy view would
    /// pin the whole read buffer it came from for that long.
    pub(crate) fn detached(&self) -> Connect {
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
                properties: w.properties.as_deref().map(detached_properties),
            }),
            username: self.username.as_ref().map(text),
            password: self.password.as_deref().map(Bytes::copy_from_slice),
            properties: self.properties.as_deref().map(detached_properties),
        }
    }
}

/// A property set that owns its strings and bytes (see [`Connect::detached`]).
fn detached_properties(p: &Properties) -> Box<Properties> {
    let text = |s: &ByteString| ByteString::from(&**s);
    let bin = |b: &Bytes| Bytes::copy_from_slice(b);
    let mut p = p.clone();
    for s in [
        &mut p.content_type,
        &mut p.response_topic,
        &mut p.assigned_client_identifier,
        &mut p.authentication_method,
        &mut p.response_information,
        &mut p.server_reference,
        &mut p.reason_string,
    ]
    .into_iter()
    .flatten()
    {
        *s = text(s);
    }
    for b in [&mut p.correlation_data, &mut p.authentication_data]
        .into_iter()
        .flatten()
    {
        *b = bin(b);
    }
    for (k, v) in &mut p.user_properties {
        *k = text(k);
        *v = text(v);
    }
    Box::new(p)
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
    /// 5.0 PUBLISH properties; `None` in 3.1/3.1.1 and when a 5.0 PUBLISH has none. A
    /// 3.1.1 encoding leaves them out (the spec's mapping for a 3.1.1 subscriber).
    pub properties: Option<Box<Properties>>,
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

/// A 5.0 CONNACK: a reason code in place of 3.1.1's return code, and properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAckV5 {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: Option<Box<Properties>>,
}

/// A 5.0 PUBACK, PUBREC, PUBREL or PUBCOMP that carries a reason code (and maybe
/// properties). The two-byte short form (Success, no properties) decodes as the 3.1.1
/// variant (`Packet::PubAck(id)` and so on), whose bytes are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckV5 {
    pub pkid: u16,
    pub reason: ReasonCode,
    pub properties: Option<Box<Properties>>,
}

/// Retain Handling of a 5.0 subscription (spec 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist before.
    SendIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// The Subscription Options byte of a 5.0 SUBSCRIBE (spec 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub(crate) fn to_u8(self) -> u8 {
        self.qos as u8
            | u8::from(self.no_local) << 2
            | u8::from(self.retain_as_published) << 3
            | (self.retain_handling as u8) << 4
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeV5 {
    pub pkid: u16,
    /// Filters as sent, as in [`Subscribe`].
    pub filters: Vec<(ByteString, SubscriptionOptions)>,
    pub properties: Option<Box<Properties>>,
}

/// A 5.0 SUBACK: one reason code per filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAckV5 {
    pub pkid: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: Option<Box<Properties>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribeV5 {
    pub pkid: u16,
    pub filters: Vec<ByteString>,
    pub properties: Option<Box<Properties>>,
}

/// A 5.0 UNSUBACK: one reason code per filter (3.1.1's has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAckV5 {
    pub pkid: u16,
    pub reasons: Vec<ReasonCode>,
    pub properties: Option<Box<Properties>>,
}

/// A 5.0 DISCONNECT with a reason code; the zero-length form (Normal disconnection, no
/// properties) decodes as [`Packet::Disconnect`], whose bytes are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectV5 {
    pub reason: ReasonCode,
    pub properties: Option<Box<Properties>>,
}

/// The 5.0 AUTH packet; the zero-length form means Success without properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Option<Box<Properties>>,
}

impl Auth {
    /// An AUTH naming `method`, as every AUTH must [MQTT-4.12.0-5], with `data` when
    /// given: the one way the broker and the client both build theirs.
    pub fn with_method(reason: ReasonCode, method: &ByteString, data: Option<Bytes>) -> Self {
        Auth {
            reason,
            properties: Some(Box::new(Properties {
                authentication_method: Some(method.clone()),
                authentication_data: data,
                ..Properties::default()
            })),
        }
    }
}

/// The control packets of MQTT 3.1.1 and 5.0.
///
/// The two revisions share a variant where the packet's fields are the same (CONNECT and
/// PUBLISH gain an optional property set; PINGREQ, PINGRESP; and the short forms of the
/// acknowledgements and of DISCONNECT, which are byte-identical). Where 5.0 adds reason
/// codes or subscription options the packet has a `...V5` variant of its own, and AUTH
/// exists in 5.0 only. Which form goes on the wire is decided by the connection's
/// protocol ([`Packet::encode_for`], [`Decoder::set_protocol`](super::Decoder::set_protocol)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Boxed: at ~190 bytes the largest variant by far, and one per connection. Unboxed it
    /// made every `Packet` the decoder returns (and moves) its size; PUBLISH, the hot one,
    /// is ~80 (see `packet_stays_small` below).
    Connect(Box<Connect>),
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
    ConnAckV5(ConnAckV5),
    PubAckV5(AckV5),
    PubRecV5(AckV5),
    PubRelV5(AckV5),
    PubCompV5(AckV5),
    SubscribeV5(SubscribeV5),
    SubAckV5(SubAckV5),
    UnsubscribeV5(UnsubscribeV5),
    UnsubAckV5(UnsubAckV5),
    DisconnectV5(DisconnectV5),
    Auth(Auth),
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
            Packet::Disconnect | Packet::DisconnectV5(_) => "DISCONNECT",
            Packet::ConnAckV5(_) => "CONNACK",
            Packet::PubAckV5(_) => "PUBACK",
            Packet::PubRecV5(_) => "PUBREC",
            Packet::PubRelV5(_) => "PUBREL",
            Packet::PubCompV5(_) => "PUBCOMP",
            Packet::SubscribeV5(_) => "SUBSCRIBE",
            Packet::SubAckV5(_) => "SUBACK",
            Packet::UnsubscribeV5(_) => "UNSUBSCRIBE",
            Packet::UnsubAckV5(_) => "UNSUBACK",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// A packet identifier, refused when zero [MQTT-2.3.1-1]; both directions check it.
pub(super) fn nonzero_pkid(packet: &'static str, pkid: u16) -> Result<u16, Error> {
    if pkid == 0 {
        Err(Error::ZeroPacketId(packet))
    } else {
        Ok(pkid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoder returns and moves a `Packet` per packet read: its size is that of the
    /// largest unboxed variant, which must stay PUBLISH (the hot one), not CONNECT.
    #[test]
    fn packet_stays_small() {
        let (packet, publish) = (size_of::<Packet>(), size_of::<Publish>());
        eprintln!(
            "Packet {packet} bytes, Publish {publish}, Connect {}",
            size_of::<Connect>()
        );
        assert!(packet <= 88, "Packet is {packet} bytes");
        assert!(
            packet <= publish + 8,
            "Packet {packet} vs Publish {publish}"
        );
    }
}
