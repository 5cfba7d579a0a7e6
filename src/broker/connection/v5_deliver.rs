//! Delivery to an MQTT 5.0 subscriber: the PUBLISH with the remaining Message Expiry
//! Interval [MQTT-3.3.2-6], never larger than the client's Maximum Packet Size
//! [MQTT-3.1.2-24] [MQTT-3.1.2-25], and the Subscription Identifier a SUBSCRIBE gives.
//!
//! The message's properties are still written from the bytes encoded once for all
//! subscribers: the remaining interval is patched into the copy this PUBLISH's header
//! holds, so a message with an expiry costs a clock read per delivery and no allocation,
//! and one without costs nothing more than before.
//!
//! A client that accepts Topic Aliases gets them here too (connection/topic_alias_out.rs):
//! the alias is written into this delivery's header, ahead of the shared properties, and
//! the Maximum Packet Size is checked against the aliased size.

use std::num::NonZeroU32;
use std::time::Instant;

use bytes::BytesMut;
use tracing::debug;

use crate::broker::router::Session;
use crate::broker::session::{remaining_secs, Queued};
use crate::codec::{self, Connect, SubscribeV5};

use super::topic_alias_out::{AliasUse, OutboundAliases};
use super::Connection;

/// Why a PUBLISH was not written.
#[derive(Debug)]
pub(super) enum Unsent {
    /// Larger than the client's Maximum Packet Size: this many bytes.
    TooLarge(usize),
    /// The codec refused it (logged where it happened).
    Invalid,
}

/// Writes a 5.0 PUBLISH's header (the payload follows, from the caller) unless the whole
/// packet would exceed `max_packet_size` (0: no limit), in which case nothing is written.
/// With `aliases` (the client accepts Topic Aliases, connection/topic_alias_out.rs) the
/// topic goes out as an alias where it has one; the size checked is the aliased size.
pub(super) fn encode_publish_header(
    dst: &mut BytesMut,
    item: &Queued,
    pkid: Option<u16>,
    dup: bool,
    max_packet_size: u32,
    aliases: Option<&mut OutboundAliases>,
) -> Result<Result<(), Unsent>, codec::Error> {
    let msg = &item.msg;
    let props = msg.properties.as_ref();
    let bytes: &[u8] = props.map_or(&[], |p| p);
    let start = dst.len();
    // A resend (DUP, only ever on a new connection [MQTT-4.4.0-1]) carries its full
    // topic name and no alias: it is complete on its own whatever the client has mapped,
    // and leaves the map alone. Resends are rare; the bytes saved would be few.
    let (aliases, used) = match aliases {
        Some(aliases) if !dup => {
            let used = aliases.lookup(&msg.topic);
            (Some(aliases), used)
        }
        _ => (None, AliasUse::Full),
    };
    let over = |size: usize| max_packet_size != 0 && size > max_packet_size as usize;
    encode_header_as(dst, item, pkid, dup, bytes, used)?;
    let size = dst.len() - start + msg.payload.len();
    if over(size) {
        dst.truncate(start);
        if !matches!(used, AliasUse::New(_)) {
            return Ok(Err(Unsent::TooLarge(size)));
        }
        // Setting an alias costs 3 bytes: the plain form may still fit. The alias is
        // then not recorded, and the topic's next delivery tries to set it again.
        encode_header_as(dst, item, pkid, dup, bytes, AliasUse::Full)?;
        let size = dst.len() - start + msg.payload.len();
        if over(size) {
            dst.truncate(start);
            return Ok(Err(Unsent::TooLarge(size)));
        }
    } else if let (Some(aliases), AliasUse::New(alias)) = (aliases, used) {
        // [MQTT-3.3.2-7]: recorded only once the PUBLISH that sets it is written.
        aliases.assign(&msg.topic, alias);
    }
    if let Some(expiry) = props.and_then(|p| p.expiry()) {
        // The properties are the last bytes of the header just written.
        let at = dst.len() - bytes.len() + expiry.offset;
        let left = remaining_secs(expiry.deadline, Instant::now());
        dst[at..at + 4].copy_from_slice(&left.to_be_bytes());
    }
    Ok(Ok(()))
}

/// The header with the topic as `used` says: full name alone, name plus a new alias, or
/// an empty name plus a known alias ([MQTT-3.3.2-11]: every alias came from a map bounded
/// by the client's maximum).
fn encode_header_as(
    dst: &mut BytesMut,
    item: &Queued,
    pkid: Option<u16>,
    dup: bool,
    properties: &[u8],
    used: AliasUse,
) -> Result<(), codec::Error> {
    let msg = &item.msg;
    let (topic, alias) = match used {
        AliasUse::Full => {
            // [MQTT-3.3.2-17] [MQTT-3.3.2-18]: the publisher's properties, in their order.
            return codec::encode_publish_header_v5(
                dst,
                &msg.topic,
                item.qos,
                item.retain,
                dup,
                pkid,
                properties,
                &[],
                msg.payload.len(),
            );
        }
        AliasUse::New(alias) => (&*msg.topic, alias),
        AliasUse::Known(alias) => ("", alias),
    };
    codec::encode_publish_header_v5_aliased(
        dst,
        topic,
        alias,
        item.qos,
        item.retain,
        dup,
        pkid,
        properties,
        msg.payload.len(),
    )
}

impl Connection {
    /// The CONNECT's Maximum Packet Size (absent: no limit but the protocol's, 0 here).
    pub(super) fn client_max_packet_size(connect: &Connect) -> u32 {
        connect
            .properties
            .as_ref()
            .and_then(|p| p.maximum_packet_size)
            .unwrap_or(0)
    }

    /// Outbound Topic Aliases for this connection, when both the client's CONNECT Topic
    /// Alias Maximum and `outbound_topic_aliases` are above 0 [MQTT-3.1.2-27]; a new
    /// connection always starts with an empty map [MQTT-3.3.2-7].
    pub(super) fn start_outbound_aliases(&mut self, connect: &Connect) {
        let client_maximum = connect
            .properties
            .as_ref()
            .and_then(|p| p.topic_alias_maximum)
            .unwrap_or(0);
        let broker_limit =
            u16::try_from(self.router.config().outbound_topic_aliases).unwrap_or(u16::MAX);
        self.out
            .set_outbound_aliases(OutboundAliases::new(client_maximum, broker_limit));
    }

    /// The SUBSCRIBE's Subscription Identifier, if any. The decoder already refused 0 and
    /// a second one; checked again here so that 0 can never reach the router
    /// ([MQTT-3.8.2], "It is a Protocol Error if the Subscription Identifier has a value
    /// of 0").
    pub(super) fn subscription_id(
        subscribe: &SubscribeV5,
    ) -> Result<Option<NonZeroU32>, &'static str> {
        let Some(&id) = subscribe
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers.first())
        else {
            return Ok(None);
        };
        NonZeroU32::new(id)
            .map(Some)
            .ok_or("[MQTT-3.8.2] SUBSCRIBE with a Subscription Identifier of 0")
    }

    /// A PUBLISH that could not be sent is dropped for this client, and a QoS 1/2 one is
    /// treated as if its delivery had completed [MQTT-3.1.2-25], so it does not hold a
    /// place in the window (or come back on reconnect).
    pub(super) fn publish_unsent(
        &self,
        unsent: &Unsent,
        item: &Queued,
        pkid: Option<u16>,
        session: &Session,
    ) {
        if let Unsent::TooLarge(size) = unsent {
            debug!(client_id = %self.client_id, topic = %item.msg.topic, size,
                "[MQTT-3.1.2-25] PUBLISH larger than the client's Maximum Packet Size: \
                 dropped for this client");
        }
        if let Some(pkid) = pkid {
            session.state.lock().discard_inflight(pkid);
        }
    }
}
