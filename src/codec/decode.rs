//! Decoding: [`Decoder`] frames one packet at a time (check-then-parse) and the parsers
//! below turn its body into a [`Packet`].

mod v5;

use bytes::{Buf, Bytes, BytesMut};

use super::packet::nonzero_pkid;
use super::properties::read_properties;
use super::wire::Reader;
use super::{
    remaining_length_size, ConnAck, Connect, ConnectReturnCode, Error, LastWill, Packet,
    PropertyContext, Protocol, Publish, QoS, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe,
    MAX_REMAINING_LENGTH,
};

/// Incremental decoder for one connection's byte stream.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_packet_size: usize,
    protocol: Protocol,
}

impl Decoder {
    /// `max_packet_size` counts the whole packet, fixed header included.
    pub fn new(max_packet_size: usize) -> Decoder {
        Decoder {
            max_packet_size: max_packet_size.min(MAX_REMAINING_LENGTH + 5),
            protocol: Protocol::V311,
        }
    }

    /// Tells the decoder which revision the peer speaks (known once CONNECT is decoded):
    /// 3.1 peers may set DUP on PUBREL, SUBSCRIBE and UNSUBSCRIBE and may send an empty
    /// SUBSCRIBE or UNSUBSCRIBE (checklist part 2, items 6 and 9); 5.0 peers get the 5.0
    /// packet formats (properties, reason codes) for every packet after CONNECT.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    pub fn max_packet_size(&self) -> usize {
        self.max_packet_size
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole packet yet; nothing is consumed
    /// then. On success the packet's bytes are removed from `buf`. An error means the
    /// stream is unusable: the caller closes the connection.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Packet>, Error> {
        // One test of the revision, then each path with its own framing: the 3.1/3.1.1
        // path is the code it was before 5.0 came (`frame` folds its 5.0 checks away).
        if self.protocol == Protocol::V5 {
            return self.decode_v5(buf);
        }
        let Some((first, body)) = self.frame(buf, false)? else {
            return Ok(None);
        };
        self.parse(first, body).map(Some)
    }

    #[inline(never)]
    fn decode_v5(&self, buf: &mut BytesMut) -> Result<Option<Packet>, Error> {
        let Some((first, body)) = self.frame(buf, true)? else {
            return Ok(None);
        };
        v5::parse(first, body).map(Some)
    }

    /// Splits the next whole packet off `buf`: its first byte and its body, or `None`
    /// (nothing consumed) while it is incomplete.
    #[inline(always)]
    fn frame(&self, buf: &mut BytesMut, v5: bool) -> Result<Option<(u8, Bytes)>, Error> {
        if let Some(&first) = buf.first() {
            // Type 0, and 15 (AUTH) outside 5.0, are refused at once instead of after
            // buffering a body.
            if first >> 4 == 0 || (first >> 4 == 15 && !v5) {
                return Err(Error::ReservedPacketType(first >> 4));
            }
        }
        let Some((header_len, remaining)) = parse_fixed_header(buf)? else {
            return Ok(None);
        };
        let total = header_len + remaining;
        if total > self.max_packet_size {
            return Err(Error::PacketTooLarge {
                size: total,
                max: self.max_packet_size,
            });
        }
        if buf.len() < total {
            // Reserve for the rest of this frame so a large packet is read without many
            // reallocations, but at most 64 KiB ahead of what actually arrived: a peer
            // that sends only a header must not pin a max-size buffer per connection.
            buf.reserve((total - buf.len()).min(64 * 1024));
            return Ok(None);
        }
        if v5 && header_len - 1 != remaining_length_size(remaining) {
            // 5.0 makes the shortest encoding mandatory [MQTT-1.5.5-1].
            return Err(Error::MalformedVariableByteInteger("Remaining Length"));
        }
        let first = buf[0];
        let mut frame = buf.split_to(total).freeze();
        frame.advance(header_len);
        Ok(Some((first, frame)))
    }

    fn parse(&self, first: u8, body: Bytes) -> Result<Packet, Error> {
        let packet_type = first >> 4;
        let flags = first & 0x0F;
        let lenient = self.protocol == Protocol::V31;
        let expect_flags = |packet: &'static str, want: u8| -> Result<(), Error> {
            // 3.1 sets DUP (bit 3) when it resends PUBREL, SUBSCRIBE or UNSUBSCRIBE.
            let seen = if lenient && want == 0b0010 {
                flags & 0b0111
            } else {
                flags
            };
            check_flags(packet, flags, seen == want)
        };
        match packet_type {
            1 => connect_packet(flags, body),
            2 => {
                expect_flags("CONNACK", 0)?;
                expect_len("CONNACK", &body, 2)?;
                let ack_flags = body[0];
                if ack_flags & 0xFE != 0 {
                    return Err(Error::InvalidConnAckFlags(ack_flags));
                }
                let code = ConnectReturnCode::from_u8(body[1])
                    .ok_or(Error::InvalidConnAckCode(body[1]))?;
                Ok(Packet::ConnAck(ConnAck {
                    session_present: ack_flags & 1 == 1,
                    code,
                }))
            }
            3 => parse_publish(flags, body).map(Packet::Publish),
            4 => {
                expect_flags("PUBACK", 0)?;
                ack_pkid("PUBACK", &body).map(Packet::PubAck)
            }
            5 => {
                expect_flags("PUBREC", 0)?;
                ack_pkid("PUBREC", &body).map(Packet::PubRec)
            }
            6 => {
                expect_flags("PUBREL", 0b0010)?;
                ack_pkid("PUBREL", &body).map(Packet::PubRel)
            }
            7 => {
                expect_flags("PUBCOMP", 0)?;
                ack_pkid("PUBCOMP", &body).map(Packet::PubComp)
            }
            8 => {
                expect_flags("SUBSCRIBE", 0b0010)?;
                parse_subscribe(body, lenient).map(Packet::Subscribe)
            }
            9 => {
                expect_flags("SUBACK", 0)?;
                parse_suback(body).map(Packet::SubAck)
            }
            10 => {
                expect_flags("UNSUBSCRIBE", 0b0010)?;
                parse_unsubscribe(body, lenient).map(Packet::Unsubscribe)
            }
            11 => {
                expect_flags("UNSUBACK", 0)?;
                ack_pkid("UNSUBACK", &body).map(Packet::UnsubAck)
            }
            12 => bodiless("PINGREQ", flags, &body, Packet::PingReq),
            13 => bodiless("PINGRESP", flags, &body, Packet::PingResp),
            14 => bodiless("DISCONNECT", flags, &body, Packet::Disconnect),
            other => Err(Error::ReservedPacketType(other)),
        }
    }
}

/// Reads the fixed header: `Some((header length, remaining length))`, or `None` if more
/// bytes are needed to know.
fn parse_fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, remaining)));
        }
    }
    // The fourth length byte still had its continuation bit set.
    Err(Error::MalformedRemainingLength)
}

/// The fixed-header flags check both decoders share: `ok` says whether the flags are
/// the packet's fixed ones [MQTT-2.1.3-1]; the error reports the flags as received.
#[inline]
pub(super) fn check_flags(packet: &'static str, flags: u8, ok: bool) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidFlags { packet, flags })
    }
}

/// A CONNECT packet (flags 0000), the same in both decoders: `parse_connect` itself reads
/// 5.0's properties when the protocol level is 5.
#[inline]
pub(super) fn connect_packet(flags: u8, body: Bytes) -> Result<Packet, Error> {
    check_flags("CONNECT", flags, flags == 0)?;
    parse_connect(body).map(|c| Packet::Connect(Box::new(c)))
}

/// A packet that is its fixed header alone (flags 0000, remaining length 0), as PINGREQ
/// and PINGRESP are in both decoders.
#[inline]
pub(super) fn bodiless(
    name: &'static str,
    flags: u8,
    body: &Bytes,
    packet: Packet,
) -> Result<Packet, Error> {
    check_flags(name, flags, flags == 0)?;
    expect_len(name, body, 0)?;
    Ok(packet)
}

pub(super) fn expect_len(packet: &'static str, body: &Bytes, expected: usize) -> Result<(), Error> {
    if body.len() == expected {
        Ok(())
    } else {
        Err(Error::BadRemainingLength {
            packet,
            actual: body.len(),
            expected,
        })
    }
}

fn ack_pkid(packet: &'static str, body: &Bytes) -> Result<u16, Error> {
    expect_len(packet, body, 2)?;
    nonzero_pkid(packet, u16::from_be_bytes([body[0], body[1]]))
}

pub(super) fn parse_connect(body: Bytes) -> Result<Connect, Error> {
    let mut r = Reader {
        packet: "CONNECT",
        body,
    };
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        // Mosquitto bridges set the level's high bit (`try_private`).
        (b"MQTT", 0x84) => Protocol::V311Bridge,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", level) => {
            return Err(Error::UnsupportedProtocolLevel {
                name: "MQTT",
                level,
            })
        }
        (b"MQIsdp", level) => {
            return Err(Error::UnsupportedProtocolLevel {
                name: "MQIsdp",
                level,
            })
        }
        _ => return Err(Error::InvalidProtocolName),
    };
    let flags = r.u8()?;
    // 3.1 calls bit 0 merely "unused"; 3.1.1 and 5.0 make setting it a violation.
    if flags & 0x01 != 0 && protocol.base() != Protocol::V31 {
        return Err(Error::ConnectReservedFlag);
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(Error::WillFlagsWithoutWill);
    }
    // 5.0 allows a password without a user name [MQTT-3.1.2-19].
    if password_flag && !username_flag && protocol != Protocol::V5 {
        return Err(Error::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let v5 = protocol == Protocol::V5;
    let properties = if v5 {
        read_properties(&mut r, PropertyContext::Connect)?
    } else {
        None
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let qos = QoS::from_u8(will_qos).ok_or(Error::InvalidWillQoS)?;
        let properties = if v5 {
            read_properties(&mut r, PropertyContext::Will)?
        } else {
            None
        };
        let topic = r.topic_name("will topic")?;
        let payload = r.binary()?;
        if let Some(p) = &properties {
            v5::check_payload_format(p, &payload, "will payload")?;
        }
        Some(LastWill {
            topic,
            payload,
            qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    // 3.1 clients may announce a user name or password and leave the field out; mosquitto
    // accepts that for 3.1 and so do we (checklist part 2, item 8).
    let lenient = protocol == Protocol::V31;
    let username = if username_flag && !(lenient && r.is_empty()) {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag && !(lenient && r.is_empty()) {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// A PUBLISH's fixed-header flags: (DUP, QoS, RETAIN), checked [MQTT-3.3.1-4],
/// [MQTT-3.3.1-2] (the same in 3.1.1 and 5.0).
#[inline]
pub(super) fn publish_flags(flags: u8) -> Result<(bool, QoS, bool), Error> {
    let dup = flags & 0x08 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(Error::InvalidQoS)?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(Error::DupOnQoS0);
    }
    Ok((dup, qos, retain))
}

/// A PUBLISH's Packet Identifier, after its Topic Name: present only at QoS 1 and 2, and
/// then non-zero [MQTT-2.3.1-1] (5.0: [MQTT-2.2.1-3]); shared by both revisions.
#[inline]
pub(super) fn publish_pkid(r: &mut Reader, qos: QoS) -> Result<Option<u16>, Error> {
    if qos == QoS::AtMostOnce {
        Ok(None)
    } else {
        nonzero_pkid("PUBLISH", r.u16()?).map(Some)
    }
}

fn parse_publish(flags: u8, body: Bytes) -> Result<Publish, Error> {
    let (dup, qos, retain) = publish_flags(flags)?;
    let mut r = Reader {
        packet: "PUBLISH",
        body,
    };
    let topic = r.topic_name("topic name")?;
    let pkid = publish_pkid(&mut r, qos)?;
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        pkid,
        payload: r.body,
        properties: None,
    })
}

fn parse_subscribe(body: Bytes, lenient: bool) -> Result<Subscribe, Error> {
    let mut r = Reader {
        packet: "SUBSCRIBE",
        body,
    };
    let pkid = nonzero_pkid("SUBSCRIBE", r.u16()?)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let requested = r.u8()?;
        let qos = QoS::from_u8(requested).ok_or(Error::InvalidRequestedQoS(requested))?;
        filters.push((filter, qos));
    }
    if filters.is_empty() && !lenient {
        return Err(Error::EmptySubscribe);
    }
    Ok(Subscribe { pkid, filters })
}

fn parse_unsubscribe(body: Bytes, lenient: bool) -> Result<Unsubscribe, Error> {
    let mut r = Reader {
        packet: "UNSUBSCRIBE",
        body,
    };
    let pkid = nonzero_pkid("UNSUBSCRIBE", r.u16()?)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() && !lenient {
        return Err(Error::EmptyUnsubscribe);
    }
    Ok(Unsubscribe { pkid, filters })
}

fn parse_suback(body: Bytes) -> Result<SubAck, Error> {
    let mut r = Reader {
        packet: "SUBACK",
        body,
    };
    let pkid = nonzero_pkid("SUBACK", r.u16()?)?;
    let mut codes = Vec::with_capacity(r.body.len());
    while !r.is_empty() {
        let code = r.u8()?;
        codes.push(match code {
            0x80 => SubscribeReturnCode::Failure,
            other => SubscribeReturnCode::Success(
                QoS::from_u8(other).ok_or(Error::InvalidSubAckCode(other))?,
            ),
        });
    }
    Ok(SubAck { pkid, codes })
}
