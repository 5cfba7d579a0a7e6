//! Decoding of MQTT 5.0 packet bodies, once the CONNECT has said the peer speaks 5.0
//! (the CONNECT itself is parsed by `decode::parse_connect`, which reads 5.0's
//! properties when the protocol level is 5).
//!
//! The framing, the string readers and the topic checks are the 3.1.1 decoder's; what
//! is new here is the property sections, reason codes and subscription options, and the
//! short forms 5.0 allows for acknowledgements, DISCONNECT and AUTH.

use bytes::Bytes;

use super::{bodiless, check_flags, connect_packet, publish_flags, publish_pkid};
use crate::codec::packet::nonzero_pkid;
use crate::codec::properties::read_properties;
use crate::codec::wire::{topic_name_from, Reader};
use crate::codec::{
    AckV5, Auth, ConnAckV5, DisconnectV5, Error, Packet, Properties, PropertyContext, Publish, QoS,
    ReasonCode, ReasonPacket, RetainHandling, SubAckV5, SubscribeV5, SubscriptionOptions,
    UnsubAckV5, UnsubscribeV5,
};

pub(super) fn parse(first: u8, body: Bytes) -> Result<Packet, Error> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    // Every packet but PUBLISH has fixed flags: 0010 for PUBREL, SUBSCRIBE and
    // UNSUBSCRIBE, 0000 otherwise [MQTT-2.1.3-1]. 5.0 has no 3.1-style DUP leniency.
    let expect_flags = |packet: &'static str, want: u8| -> Result<(), Error> {
        check_flags(packet, flags, flags == want)
    };
    match packet_type {
        1 => connect_packet(flags, body),
        2 => {
            expect_flags("CONNACK", 0)?;
            parse_connack(body).map(Packet::ConnAckV5)
        }
        3 => parse_publish(flags, body).map(Packet::Publish),
        4..=7 => {
            let (packet, want, short, long) = ACKS[usize::from(packet_type - 4)];
            expect_flags(packet.name(), want)?;
            parse_ack(body, packet).map(|a| a.map_or_else(long, short))
        }
        8 => {
            expect_flags("SUBSCRIBE", 0b0010)?;
            parse_subscribe(body).map(Packet::SubscribeV5)
        }
        9 => {
            expect_flags("SUBACK", 0)?;
            let (pkid, reasons, properties) = parse_reasons(
                body,
                "SUBACK",
                ReasonPacket::SubAck,
                PropertyContext::SubAck,
            )?;
            Ok(Packet::SubAckV5(SubAckV5 {
                pkid,
                reasons,
                properties,
            }))
        }
        10 => {
            expect_flags("UNSUBSCRIBE", 0b0010)?;
            parse_unsubscribe(body).map(Packet::UnsubscribeV5)
        }
        11 => {
            expect_flags("UNSUBACK", 0)?;
            let (pkid, reasons, properties) = parse_reasons(
                body,
                "UNSUBACK",
                ReasonPacket::UnsubAck,
                PropertyContext::UnsubAck,
            )?;
            Ok(Packet::UnsubAckV5(UnsubAckV5 {
                pkid,
                reasons,
                properties,
            }))
        }
        12 => bodiless("PINGREQ", flags, &body, Packet::PingReq),
        13 => bodiless("PINGRESP", flags, &body, Packet::PingResp),
        14 => {
            expect_flags("DISCONNECT", 0)?;
            if body.is_empty() {
                return Ok(Packet::Disconnect);
            }
            let (reason, properties) = parse_reason_and_properties(
                body,
                ReasonPacket::Disconnect,
                PropertyContext::Disconnect,
            )?;
            Ok(Packet::DisconnectV5(DisconnectV5 { reason, properties }))
        }
        15 => {
            expect_flags("AUTH", 0)?;
            if body.is_empty() {
                return Ok(Packet::Auth(Auth {
                    reason: ReasonCode::SUCCESS,
                    properties: None,
                }));
            }
            let (reason, properties) =
                parse_reason_and_properties(body, ReasonPacket::Auth, PropertyContext::Auth)?;
            Ok(Packet::Auth(Auth { reason, properties }))
        }
        other => Err(Error::ReservedPacketType(other)),
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP (types 4 to 7): the packet, its fixed-header
/// flags, and its short and long variants.
type AckForm = (ReasonPacket, u8, fn(u16) -> Packet, fn(AckV5) -> Packet);
const ACKS: [AckForm; 4] = [
    (ReasonPacket::PubAck, 0, Packet::PubAck, Packet::PubAckV5),
    (ReasonPacket::PubRec, 0, Packet::PubRec, Packet::PubRecV5),
    (
        ReasonPacket::PubRel,
        0b0010,
        Packet::PubRel,
        Packet::PubRelV5,
    ),
    (ReasonPacket::PubComp, 0, Packet::PubComp, Packet::PubCompV5),
];

fn reason(r: &mut Reader, packet: ReasonPacket) -> Result<ReasonCode, Error> {
    let code = ReasonCode(r.u8()?);
    if code.allowed_in(packet) {
        Ok(code)
    } else {
        Err(Error::InvalidReasonCode {
            packet: packet.name(),
            rule: packet.rule(),
            code: code.0,
        })
    }
}

/// Checks a payload marked as UTF-8 (Payload Format Indicator 1) is UTF-8: the spec lets
/// a receiver check, and answers with 0x99 Payload format invalid (3.3.2.3.2).
pub(super) fn check_payload_format(
    p: &Properties,
    payload: &[u8],
    what: &'static str,
) -> Result<(), Error> {
    if p.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
        return Err(Error::PayloadFormatInvalid(what));
    }
    Ok(())
}

fn parse_connack(body: Bytes) -> Result<ConnAckV5, Error> {
    let mut r = Reader {
        packet: "CONNACK",
        body,
    };
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(Error::InvalidConnAckFlags(ack_flags));
    }
    let reason = reason(&mut r, ReasonPacket::ConnAck)?;
    let properties = read_properties(&mut r, PropertyContext::ConnAck)?;
    r.finish()?;
    Ok(ConnAckV5 {
        session_present: ack_flags & 1 == 1,
        reason,
        properties,
    })
}

fn parse_publish(flags: u8, body: Bytes) -> Result<Publish, Error> {
    let (dup, qos, retain) = publish_flags(flags)?;
    let mut r = Reader {
        packet: "PUBLISH",
        body,
    };
    // An empty topic name is allowed when a Topic Alias stands for it, which is only
    // known after the properties: read the raw name first, check it after.
    let topic_raw = r.binary()?;
    let pkid = publish_pkid(&mut r, qos)?;
    let properties = read_properties(&mut r, PropertyContext::Publish)?;
    let topic = if topic_raw.is_empty() {
        if properties.as_ref().and_then(|p| p.topic_alias).is_none() {
            return Err(Error::EmptyTopicWithoutAlias);
        }
        bytestring::ByteString::new()
    } else {
        topic_name_from(topic_raw, "topic name")?
    };
    if let Some(p) = &properties {
        check_payload_format(p, &r.body, "PUBLISH payload")?;
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        payload: r.body,
        properties,
    })
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP: `Ok(id)` for the two-byte short form (Success,
/// no properties), `Err(ack)` for a long form with its reason code.
fn parse_ack(body: Bytes, packet: ReasonPacket) -> Result<Result<u16, AckV5>, Error> {
    let name = packet.name();
    if body.len() < 2 {
        return Err(Error::Truncated(name));
    }
    let mut r = Reader { packet: name, body };
    let pkid = nonzero_pkid(name, r.u16()?)?;
    if r.is_empty() {
        return Ok(Ok(pkid));
    }
    let reason = reason(&mut r, packet)?;
    // Remaining Length 3: a reason code and no property length (3.4.2.1).
    let properties = if r.is_empty() {
        None
    } else {
        read_properties(&mut r, packet.context())?
    };
    r.finish()?;
    Ok(Err(AckV5 {
        pkid,
        reason,
        properties,
    }))
}

/// DISCONNECT or AUTH with a non-empty body: a reason code, then properties unless the
/// Remaining Length is 1.
fn parse_reason_and_properties(
    body: Bytes,
    packet: ReasonPacket,
    ctx: PropertyContext,
) -> Result<(ReasonCode, Option<Box<Properties>>), Error> {
    let mut r = Reader {
        packet: packet.name(),
        body,
    };
    let reason = reason(&mut r, packet)?;
    let properties = if r.is_empty() {
        None
    } else {
        read_properties(&mut r, ctx)?
    };
    r.finish()?;
    Ok((reason, properties))
}

type Reasons = (u16, Vec<ReasonCode>, Option<Box<Properties>>);

/// SUBACK and UNSUBACK: packet id, properties, one reason code per filter.
fn parse_reasons(
    body: Bytes,
    name: &'static str,
    packet: ReasonPacket,
    ctx: PropertyContext,
) -> Result<Reasons, Error> {
    let mut r = Reader { packet: name, body };
    let pkid = nonzero_pkid(name, r.u16()?)?;
    let properties = read_properties(&mut r, ctx)?;
    let mut reasons = Vec::with_capacity(r.body.len());
    while !r.is_empty() {
        reasons.push(reason(&mut r, packet)?);
    }
    Ok((pkid, reasons, properties))
}

fn parse_subscribe(body: Bytes) -> Result<SubscribeV5, Error> {
    let mut r = Reader {
        packet: "SUBSCRIBE",
        body,
    };
    let pkid = nonzero_pkid("SUBSCRIBE", r.u16()?)?;
    let properties = read_properties(&mut r, PropertyContext::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let byte = r.u8()?;
        filters.push((filter, subscription_options(byte)?));
    }
    if filters.is_empty() {
        return Err(Error::EmptySubscribe);
    }
    Ok(SubscribeV5 {
        pkid,
        filters,
        properties,
    })
}

/// The Subscription Options byte: reserved bits 6-7 must be 0 [MQTT-3.8.3-5] (malformed),
/// QoS 3 and Retain Handling 3 are Protocol Errors (3.8.3.1).
fn subscription_options(byte: u8) -> Result<SubscriptionOptions, Error> {
    if byte & 0xC0 != 0 {
        return Err(Error::InvalidSubscriptionOptions(byte));
    }
    let qos = QoS::from_u8(byte & 0x03).ok_or(Error::InvalidSubscriptionOption(byte))?;
    let retain_handling = match (byte >> 4) & 0x03 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(Error::InvalidSubscriptionOption(byte)),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0x04 != 0,
        retain_as_published: byte & 0x08 != 0,
        retain_handling,
    })
}

fn parse_unsubscribe(body: Bytes) -> Result<UnsubscribeV5, Error> {
    let mut r = Reader {
        packet: "UNSUBSCRIBE",
        body,
    };
    let pkid = nonzero_pkid("UNSUBSCRIBE", r.u16()?)?;
    let properties = read_properties(&mut r, PropertyContext::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(Error::EmptyUnsubscribe);
    }
    Ok(UnsubscribeV5 {
        pkid,
        filters,
        properties,
    })
}
