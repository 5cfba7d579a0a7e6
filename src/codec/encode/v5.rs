//! Encoding of the MQTT 5.0 forms: PUBLISH with its property section (and
//! [`encode_publish_header_v5`] for the fan-out path), and the packets that carry reason
//! codes. CONNECT's 5.0 fields are written by `encode::encode_connect`.

use bytes::{BufMut, BytesMut};

use super::{put_fixed_header, PublishStart};
use crate::codec::error::check_topic_name;
use crate::codec::packet::nonzero_pkid;
use crate::codec::properties::{
    properties_len, put_properties, put_variable_byte_integer, variable_byte_integer_len,
};
use crate::codec::wire::{put_string, string_len};
use crate::codec::{
    AckV5, ConnAckV5, Error, Properties, PropertyContext, Publish, QoS, ReasonCode, ReasonPacket,
    SubscribeV5, UnsubscribeV5, MAX_VARIABLE_BYTE_INTEGER,
};

/// Writes a 5.0 PUBLISH's fixed and variable header but not its payload, as
/// [`encode_publish_header`](super::encode_publish_header) does for 3.1.1.
///
/// `properties` are the message's encoded properties without their length prefix
/// ([`Properties::to_bytes`]): encoded once per message and shared by every 5.0
/// subscriber. `subscription_ids` are this subscriber's Subscription Identifiers
/// ([MQTT-3.3.4-3]), appended after the shared ones.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_header_v5(
    dst: &mut BytesMut,
    topic: &str,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: Option<u16>,
    properties: &[u8],
    subscription_ids: &[u32],
    payload_len: usize,
) -> Result<(), Error> {
    let start = PublishStart::new(topic, qos, retain, dup, pkid)?;
    publish_header_v5(dst, start, &[], properties, subscription_ids, payload_len)
}

/// [`encode_publish_header_v5`] with a Topic Alias (3.3.2.3.4) ahead of the shared
/// properties, for a server's outbound aliases: `topic` is the name that sets the alias,
/// or empty to use one set before on this connection. The shared properties stay the
/// header's last bytes, where the caller may patch them.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish_header_v5_aliased(
    dst: &mut BytesMut,
    topic: &str,
    alias: std::num::NonZeroU16,
    qos: QoS,
    retain: bool,
    dup: bool,
    pkid: Option<u16>,
    properties: &[u8],
    payload_len: usize,
) -> Result<(), Error> {
    let [hi, lo] = alias.get().to_be_bytes();
    let start = PublishStart::new(topic, qos, retain, dup, pkid)?;
    publish_header_v5(dst, start, &[0x23, hi, lo], properties, &[], payload_len)
}

/// The header both of the above write: `start` is what 3.1.1's header also holds, and
/// `lead` is encoded property bytes of this delivery alone, written before the shared
/// ones.
fn publish_header_v5(
    dst: &mut BytesMut,
    start: PublishStart<'_>,
    lead: &[u8],
    properties: &[u8],
    subscription_ids: &[u32],
    payload_len: usize,
) -> Result<(), Error> {
    let mut props_len = lead.len() + properties.len();
    for &id in subscription_ids {
        if id == 0 || id > MAX_VARIABLE_BYTE_INTEGER {
            return Err(Error::InvalidProperty {
                packet: "PUBLISH",
                name: "Subscription Identifier",
                rule: "MQTT-3.8.2",
                what: "is outside 1..=268435455",
                reason: ReasonCode::PROTOCOL_ERROR,
            });
        }
        props_len += 1 + variable_byte_integer_len(id as usize);
    }
    let header = start.len + variable_byte_integer_len(props_len) + props_len;
    start.put(dst, header, payload_len)?;
    put_variable_byte_integer(dst, props_len);
    dst.put_slice(lead);
    dst.put_slice(properties);
    for &id in subscription_ids {
        dst.put_u8(0x0B);
        put_variable_byte_integer(dst, id as usize);
    }
    Ok(())
}

/// A whole 5.0 PUBLISH. An empty topic is allowed only with a Topic Alias (3.3.2.1).
pub(super) fn encode_publish(p: &Publish, dst: &mut BytesMut) -> Result<(), Error> {
    let props = p.properties.as_deref();
    if p.topic.is_empty() {
        if props.and_then(|p| p.topic_alias).is_none() {
            return Err(Error::EmptyTopicWithoutAlias);
        }
    } else {
        check_topic_name(&p.topic, "topic name")?;
    }
    let len = properties_len(props, PropertyContext::Publish)?;
    let mut encoded = BytesMut::with_capacity(len);
    if let Some(props) = props {
        props.put(&mut encoded);
    }
    let dup = p.dup && p.qos != QoS::AtMostOnce;
    encode_publish_header_v5(
        dst,
        &p.topic,
        p.qos,
        p.retain,
        dup,
        p.pkid,
        &encoded,
        &[],
        p.payload.len(),
    )?;
    dst.extend_from_slice(&p.payload);
    Ok(())
}

fn check_reason(packet: ReasonPacket, reason: ReasonCode) -> Result<(), Error> {
    if reason.allowed_in(packet) {
        Ok(())
    } else {
        Err(Error::InvalidReasonCode {
            packet: packet.name(),
            rule: packet.rule(),
            code: reason.0,
        })
    }
}

pub(super) fn encode_connack(a: &ConnAckV5, dst: &mut BytesMut) -> Result<(), Error> {
    check_reason(ReasonPacket::ConnAck, a.reason)?;
    let props = a.properties.as_deref();
    let len = properties_len(props, PropertyContext::ConnAck)?;
    put_fixed_header(dst, 0x20, 2 + variable_byte_integer_len(len) + len)?;
    // Session Present is 0 with any error code [MQTT-3.2.2-6].
    dst.put_u8(u8::from(a.session_present && !a.reason.is_error()));
    dst.put_u8(a.reason.0);
    put_properties(dst, props, len);
    Ok(())
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP with a reason code: Remaining Length 3 without
/// properties (3.4.2.1), with them otherwise.
pub(super) fn encode_ack(
    a: &AckV5,
    first: u8,
    packet: ReasonPacket,
    dst: &mut BytesMut,
) -> Result<(), Error> {
    nonzero_pkid(packet.name(), a.pkid)?;
    check_reason(packet, a.reason)?;
    let props = a.properties.as_deref();
    let len = properties_len(props, packet.context())?;
    let props_size = if props.is_some() {
        variable_byte_integer_len(len) + len
    } else {
        0
    };
    put_fixed_header(dst, first, 3 + props_size)?;
    dst.put_u16(a.pkid);
    dst.put_u8(a.reason.0);
    if props.is_some() {
        put_properties(dst, props, len);
    }
    Ok(())
}

pub(super) fn encode_subscribe(s: &SubscribeV5, dst: &mut BytesMut) -> Result<(), Error> {
    nonzero_pkid("SUBSCRIBE", s.pkid)?;
    let props = s.properties.as_deref();
    let len = properties_len(props, PropertyContext::Subscribe)?;
    if props.is_some_and(|p| p.subscription_identifiers.len() > 1) {
        return Err(Error::DuplicateProperty {
            packet: "SUBSCRIBE",
            name: "Subscription Identifier",
        });
    }
    let mut remaining = 2 + variable_byte_integer_len(len) + len;
    for (filter, _) in &s.filters {
        remaining += string_len("topic filter", filter.as_bytes())? + 1;
    }
    put_fixed_header(dst, 0x82, remaining)?;
    dst.put_u16(s.pkid);
    put_properties(dst, props, len);
    for (filter, options) in &s.filters {
        put_string(dst, filter.as_bytes());
        dst.put_u8(options.to_u8());
    }
    Ok(())
}

pub(super) fn encode_unsubscribe(u: &UnsubscribeV5, dst: &mut BytesMut) -> Result<(), Error> {
    nonzero_pkid("UNSUBSCRIBE", u.pkid)?;
    let props = u.properties.as_deref();
    let len = properties_len(props, PropertyContext::Unsubscribe)?;
    let mut remaining = 2 + variable_byte_integer_len(len) + len;
    for filter in &u.filters {
        remaining += string_len("topic filter", filter.as_bytes())?;
    }
    put_fixed_header(dst, 0xA2, remaining)?;
    dst.put_u16(u.pkid);
    put_properties(dst, props, len);
    for filter in &u.filters {
        put_string(dst, filter.as_bytes());
    }
    Ok(())
}

/// SUBACK and UNSUBACK: packet id, properties, one reason code per filter.
pub(super) fn encode_reasons(
    first: u8,
    packet: ReasonPacket,
    pkid: u16,
    reasons: &[ReasonCode],
    props: Option<&Properties>,
    dst: &mut BytesMut,
) -> Result<(), Error> {
    nonzero_pkid(packet.name(), pkid)?;
    for &reason in reasons {
        check_reason(packet, reason)?;
    }
    let len = properties_len(props, packet.context())?;
    put_fixed_header(
        dst,
        first,
        2 + variable_byte_integer_len(len) + len + reasons.len(),
    )?;
    dst.put_u16(pkid);
    put_properties(dst, props, len);
    for reason in reasons {
        dst.put_u8(reason.0);
    }
    Ok(())
}

/// DISCONNECT and AUTH. AUTH with Success and no properties takes the empty short form;
/// DISCONNECT's empty form is [`Packet::Disconnect`](super::Packet::Disconnect). A
/// DISCONNECT without properties is the one-byte form; AUTH has no such form, so its
/// property length is always written.
pub(super) fn encode_reason_and_properties(
    first: u8,
    packet: ReasonPacket,
    reason: ReasonCode,
    props: Option<&Properties>,
    dst: &mut BytesMut,
) -> Result<(), Error> {
    check_reason(packet, reason)?;
    let auth = packet == ReasonPacket::Auth;
    if auth && reason == ReasonCode::SUCCESS && props.is_none() {
        return put_fixed_header(dst, first, 0);
    }
    let len = properties_len(props, packet.context())?;
    let with_props = props.is_some() || auth;
    let props_size = if with_props {
        variable_byte_integer_len(len) + len
    } else {
        0
    };
    put_fixed_header(dst, first, 1 + props_size)?;
    dst.put_u8(reason.0);
    if with_props {
        put_properties(dst, props, len);
    }
    Ok(())
}
