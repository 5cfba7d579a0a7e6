//! MQTT 3.1, 3.1.1 and 5.0 control packets: decoding from a byte buffer and encoding into
//! one.
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
//! Every error names the rule broken so that the log line explains the close. Topic
//! names are checked by [`topic::validate_topic_name`](crate::topic::validate_topic_name),
//! the check the broker and client apply to names that do not come off the wire.
//!
//! The parts, all private, with what the rest of the crate uses re-exported here:
//!
//! - `packet`: the packet types ([`Packet`] and what its variants carry) and the wire
//!   limits.
//! - `decode`: [`Decoder`] (framing) and the per-packet parsers over a body cursor.
//! - `encode`: [`Packet::encode`] and [`encode_publish_header`] for the fan-out path.
//! - `error`: [`Error`], one variant per rule a packet can break.
//!
//! - `properties`: MQTT 5.0's [`Properties`], which packet may carry which
//!   ([`PropertyContext`]) and their wire format, Variable Byte Integers included.
//! - `reason`: MQTT 5.0's [`ReasonCode`] and the per-packet tables of allowed codes.
//! - `decode/v5.rs`, `encode/v5.rs`: the 5.0 packet forms, behind the same [`Decoder`]
//!   (once it is told the peer speaks 5.0) and [`Packet::encode_for`].
//! - `wire`: the body cursor and length-prefixed strings that the decoders, the encoders
//!   and the property section all use (on their own so none of those imports another
//!   that imports it back).
//!
//! 3.1.1 and 5.0 share [`Packet`]: a 3.1.1 packet carries no property structure (a
//! `None` box), so the 3.1.1 path allocates and checks nothing more than before. Every
//! [`Error`] names the rule broken and knows the 5.0 reason code to send for it
//! ([`Error::reason_code`]).

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
mod reason;
mod wire;

pub use decode::Decoder;
pub use encode::v5::{encode_publish_header_v5, encode_publish_header_v5_aliased};
pub use encode::{encode_publish_header, remaining_length_size};
pub use error::Error;
pub(crate) use packet::MAX_STRING_LEN;
pub use packet::{
    AckV5, Auth, ConnAck, ConnAckV5, Connect, ConnectReturnCode, DisconnectV5, LastWill, Packet,
    Protocol, Publish, QoS, RetainHandling, SubAck, SubAckV5, Subscribe, SubscribeReturnCode,
    SubscribeV5, SubscriptionOptions, UnsubAckV5, Unsubscribe, UnsubscribeV5, MAX_REMAINING_LENGTH,
};
pub use properties::{
    property_name, variable_byte_integer_len, Properties, PropertyContext,
    MAX_VARIABLE_BYTE_INTEGER,
};
pub use reason::{ReasonCode, ReasonPacket};
