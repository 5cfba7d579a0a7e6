//! The codec's error: one variant per rule a packet can break.

use super::QoS;
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
