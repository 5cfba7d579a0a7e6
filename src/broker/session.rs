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

use crate::broker::config::OverflowPolicy;
use crate::codec::QoS;

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
}

/// A message waiting in a session's queue, at the QoS it will be delivered with.
#[derive(Debug, Clone)]
pub struct Queued {
    pub msg: Arc<Message>,
    pub qos: QoS,
    /// RETAIN flag on delivery: set only for retained messages replayed on subscribe.
    pub retain: bool,
}

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
    queue: VecDeque<Queued>,
    /// Topic and payload bytes in `queue` (what `max_queued_bytes` bounds).
    queued_bytes: usize,
    /// Sent QoS 1/2 deliveries in send order (which is also the resend order).
    inflight: VecDeque<Inflight>,
    next_pkid: u16,
    /// Inbound QoS 2 ids that got PUBREC but not yet PUBREL: a resent PUBLISH with one of
    /// them is acknowledged again but not delivered again [MQTT-4.3.3-2].
    inbound_qos2: Vec<u16>,
    pub online: bool,
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
    /// Set for persistent sessions while a durable store is kept up to date.
    tracker: Option<(ChangeTracker, ByteString)>,
}

/// The client ids of persistent sessions that changed since the last save.
pub type ChangeTracker = std::sync::Arc<parking_lot::Mutex<std::collections::HashSet<ByteString>>>;

impl SessionState {
    pub fn new(limits: Limits) -> SessionState {
        SessionState {
            limits,
            subscriptions: HashMap::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            inflight: VecDeque::new(),
            next_pkid: 1,
            inbound_qos2: Vec::new(),
            online: false,
            dropped: 0,
            overflowing: false,
            // A new session is not in the store yet.
            changed: true,
            ended: false,
            tracker: None,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the session changed since the last call (which resets it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::replace(&mut self.changed, false)
    }

    /// Records a change; the first since the last save also tells the tracker, so the
    /// saver visits only sessions that changed. (The router calls it for its edits of
    /// `subscriptions`.)
    pub fn mark_changed(&mut self) {
        if !self.changed {
            self.changed = true;
            if let Some((tracker, client_id)) = &self.tracker {
                tracker.lock().insert(client_id.clone());
            }
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
        self.inflight.len()
    }

    /// Whether there is anything for the connection to send now.
    pub fn has_sendable(&self) -> bool {
        match self.queue.front() {
            None => false,
            Some(q) => q.qos == QoS::AtMostOnce || self.inflight.len() < self.limits.max_inflight,
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    fn push_queue(&mut self, item: Queued) {
        self.queued_bytes += cost(&item);
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
        if !self.has_sendable() {
            return None;
        }
        let item = self.pop_queue()?;
        self.mark_changed();
        if item.qos == QoS::AtMostOnce {
            return Some(Outgoing::Publish {
                item,
                pkid: None,
                dup: false,
            });
        }
        let pkid = self.allocate_pkid();
        self.inflight.push_back(Inflight {
            pkid,
            stage: Stage::AwaitAck,
            item: item.clone(),
        });
        Some(Outgoing::Publish {
            item,
            pkid: Some(pkid),
            dup: false,
        })
    }

    /// Next id not used by an inflight delivery [MQTT-2.3.1-4]. The window is at most
    /// 65,535 entries, so a free id always exists.
    fn allocate_pkid(&mut self) -> u16 {
        loop {
            let candidate = self.next_pkid;
            self.next_pkid = if candidate == u16::MAX {
                1
            } else {
                candidate + 1
            };
            if !self.inflight.iter().any(|f| f.pkid == candidate) {
                return candidate;
            }
        }
    }

    /// PUBACK from the client. Returns false for an unknown id (ignored, per 3.1.1).
    pub fn on_puback(&mut self, pkid: u16) -> bool {
        self.remove_inflight(pkid, |f| {
            f.stage == Stage::AwaitAck && f.item.qos == QoS::AtLeastOnce
        })
    }

    /// PUBREC from the client: the PUBLISH is never resent again, PUBREL follows.
    pub fn on_pubrec(&mut self, pkid: u16) -> bool {
        match self.inflight.iter_mut().find(|f| f.pkid == pkid) {
            Some(f) if f.item.qos == QoS::ExactlyOnce => {
                f.stage = Stage::AwaitComp;
                self.mark_changed();
                true
            }
            _ => false,
        }
    }

    /// PUBCOMP from the client ends a QoS 2 delivery.
    pub fn on_pubcomp(&mut self, pkid: u16) -> bool {
        self.remove_inflight(pkid, |f| f.stage == Stage::AwaitComp)
    }

    fn remove_inflight(&mut self, pkid: u16, ok: impl Fn(&Inflight) -> bool) -> bool {
        match self.inflight.iter().position(|f| f.pkid == pkid && ok(f)) {
            Some(i) => {
                self.inflight.remove(i);
                self.mark_changed();
                true
            }
            None => false,
        }
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
            out.push(item);
        }
        if n > 0 {
            self.mark_changed();
        }
    }

    /// What to resend when a client resumes the session: every unacknowledged PUBLISH with
    /// DUP=1 and every PUBREL, with original ids, in original order [MQTT-4.4.0-1].
    pub fn resend_on_resume(&self) -> Vec<Outgoing> {
        self.inflight
            .iter()
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
        if self.inbound_qos2.contains(&pkid) {
            false
        } else {
            self.inbound_qos2.push(pkid);
            true
        }
    }

    /// Inbound PUBREL: the id is free again.
    pub fn on_inbound_pubrel(&mut self, pkid: u16) {
        self.inbound_qos2.retain(|&id| id != pkid);
    }

    /// Forget everything but the subscriptions' absence: used when a clean session starts.
    pub fn clear(&mut self) {
        self.subscriptions.clear();
        self.queue.clear();
        self.queued_bytes = 0;
        self.inflight.clear();
        self.inbound_qos2.clear();
        self.next_pkid = 1;
        self.mark_changed();
    }

    /// Everything undelivered, for a snapshot: inflight deliveries first, in send order,
    /// with their packet id and whether PUBREL was sent; then the queue.
    pub fn export(&self) -> Vec<(Queued, Option<u16>, bool)> {
        self.inflight
            .iter()
            .map(|f| (f.item.clone(), Some(f.pkid), f.stage == Stage::AwaitComp))
            .chain(self.queue.iter().map(|q| (q.clone(), None, false)))
            .collect()
    }

    /// Puts back one entry of [`SessionState::export`]: an inflight delivery keeps its id,
    /// so a resuming client gets it again with DUP=1 (or its PUBREL) [MQTT-4.4.0-1].
    pub fn restore(&mut self, item: Queued, pkid: Option<u16>, released: bool) {
        match pkid {
            Some(pkid) if item.qos != QoS::AtMostOnce => self.inflight.push_back(Inflight {
                pkid,
                stage: if released {
                    Stage::AwaitComp
                } else {
                    Stage::AwaitAck
                },
                item,
            }),
            _ => self.push_queue(item),
        }
    }
}

/// What a queued message counts against `max_queued_bytes`: its topic and payload (the
/// rest of a PUBLISH is a few bytes, and the message itself is shared between sessions).
fn cost(item: &Queued) -> usize {
    item.msg.topic.len() + item.msg.payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow-controlled queue takes what its waiting publishers routed past the high
    /// water mark, but not without end: past the hard limit, the new message is dropped
    /// and counted, with one log line per episode.
    #[test]
    fn flow_queue_has_a_hard_limit() {
        let mut s = SessionState::new(limits(1, 1, OverflowPolicy::DropNew));
        for n in 0..3 {
            assert_eq!(s.push_flow(msg(n, QoS::AtMostOnce), 3), Enqueued::Yes);
        }
        assert_eq!(
            s.push_flow(msg(3, QoS::AtMostOnce), 3),
            Enqueued::OverflowStarted(1)
        );
        assert_eq!(
            s.push_flow(msg(4, QoS::AtMostOnce), 3),
            Enqueued::Overflowed(1)
        );
        assert_eq!((s.queued_len(), s.dropped), (3, 2));
        let mut taken = Vec::new();
        s.take_queued(3, &mut taken);
        assert_eq!(
            taken.iter().map(|q| q.msg.payload[0]).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(s.push_flow(msg(5, QoS::AtMostOnce), 3), Enqueued::Yes);
        s.push_flow(msg(6, QoS::AtMostOnce), 3);
        s.push_flow(msg(7, QoS::AtMostOnce), 3);
        // A new episode is logged again.
        assert_eq!(
            s.push_flow(msg(8, QoS::AtMostOnce), 3),
            Enqueued::OverflowStarted(1)
        );
    }

    fn limits(max_inflight: usize, max_queued: usize, overflow: OverflowPolicy) -> Limits {
        Limits {
            max_inflight,
            max_queued,
            max_queued_bytes: 0,
            overflow,
            queue_qos0_offline: false,
        }
    }

    fn sized(len: usize) -> Queued {
        Queued {
            msg: Arc::new(Message {
                topic: ByteString::from_static("t"),
                payload: Bytes::from(vec![7; len]),
                qos: QoS::AtLeastOnce,
                retain: false,
                publisher: ByteString::new(),
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    #[test]
    fn byte_limit_with_both_policies() {
        // Each `msg` costs 2 bytes (topic "t" and a 1-byte payload).
        let mut l = limits(1, 100, OverflowPolicy::DropNew);
        l.max_queued_bytes = 10;
        let mut s = SessionState::new(l);
        s.online = true;
        for n in 0..5 {
            assert_eq!(s.enqueue(msg(n, QoS::AtLeastOnce)), Enqueued::Yes);
        }
        assert_eq!(s.queued_bytes(), 10);
        assert_eq!(
            s.enqueue(msg(5, QoS::AtLeastOnce)),
            Enqueued::OverflowStarted(1)
        );
        assert_eq!(payload(&s.next_outgoing().unwrap()), 0);
        assert_eq!(s.queued_bytes(), 8, "sending frees its bytes");
        assert_eq!(s.enqueue(msg(6, QoS::AtLeastOnce)), Enqueued::Yes);
        assert_eq!(s.dropped, 1);

        let mut l = limits(1, 100, OverflowPolicy::DropOldest);
        l.max_queued_bytes = 10;
        let mut s = SessionState::new(l);
        s.online = true;
        for n in 0..5 {
            s.enqueue(msg(n, QoS::AtLeastOnce));
        }
        // 6 bytes need three 2-byte messages evicted: the oldest three.
        assert_eq!(s.enqueue(sized(5)), Enqueued::OverflowStarted(3));
        assert_eq!(s.queued_bytes(), 10);
        assert_eq!(s.queued_len(), 3);
        assert_eq!(payload(&s.next_outgoing().unwrap()), 3);
        // Larger than the limit by itself: only it is dropped, nothing is evicted for it.
        assert_eq!(s.enqueue(sized(20)), Enqueued::Overflowed(1));
        assert_eq!(s.queued_len(), 2);
        assert_eq!(s.dropped, 4);
        let mut taken = Vec::new();
        s.take_queued(10, &mut taken);
        assert_eq!((taken.len(), s.queued_bytes()), (2, 0));
    }

    fn msg(n: u8, qos: QoS) -> Queued {
        Queued {
            msg: Arc::new(Message {
                topic: ByteString::from_static("t"),
                payload: Bytes::from(vec![n]),
                qos,
                retain: false,
                publisher: ByteString::new(),
            }),
            qos,
            retain: false,
        }
    }

    fn payload(o: &Outgoing) -> u8 {
        match o {
            Outgoing::Publish { item, .. } => item.msg.payload[0],
            Outgoing::PubRel(_) => panic!("expected a PUBLISH"),
        }
    }

    #[test]
    fn window_limits_qos1_and_acks_open_it() {
        let mut s = SessionState::new(limits(2, 10, OverflowPolicy::DropNew));
        s.online = true;
        for n in 0..3 {
            assert_eq!(s.enqueue(msg(n, QoS::AtLeastOnce)), Enqueued::Yes);
        }
        let a = s.next_outgoing().unwrap();
        let b = s.next_outgoing().unwrap();
        assert!(s.next_outgoing().is_none(), "window of 2 is full");
        let (Outgoing::Publish { pkid: Some(pa), .. }, Outgoing::Publish { pkid: Some(pb), .. }) =
            (&a, &b)
        else {
            panic!("QoS 1 deliveries carry ids")
        };
        assert_ne!(pa, pb);
        assert!(s.on_puback(*pa));
        assert!(!s.on_puback(*pa), "second ack of the same id is unknown");
        assert_eq!(payload(&s.next_outgoing().unwrap()), 2);
    }

    #[test]
    fn qos2_flow_resends_pubrel_not_publish() {
        let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
        s.online = true;
        s.enqueue(msg(1, QoS::ExactlyOnce));
        s.enqueue(msg(2, QoS::ExactlyOnce));
        let Some(Outgoing::Publish { pkid: Some(p1), .. }) = s.next_outgoing() else {
            panic!()
        };
        let Some(Outgoing::Publish { pkid: Some(p2), .. }) = s.next_outgoing() else {
            panic!()
        };
        assert!(s.on_pubrec(p1));
        let resend = s.resend_on_resume();
        assert!(matches!(resend[0], Outgoing::PubRel(id) if id == p1));
        assert!(
            matches!(&resend[1], Outgoing::Publish { pkid: Some(id), dup: true, .. } if *id == p2)
        );
        assert!(!s.on_puback(p2), "PUBACK does not end a QoS 2 delivery");
        assert!(s.on_pubcomp(p1));
        assert_eq!(s.inflight_len(), 1);
    }

    #[test]
    fn overflow_policies() {
        let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropNew));
        s.online = true;
        s.enqueue(msg(1, QoS::AtLeastOnce));
        s.enqueue(msg(2, QoS::AtLeastOnce));
        assert_eq!(
            s.enqueue(msg(3, QoS::AtLeastOnce)),
            Enqueued::OverflowStarted(1)
        );
        assert_eq!(s.enqueue(msg(4, QoS::AtLeastOnce)), Enqueued::Overflowed(1));
        assert_eq!(payload(&s.next_outgoing().unwrap()), 1);
        assert_eq!(s.dropped, 2);
        // Room again, but the episode lasts until the queue has drained empty: one log
        // line per episode, not one per refill.
        assert_eq!(s.enqueue(msg(5, QoS::AtLeastOnce)), Enqueued::Yes);
        assert_eq!(s.enqueue(msg(6, QoS::AtLeastOnce)), Enqueued::Overflowed(1));
        assert!(s.on_puback(1));
        assert_eq!(payload(&s.next_outgoing().unwrap()), 2);
        assert!(s.on_puback(2));
        assert_eq!(payload(&s.next_outgoing().unwrap()), 5);
        assert_eq!(s.queued_len(), 0);
        assert_eq!(s.enqueue(msg(7, QoS::AtLeastOnce)), Enqueued::Yes);
        assert_eq!(s.enqueue(msg(8, QoS::AtLeastOnce)), Enqueued::Yes);
        assert_eq!(
            s.enqueue(msg(9, QoS::AtLeastOnce)),
            Enqueued::OverflowStarted(1)
        );
        assert_eq!(s.dropped, 4);

        let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropOldest));
        s.online = true;
        s.enqueue(msg(1, QoS::AtLeastOnce));
        s.enqueue(msg(2, QoS::AtLeastOnce));
        assert_eq!(
            s.enqueue(msg(3, QoS::AtLeastOnce)),
            Enqueued::OverflowStarted(1)
        );
        assert_eq!(payload(&s.next_outgoing().unwrap()), 2);
        assert_eq!(s.dropped, 1);
    }

    #[test]
    fn changes_are_flagged_for_the_store() {
        let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropNew));
        s.online = true;
        assert!(s.take_changed(), "a new session is not stored yet");
        assert!(!s.take_changed());
        s.enqueue(msg(1, QoS::AtLeastOnce));
        assert!(s.take_changed());
        let Some(Outgoing::Publish { pkid: Some(id), .. }) = s.next_outgoing() else {
            panic!("expected a QoS 1 delivery");
        };
        assert!(s.take_changed(), "moved to inflight with an id");
        assert!(s.next_outgoing().is_none());
        assert!(!s.take_changed(), "nothing moved");
        assert!(!s.on_puback(id + 1));
        assert!(!s.take_changed(), "an unknown id changes nothing");
        assert!(s.on_puback(id));
        assert!(s.take_changed());
        s.enqueue(msg(2, QoS::AtLeastOnce));
        s.enqueue(msg(3, QoS::AtLeastOnce));
        s.take_changed();
        assert_eq!(
            s.enqueue(msg(4, QoS::AtLeastOnce)),
            Enqueued::OverflowStarted(1)
        );
        assert!(!s.take_changed(), "drop_new keeps the queue as it was");
        s.clear();
        assert!(s.take_changed());
    }

    #[test]
    fn offline_qos0_is_not_queued() {
        let mut s = SessionState::new(limits(1, 2, OverflowPolicy::DropNew));
        assert_eq!(s.enqueue(msg(1, QoS::AtMostOnce)), Enqueued::Skipped);
        assert_eq!(s.enqueue(msg(1, QoS::AtLeastOnce)), Enqueued::Yes);
    }

    #[test]
    fn qos0_behind_full_window_waits_for_order() {
        let mut s = SessionState::new(limits(1, 10, OverflowPolicy::DropNew));
        s.online = true;
        s.enqueue(msg(1, QoS::AtLeastOnce));
        s.enqueue(msg(2, QoS::AtLeastOnce));
        s.enqueue(msg(3, QoS::AtMostOnce));
        s.next_outgoing().unwrap();
        assert!(s.next_outgoing().is_none());
    }

    #[test]
    fn pkids_skip_ids_still_inflight() {
        let mut s = SessionState::new(limits(3, 10, OverflowPolicy::DropNew));
        s.online = true;
        s.next_pkid = u16::MAX;
        for n in 0..3 {
            s.enqueue(msg(n, QoS::AtLeastOnce));
        }
        let ids: Vec<u16> = (0..3)
            .map(|_| match s.next_outgoing() {
                Some(Outgoing::Publish { pkid: Some(id), .. }) => id,
                _ => panic!(),
            })
            .collect();
        assert_eq!(
            ids,
            vec![u16::MAX, 1, 2],
            "ids wrap past 0, which is never used"
        );
    }

    #[test]
    fn export_restore_keeps_ids_and_stages() {
        let mut s = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
        s.online = true;
        s.enqueue(msg(1, QoS::AtLeastOnce));
        s.enqueue(msg(2, QoS::ExactlyOnce));
        s.enqueue(msg(3, QoS::AtLeastOnce));
        s.next_outgoing().unwrap();
        let Some(Outgoing::Publish { pkid: Some(p2), .. }) = s.next_outgoing() else {
            panic!()
        };
        s.on_pubrec(p2);
        // The third stays queued: limit the window to two by sending no more.
        let mut restored = SessionState::new(limits(4, 10, OverflowPolicy::DropNew));
        let exported = s.export();
        assert_eq!(exported.len(), 3);
        for (item, pkid, released) in exported {
            restored.restore(item, pkid, released);
        }
        let resend = restored.resend_on_resume();
        assert!(matches!(
            &resend[0],
            Outgoing::Publish {
                pkid: Some(1),
                dup: true,
                ..
            }
        ));
        assert!(matches!(resend[1], Outgoing::PubRel(id) if id == p2));
        restored.online = true;
        let Some(Outgoing::Publish { pkid: Some(p3), .. }) = restored.next_outgoing() else {
            panic!()
        };
        assert!(
            p3 != 1 && p3 != p2,
            "a restored id is not reused while inflight"
        );
    }

    #[test]
    fn inbound_qos2_dedup() {
        let mut s = SessionState::new(limits(1, 1, OverflowPolicy::DropNew));
        assert!(s.on_inbound_qos2(7));
        assert!(!s.on_inbound_qos2(7));
        s.on_inbound_pubrel(7);
        assert!(s.on_inbound_qos2(7));
    }
}
