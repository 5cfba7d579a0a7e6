//! The codec's error: one variant per rule a packet can break.

use super::{QoS, ReasonCode};
use crate::topic::{self, TopicError};

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
    // ---- MQTT 5.0 only ----
    #[error("[MQTT-1.5.5-1] {0}: Variable Byte Integer is longer than 4 bytes or not minimal")]
    MalformedVariableByteInteger(&'static str),
    #[error("[MQTT-2.2.2] {packet} carries property identifier {id:#04x}, which it may not carry")]
    UnknownProperty { packet: &'static str, id: u32 },
    #[error("[MQTT-2.2.2] {packet} carries the {name} property more than once")]
    DuplicateProperty {
        packet: &'static str,
        name: &'static str,
    },
    #[error("[{rule}] the {name} property of {packet} {what}")]
    InvalidProperty {
        packet: &'static str,
        name: &'static str,
        rule: &'static str,
        what: &'static str,
        reason: ReasonCode,
    },
    #[error("[{rule}] {packet} carries reason code {code:#04x}, which its table does not define")]
    InvalidReasonCode {
        packet: &'static str,
        rule: &'static str,
        code: u8,
    },
    #[error("[MQTT-3.8.3-5] subscription options byte {0:#04x} has reserved bits set")]
    InvalidSubscriptionOptions(u8),
    #[error("[MQTT-3.8.3] subscription options byte {0:#04x} has QoS 3 or Retain Handling 3")]
    InvalidSubscriptionOption(u8),
    #[error("[MQTT-3.3.2] {0} is marked UTF-8 (Payload Format Indicator 1) but is not")]
    PayloadFormatInvalid(&'static str),
    #[error("[MQTT-3.3.2] PUBLISH has an empty topic name and no Topic Alias")]
    EmptyTopicWithoutAlias,
}

impl Error {
    /// The reason code a 5.0 peer is sent for this error (in the DISCONNECT before the
    /// close, or in CONNACK while connecting): 0x81 Malformed Packet for what cannot be
    /// parsed, 0x82 Protocol Error for what parses but breaks a rule (spec 4.13), and the
    /// specific code where the spec names one.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Error::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            Error::InvalidProtocolName | Error::UnsupportedProtocolLevel { .. } => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            Error::ZeroPacketId(_)
            | Error::WildcardInTopicName
            | Error::EmptyTopicName
            | Error::EmptyTopicWithoutAlias
            | Error::EmptySubscribe
            | Error::EmptyUnsubscribe
            | Error::DuplicateProperty { .. }
            | Error::InvalidSubscriptionOption(_) => ReasonCode::PROTOCOL_ERROR,
            Error::InvalidProperty { reason, .. } => *reason,
            Error::PayloadFormatInvalid(_) => ReasonCode::PAYLOAD_FORMAT_INVALID,
            Error::MissingPacketId(_) | Error::TooLargeToEncode(_) => {
                ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR
            }
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// The MQTT 5.0 statement the error breaks where it differs from the 3.1.1 one in the
    /// message (5.0 renumbered many: 3.1.1's [MQTT-1.5.3-1] is 5.0's [MQTT-1.5.4-1]).
    /// A 5.0 connection's log line names this one too.
    pub fn v5_rule(&self) -> Option<&'static str> {
        Some(match self {
            Error::InvalidFlags { .. } => "MQTT-2.1.3-1",
            Error::MalformedRemainingLength => "MQTT-1.5.5-1",
            Error::PacketTooLarge { .. } => "MQTT-3.2.2-15",
            Error::InvalidQoS => "MQTT-3.3.1-4",
            Error::DupOnQoS0 => "MQTT-3.3.1-2",
            Error::ZeroPacketId(_) => "MQTT-2.2.1-3",
            Error::InvalidUtf8(_) => "MQTT-1.5.4-1",
            Error::NullCharacter(_) => "MQTT-1.5.4-2",
            Error::InvalidProtocolName => "MQTT-3.1.2-1",
            Error::UnsupportedProtocolLevel { .. } => "MQTT-3.1.2-2",
            Error::ConnectReservedFlag => "MQTT-3.1.2-3",
            Error::WillFlagsWithoutWill => "MQTT-3.1.2-11",
            Error::InvalidWillQoS => "MQTT-3.1.2-12",
            Error::WildcardInTopicName => "MQTT-3.3.2-2",
            Error::EmptySubscribe => "MQTT-3.8.3-2",
            Error::EmptyUnsubscribe => "MQTT-3.10.3-2",
            Error::InvalidRequestedQoS(_) => "MQTT-3.8.3-5",
            _ => return None,
        })
    }
}

/// Checks a topic name (a PUBLISH's or a will's) with the topic module's validation and
/// answers in the codec's own variants, `what` naming the field as the string readers do:
/// an empty name or a wildcard keeps its codec message, and U+0000 or an over-long name
/// gets the answer any other string gets.
pub(super) fn check_topic_name(topic: &str, what: &'static str) -> Result<(), Error> {
    topic::validate_topic_name(topic).map_err(|err| match err {
        TopicError::Empty => Error::EmptyTopicName,
        TopicError::TooLong(_) => Error::StringTooLong(what),
        TopicError::NullCharacter => Error::NullCharacter(what),
        // The filter rules cannot fail for a name; a wildcard is a wildcard.
        TopicError::WildcardInTopicName
        | TopicError::MisplacedMultiLevelWildcard
        | TopicError::MisplacedSingleLevelWildcard => Error::WildcardInTopicName,
    })
}
