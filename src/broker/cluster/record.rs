//! The bytes of a session record in the cluster's sessions bucket (and of a handover's
//! answer, which is a record too): see [`super::sessions`] for what the records are for.
//!
//! A record starts with `P` and a format number; every field after it is big-endian,
//! byte strings as a `u32` length and the bytes. The formats, each read by the nodes
//! that came after it:
//!
//! 1. owner, clean, subscriptions (QoS, filter), pending messages;
//! 2. adds the will, the Session Expiry Interval and when the client went offline;
//! 3. adds the checkpoint ([`Cut`]) before the offline time;
//! 4. is 3 with each subscription's MQTT 5.0 options: its QoS byte becomes a 5.0
//!    SUBSCRIBE's Subscription Options byte (QoS in bits 0-1, No Local 0x04, Retain As
//!    Published 0x08, Retain Handling 0x30), with 0x80 set when a `u32` Subscription
//!    Identifier follows it; and each pending message (a handover's answer) ends with
//!    its 5.0 properties (the identifiers of the subscriptions it matched among them):
//!    0 none, 1 the property bytes, 2 the bytes and their expiry (Unix ms, `u64`).
//!
//! Records change only at SUBSCRIBE, UNSUBSCRIBE, CONNECT and disconnect, never per
//! message, so a byte and an identifier per subscription cost nothing that matters.
//! A record with neither (every 3.1/3.1.1 session, and 5.0 ones that use no option
//! and hand over no message with properties) is still written as format 3, byte for
//! byte what the nodes before format 4 wrote: in a cluster being upgraded one node at
//! a time, those nodes go on reading every record but the few that carry options.
//!
//! What a node does with a record it cannot read ([`Unreadable`]): a newer format, or
//! bytes it did not write. The rule is that stored state is never overwritten by a
//! broker that could not read it, so from format 4 on a node leaves such a record
//! alone: a persistent CONNECT of its client is refused (CONNACK 0x03, the record
//! named in the log) rather than claimed over it, its subscriptions are not rewritten,
//! and the survivors of a dead node neither adopt nor expire it. Nodes of format 3 and
//! before did not follow the rule on one path: a CONNECT that met a record they could
//! not read replaced it ("unreadable session record replaced"), so a format 4 record
//! reaching such a node through a CONNECT would lose the session's subscriptions.
//!
//! Hence a rolling upgrade: each node advertises the newest format it reads in its
//! liveness key (liveness.rs), and a record is written in format 4 only while every
//! live node reads it ([`Record::encode_for`]); while a node of the previous release is
//! live, a record that needs format 4 is written as format 3 without what format 3
//! cannot carry (the 5.0 subscription options, kept in the owning node's memory and
//! written again at the session's next record change once every node reads format 4,
//! and the properties of a handover's pending messages).

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use tracing::debug;

use super::cut::Cut;
use crate::broker::router::Session;
use crate::broker::session::{Message, MessageProperties, SubOpts};
use crate::broker::store::{SessionSnapshot, StoredMessage};
use crate::codec::{Properties, PropertyContext, QoS};

const MAGIC: u8 = b'P';
/// The first format: no will, expiry or offline time.
const V1: u8 = 1;
/// The second: no checkpoint.
const V2: u8 = 2;
/// The third: subscriptions without options; still written when none has any.
const V3: u8 = 3;
/// The newest this code reads and writes: subscriptions with their options.
const V4: u8 = 4;
/// The newest format this node reads and writes, advertised in its liveness key.
pub(super) const NEWEST: u8 = V4;
/// What a node that advertises no format reads: those of the release before format 4
/// put a bare `up` in their liveness key.
pub(super) const UNADVERTISED: u8 = V3;
/// In a format 4 subscription's options byte: a Subscription Identifier follows.
const HAS_ID: u8 = 0x80;

/// Why a record was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("session record format {0} is newer than this node's ({V4}): written by a newer pyo3mq node")]
    Newer(u8),
    #[error("not a session record this node can read (truncated or corrupt)")]
    Corrupt,
}

/// A connected client's will as its record keeps it, so that the survivors of its node
/// can publish it if the node dies (authorized when the client connected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5.0 Will Delay Interval, seconds (0: none).
    pub delay: u32,
}

impl Will {
    pub fn of(msg: &Message, delay: u32) -> Will {
        Will {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: msg.retain,
            delay,
        }
    }

    pub(super) fn message(&self, client_id: &ByteString) -> Arc<Message> {
        Arc::new(Message {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            publisher: client_id.clone(),
            properties: None,
            mark: crate::broker::session::StreamMark::NONE,
        })
    }
}

/// One subscription of a record: its filter, granted QoS and 5.0 options (the default
/// ones for 3.1/3.1.1, and for every subscription of a format 3 record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sub {
    pub filter: ByteString,
    pub qos: QoS,
    pub opts: SubOpts,
}

/// The subscriptions of a session on this node, with their options.
pub(super) fn subscriptions_of(session: &Session) -> Vec<Sub> {
    let state = session.state.lock();
    state
        .subscriptions
        .iter()
        .map(|(filter, qos)| Sub {
            filter: filter.clone(),
            qos: *qos,
            opts: state.sub_opts(filter),
        })
        .collect()
}

/// One client's record in the bucket, and what a handover answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    pub owner: u64,
    /// The session ends with its connection (3.1.1 Clean Session 1, 5.0 Session Expiry
    /// Interval 0).
    pub clean: bool,
    pub subscriptions: Vec<Sub>,
    pub pending: Vec<StoredMessage>,
    /// The will to publish if the client's node dies: that of a connected client, or
    /// one still waiting out its delay.
    pub will: Option<Will>,
    /// MQTT 5.0 Session Expiry Interval in seconds (`u32::MAX`: never); `None` for a
    /// 3.1.1 session, which expires per `persistent_client_expiration`.
    pub expiry: Option<u32>,
    /// Unix time (seconds) the client went offline; 0 while it is connected.
    pub offline_since: u64,
    /// Where the session left its node (handover.rs): in a handover's answer, and in
    /// the record of a session whose client went offline, so that the stream messages
    /// its node had not routed to it come with it.
    pub checkpoint: Option<Cut>,
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

fn qos_of(byte: u8) -> Result<QoS, Unreadable> {
    match byte {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        2 => Ok(QoS::ExactlyOnce),
        _ => Err(Unreadable::Corrupt),
    }
}

fn need(bytes: &Bytes, len: usize) -> Result<(), Unreadable> {
    if bytes.remaining() < len {
        Err(Unreadable::Corrupt)
    } else {
        Ok(())
    }
}

fn take_bytes(bytes: &mut Bytes) -> Result<Bytes, Unreadable> {
    need(bytes, 4)?;
    let len = usize::try_from(bytes.get_u32()).map_err(|_| Unreadable::Corrupt)?;
    need(bytes, len)?;
    Ok(bytes.split_to(len))
}

fn take_string(bytes: &mut Bytes) -> Result<ByteString, Unreadable> {
    ByteString::try_from(take_bytes(bytes)?).map_err(|_| Unreadable::Corrupt)
}

/// One subscription of a format 4 record: options byte, identifier, filter.
fn take_sub_v4(bytes: &mut Bytes) -> Result<Sub, Unreadable> {
    need(bytes, 1)?;
    let byte = bytes.get_u8();
    let qos = qos_of(byte & 0b11)?;
    let id = if byte & HAS_ID != 0 {
        need(bytes, 4)?;
        Some(NonZeroU32::new(bytes.get_u32()).ok_or(Unreadable::Corrupt)?)
    } else {
        None
    };
    let opts = SubOpts::from_stored(byte & !HAS_ID & !0b11, id).ok_or(Unreadable::Corrupt)?;
    Ok(Sub {
        filter: take_string(bytes)?,
        qos,
        opts,
    })
}

/// A pending message's 5.0 properties in format 4 (see the module doc).
fn put_properties(out: &mut BytesMut, properties: Option<&MessageProperties>) {
    match properties {
        None => out.put_u8(0),
        Some(props) => {
            let expires = props.expires_at();
            out.put_u8(if expires.is_some() { 2 } else { 1 });
            put_bytes(out, props.bytes());
            if let Some(ms) = expires {
                out.put_u64(ms);
            }
        }
    }
}

/// The inverse of [`put_properties`]; checked as a PUBLISH's are (they came from NATS).
fn take_properties(bytes: &mut Bytes) -> Result<Option<MessageProperties>, Unreadable> {
    need(bytes, 1)?;
    let kind = bytes.get_u8();
    if kind == 0 {
        return Ok(None);
    }
    let props = take_bytes(bytes)?;
    let expires = match kind {
        1 => None,
        2 => {
            need(bytes, 8)?;
            Some(bytes.get_u64())
        }
        _ => return Err(Unreadable::Corrupt),
    };
    Properties::from_bytes(props.clone(), PropertyContext::Publish)
        .map_err(|_| Unreadable::Corrupt)?;
    Ok(Some(MessageProperties::restored(props, expires)))
}

fn put_sub(out: &mut BytesMut, sub: &Sub, v4: bool) {
    if v4 {
        let id = sub.opts.id;
        out.put_u8(sub.qos as u8 | sub.opts.options_byte() | if id.is_some() { HAS_ID } else { 0 });
        if let Some(id) = id {
            out.put_u32(id.get());
        }
    } else {
        out.put_u8(sub.qos as u8);
    }
    put_bytes(out, sub.filter.as_bytes());
}

impl Record {
    /// The record in this node's newest format (tests: what `encode_for` writes once
    /// every node reads it).
    #[cfg(test)]
    pub(super) fn encode(&self) -> Bytes {
        self.encode_for(NEWEST)
    }

    /// The record's bytes for a cluster whose live nodes all read formats up to
    /// `readable` ([`super::Cluster::records_readable`]): format 4 only when the record
    /// needs it and they all read it, else format 3, leaving out what format 3 cannot
    /// carry (5.0 subscription options and pending messages' properties).
    pub(super) fn encode_for(&self, readable: u8) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        let needs_v4 = self.subscriptions.iter().any(|sub| !sub.opts.is_default())
            || self.pending.iter().any(|m| m.msg.properties.is_some());
        let v4 = needs_v4 && readable >= V4;
        if needs_v4 && !v4 {
            debug!(
                owner = format_args!("{:016x}", self.owner),
                "cluster: session record written in format {V3}, without its MQTT 5.0 \
                 subscription options and pending messages' properties: a live node reads \
                 no format above {readable} (a rolling upgrade in progress)"
            );
        }
        out.put_slice(&[MAGIC, if v4 { V4 } else { V3 }]);
        out.put_u64(self.owner);
        out.put_u8(u8::from(self.clean));
        out.put_u32(u32::try_from(self.subscriptions.len()).unwrap_or(u32::MAX));
        for sub in &self.subscriptions {
            put_sub(&mut out, sub, v4);
        }
        out.put_u32(u32::try_from(self.pending.len()).unwrap_or(u32::MAX));
        for m in &self.pending {
            out.put_u8(m.qos as u8);
            out.put_u8(u8::from(m.retain));
            out.put_u16(m.pkid.unwrap_or(0));
            out.put_u8(u8::from(m.released));
            out.put_u8(m.msg.qos as u8);
            put_bytes(&mut out, m.msg.topic.as_bytes());
            put_bytes(&mut out, &m.msg.payload);
            if v4 {
                put_properties(&mut out, m.msg.properties.as_ref());
            }
        }
        match &self.will {
            None => out.put_u8(0),
            Some(will) => {
                out.put_u8(1);
                out.put_u8(will.qos as u8);
                out.put_u8(u8::from(will.retain));
                out.put_u32(will.delay);
                put_bytes(&mut out, will.topic.as_bytes());
                put_bytes(&mut out, &will.payload);
            }
        }
        match self.expiry {
            None => out.put_u8(0),
            Some(secs) => {
                out.put_u8(1);
                out.put_u32(secs);
            }
        }
        // Before the last field, which stays the offline time.
        match &self.checkpoint {
            None => out.put_u8(0),
            Some(cut) => {
                out.put_u8(1);
                cut.encode(&mut out);
            }
        }
        out.put_u64(self.offline_since);
        out.freeze()
    }

    /// `None` for bytes this code cannot read ([`Record::read`] says why).
    pub(super) fn decode(bytes: Bytes) -> Option<Record> {
        Record::read(bytes).ok()
    }

    /// Reads a record of any format up to 4.
    pub(super) fn read(mut bytes: Bytes) -> Result<Record, Unreadable> {
        need(&bytes, 2)?;
        let (magic, format) = (bytes.get_u8(), bytes.get_u8());
        if magic != MAGIC || format < V1 {
            return Err(Unreadable::Corrupt);
        }
        if format > V4 {
            return Err(Unreadable::Newer(format));
        }
        need(&bytes, 13)?;
        let owner = bytes.get_u64();
        let clean = bytes.get_u8() != 0;
        let count = bytes.get_u32();
        let mut subscriptions = Vec::new();
        for _ in 0..count {
            subscriptions.push(if format == V4 {
                take_sub_v4(&mut bytes)?
            } else {
                need(&bytes, 1)?;
                let qos = qos_of(bytes.get_u8())?;
                Sub {
                    filter: take_string(&mut bytes)?,
                    qos,
                    // Format 3 and before: the 3.1.1 behaviour.
                    opts: SubOpts::default(),
                }
            });
        }
        need(&bytes, 4)?;
        let count = bytes.get_u32();
        let mut pending = Vec::new();
        for _ in 0..count {
            need(&bytes, 6)?;
            let qos = qos_of(bytes.get_u8())?;
            let retain = bytes.get_u8() != 0;
            let pkid = Some(bytes.get_u16()).filter(|&p| p != 0);
            let released = bytes.get_u8() != 0;
            let published = qos_of(bytes.get_u8())?;
            let topic = take_string(&mut bytes)?;
            let payload = take_bytes(&mut bytes)?;
            let properties = if format == V4 {
                take_properties(&mut bytes)?
            } else {
                None
            };
            pending.push(StoredMessage {
                msg: Arc::new(Message {
                    topic,
                    payload,
                    qos: published,
                    retain,
                    publisher: ByteString::new(),
                    properties,
                    mark: crate::broker::session::StreamMark::NONE,
                }),
                qos,
                retain,
                pkid,
                released,
            });
        }
        let (mut will, mut expiry, mut offline_since, mut checkpoint) = (None, None, 0, None);
        if format >= V2 {
            need(&bytes, 1)?;
            if bytes.get_u8() != 0 {
                need(&bytes, 6)?;
                let qos = qos_of(bytes.get_u8())?;
                let retain = bytes.get_u8() != 0;
                let delay = bytes.get_u32();
                will = Some(Will {
                    topic: take_string(&mut bytes)?,
                    payload: take_bytes(&mut bytes)?,
                    qos,
                    retain,
                    delay,
                });
            }
            need(&bytes, 1)?;
            if bytes.get_u8() != 0 {
                need(&bytes, 4)?;
                expiry = Some(bytes.get_u32());
            }
            if format >= V3 {
                need(&bytes, 1)?;
                if bytes.get_u8() != 0 {
                    checkpoint = Some(Cut::decode(&mut bytes).ok_or(Unreadable::Corrupt)?);
                }
            }
            need(&bytes, 8)?;
            offline_since = bytes.get_u64();
        }
        if !bytes.is_empty() {
            return Err(Unreadable::Corrupt);
        }
        Ok(Record {
            owner,
            clean,
            subscriptions,
            pending,
            will,
            expiry,
            offline_since,
            checkpoint,
        })
    }

    /// The session as a node takes it in: offline, with its subscriptions' options,
    /// its Session Expiry Interval and, for one whose client left, when it did (its
    /// expiry counts from then, as in the record).
    pub(super) fn snapshot(self, client_id: &ByteString) -> SessionSnapshot {
        let subscription_options = self
            .subscriptions
            .iter()
            .filter(|sub| !sub.opts.is_default())
            .map(|sub| (sub.filter.clone(), sub.opts))
            .collect();
        SessionSnapshot {
            client_id: client_id.clone(),
            disconnected_at: Some(self.offline_since).filter(|&secs| secs != 0),
            session_expiry: self.expiry,
            subscriptions: self
                .subscriptions
                .into_iter()
                .map(|sub| (sub.filter, sub.qos))
                .collect(),
            subscription_options,
            pending: self.pending,
        }
    }

    /// The subscriptions of a session a node gave up (its snapshot), for the record.
    pub(super) fn subscriptions_of_snapshot(snapshot: &SessionSnapshot) -> Vec<Sub> {
        let opts_of = |filter: &ByteString| {
            snapshot
                .subscription_options
                .iter()
                .find(|(f, _)| f == filter)
                .map_or(SubOpts::default(), |(_, opts)| *opts)
        };
        snapshot
            .subscriptions
            .iter()
            .map(|(filter, qos)| Sub {
                filter: filter.clone(),
                qos: *qos,
                opts: opts_of(filter),
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "record/tests.rs"]
mod tests;
