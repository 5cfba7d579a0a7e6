//! Encoding: [`Packet::encode`], and [`encode_publish_header`] for the fan-out path that
//! writes each subscriber's header in front of one shared payload.

pub(super) mod v5;

use bytes::{BufMut, BytesMut};

use super::error::check_topic_name;
use super::packet::nonzero_pkid;
use super::properties::{
    properties_len, put_properties, put_variable_byte_integer, variable_byte_integer_len,
};
use super::wire::{put_string, string_len};
use super::{
    Connect, Error, Packet, PropertyContext, Protocol, Publish, QoS, ReasonPacket,
    MAX_REMAINING_LENGTH,
};

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
pub(super) fn put_fixed_header_for(
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
    put_variable_byte_integer(dst, remaining);
    Ok(())
}

pub(super) fn put_fixed_header(
    dst: &mut BytesMut,
    first: u8,
    remaining: usize,
) -> Result<(), Error> {
    put_fixed_header_for(dst, first, remaining, remaining)
}

/// What a PUBLISH's header starts with in both revisions: the fixed header's first byte,
/// the Topic Name and, at QoS 1 and 2, the Packet Identifier. The 3.1.1 and 5.0 header
/// writers share it so that the flag bits, the packet id rule and the field order are
/// written once; 5.0's property section follows what [`PublishStart::put`] writes.
/// Built on the stack per delivery: no allocation.
#[derive(Clone, Copy)]
pub(super) struct PublishStart<'a> {
    first: u8,
    topic: &'a [u8],
    /// `None` at QoS 0, whose PUBLISH has no Packet Identifier field.
    pkid: Option<u16>,
    /// Length of the Topic Name and Packet Identifier fields.
    len: usize,
}

impl<'a> PublishStart<'a> {
    /// Checks the packet id (none at QoS 0; QoS 1/2 need a non-zero one) and the topic's
    /// length, and computes the first byte from the flags.
    #[inline]
    pub(super) fn new(
        topic: &'a str,
        qos: QoS,
        retain: bool,
        dup: bool,
        pkid: Option<u16>,
    ) -> Result<Self, Error> {
        let pkid = match (qos, pkid) {
            (QoS::AtMostOnce, _) => None,
            (_, Some(0)) => return Err(Error::ZeroPacketId("PUBLISH")),
            (_, Some(id)) => Some(id),
            (qos, None) => return Err(Error::MissingPacketId(qos)),
        };
        let topic = topic.as_bytes();
        let len = string_len("topic name", topic)? + if pkid.is_some() { 2 } else { 0 };
        Ok(Self {
            first: 0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain),
            topic,
            pkid,
            len,
        })
    }

    /// Writes the fixed header, the Topic Name and the Packet Identifier. `header` is the
    /// whole variable header's length (5.0's property section, which the caller writes
    /// next, included); the payload's `payload_len` bytes count in the Remaining Length
    /// but travel separately, so only the header's room is reserved.
    #[inline]
    pub(super) fn put(
        &self,
        dst: &mut BytesMut,
        header: usize,
        payload_len: usize,
    ) -> Result<(), Error> {
        put_fixed_header_for(dst, self.first, header + payload_len, header)?;
        put_string(dst, self.topic);
        if let Some(id) = self.pkid {
            dst.put_u16(id);
        }
        Ok(())
    }
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
    let start = PublishStart::new(topic, qos, retain, dup, pkid)?;
    start.put(dst, start.len, payload_len)
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
    /// Appends the packet, encoded for a connection that speaks `protocol`, to `dst`.
    ///
    /// Only PUBLISH is encoded differently by revision (5.0 adds its property section);
    /// every other variant has one wire form (CONNECT carries its own protocol, the
    /// `...V5` variants and AUTH are 5.0's, the rest are 3.1.1's).
    pub fn encode_for(&self, protocol: Protocol, dst: &mut BytesMut) -> Result<(), Error> {
        match (self, protocol) {
            (Packet::Publish(p), Protocol::V5) => v5::encode_publish(p, dst),
            _ => self.encode(dst),
        }
    }

    /// Appends the encoded packet to `dst`; a PUBLISH in its 3.1/3.1.1 form, without
    /// properties (see [`Packet::encode_for`]).
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
            Packet::ConnAckV5(a) => v5::encode_connack(a, dst),
            Packet::PubAckV5(a) => v5::encode_ack(a, 0x40, ReasonPacket::PubAck, dst),
            Packet::PubRecV5(a) => v5::encode_ack(a, 0x50, ReasonPacket::PubRec, dst),
            Packet::PubRelV5(a) => v5::encode_ack(a, 0x62, ReasonPacket::PubRel, dst),
            Packet::PubCompV5(a) => v5::encode_ack(a, 0x70, ReasonPacket::PubComp, dst),
            Packet::SubscribeV5(s) => v5::encode_subscribe(s, dst),
            Packet::SubAckV5(a) => v5::encode_reasons(
                0x90,
                ReasonPacket::SubAck,
                a.pkid,
                &a.reasons,
                a.properties.as_deref(),
                dst,
            ),
            Packet::UnsubscribeV5(u) => v5::encode_unsubscribe(u, dst),
            Packet::UnsubAckV5(a) => v5::encode_reasons(
                0xB0,
                ReasonPacket::UnsubAck,
                a.pkid,
                &a.reasons,
                a.properties.as_deref(),
                dst,
            ),
            Packet::DisconnectV5(d) => v5::encode_reason_and_properties(
                0xE0,
                ReasonPacket::Disconnect,
                d.reason,
                d.properties.as_deref(),
                dst,
            ),
            Packet::Auth(a) => v5::encode_reason_and_properties(
                0xF0,
                ReasonPacket::Auth,
                a.reason,
                a.properties.as_deref(),
                dst,
            ),
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
        check_topic_name(&w.topic, "will topic")?;
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
        remaining += string_len("will topic", w.topic.as_bytes())?;
        remaining += string_len("will message", &w.payload)?;
    }
    if let Some(u) = &c.username {
        flags |= 0x80;
        remaining += string_len("user name", u.as_bytes())?;
    }
    let v5 = c.protocol == Protocol::V5;
    let (props_len, will_props_len) = if v5 {
        let will = c.will.as_ref().and_then(|w| w.properties.as_deref());
        let connect = properties_len(c.properties.as_deref(), PropertyContext::Connect)?;
        let will = properties_len(will, PropertyContext::Will)?;
        remaining += variable_byte_integer_len(connect) + connect;
        if c.will.is_some() {
            remaining += variable_byte_integer_len(will) + will;
        }
        (connect, will)
    } else {
        (0, 0)
    };
    if let Some(p) = &c.password {
        // 5.0 allows a password without a user name [MQTT-3.1.2-19].
        if c.username.is_none() && !v5 {
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
    if v5 {
        put_properties(dst, c.properties.as_deref(), props_len);
    }
    put_string(dst, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            put_properties(dst, w.properties.as_deref(), will_props_len);
        }
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
