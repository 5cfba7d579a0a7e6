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
//! MQTT 5.0 properties are to be a part of their own beside these, reading with the
//! decoder's body cursor and writing with the encoder's length-prefixed string helpers.

mod decode;
mod encode;
mod error;
mod packet;

pub use decode::Decoder;
pub use encode::{encode_publish_header, remaining_length_size};
pub use error::Error;
pub(crate) use packet::MAX_STRING_LEN;
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, Protocol, Publish, QoS, SubAck,
    Subscribe, SubscribeReturnCode, Unsubscribe, MAX_REMAINING_LENGTH,
};
