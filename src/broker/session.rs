//! One client's session state: subscriptions, the outbound queue, the QoS 1/2 inflight
//! window and the inbound QoS 2 ids awaiting PUBREL.
//!
//! Pure state machine: no I/O, no locks, no clock. The router wraps it in a per-session
//! mutex (never a lock shared by all connections), publishers append to the queue, and the
//! connection that owns the session moves queued messages into the inflight window and
//! encodes them. Because the state outlives connections, a clean-session-0 client that
//! reconnects gets its unacknowledged messages again, in order, with their original ids.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::QoS;
use crate::qos::InboundQos2;

mod fast_bins;
mod mark;
mod props;
mod sub_opts;
mod window;

pub(crate) use fast_bins::widen_fast_bins;
pub use mark::{StreamMark, Untaken};
pub use props::{remaining_secs, Expiry, MessageProperties};
pub use sub_opts::SubOpts;
use window::Window;

/// What a session does when its outbound queue is full (the `queue_overflow` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Drop the message that does not fit (mosquitto's behaviour). Keeps the oldest
    /// messages, which is what a client resuming a session usually wants first.
    DropNew,
    /// Drop the oldest queued message to make room: the freshest data wins.
    DropOldest,
}

/// A message as the broker routes it: topic and payload are shared by every subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS the publisher used (deliveries are downgraded per subscription).
    pub qos: QoS,
    pub retain: bool,
    /// Client id of the publisher (empty for messages published by the broker's owner).
    pub publisher: ByteString,
    /// MQTT 5.0 PUBLISH (or will) properties as they came, encoded once, without their
    /// length prefix (`codec::Properties::to_bytes`): forwarded to every 5.0 subscriber
    /// untouched and shared between them, left out for 3.1/3.1.1 subscribers (the spec's
    /// mapping). `None` for messages without properties. Carries the Message Expiry
    /// Interval's deadline too (session/props.rs).
    pub properties: Option<MessageProperties>,
    /// Cluster mode: where the message stands in the QoS 1/2 stream (`NONE` otherwise).
    pub mark: StreamMark,
}

/// A message waiting in a session's queue, at the QoS it will be delivered with.
#[derive(Debug, Clone)]
pub struct Queued {
    pub msg: Arc<Message>,
    pub qos: QoS,
    /// RETAIN flag on delivery: set only for retained messages replayed on subscribe.
    pub retain: bool,
    /// The shared subscription group this copy was routed through, if any: when the member
    /// leaves, what it has not acknowledged goes back to the group (another member). An id,
    /// not a pointer: it keeps `Queued` at 16 bytes and free to drop on the hot path.
    pub share: Option<ShareId>,
}

/// Identifies a shared subscription group while it exists (see `Router`'s groups).
pub type ShareId = std::num::NonZeroU32;

/// Where an outbound QoS 1/2 delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent, PUBACK (QoS 1) or PUBREC (QoS 2) awaited.
    AwaitAck,
    /// PUBREL sent, PUBCOMP awaited; the message itself is no longer needed.
    AwaitComp,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub pkid: u16,
    pub stage: Stage,
    pub item: Queued,
}

/// The acknowledgements a client sends for the broker's QoS 1/2 deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubComp,
}

/// What the connection must write next for the session.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Publish {
        item: Queued,
        pkid: Option<u16>,
        dup: bool,
    },
    PubRel(u16),
}

/// Result of offering a message to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Yes,
    /// The queue was full: this many messages (the new one, or the oldest) were dropped.
    Overflowed(u64),
    /// As `Overflowed`, and the first drop since the queue was last drained empty: the
    /// caller logs it, so a full queue costs one log line per episode, not one per message.
    OverflowStarted(u64),
    /// QoS 0 for an offline session is not queued unless configured.
    Skipped,
}

/// The limits a session enforces, copied from the broker config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_inflight: usize,
    pub max_queued: usize,
    /// Bytes of topic and payload the queue may hold; 0 means no byte limit.
    pub max_queued_bytes: usize,
    pub overflow: OverflowPolicy,
    pub queue_qos0_offline: bool,
}

#[derive(Debug)]
pub struct SessionState {
    limits: Limits,
    /// Filter -> granted QoS, as the client subscribed.
    pub subscriptions: HashMap<ByteString, QoS>,
    /// The MQTT 5.0 options of those subscriptions that have any (No Local, Retain As
    /// Published, Retain Handling, an identifier), for the session store: the trie
    /// entries are what routing reads. Allocated at the first such subscription, so a
    /// 3.1/3.1.1 session carries one null pointer. (Boxed on purpose: 8 bytes in every
    /// session instead of an empty map's 48.)
    #[allow(clippy::box_collection)]
    sub_opts: Option<Box<HashMap<ByteString, SubOpts>>>,
    queue: VecDeque<Queued>,
    /// Topic and payload bytes in `queue` (what `max_queued_bytes` bounds).
    queued_bytes: usize,
    /// The QoS 1/2 bookkeeping, allocated at first use: 248 of the 440 bytes this
    /// struct had, which a QoS 0 or idle client never uses (benches/README.md, "Where
    /// an idle connection's bytes go").
    acks: Option<Box<Acks>>,
    pub online: bool,
    /// When the client last went offline (`None` while online): what
    /// `persistent_client_expiration` counts from, kept in the durable store too.
    pub offline_since: Option<std::time::SystemTime>,
    /// Messages dropped by the overflow policy over the session's lifetime.
    pub dropped: u64,
    /// A drop happened and the queue has not been empty since (see `OverflowStarted`).
    overflowing: bool,
    /// What a snapshot holds (subscriptions, queue, inflight) changed since the durable
    /// store last saved this session: only such sessions are written again.
    changed: bool,
    /// The session was discarded (a clean-session reconnect replaced it): never saved
    /// again, even by a save that listed it just before.
    pub ended: bool,
    /// Messages queued so far (wrapping): cluster mode's checkpoints rewrite a session's
    /// only if some came (or what the client has not taken changed) since the last.
    pub arrivals: u32,
    /// Set for persistent sessions while a durable store is kept up to date.
    tracker: Option<(ChangeTracker, ByteString)>,
    /// An MQTT 5.0 client's Session Expiry Interval (`Duration::MAX`: never); `None`
    /// for 3.1/3.1.1 sessions, which `persistent_client_expiration` governs.
    pub expiry: Option<std::time::Duration>,
}

/// A session's QoS 1/2 state (see [`SessionState::acks`]).
#[derive(Debug, Default)]
struct Acks {
    /// Sent QoS 1/2 deliveries, by packet id and in send order (which is also the
    /// resend order); hands out their ids too.
    window: Window,
    /// Inbound QoS 2 ids that got PUBREC but not yet PUBREL: a resent PUBLISH with one of
    /// them is acknowledged again but not delivered again [MQTT-4.3.3-2].
    inbound_qos2: InboundQos2,
}

/// The client ids of persistent sessions that changed since the last save.
pub type ChangeTracker = std::sync::Arc<parking_lot::Mutex<std::collections::HashSet<ByteString>>>;

impl SessionState {
    pub fn new(limits: Limits) -> SessionState {
        SessionState {
            limits,
            subscriptions: HashMap::new(),
            sub_opts: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            acks: None,
            online: false,
            offline_since: None,
            dropped: 0,
            overflowing: false,
            // A new session is not in the store yet.
            changed: true,
            ended: false,
            arrivals: 0,
            tracker: None,
            expiry: None,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The inflight deliveries in send order.
    fn inflight(&self) -> impl Iterator<Item = &Inflight> {
        self.acks.iter().flat_map(|a| a.window.iter())
    }

    fn acks(&mut self) -> &mut Acks {
        self.acks.get_or_insert_with(Box::default)
    }

    /// Records the 5.0 options of the subscription to `filter` (made or replaced now),
    /// for the session store; default options (a 3.1/3.1.1 subscription, or one removed)
    /// drop the entry. The caller marks the change.
    pub fn set_sub_opts(&mut self, filter: &ByteString, opts: SubOpts) {
        if opts.is_default() {
            if let Some(map) = &mut self.sub_opts {
                map.remove(filter);
            }
        } else {
            self.sub_opts
                .get_or_insert_with(Box::default)
                .insert(filter.clone(), opts);
        }
    }

    /// The options recorded with [`SessionState::set_sub_opts`] for `filter`.
    pub fn sub_opts(&self, filter: &str) -> SubOpts {
        self.sub_opts
            .as_ref()
            .and_then(|map| map.get(filter).copied())
            .unwrap_or_default()
    }

    /// Every subscription with 5.0 options, and them.
    pub fn sub_opts_iter(&self) -> impl Iterator<Item = (&ByteString, SubOpts)> {
        self.sub_opts
            .iter()
            .flat_map(|map| map.iter().map(|(filter, opts)| (filter, *opts)))
    }

    /// Whether the session changed since the last call (which resets it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::replace(&mut self.changed, false)
    }

    /// Records a change; the first since the last save also tells the tracker, so the
    /// saver visits only sessions that changed. (The router calls it for its edits of
    /// `subscriptions`.)
    #[inline]
    pub fn mark_changed(&mut self) {
        // Inline, so the common case (already changed since the last save, always for a
        // broker without a durable store) is a test, not a call, twice per delivery.
        if !self.changed {
            self.record_change();
        }
    }

    #[cold]
    fn record_change(&mut self) {
        self.changed = true;
        if let Some((tracker, client_id)) = &self.tracker {
            tracker.lock().insert(client_id.clone());
        }
    }

    /// From now on, the first change after each save puts `client_id` on `tracker`.
    pub fn set_tracker(&mut self, tracker: ChangeTracker, client_id: ByteString) {
        self.tracker = Some((tracker, client_id));
    }

    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight_len(&self) -> usize {
        self.acks.as_ref().map_or(0, |a| a.window.len())
    }

    /// Whether there is anything for the connection to send now.
    pub fn has_sendable(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(q) => q.qos == QoS::AtMostOnce || self.inflight_len() < self.limits.max_inflight,
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    fn push_queue(&mut self, item: Queued) {
        self.queued_bytes += cost(&item);
        self.arrivals = self.arrivals.wrapping_add(1);
        self.queue.push_back(item);
    }

    fn pop_queue(&mut self) -> Option<Queued> {
        let item = self.queue.pop_front()?;
        self.queued_bytes -= cost(&item);
        Some(item)
    }

    /// Whether `size` more bytes in one more message would exceed a limit.
    fn full_for(&self, size: usize) -> bool {
        let limits = &self.limits;
        self.queue.len() >= limits.max_queued
            || (limits.max_queued_bytes > 0 && self.queued_bytes + size > limits.max_queued_bytes)
    }

    /// Offers a message for delivery; applies the overflow policy when the queue is full
    /// (by count or by bytes).
    pub fn enqueue(&mut self, item: Queued) -> Enqueued {
        if !self.online && item.qos == QoS::AtMostOnce && !self.limits.queue_qos0_offline {
            return Enqueued::Skipped;
        }
        let size = cost(&item);
        if self.full_for(size) {
            let mut dropped = 1; // the new message, unless the oldest make room for it
                                 // Larger than the byte limit on its own: evicting others would not help.
            let never_fits =
                self.limits.max_queued_bytes > 0 && size > self.limits.max_queued_bytes;
            if self.limits.overflow == OverflowPolicy::DropOldest && !never_fits {
                let mut evicted = 0;
                while self.full_for(size) && self.pop_queue().is_some() {
                    evicted += 1;
                }
                self.push_queue(item);
                dropped = evicted;
                self.mark_changed();
            }
            self.dropped += dropped;
            if std::mem::replace(&mut self.overflowing, true) {
                return Enqueued::Overflowed(dropped);
            }
            return Enqueued::OverflowStarted(dropped);
        }
        if self.queue.is_empty() {
            self.overflowing = false;
        }
        self.push_queue(item);
        self.mark_changed();
        Enqueued::Yes
    }

    /// Takes the next message the connection may send, assigning a packet id to QoS 1/2
    /// messages and moving them into the inflight window. `None` when the queue is empty
    /// or the window is full (a QoS 0 message never waits for the window, but it does wait
    /// behind a QoS 1/2 message ahead of it, which keeps per-topic order).
    pub fn next_outgoing(&mut self) -> Option<Outgoing> {
        // One pass per message, the window checked for each: a message whose Message
        // Expiry Interval has passed is dropped on the way [MQTT-3.3.2-5] (only a 5.0
        // message with an expiry reads the clock). A straight loop rather than a helper
        // returning `Option<Queued>`: that compiled to repeated checks of the option on
        // every delivery (benches/README.md, "Session 7").
        let item = loop {
            if !self.has_sendable() {
                return None;
            }
            let item = self.pop_queue()?;
            if !is_expired(&item) {
                break item;
            }
            self.mark_changed();
        };
        self.mark_changed();
        if item.qos == QoS::AtMostOnce {
            return Some(Outgoing::Publish {
                item,
                pkid: None,
                dup: false,
            });
        }
        // Always an id: the window has room (has_sendable) and is at most 65,535.
        let sent = Inflight {
            pkid: 0,
            stage: Stage::AwaitAck,
            item: item.clone(),
        };
        let pkid = match self.acks().window.push_new(sent) {
            Ok(pkid) => pkid,
            Err(_) => {
                self.queued_bytes += cost(&item);
                self.queue.push_front(item);
                return None;
            }
        };
        Some(Outgoing::Publish {
            item,
            pkid: Some(pkid),
            dup: false,
        })
    }

    /// Why `ack` cannot acknowledge the inflight delivery `pkid`, if it names one of
    /// another kind: PUBREC or PUBCOMP for QoS 1, PUBACK for QoS 2, PUBCOMP before PUBREC.
    /// A protocol violation [MQTT-4.8.0-1] (Mosquitto closes for it); an id that names no
    /// delivery is not one (a late repeat, say) and is ignored.
    pub fn wrong_ack(&self, pkid: u16, ack: AckKind) -> Option<&'static str> {
        let f = self.acks.as_ref()?.window.get(pkid)?;
        wrong_kind(ack, f)
    }

    /// An acknowledgement from the client, checked ([`SessionState::wrong_ack`]) and
    /// applied ([`SessionState::on_puback`], [`SessionState::on_pubrec`],
    /// [`SessionState::on_pubcomp`]) with one search of the inflight window instead of
    /// two: the connection's way, once per acknowledgement (two per QoS 2 delivery).
    /// `Ok(false)` for an id that names no delivery, `Err` for one of another kind.
    pub fn on_ack(&mut self, pkid: u16, ack: AckKind) -> Result<bool, &'static str> {
        let Some(acks) = &mut self.acks else {
            return Ok(false);
        };
        let Some(f) = acks.window.get_mut(pkid) else {
            return Ok(false);
        };
        if let Some(why) = wrong_kind(ack, f) {
            return Err(why);
        }
        // What `wrong_kind` lets through: PUBACK of a QoS 1 delivery, PUBREC of a QoS 2
        // one (again, if repeated), PUBCOMP of a QoS 2 one that was PUBRECed.
        if ack == AckKind::PubRec {
            f.stage = Stage::AwaitComp;
        } else {
            acks.window.remove(pkid);
        }
        self.mark_changed();
        Ok(true)
    }

    /// PUBACK from the client. Returns false for an unknown id (ignored, per 3.1.1).
    pub fn on_puback(&mut self, pkid: u16) -> bool {
        self.remove_inflight(pkid, |f| {
            f.stage == Stage::AwaitAck && f.item.qos == QoS::AtLeastOnce
        })
    }

    /// PUBREC from the client: the PUBLISH is never resent again, PUBREL follows.
    pub fn on_pubrec(&mut self, pkid: u16) -> bool {
        let Some(acks) = &mut self.acks else {
            return false;
        };
        match acks.window.get_mut(pkid) {
            Some(f) if f.item.qos == QoS::ExactlyOnce => f.stage = Stage::AwaitComp,
            _ => return false,
        }
        self.mark_changed();
        true
    }

    /// PUBCOMP from the client ends a QoS 2 delivery.
    pub fn on_pubcomp(&mut self, pkid: u16) -> bool {
        self.remove_inflight(pkid, |f| f.stage == Stage::AwaitComp)
    }

    /// Ends a delivery the connection could not send, as if it had been completed
    /// [MQTT-3.1.2-25] (a PUBLISH larger than the client's Maximum Packet Size).
    pub fn discard_inflight(&mut self, pkid: u16) -> bool {
        self.remove_inflight(pkid, |_| true)
    }

    fn remove_inflight(&mut self, pkid: u16, ok: impl Fn(&Inflight) -> bool) -> bool {
        let Some(acks) = &mut self.acks else {
            return false;
        };
        if !acks.window.get(pkid).is_some_and(ok) {
            return false;
        }
        acks.window.remove(pkid);
        self.mark_changed();
        true
    }

    /// Queues for a flow-controlled subscriber, whose publishers wait instead of losing
    /// messages: only `limit`, far above where they wait, drops (the new message), for
    /// publishers that cannot wait.
    pub fn push_flow(&mut self, item: Queued, limit: usize) -> Enqueued {
        if self.queue.len() >= limit {
            self.dropped += 1;
            if std::mem::replace(&mut self.overflowing, true) {
                return Enqueued::Overflowed(1);
            }
            return Enqueued::OverflowStarted(1);
        }
        if self.queue.is_empty() {
            self.overflowing = false;
        }
        self.push_queue(item);
        self.mark_changed();
        Enqueued::Yes
    }

    /// Takes up to `max` queued messages regardless of the inflight window: for in-process
    /// subscribers, which consume a message by taking it.
    pub fn take_queued(&mut self, max: usize, out: &mut Vec<Queued>) {
        let n = self.queue.len().min(max);
        for item in self.queue.drain(..n) {
            self.queued_bytes -= cost(&item);
            if !is_expired(&item) {
                out.push(item);
            }
        }
        if n > 0 {
            self.mark_changed();
        }
    }

    /// What to resend when a client resumes the session: every unacknowledged PUBLISH with
    /// DUP=1 and every PUBREL, with original ids, in original order [MQTT-4.4.0-1].
    pub fn resend_on_resume(&self) -> Vec<Outgoing> {
        self.inflight()
            .map(|f| match f.stage {
                Stage::AwaitAck => Outgoing::Publish {
                    item: f.item.clone(),
                    pkid: Some(f.pkid),
                    dup: true,
                },
                Stage::AwaitComp => Outgoing::PubRel(f.pkid),
            })
            .collect()
    }

    /// An inbound QoS 2 PUBLISH arrived; true if it is new and must be delivered onward.
    pub fn on_inbound_qos2(&mut self, pkid: u16) -> bool {
        self.acks().inbound_qos2.receive(pkid)
    }

    /// MQTT 5.0 Receive Maximum, the broker's side: whether an inbound QoS 1/2 PUBLISH
    /// with `pkid` would make more than `maximum` of the client's PUBLISHes
    /// unacknowledged. QoS 2 ids awaiting PUBREL count (the client's quota comes back
    /// with PUBCOMP); a QoS 1 message is acknowledged as soon as it is read, and a resent
    /// QoS 2 id already held is no new message.
    pub fn inbound_over(&self, qos: QoS, pkid: u16, maximum: usize) -> bool {
        let Some(acks) = &self.acks else {
            return false;
        };
        let held = &acks.inbound_qos2;
        !(qos == QoS::ExactlyOnce && held.contains(pkid)) && held.len() >= maximum
    }

    /// The client's MQTT 5.0 Receive Maximum caps the inflight window [MQTT-3.3.4-9]:
    /// set on every connect (a session resumed by another client revision gets its own).
    pub fn set_max_inflight(&mut self, max_inflight: usize) {
        self.limits.max_inflight = max_inflight.max(1);
    }

    /// Inbound PUBREL: the id is free again.
    pub fn on_inbound_pubrel(&mut self, pkid: u16) {
        if let Some(acks) = &mut self.acks {
            acks.inbound_qos2.release(pkid);
        }
    }

    /// Takes out what a leaving shared subscription member holds for the groups `from`
    /// accepts: every queued (unsent) copy, and every QoS 1 delivery awaiting PUBACK (its
    /// packet id is freed; a late PUBACK for it is ignored as unknown). A QoS 2 delivery
    /// already sent stays: it is never given to another member [MQTT-4.8.2-5].
    pub fn take_shared(&mut self, from: impl Fn(ShareId) -> bool) -> Vec<Queued> {
        let of_group = |q: &Queued| q.share.is_some_and(&from);
        let mut taken = Vec::new();
        if let Some(acks) = &mut self.acks {
            let leaving: Vec<u16> = acks
                .window
                .iter()
                .filter(|f| {
                    f.stage == Stage::AwaitAck
                        && f.item.qos == QoS::AtLeastOnce
                        && of_group(&f.item)
                })
                .map(|f| f.pkid)
                .collect();
            // In send order, so the group gets them back in the order they were routed.
            taken.extend(
                leaving
                    .into_iter()
                    .filter_map(|pkid| acks.window.remove(pkid))
                    .map(|f| f.item),
            );
        }
        if self.queue.iter().any(of_group) {
            let mut kept = VecDeque::with_capacity(self.queue.len());
            for q in self.queue.drain(..) {
                if of_group(&q) {
                    self.queued_bytes -= cost(&q);
                    taken.push(q);
                } else {
                    kept.push_back(q);
                }
            }
            self.queue = kept;
        }
        if !taken.is_empty() {
            self.mark_changed();
        }
        taken
    }

    /// Forget everything but the subscriptions' absence: used when a clean session starts.
    pub fn clear(&mut self) {
        self.subscriptions.clear();
        self.sub_opts = None;
        self.queue.clear();
        self.queued_bytes = 0;
        // A fresh start of all three, and the memory back.
        self.acks = None;
        self.mark_changed();
    }

    /// Everything undelivered, for a snapshot: inflight deliveries first, in send order,
    /// with their packet id and whether PUBREL was sent; then the queue.
    pub fn export(&self) -> Vec<(Queued, Option<u16>, bool)> {
        self.inflight()
            .map(|f| (f.item.clone(), Some(f.pkid), f.stage == Stage::AwaitComp))
            .chain(self.queue.iter().map(|q| (q.clone(), None, false)))
            .collect()
    }

    /// Puts back one entry of [`SessionState::export`]: an inflight delivery keeps its id,
    /// so a resuming client gets it again with DUP=1 (or its PUBREL) [MQTT-4.4.0-1]. One
    /// whose id another restored delivery holds already is queued (sent under a new id).
    pub fn restore(&mut self, item: Queued, pkid: Option<u16>, released: bool) {
        let Some(pkid) = pkid.filter(|_| item.qos != QoS::AtMostOnce) else {
            self.push_queue(item);
            return;
        };
        let f = Inflight {
            pkid,
            stage: if released {
                Stage::AwaitComp
            } else {
                Stage::AwaitAck
            },
            item,
        };
        if let Err(f) = self.acks().window.restore(f) {
            self.push_queue(f.item);
        }
    }
}

/// Why `ack` cannot acknowledge the inflight delivery `f` (see
/// [`SessionState::wrong_ack`]).
fn wrong_kind(ack: AckKind, f: &Inflight) -> Option<&'static str> {
    match (ack, f.item.qos, &f.stage) {
        (AckKind::PubAck, QoS::ExactlyOnce, _) => Some("a QoS 2 delivery"),
        (AckKind::PubRec | AckKind::PubComp, QoS::AtLeastOnce, _) => Some("a QoS 1 delivery"),
        (AckKind::PubComp, QoS::ExactlyOnce, Stage::AwaitAck) => {
            Some("a QoS 2 delivery not yet PUBRECed")
        }
        _ => None,
    }
}

/// Whether a queued message's Message Expiry Interval has passed.
fn is_expired(item: &Queued) -> bool {
    item.msg.properties.as_ref().is_some_and(|p| p.expired())
}

/// What a queued message counts against `max_queued_bytes`: its topic and payload (the
/// rest of a PUBLISH is a few bytes, and the message itself is shared between sessions).
fn cost(item: &Queued) -> usize {
    item.msg.topic.len() + item.msg.payload.len()
}

#[cfg(test)]
mod tests;
