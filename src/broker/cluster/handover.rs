//! The QoS 1/2 messages of a session that moves between nodes, where they are still in
//! the stream.
//!
//! Each node routes the stream in order ([`super::streams::read_reliable`]), one
//! message at a time under [`Moves`]'s gate, and keeps the highest stream sequence it
//! routed. A session leaves a node (a handover, or its client going offline: the
//! record's checkpoint) with a [`Cut`]: the old owner had every stream message up to
//! the cut's sequence (delivered, or in what it hands over), and every message its own
//! clients published before the cut's origin sequence (routed locally when they were
//! published; a node skips its own messages in the stream). The new node then:
//!
//! 1. waits (bounded) until its own reader passed the cut's sequence and the old
//!    owner's last stored message, so its reader routes nothing the old owner had;
//! 2. under its gate (its reader paused), takes the session in with what was handed
//!    over, flushes its own publishes to JetStream, and reads the stream from the cut:
//!    the messages of other nodes that its reader had routed before the session was
//!    here, and its own clients' messages published before (which its reader skips),
//!    matching the session's subscriptions, are queued in stream order, after what
//!    was handed over and before anything its reader routes next.
//!
//! So nothing is lost and nothing comes twice, QoS 2 included. Bounded: at most the
//! session's queue limit (`max_queued_messages`) is replayed, within a few seconds.
//!
//! A dead node's session comes back from its record's checkpoint ([`super::checkpoint`],
//! written every heartbeat, the client connected or not): a cut whose floor is the
//! oldest other node's message the client had not taken, and whose origin sequence is
//! the oldest of the old owner's own; its stream sequence, where the read starts, may be
//! lower (the old owner's own messages lie anywhere after where it stood when it
//! numbered them), and [`Bounds::keeps`] tells the two kinds apart. The old owner's own
//! messages it had routed may then lie anywhere up to the stream's end: the taking node
//! waits until its reader is there. QoS 2 messages the client had acknowledged with
//! PUBREC after the checkpoint are left out by the bucket of packet ids ([`Taken`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::{watch, Mutex, MutexGuard};
use tracing::{debug, info, warn};

use super::cut::Cut;
use super::qos2::Taken;
use super::record::{subscriptions_of, Record, Sub};
use super::wire;
use super::Cluster;
use crate::broker::router::{MatchScratch, Router};
use crate::broker::session::{Message, MessageProperties, Queued, StreamMark};
use crate::codec::QoS;

/// Longest a taking node waits for its reader to reach the cut.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the stream is read for one session's replay.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);
/// Replayed messages at most when the queue has no limit.
const REPLAY_CAP: usize = 100_000;

/// A node's side of moving sessions: the reader's position and its gate.
pub(super) struct Moves {
    /// Held by the reader while it routes one stream message, and by a session moving
    /// in or out: a stream message is routed to a session wholly before or after.
    gate: Mutex<()>,
    /// The highest stream sequence the reader routed (or skipped).
    routed: watch::Sender<u64>,
    /// The highest stream sequence of this node's own messages JetStream confirmed.
    pub(super) stored: Arc<AtomicU64>,
    stream: stream::Stream,
}

impl Moves {
    /// `routed`: where the node's consumer stands at start (its acknowledged floor).
    pub(super) fn new(stream: stream::Stream, routed: u64) -> Moves {
        Moves {
            gate: Mutex::new(()),
            routed: watch::Sender::new(routed),
            stored: Arc::new(AtomicU64::new(0)),
            stream,
        }
    }

    /// Taken by the reader around routing one message.
    pub(super) async fn gate(&self) -> MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// The reader routed (or skipped) stream message `seq` (call under the gate).
    pub(super) fn routed(&self, seq: u64) {
        self.routed.send_if_modified(|routed| {
            let moved = seq > *routed;
            *routed = (*routed).max(seq);
            moved
        });
    }

    pub(super) fn position(&self) -> u64 {
        *self.routed.borrow()
    }

    /// Waits (bounded) until the reader routed up to `seq`.
    async fn reached(&self, seq: u64) -> bool {
        let mut routed = self.routed.subscribe();
        tokio::time::timeout(CATCH_UP_TIMEOUT, routed.wait_for(|&r| r >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Cluster {
    /// Where this node stands now for a session leaving it (call under the gate when
    /// the session is removed at the same time).
    pub(super) fn cut_now(&self) -> Cut {
        Cut {
            stream: self.moves.position(),
            owner: self.node,
            origin_seq: self.seq.load(Ordering::Relaxed),
            stored: self.moves.stored.load(Ordering::Relaxed),
        }
    }

    /// Runs `give_up` (removing a session here) with the reader paused, and returns
    /// where this node stood then.
    pub(super) async fn leave<T>(&self, give_up: impl FnOnce() -> T) -> (T, Cut) {
        let gate = self.moves.gate().await;
        let held = give_up();
        let cut = self.cut_now();
        drop(gate);
        (held, cut)
    }

    /// Waits until what this node published so far is in JetStream, and returns the
    /// sequence of its last message there.
    pub(super) async fn stored_now(&self) -> u64 {
        let mut scratch = MatchScratch::default();
        scratch.cluster_pending = true;
        if !self.flushed(&mut scratch).await {
            debug!("cluster: a flush for a session handover failed");
        }
        self.moves.stored.load(Ordering::Relaxed)
    }

    /// Takes in a session another node had (handed over, or from its record), with the
    /// stream messages it had not routed to it (see the module doc). Returns whether it
    /// was taken in (not if this node has a session of that client already).
    pub(super) async fn take_in(
        &self,
        router: &Router,
        client_id: &ByteString,
        record: Record,
        taken: &Taken,
    ) -> bool {
        let cut = record.checkpoint;
        let snapshot = record.snapshot(client_id);
        let Some(cut) = cut else {
            return router.take_in_session(snapshot);
        };
        let catch_up = match cut.catch_up() {
            Some(seq) => seq,
            // A connected session's checkpoint (its node died, or it left without
            // answering): the old owner's messages it had up to `origin_seq` may lie
            // anywhere before the stream's end, where this node's reader must be so as
            // not to route them again.
            None => match super::sessions::bounded(
                "reading the stream's end",
                self.moves.stream.get_info(),
            )
            .await
            {
                Ok(info) => info.state.last_sequence.max(cut.floor()),
                Err(e) => {
                    warn!(%client_id, "cluster: {e}");
                    cut.floor()
                }
            },
        };
        if !self.moves.reached(catch_up).await {
            warn!(%client_id, "cluster: this node's stream reader did not reach the session's cut within {CATCH_UP_TIMEOUT:?}: messages may come twice");
        }
        let _gate = self.moves.gate().await;
        if !router.take_in_session(snapshot) {
            return false;
        }
        // Own messages published from here on reach the session as they are routed.
        let own_seq = self.seq.load(Ordering::Relaxed);
        let stored = self.stored_now().await;
        let routed = self.moves.position();
        let Some(session) = router.session_of(client_id) else {
            return true;
        };
        let upper = routed.max(stored);
        if upper <= cut.stream {
            return true;
        }
        let subscriptions: Vec<Sub> = subscriptions_of(&session)
            .into_iter()
            .filter(|sub| !sub.filter.starts_with(crate::topic::SHARE_PREFIX))
            .collect();
        if subscriptions.is_empty() {
            return true;
        }
        let limit = match router.config().max_queued_messages {
            0 => REPLAY_CAP,
            n => n,
        };
        let bounds = Bounds {
            cut,
            own: self.node,
            own_seq,
            routed,
            upper,
        };
        match self.replay(&bounds, &subscriptions, limit, taken).await {
            Ok(items) => {
                let count = items.len();
                for item in items {
                    session.deliver(item);
                }
                if count > 0 {
                    info!(%client_id, "cluster: {count} message(s) of the stream the session's old node had not routed to it queued here");
                }
            }
            Err(e) => {
                warn!(%client_id, "cluster: the stream was not read for the session that moved here ({e}): messages published around the move may be missing");
            }
        }
        true
    }

    /// Reads the stream from the cut and returns the session's messages (see
    /// [`Bounds::keeps`]), in order, at most `limit`, each as its subscriptions'
    /// options make it ([`delivery`]).
    async fn replay(
        &self,
        bounds: &Bounds,
        subscriptions: &[Sub],
        limit: usize,
        taken: &Taken,
    ) -> Result<Vec<Queued>, String> {
        let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
        let consumer = self
            .moves
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: bounds.cut.stream + 1,
                },
                filter_subject: self.names.all("q"),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while out.len() < limit {
            let msg = match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(None) => break,
                Err(_) => return Err(format!("not read within {REPLAY_TIMEOUT:?}")),
            };
            let info = msg.info().map_err(|e| e.to_string())?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > bounds.upper {
                break;
            }
            let wire = match wire::decode(msg.headers.as_ref(), msg.payload.clone()) {
                Ok(wire) => Some(wire),
                Err(e) => {
                    self.drop_malformed(&msg.subject, &e);
                    None
                }
            };
            if let (Some(wire), Some(topic)) = (wire, self.names.untagged("q", &msg.subject)) {
                let matching: Vec<&Sub> = subscriptions
                    .iter()
                    .filter(|sub| crate::topic::matches(&sub.filter, &topic))
                    .collect();
                // A QoS 2 message the client acknowledged with PUBREC is its already
                // (checkpoint.rs); its PUBREL, if still owed, comes from qos2.rs.
                if !matching.is_empty()
                    && bounds.keeps(seq, wire.origin, wire.seq)
                    && !taken.has(seq, wire.origin, wire.seq)
                {
                    let retain = wire.retain;
                    let mark = if wire.origin == self.node {
                        StreamMark::own(wire.seq)
                    } else {
                        StreamMark::stream(seq)
                    };
                    match wire.message(ByteString::from(topic), retain) {
                        Ok(message) => out.push(delivery(Message { mark, ..message }, &matching)),
                        Err(e) => self.drop_malformed(&msg.subject, &e),
                    }
                }
            }
            if pending == 0 || seq == bounds.upper {
                break;
            }
        }
        Ok(out)
    }
}

/// A replayed message as the session's matching subscriptions (at least one) make it,
/// as routing does on a live node (router/options.rs): one copy at the highest QoS
/// granted [MQTT-3.3.4-2], carrying the identifiers of all of them [MQTT-3.3.4-3]
/// [MQTT-3.3.4-4], RETAIN 0 [MQTT-3.3.1-9] unless one has Retain As Published and
/// the publisher set it [MQTT-3.3.1-12]. No Local needs no test here: the stream's messages carry no
/// publisher, and the session's own client's are never among those replayed (it
/// published them on the old node before the cut, which excludes them, or not at all
/// while it was away).
fn delivery(message: Message, matching: &[&Sub]) -> Queued {
    let granted = matching
        .iter()
        .map(|sub| sub.qos)
        .max()
        .unwrap_or(QoS::AtMostOnce);
    let ids: Vec<_> = matching.iter().filter_map(|sub| sub.opts.id).collect();
    let qos = message.qos.min(granted);
    let retain = message.retain && matching.iter().any(|sub| sub.opts.retain_as_published());
    let msg = if ids.is_empty() {
        message
    } else {
        Message {
            properties: Some(MessageProperties::with_subscription_ids(
                message.properties.as_ref(),
                &ids,
            )),
            ..message
        }
    };
    Queued {
        msg: Arc::new(msg),
        qos,
        retain,
        share: None,
    }
}

/// What the stream holds for a session taken in here.
struct Bounds {
    cut: Cut,
    /// This node, and its origin sequence when the session was taken in.
    own: u64,
    own_seq: u64,
    /// Where this node's reader stood then (it routes what comes after), and the end of
    /// what is read.
    routed: u64,
    upper: u64,
}

impl Bounds {
    /// Whether the stream message `seq`, published on node `origin` with its sequence
    /// `origin_seq`, is one the session has had neither on its old node nor here.
    fn keeps(&self, seq: u64, origin: u64, origin_seq: u64) -> bool {
        if seq <= self.cut.stream || seq > self.upper {
            return false;
        }
        if origin == self.cut.owner && origin_seq < self.cut.origin_seq {
            // Routed on the old node when its client published it (and taken by the
            // client, for a connected session's checkpoint).
            return false;
        }
        if origin != self.cut.owner && seq <= self.cut.floor() {
            // The old owner's client had taken it (a connected session's checkpoint).
            return false;
        }
        if origin == self.own {
            // This node's reader skips its own messages; those published after the
            // session came were routed to it locally.
            return origin_seq < self.own_seq;
        }
        // The reader routes what comes after its position.
        seq <= self.routed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    #[test]
    fn cuts_round_trip() {
        let cut = Cut {
            stream: 1,
            owner: u64::MAX,
            origin_seq: 3,
            stored: 4,
        };
        let mut out = BytesMut::new();
        cut.encode(&mut out);
        let mut bytes = out.freeze();
        assert_eq!(bytes.len(), Cut::ENCODED_LEN);
        assert_eq!(Cut::decode(&mut bytes), Some(cut));
        assert_eq!(Cut::decode(&mut Bytes::from_static(b"short")), None);
    }

    #[test]
    fn replay_keeps_what_neither_node_routed() {
        let bounds = Bounds {
            cut: Cut {
                stream: 10,
                owner: 0xa,
                origin_seq: 100,
                stored: 12,
            },
            own: 0xb,
            own_seq: 500,
            routed: 20,
            upper: 25,
        };
        // At or before the cut: the old node had it.
        assert!(!bounds.keeps(10, 0xc, 1));
        // Another node's, between the cut and this reader's position: kept.
        assert!(bounds.keeps(11, 0xc, 1));
        assert!(bounds.keeps(20, 0xc, 1));
        // After this reader's position: the reader routes it.
        assert!(!bounds.keeps(21, 0xc, 1));
        // The old node's own: routed there before its cut, not after.
        assert!(!bounds.keeps(15, 0xa, 99));
        assert!(bounds.keeps(15, 0xa, 100));
        // This node's own: skipped by its reader, so kept if published before the
        // session came (wherever it is in the stream up to the end read).
        assert!(bounds.keeps(24, 0xb, 499));
        assert!(!bounds.keeps(24, 0xb, 500));
        assert!(!bounds.keeps(26, 0xb, 1));
    }
}
