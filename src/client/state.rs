//! The client's protocol state machine: pure, no I/O and no clock reads (the caller passes
//! `now`), in the style of rumqtt's `MqttState`. The event loop feeds it packets and
//! connection events; the handle feeds it the application's requests. It answers by
//! encoding packets into its write buffer and queueing events for the application.
//!
//! - this file: the events it reports, the state itself, and the outgoing side
//!   (publishing, the inflight window, SUBSCRIBE/UNSUBSCRIBE requests);
//! - [`inbound`]: the packets the server sends;
//! - [`lifecycle`]: a connection coming up (resends, restoring subscriptions), being
//!   lost, and the client finishing.

mod inbound;
mod lifecycle;
mod v5;

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::time::Instant;

use crate::codec::{self, encode_publish_header, encode_publish_header_v5, Packet, QoS};
use crate::qos::{InboundQos2, PacketIds};

use super::error::ClientError;
use super::store::{Change, StoredPublish, StoredSession};

/// Bookkeeping bytes charged per publish that waits for the inflight window.
const PENDING_OVERHEAD: usize = 64;

// ---------------------------------------------------------------------------------------
// What the state machine reports
// ---------------------------------------------------------------------------------------

/// The connection's state as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectionState {
    /// Not connected yet (before the first CONNACK, including retries of a first connect).
    Connecting,
    Connected,
    /// The connection was lost; reconnecting (only with a reconnect policy).
    Reconnecting,
    /// For good: closed by the user, or lost without (or beyond) reconnect.
    Closed,
}

/// A state transition, reported in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub state: ConnectionState,
    pub session_present: bool,
    pub error: Option<ClientError>,
}

/// How a request identified by a token ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Publish completed (acknowledged / PUBCOMP), unsubscribe acknowledged, disconnected.
    Done,
    /// CONNACK accepted; carries the session present flag.
    Connected(bool),
    /// SUBACK return codes (0, 1, 2 or 0x80; 5.0's reason codes), one per filter.
    Granted(Vec<u8>),
    /// MQTT 5.0: UNSUBACK reason codes, one per filter.
    Unsubscribed(Vec<u8>),
    Failed(ClientError),
}

/// A message received from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    /// 0 for QoS 0.
    pub packet_id: u16,
    /// MQTT 5.0 PUBLISH properties (`None` in 3.1.1 and when there are none).
    pub properties: Option<Box<codec::Properties>>,
}

/// What a submitted publish or request became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// QoS 0: handed over (in the write buffer, or queued in order behind QoS 1/2).
    Sent,
    /// Completion will be reported with this token.
    Token(u64),
    /// The write buffer is full (or, for a request, no packet id is free): try again after
    /// the next "room" event.
    Full,
    /// The client is not started or is closed.
    Closed,
}

/// Everything queued for the application since the last drain.
#[derive(Debug, Default)]
pub struct Drained {
    pub completions: Vec<(u64, Outcome)>,
    pub states: Vec<StateChange>,
    pub messages: Vec<Incoming>,
    /// The write buffer drained after a [`Submitted::Full`]: publishing can resume.
    pub room: bool,
}

// ---------------------------------------------------------------------------------------
// The state
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// PUBLISH sent (or to be sent), PUBACK / PUBREC awaited.
    AwaitAck,
    /// PUBREL sent, PUBCOMP awaited.
    AwaitComp,
}

/// An outgoing QoS 1/2 publish holding a packet id.
struct Flight {
    token: u64,
    /// Order of publication in the session (the session store's key).
    seq: u64,
    packet_id: u16,
    qos: QoS,
    retain: bool,
    topic: ByteString,
    payload: Bytes,
    stage: Stage,
    /// Written to some connection already: a resend carries DUP=1.
    sent: bool,
    /// MQTT 5.0: the encoded PUBLISH properties (`Some`, maybe empty, on a 5.0
    /// connection; `None` is the 3.1.1 encoding).
    props: Option<Bytes>,
}

/// An outgoing QoS 1/2 publish waiting for room in the inflight window.
struct PendingPublish {
    token: u64,
    /// Order of publication in the session; 0 for QoS 0 (never stored).
    seq: u64,
    qos: QoS,
    retain: bool,
    topic: ByteString,
    payload: Bytes,
    /// As [`Flight::props`].
    props: Option<Bytes>,
}

impl PendingPublish {
    fn cost(&self) -> usize {
        self.topic.len()
            + self.payload.len()
            + self.props.as_ref().map_or(0, Bytes::len)
            + PENDING_OVERHEAD
    }

    fn stored(&self) -> Change {
        Change::Put(StoredPublish {
            seq: self.seq,
            packet_id: None,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            released: false,
            sent: false,
        })
    }
}

impl Flight {
    /// Publish `p` in the inflight window under `packet_id`: both a new one leaving the
    /// queue and one restored from the store (at its stored `stage`) take this form.
    fn new(p: PendingPublish, packet_id: u16, stage: Stage, sent: bool) -> Flight {
        Flight {
            token: p.token,
            seq: p.seq,
            packet_id,
            qos: p.qos,
            retain: p.retain,
            topic: p.topic,
            payload: p.payload,
            stage,
            sent,
            props: p.props,
        }
    }

    fn stored(&self) -> Change {
        Change::Put(StoredPublish {
            seq: self.seq,
            packet_id: Some(self.packet_id),
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            released: self.stage == Stage::AwaitComp,
            sent: self.sent,
        })
    }

    /// What `stored()` will say once the flight is written.
    fn stored_sent(&self) -> Change {
        match self.stored() {
            Change::Put(mut p) => {
                p.sent = true;
                Change::Put(p)
            }
            other => other,
        }
    }
}

enum Request {
    Subscribe {
        token: u64,
        filters: Vec<(ByteString, QoS)>,
    },
    Unsubscribe {
        token: u64,
        filters: Vec<ByteString>,
    },
    /// MQTT 5.0: filters with their options and the Subscription Identifier.
    SubscribeV5 {
        token: u64,
        filters: Vec<(ByteString, codec::SubscriptionOptions)>,
        id: Option<u32>,
    },
    /// Internal: restoring subscriptions on a connection without a session.
    Resubscribe,
}

impl Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Subscribe { .. } | Request::SubscribeV5 { .. } | Request::Resubscribe => {
                "a SUBSCRIBE"
            }
            Request::Unsubscribe { .. } => "an UNSUBSCRIBE",
        }
    }

    /// What both revisions do with a SUBACK or UNSUBACK (`ack`) whose packet id did not
    /// name a request of its kind; `found` is what the id was taken out of the table
    /// for. An id of another kind of request is a protocol error (the server mixed up
    /// the answers), whose message this returns; an unknown id answers a request given
    /// up on, and is only logged.
    fn stray_ack(ack: &str, pkid: u16, found: Option<Request>) -> Result<(), String> {
        match found {
            Some(other) => Err(format!(
                "{ack} for packet id {pkid} which identifies {}",
                other.name()
            )),
            None => {
                tracing::debug!(packet_id = pkid, "client: {ack} for an unknown id ignored");
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_inflight: usize,
    pub(crate) max_buffered: usize,
    pub(crate) max_incoming: usize,
    pub(crate) clean_session: bool,
    /// A session store records the session's changes (`State::journal`).
    pub(crate) persist: bool,
}

/// Who must be woken once the lock is released.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Signals {
    pub(crate) writer: bool,
    pub(crate) reader: bool,
    pub(crate) app: bool,
    /// The journal has changes for the session store.
    pub(crate) persist: bool,
}

pub(crate) struct State {
    pub(super) limits: Limits,
    pub(super) status: ConnectionState,
    /// `connect()` was called (a connection task exists).
    pub(super) started: bool,
    ever_connected: bool,
    session_present: bool,
    pub(super) last_error: Option<ClientError>,
    /// Tokens of `disconnect()` calls; non-empty means a close was requested.
    pub(super) close_tokens: Vec<u64>,
    pub(super) close_requested: bool,
    next_token: u64,

    /// Encoded packets for the current connection, not yet taken by the writer.
    pub(super) out: BytesMut,
    /// Publishes encoded while a connection without a session waits for the SUBACK that
    /// restores the subscriptions: released into `out` by that SUBACK, so that a message
    /// the client publishes to its own subscription is not routed before it exists.
    held: Option<BytesMut>,
    pub(super) writer_waiting: bool,
    pub(super) reader_waiting: bool,
    pub(super) last_read: Instant,
    pub(super) last_write: Instant,
    pub(super) ping_outstanding: Option<Instant>,

    ids: PacketIds,
    /// Outgoing QoS 1/2 publishes holding an id, in send (and resend) order.
    inflight: VecDeque<Flight>,
    pending: VecDeque<PendingPublish>,
    pending_bytes: usize,
    requests: HashMap<u16, Request>,
    /// Filter -> requested QoS, restored when a connection comes up without a session.
    subscriptions: BTreeMap<ByteString, QoS>,
    /// Incoming QoS 2 ids that got PUBREC and not yet PUBREL [MQTT-4.3.3-2].
    inbound_qos2: InboundQos2,
    /// Outgoing QoS 1/2 publishes allowed unacknowledged: `limits.max_inflight`, capped
    /// by a 5.0 server's Receive Maximum.
    window: usize,
    /// MQTT 5.0 state (`None` for 3.1/3.1.1 clients).
    pub(super) v5: Option<Box<v5::V5State>>,

    pub(super) incoming: VecDeque<Incoming>,
    pub(super) completions: Vec<(u64, Outcome)>,
    pub(super) states: Vec<StateChange>,
    room_wanted: bool,
    pub(super) room: bool,
    /// An event was queued since the last wake.
    dirty: bool,
    /// `Client::kick` was called: one blocked `wait_events` returns to re-evaluate.
    pub(crate) kicked: bool,

    /// Changes to the stored session not yet handed to the store (with `limits.persist`).
    pub(crate) journal: Vec<Change>,
    /// Changes ever recorded, and how many of them the store has committed: a write waits
    /// until everything recorded before it is committed.
    pub(crate) journal_total: u64,
    pub(crate) committed: u64,
    persist_dirty: bool,
    /// Why the store failed; the client closes with it.
    pub(crate) store_error: Option<String>,
    /// The client finished: the store task exits once the journal is committed.
    pub(crate) store_finished: bool,
    /// The next publish's `seq`.
    next_seq: u64,
}

/// A whole PUBLISH: the 3.1.1 form without `props`, the 5.0 form with them (the encoded
/// properties, without their length).
#[allow(clippy::too_many_arguments)]
fn encode_publish(
    dst: &mut BytesMut,
    topic: &str,
    qos: QoS,
    retain: bool,
    dup: bool,
    packet_id: Option<u16>,
    props: Option<&[u8]>,
    payload: &[u8],
) -> Result<(), codec::Error> {
    match props {
        None => encode_publish_header(dst, topic, qos, retain, dup, packet_id, payload.len())?,
        Some(props) => encode_publish_header_v5(
            dst,
            topic,
            qos,
            retain,
            dup,
            packet_id,
            props,
            &[],
            payload.len(),
        )?,
    }
    dst.extend_from_slice(payload);
    Ok(())
}

impl State {
    pub(crate) fn new(limits: Limits, now: Instant) -> State {
        State {
            limits,
            status: ConnectionState::Connecting,
            started: false,
            ever_connected: false,
            session_present: false,
            last_error: None,
            close_tokens: Vec::new(),
            close_requested: false,
            next_token: 1,
            out: BytesMut::with_capacity(16 * 1024),
            held: None,
            writer_waiting: false,
            reader_waiting: false,
            last_read: now,
            last_write: now,
            ping_outstanding: None,
            ids: PacketIds::new(),
            inflight: VecDeque::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            requests: HashMap::new(),
            subscriptions: BTreeMap::new(),
            inbound_qos2: InboundQos2::new(),
            window: limits.max_inflight,
            v5: None,
            incoming: VecDeque::new(),
            completions: Vec::new(),
            states: Vec::new(),
            room_wanted: false,
            room: false,
            dirty: false,
            kicked: false,
            journal: Vec::new(),
            journal_total: 0,
            committed: 0,
            persist_dirty: false,
            store_error: None,
            store_finished: false,
            next_seq: 1,
        }
    }

    /// Resumes a session loaded from the store: its unacknowledged publishes (holding
    /// their packet ids, or waiting for the window) and inbound QoS 2 ids. Their
    /// completions have no token: nobody in this process waits for them.
    pub(crate) fn restore(&mut self, session: StoredSession) {
        for p in session.outgoing {
            self.next_seq = self.next_seq.max(p.seq.saturating_add(1));
            let item = PendingPublish {
                token: 0,
                seq: p.seq,
                qos: p.qos,
                retain: p.retain,
                topic: p.topic,
                payload: p.payload,
                // The store keeps no properties: a 5.0 resend goes without them.
                props: self.v5.as_ref().map(|_| Bytes::new()),
            };
            match p.packet_id {
                Some(packet_id) if self.ids.take(packet_id) => {
                    let stage = if p.released {
                        Stage::AwaitComp
                    } else {
                        Stage::AwaitAck
                    };
                    self.inflight
                        .push_back(Flight::new(item, packet_id, stage, p.sent));
                }
                _ => {
                    self.pending_bytes += item.cost();
                    self.pending.push_back(item);
                }
            }
        }
        for id in session.inbound_qos2 {
            self.inbound_qos2.receive(id);
        }
    }

    /// Records a change of the stored session (only with a store).
    pub(super) fn record(&mut self, change: impl FnOnce() -> Change) {
        if self.limits.persist {
            self.journal.push(change());
            self.journal_total += 1;
            self.persist_dirty = true;
        }
    }

    pub(crate) fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    pub(crate) fn complete(&mut self, token: u64, outcome: Outcome) {
        if token != 0 {
            self.completions.push((token, outcome));
            self.dirty = true;
        }
    }

    fn push_state(&mut self, state: ConnectionState, error: Option<ClientError>) {
        self.states.push(StateChange {
            state,
            session_present: self.session_present,
            error,
        });
        self.dirty = true;
    }

    /// What must be woken now that the lock is about to be released.
    pub(crate) fn take_signals(&mut self) -> Signals {
        let writer = self.writer_waiting && (!self.out.is_empty() || self.close_requested);
        if writer {
            self.writer_waiting = false;
        }
        let reader = self.reader_waiting && self.incoming.len() < self.limits.max_incoming;
        if reader {
            self.reader_waiting = false;
        }
        Signals {
            writer,
            reader,
            app: std::mem::take(&mut self.dirty),
            persist: std::mem::take(&mut self.persist_dirty),
        }
    }

    fn accepting(&self) -> bool {
        self.started && self.status != ConnectionState::Closed && !self.close_requested
    }

    fn buffered(&self) -> usize {
        self.out.len() + self.held.as_ref().map_or(0, BytesMut::len) + self.pending_bytes
    }

    /// Where a publish is encoded: the write buffer, or the hold while subscriptions are
    /// being restored.
    fn publish_buffer(&mut self) -> &mut BytesMut {
        match &mut self.held {
            Some(held) => held,
            None => &mut self.out,
        }
    }

    /// Completions, state changes or room are queued for the application (received
    /// messages are counted apart: `incoming`).
    pub(crate) fn has_events(&self) -> bool {
        !self.completions.is_empty() || !self.states.is_empty() || self.room || self.auth_pending()
    }

    pub(crate) fn check_room(&mut self) {
        if self.room_wanted && self.buffered() <= self.limits.max_buffered / 2 {
            self.room_wanted = false;
            self.room = true;
            self.dirty = true;
        }
    }

    /// A one-line summary for debugging.
    pub(crate) fn summary(&self) -> String {
        format!(
            "status={:?} completions={} inflight={} pending={} out={} held={:?} \
             writer_waiting={} reader_waiting={} incoming={} room_wanted={}",
            self.status,
            self.completions.len(),
            self.inflight.len(),
            self.pending.len(),
            self.out.len(),
            self.held.as_ref().map(BytesMut::len),
            self.writer_waiting,
            self.reader_waiting,
            self.incoming.len(),
            self.room_wanted
        )
    }

    pub(crate) fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Submitted, codec::Error> {
        self.publish_with(topic, payload, qos, retain, None)
    }

    /// Publishes with `props` (5.0's encoded PUBLISH properties; `None` on 3.1.1).
    fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        props: Option<Bytes>,
    ) -> Result<Submitted, codec::Error> {
        if !self.accepting() {
            return Ok(Submitted::Closed);
        }
        if self.buffered() >= self.limits.max_buffered {
            self.room_wanted = true;
            return Ok(Submitted::Full);
        }
        if qos == QoS::AtMostOnce && self.pending.is_empty() {
            // Also while reconnecting: the buffer is flushed once the next CONNACK arrives.
            self.write_publish(topic, qos, retain, None, props.as_ref(), payload)?;
            return Ok(Submitted::Sent);
        }
        // QoS 0 behind publishes waiting for the window waits too, so that messages
        // leave in the order they were published.
        let (token, seq) = if qos == QoS::AtMostOnce {
            (0, 0)
        } else {
            let seq = self.next_seq;
            self.next_seq += 1;
            (self.new_token(), seq)
        };
        let item = PendingPublish {
            token,
            seq,
            qos,
            retain,
            topic: ByteString::from(topic),
            payload: Bytes::copy_from_slice(payload),
            props,
        };
        if self.pending.is_empty() && self.inflight.len() < self.window {
            if let Some(packet_id) = self.ids.alloc() {
                self.start_flight(item, packet_id)?;
                return Ok(Submitted::Token(token));
            }
        }
        self.pending_bytes += item.cost();
        if item.seq != 0 {
            self.record(|| item.stored());
        }
        self.pending.push_back(item);
        Ok(if token == 0 {
            Submitted::Sent
        } else {
            Submitted::Token(token)
        })
    }

    /// Encodes a first send of a PUBLISH where publishes go (the write buffer or the
    /// hold); on a 5.0 connection it may stand its topic for a Topic Alias.
    fn write_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        packet_id: Option<u16>,
        props: Option<&Bytes>,
        payload: &[u8],
    ) -> Result<(), codec::Error> {
        let alias = match (props, self.v5.as_deref_mut()) {
            (Some(_), Some(v5)) if self.status == ConnectionState::Connected => {
                v5.outgoing_alias(topic)
            }
            _ => None,
        };
        let buf = self.publish_buffer();
        match alias {
            None => encode_publish(
                buf,
                topic,
                qos,
                retain,
                false,
                packet_id,
                props.map(|p| &p[..]),
                payload,
            ),
            Some((alias, known)) => {
                let props = props.map_or(&[][..], |p| &p[..]);
                let mut with_alias = Vec::with_capacity(props.len() + 3);
                with_alias.extend_from_slice(props);
                with_alias.push(0x23);
                with_alias.extend_from_slice(&alias.to_be_bytes());
                // A known alias stands for the topic: the name goes empty (3.3.2.3.4).
                let name = if known { "" } else { topic };
                encode_publish(
                    buf,
                    name,
                    qos,
                    retain,
                    false,
                    packet_id,
                    Some(&with_alias),
                    payload,
                )
            }
        }
    }

    fn start_flight(&mut self, p: PendingPublish, packet_id: u16) -> Result<(), codec::Error> {
        // While reconnecting it is only recorded: the next CONNACK sends it.
        let sent = self.status == ConnectionState::Connected;
        if sent {
            self.write_publish(
                &p.topic,
                p.qos,
                p.retain,
                Some(packet_id),
                p.props.as_ref(),
                &p.payload,
            )?;
        }
        let flight = Flight::new(p, packet_id, Stage::AwaitAck, sent);
        self.record(|| flight.stored());
        self.inflight.push_back(flight);
        Ok(())
    }

    /// Moves waiting publishes into the window (QoS 0 ones straight into the write
    /// buffer) as far as the window allows, in order.
    fn fill_window(&mut self) -> Result<(), codec::Error> {
        while let Some(front) = self.pending.front() {
            let packet_id = if front.qos == QoS::AtMostOnce {
                None
            } else if self.inflight.len() < self.window {
                match self.ids.alloc() {
                    Some(id) => Some(id),
                    None => break,
                }
            } else {
                break;
            };
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes = self.pending_bytes.saturating_sub(p.cost());
            match packet_id {
                Some(packet_id) => self.start_flight(p, packet_id)?,
                None => self.write_publish(
                    &p.topic,
                    p.qos,
                    p.retain,
                    None,
                    p.props.as_ref(),
                    &p.payload,
                )?,
            }
        }
        self.check_room();
        Ok(())
    }

    pub(crate) fn subscribe(
        &mut self,
        filters: Vec<(ByteString, QoS)>,
    ) -> Result<Submitted, codec::Error> {
        self.filters_request(
            filters,
            |pkid, filters| Packet::Subscribe(codec::Subscribe { pkid, filters }),
            |token, filters| Request::Subscribe { token, filters },
        )
    }

    pub(crate) fn unsubscribe(
        &mut self,
        filters: Vec<ByteString>,
    ) -> Result<Submitted, codec::Error> {
        self.filters_request(
            filters,
            |pkid, filters| Packet::Unsubscribe(codec::Unsubscribe { pkid, filters }),
            |token, filters| Request::Unsubscribe { token, filters },
        )
    }

    /// Sends a SUBSCRIBE or UNSUBSCRIBE under a fresh packet id and remembers what its
    /// acknowledgement completes.
    fn request(
        &mut self,
        packet: impl FnOnce(u16) -> Packet,
        request: impl FnOnce(u64) -> Request,
    ) -> Result<Submitted, codec::Error> {
        if !self.accepting() {
            return Ok(Submitted::Closed);
        }
        let Some(packet_id) = self.ids.alloc() else {
            self.room_wanted = true;
            return Ok(Submitted::Full);
        };
        if let Err(e) = packet(packet_id).encode(&mut self.out) {
            self.ids.free(packet_id);
            return Err(e);
        }
        let token = self.new_token();
        self.requests.insert(packet_id, request(token));
        Ok(Submitted::Token(token))
    }

    /// [`request`](Self::request) for a (UN)SUBSCRIBE: the packet gets a copy of the
    /// filters, the pending request keeps them for matching its acknowledgement.
    fn filters_request<F: Clone>(
        &mut self,
        filters: Vec<F>,
        packet: impl FnOnce(u16, Vec<F>) -> Packet,
        request: impl FnOnce(u64, Vec<F>) -> Request,
    ) -> Result<Submitted, codec::Error> {
        let packet_filters = filters.clone();
        self.request(
            |pkid| packet(pkid, packet_filters),
            |token| request(token, filters),
        )
    }

    /// Encodes a control packet (acknowledgement, PINGREQ) into the write buffer.
    pub(crate) fn encode(&mut self, packet: &Packet) -> Result<(), ClientError> {
        packet
            .encode(&mut self.out)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// Helpers for the state machine's tests (tests.rs and the submodules' tests).
#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
