//! MQTT 5.0 properties (spec 2.2.2): one struct for every packet's property set, the
//! rules of which packet may carry which property, and their wire format.
//!
//! One struct rather than one per packet: the 27 properties overlap heavily between
//! packets (a will carries the same five message properties as a PUBLISH, CONNECT and
//! CONNACK share six), and the broker forwards a PUBLISH's set to subscribers as it came.
//! Which identifiers a packet may carry is checked against [`PropertyContext`] when
//! decoding and encoding. Packets hold the struct boxed and optional
//! (`Option<Box<Properties>>`, `None` for "no properties"), so a 3.1.1 packet, or a 5.0
//! one without properties, carries one null pointer and allocates nothing.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wire::{put_string, Reader};
use super::{Error, ReasonCode, MAX_REMAINING_LENGTH, MAX_STRING_LEN};

/// Largest value a Variable Byte Integer can carry (spec 1.5.5).
pub const MAX_VARIABLE_BYTE_INTEGER: u32 = 268_435_455;

/// The properties of one packet. Every field is optional; the two repeatable
/// properties (User Property everywhere, Subscription Identifier in PUBLISH) are vectors
/// kept in wire order, which the spec asks to preserve when forwarding ([MQTT-3.3.2-18]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01, PUBLISH and will: 0 unspecified bytes, 1 UTF-8 payload.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH and will, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH and will.
    pub content_type: Option<ByteString>,
    /// 0x08, PUBLISH and will: a topic name, no wildcards ([MQTT-3.3.2-14]).
    pub response_topic: Option<ByteString>,
    /// 0x09, PUBLISH and will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: several in a PUBLISH to a subscriber, at most one in SUBSCRIBE; 1 to
    /// 268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT, CONNACK and DISCONNECT, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<ByteString>,
    /// 0x13, CONNACK, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT, CONNACK and AUTH.
    pub authentication_method: Option<ByteString>,
    /// 0x16, CONNECT, CONNACK and AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT.
    pub request_problem_information: Option<bool>,
    /// 0x18, will, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT.
    pub request_response_information: Option<bool>,
    /// 0x1A, CONNACK.
    pub response_information: Option<ByteString>,
    /// 0x1C, CONNACK and DISCONNECT.
    pub server_reference: Option<ByteString>,
    /// 0x1F, every packet with a reason code.
    pub reason_string: Option<ByteString>,
    /// 0x21, CONNECT and CONNACK, never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT and CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH, never 0.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK: 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK.
    pub retain_available: Option<bool>,
    /// 0x26, every packet with properties, in order, names may repeat.
    pub user_properties: Vec<(ByteString, ByteString)>,
    /// 0x27, CONNECT and CONNACK, never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29, CONNACK.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A, CONNACK.
    pub shared_subscription_available: Option<bool>,
}

/// Where a property set sits: each context allows its own identifiers (spec table 2-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    pub(super) fn packet(self) -> &'static str {
        match self {
            PropertyContext::Connect => "CONNECT",
            PropertyContext::Will => "will properties",
            PropertyContext::ConnAck => "CONNACK",
            PropertyContext::Publish => "PUBLISH",
            PropertyContext::PubAck => "PUBACK",
            PropertyContext::PubRec => "PUBREC",
            PropertyContext::PubRel => "PUBREL",
            PropertyContext::PubComp => "PUBCOMP",
            PropertyContext::Subscribe => "SUBSCRIBE",
            PropertyContext::SubAck => "SUBACK",
            PropertyContext::Unsubscribe => "UNSUBSCRIBE",
            PropertyContext::UnsubAck => "UNSUBACK",
            PropertyContext::Disconnect => "DISCONNECT",
            PropertyContext::Auth => "AUTH",
        }
    }

    /// Whether a property with identifier `id` may appear here (spec table 2-4).
    pub fn allows(self, id: u8) -> bool {
        use PropertyContext as C;
        match id {
            0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(self, C::Publish | C::Will),
            0x0B => matches!(self, C::Publish | C::Subscribe),
            0x11 => matches!(self, C::Connect | C::ConnAck | C::Disconnect),
            0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => self == C::ConnAck,
            0x15 | 0x16 => matches!(self, C::Connect | C::ConnAck | C::Auth),
            0x17 | 0x19 => self == C::Connect,
            0x18 => self == C::Will,
            0x1C => matches!(self, C::ConnAck | C::Disconnect),
            0x1F => !matches!(
                self,
                C::Connect | C::Will | C::Publish | C::Subscribe | C::Unsubscribe
            ),
            0x21 | 0x22 | 0x27 => matches!(self, C::Connect | C::ConnAck),
            0x23 => self == C::Publish,
            0x26 => true,
            _ => false,
        }
    }
}

impl Properties {
    /// True when no property is set: such a set is carried as `None`.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// Number of bytes `value` takes as a Variable Byte Integer (spec 1.5.5).
pub fn variable_byte_integer_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` as a Variable Byte Integer in its shortest form ([MQTT-1.5.5-1]);
/// callers keep `value` within [`MAX_VARIABLE_BYTE_INTEGER`].
#[inline]
pub(super) fn put_variable_byte_integer(dst: &mut BytesMut, value: usize) {
    let mut len = value;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        dst.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

/// Reads a property set: its Variable Byte Integer length, then the properties.
/// An empty set gives `None`.
pub(super) fn read_properties(
    r: &mut Reader,
    ctx: PropertyContext,
) -> Result<Option<Box<Properties>>, Error> {
    let len = r.variable_byte_integer("property length")? as usize;
    if len == 0 {
        return Ok(None);
    }
    let inner = r.sub_reader(len)?;
    Ok(Some(Box::new(read_property_list(inner, ctx)?)))
}

/// Reads properties until `r` is empty, then checks the set.
fn read_property_list(mut r: Reader, ctx: PropertyContext) -> Result<Properties, Error> {
    let mut p = Properties::default();
    let packet = ctx.packet();
    while !r.is_empty() {
        // The identifier is a Variable Byte Integer, but every defined one fits in one
        // byte: a longer encoding is an identifier the packet cannot carry anyway.
        let id = r.variable_byte_integer("property identifier")?;
        let id = match u8::try_from(id) {
            Ok(id) if ctx.allows(id) => id,
            _ => return Err(Error::UnknownProperty { packet, id }),
        };
        read_property(&mut r, &mut p, id, packet)?;
    }
    check_properties(&p, ctx)?;
    Ok(p)
}

/// Sets `slot` once: a second occurrence is a Protocol Error (spec 2.2.2.2, and each
/// property's "It is a Protocol Error to include ... more than once").
fn once<T>(slot: &mut Option<T>, value: T, packet: &'static str, id: u8) -> Result<(), Error> {
    if slot.is_some() {
        return Err(Error::DuplicateProperty {
            packet,
            name: property_name(id),
        });
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property that may only be 0 or 1 (anything else is a Protocol Error).
fn flag(r: &mut Reader, packet: &'static str, id: u8) -> Result<bool, Error> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(invalid(packet, id, "MQTT-2.2.2", "is not 0 or 1")),
    }
}

fn invalid(packet: &'static str, id: u8, rule: &'static str, what: &'static str) -> Error {
    Error::InvalidProperty {
        packet,
        name: property_name(id),
        rule,
        what,
        reason: ReasonCode::PROTOCOL_ERROR,
    }
}

fn read_property(
    r: &mut Reader,
    p: &mut Properties,
    id: u8,
    packet: &'static str,
) -> Result<(), Error> {
    let name = property_name(id);
    match id {
        0x01 => {
            let v = r.u8()?;
            if v > 1 {
                return Err(invalid(packet, id, "MQTT-3.3.2", "is not 0 or 1"));
            }
            once(&mut p.payload_format_indicator, v, packet, id)
        }
        0x02 => {
            let v = r.u32()?;
            once(&mut p.message_expiry_interval, v, packet, id)
        }
        0x03 => {
            let v = r.string(name)?;
            once(&mut p.content_type, v, packet, id)
        }
        0x08 => {
            let v = r.string(name)?;
            if v.is_empty() || v.contains(['+', '#']) {
                return Err(invalid(packet, id, "MQTT-3.3.2-14", "is not a topic name"));
            }
            once(&mut p.response_topic, v, packet, id)
        }
        0x09 => {
            let v = r.binary()?;
            once(&mut p.correlation_data, v, packet, id)
        }
        0x0B => {
            let v = r.variable_byte_integer(name)?;
            if v == 0 {
                return Err(invalid(packet, id, "MQTT-3.8.2", "is 0"));
            }
            p.subscription_identifiers.push(v);
            Ok(())
        }
        0x11 => {
            let v = r.u32()?;
            once(&mut p.session_expiry_interval, v, packet, id)
        }
        0x12 => {
            let v = r.string(name)?;
            once(&mut p.assigned_client_identifier, v, packet, id)
        }
        0x13 => {
            let v = r.u16()?;
            once(&mut p.server_keep_alive, v, packet, id)
        }
        0x15 => {
            let v = r.string(name)?;
            once(&mut p.authentication_method, v, packet, id)
        }
        0x16 => {
            let v = r.binary()?;
            once(&mut p.authentication_data, v, packet, id)
        }
        0x17 => {
            let v = flag(r, packet, id)?;
            once(&mut p.request_problem_information, v, packet, id)
        }
        0x18 => {
            let v = r.u32()?;
            once(&mut p.will_delay_interval, v, packet, id)
        }
        0x19 => {
            let v = flag(r, packet, id)?;
            once(&mut p.request_response_information, v, packet, id)
        }
        0x1A => {
            let v = r.string(name)?;
            once(&mut p.response_information, v, packet, id)
        }
        0x1C => {
            let v = r.string(name)?;
            once(&mut p.server_reference, v, packet, id)
        }
        0x1F => {
            let v = r.string(name)?;
            once(&mut p.reason_string, v, packet, id)
        }
        0x21 => {
            let v = r.u16()?;
            if v == 0 {
                return Err(invalid(packet, id, "MQTT-3.1.2", "is 0"));
            }
            once(&mut p.receive_maximum, v, packet, id)
        }
        0x22 => {
            let v = r.u16()?;
            once(&mut p.topic_alias_maximum, v, packet, id)
        }
        0x23 => {
            let v = r.u16()?;
            if v == 0 {
                return Err(Error::InvalidProperty {
                    packet,
                    name,
                    rule: "MQTT-3.3.2-8",
                    what: "is 0",
                    reason: ReasonCode::TOPIC_ALIAS_INVALID,
                });
            }
            once(&mut p.topic_alias, v, packet, id)
        }
        0x24 => {
            let v = r.u8()?;
            if v > 1 {
                return Err(invalid(packet, id, "MQTT-3.2.2", "is not 0 or 1"));
            }
            once(&mut p.maximum_qos, v, packet, id)
        }
        0x25 => {
            let v = flag(r, packet, id)?;
            once(&mut p.retain_available, v, packet, id)
        }
        0x26 => {
            let key = r.string("user property name")?;
            let value = r.string("user property value")?;
            p.user_properties.push((key, value));
            Ok(())
        }
        0x27 => {
            let v = r.u32()?;
            if v == 0 {
                return Err(invalid(packet, id, "MQTT-3.1.2", "is 0"));
            }
            once(&mut p.maximum_packet_size, v, packet, id)
        }
        0x28 => {
            let v = flag(r, packet, id)?;
            once(&mut p.wildcard_subscription_available, v, packet, id)
        }
        0x29 => {
            let v = flag(r, packet, id)?;
            once(&mut p.subscription_identifier_available, v, packet, id)
        }
        0x2A => {
            let v = flag(r, packet, id)?;
            once(&mut p.shared_subscription_available, v, packet, id)
        }
        // `read_properties` let through only identifiers the context allows.
        _ => Err(Error::UnknownProperty {
            packet,
            id: u32::from(id),
        }),
    }
}

/// Rules over the whole set, after every property has been read.
fn check_properties(p: &Properties, ctx: PropertyContext) -> Result<(), Error> {
    let packet = ctx.packet();
    if ctx == PropertyContext::Subscribe && p.subscription_identifiers.len() > 1 {
        return Err(Error::DuplicateProperty {
            packet,
            name: property_name(0x0B),
        });
    }
    // Authentication Data without a method is a Protocol Error (3.1.2.11.10, 3.2.2.3.18).
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(invalid(
            packet,
            0x16,
            "MQTT-3.1.2",
            "is present without an Authentication Method",
        ));
    }
    Ok(())
}

/// The spec's name of property `id`.
pub fn property_name(id: u8) -> &'static str {
    match id {
        0x01 => "Payload Format Indicator",
        0x02 => "Message Expiry Interval",
        0x03 => "Content Type",
        0x08 => "Response Topic",
        0x09 => "Correlation Data",
        0x0B => "Subscription Identifier",
        0x11 => "Session Expiry Interval",
        0x12 => "Assigned Client Identifier",
        0x13 => "Server Keep Alive",
        0x15 => "Authentication Method",
        0x16 => "Authentication Data",
        0x17 => "Request Problem Information",
        0x18 => "Will Delay Interval",
        0x19 => "Request Response Information",
        0x1A => "Response Information",
        0x1C => "Server Reference",
        0x1F => "Reason String",
        0x21 => "Receive Maximum",
        0x22 => "Topic Alias Maximum",
        0x23 => "Topic Alias",
        0x24 => "Maximum QoS",
        0x25 => "Retain Available",
        0x26 => "User Property",
        0x27 => "Maximum Packet Size",
        0x28 => "Wildcard Subscription Available",
        0x29 => "Subscription Identifier Available",
        0x2A => "Shared Subscription Available",
        _ => "unknown property",
    }
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Checks a string property's length for encoding.
fn text_len(id: u8, s: &[u8]) -> Result<usize, Error> {
    if s.len() > MAX_STRING_LEN {
        Err(Error::StringTooLong(property_name(id)))
    } else {
        Ok(3 + s.len())
    }
}

impl Properties {
    /// Length of the encoded properties, without the property length in front; also
    /// checks that every property may appear in `ctx` and that string lengths fit.
    pub fn encoded_len(&self, ctx: PropertyContext) -> Result<usize, Error> {
        let mut len = 0;
        let mut add = |id: u8, size: usize| -> Result<(), Error> {
            if !ctx.allows(id) {
                return Err(Error::UnknownProperty {
                    packet: ctx.packet(),
                    id: u32::from(id),
                });
            }
            len += size;
            Ok(())
        };
        if self.payload_format_indicator.is_some() {
            add(0x01, 2)?;
        }
        if self.message_expiry_interval.is_some() {
            add(0x02, 5)?;
        }
        if let Some(s) = &self.content_type {
            add(0x03, text_len(0x03, s.as_bytes())?)?;
        }
        if let Some(s) = &self.response_topic {
            add(0x08, text_len(0x08, s.as_bytes())?)?;
        }
        if let Some(b) = &self.correlation_data {
            add(0x09, text_len(0x09, b)?)?;
        }
        for &id in &self.subscription_identifiers {
            if id == 0 || id > MAX_VARIABLE_BYTE_INTEGER {
                return Err(invalid(
                    ctx.packet(),
                    0x0B,
                    "MQTT-3.8.2",
                    "is outside 1..=268435455",
                ));
            }
            add(0x0B, 1 + variable_byte_integer_len(id as usize))?;
        }
        if self.session_expiry_interval.is_some() {
            add(0x11, 5)?;
        }
        if let Some(s) = &self.assigned_client_identifier {
            add(0x12, text_len(0x12, s.as_bytes())?)?;
        }
        if self.server_keep_alive.is_some() {
            add(0x13, 3)?;
        }
        if let Some(s) = &self.authentication_method {
            add(0x15, text_len(0x15, s.as_bytes())?)?;
        }
        if let Some(b) = &self.authentication_data {
            add(0x16, text_len(0x16, b)?)?;
        }
        if self.request_problem_information.is_some() {
            add(0x17, 2)?;
        }
        if self.will_delay_interval.is_some() {
            add(0x18, 5)?;
        }
        if self.request_response_information.is_some() {
            add(0x19, 2)?;
        }
        if let Some(s) = &self.response_information {
            add(0x1A, text_len(0x1A, s.as_bytes())?)?;
        }
        if let Some(s) = &self.server_reference {
            add(0x1C, text_len(0x1C, s.as_bytes())?)?;
        }
        if let Some(s) = &self.reason_string {
            add(0x1F, text_len(0x1F, s.as_bytes())?)?;
        }
        if self.receive_maximum.is_some() {
            add(0x21, 3)?;
        }
        if self.topic_alias_maximum.is_some() {
            add(0x22, 3)?;
        }
        if self.topic_alias.is_some() {
            add(0x23, 3)?;
        }
        if self.maximum_qos.is_some() {
            add(0x24, 2)?;
        }
        if self.retain_available.is_some() {
            add(0x25, 2)?;
        }
        for (k, v) in &self.user_properties {
            let size = text_len(0x26, k.as_bytes())? + text_len(0x26, v.as_bytes())? - 1;
            add(0x26, size)?;
        }
        if self.maximum_packet_size.is_some() {
            add(0x27, 5)?;
        }
        if self.wildcard_subscription_available.is_some() {
            add(0x28, 2)?;
        }
        if self.subscription_identifier_available.is_some() {
            add(0x29, 2)?;
        }
        if self.shared_subscription_available.is_some() {
            add(0x2A, 2)?;
        }
        if len > MAX_REMAINING_LENGTH {
            return Err(Error::TooLargeToEncode(len));
        }
        Ok(len)
    }

    /// Writes the properties (without their length); `encoded_len` was checked first.
    pub(super) fn put(&self, dst: &mut BytesMut) {
        if let Some(v) = self.payload_format_indicator {
            dst.put_u8(0x01);
            dst.put_u8(v);
        }
        if let Some(v) = self.message_expiry_interval {
            dst.put_u8(0x02);
            dst.put_u32(v);
        }
        put_text(dst, 0x03, self.content_type.as_deref().map(str::as_bytes));
        put_text(dst, 0x08, self.response_topic.as_deref().map(str::as_bytes));
        put_text(dst, 0x09, self.correlation_data.as_deref());
        for &id in &self.subscription_identifiers {
            dst.put_u8(0x0B);
            put_variable_byte_integer(dst, id as usize);
        }
        if let Some(v) = self.session_expiry_interval {
            dst.put_u8(0x11);
            dst.put_u32(v);
        }
        put_text(
            dst,
            0x12,
            self.assigned_client_identifier
                .as_deref()
                .map(str::as_bytes),
        );
        if let Some(v) = self.server_keep_alive {
            dst.put_u8(0x13);
            dst.put_u16(v);
        }
        put_text(
            dst,
            0x15,
            self.authentication_method.as_deref().map(str::as_bytes),
        );
        put_text(dst, 0x16, self.authentication_data.as_deref());
        put_flag(dst, 0x17, self.request_problem_information);
        if let Some(v) = self.will_delay_interval {
            dst.put_u8(0x18);
            dst.put_u32(v);
        }
        put_flag(dst, 0x19, self.request_response_information);
        put_text(
            dst,
            0x1A,
            self.response_information.as_deref().map(str::as_bytes),
        );
        put_text(
            dst,
            0x1C,
            self.server_reference.as_deref().map(str::as_bytes),
        );
        put_text(dst, 0x1F, self.reason_string.as_deref().map(str::as_bytes));
        for (id, v) in [
            (0x21, self.receive_maximum),
            (0x22, self.topic_alias_maximum),
            (0x23, self.topic_alias),
        ] {
            if let Some(v) = v {
                dst.put_u8(id);
                dst.put_u16(v);
            }
        }
        if let Some(v) = self.maximum_qos {
            dst.put_u8(0x24);
            dst.put_u8(v);
        }
        put_flag(dst, 0x25, self.retain_available);
        for (k, v) in &self.user_properties {
            dst.put_u8(0x26);
            put_string(dst, k.as_bytes());
            put_string(dst, v.as_bytes());
        }
        if let Some(v) = self.maximum_packet_size {
            dst.put_u8(0x27);
            dst.put_u32(v);
        }
        put_flag(dst, 0x28, self.wildcard_subscription_available);
        put_flag(dst, 0x29, self.subscription_identifier_available);
        put_flag(dst, 0x2A, self.shared_subscription_available);
    }

    /// The encoded properties, without their length prefix. The broker encodes a
    /// message's properties once with this and shares the bytes between the PUBLISH
    /// packets of all its 5.0 subscribers (see
    /// [`encode_publish_header_v5`](super::encode_publish_header_v5)).
    pub fn to_bytes(&self, ctx: PropertyContext) -> Result<Bytes, Error> {
        let len = self.encoded_len(ctx)?;
        let mut dst = BytesMut::with_capacity(len);
        self.put(&mut dst);
        Ok(dst.freeze())
    }
}

impl Properties {
    /// The inverse of [`Properties::to_bytes`]: reads a set stored without its length
    /// prefix (a routed message's `properties`), with the same checks as on the wire.
    pub fn from_bytes(bytes: Bytes, ctx: PropertyContext) -> Result<Properties, Error> {
        read_property_list(
            Reader {
                packet: ctx.packet(),
                body: bytes,
            },
            ctx,
        )
    }
}

fn put_text(dst: &mut BytesMut, id: u8, value: Option<&[u8]>) {
    if let Some(v) = value {
        dst.put_u8(id);
        put_string(dst, v);
    }
}

fn put_flag(dst: &mut BytesMut, id: u8, value: Option<bool>) {
    if let Some(v) = value {
        dst.put_u8(id);
        dst.put_u8(u8::from(v));
    }
}

/// Size of an optional property set without its length prefix (0 for `None`).
pub(super) fn properties_len(
    props: Option<&Properties>,
    ctx: PropertyContext,
) -> Result<usize, Error> {
    match props {
        Some(p) => p.encoded_len(ctx),
        None => Ok(0),
    }
}

/// Writes an optional property set behind its length prefix; `len` is what
/// [`properties_len`] returned for it.
pub(super) fn put_properties(dst: &mut BytesMut, props: Option<&Properties>, len: usize) {
    put_variable_byte_integer(dst, len);
    if let Some(p) = props {
        p.put(dst);
    }
}
