//! The packet types: what a decoded packet carries and what an encoder is given.

use bytes::Bytes;
use bytestring::ByteString;

use super::Error;

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
            Protocol::V311 | Protocol::V311Bridge => b"MQTT",
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

/// A packet identifier, refused when zero [MQTT-2.3.1-1]; both directions check it.
pub(super) fn nonzero_pkid(packet: &'static str, pkid: u16) -> Result<u16, Error> {
    if pkid == 0 {
        Err(Error::ZeroPacketId(packet))
    } else {
        Ok(pkid)
    }
}
