//! Where a QoS 1/2 message stands in cluster mode's stream ([`StreamMark`]), carried by
//! the message so that a node can checkpoint what each of its sessions has not taken
//! yet (src/broker/cluster/checkpoint.rs). In the message, not in the session's queue
//! entries: one per publish, shared by every subscriber's copy, so `Queued` keeps its
//! 16 bytes and a single node pays one word per message and nothing per delivery.

use super::{Queued, SessionState, Stage};
use crate::codec::QoS;

/// A message's place in the cluster's QoS 1/2 stream: for another node's message, its
/// stream sequence; for one published on this node (routed here when it was published,
/// skipped in the stream), its origin sequence (the node's own numbering, which orders
/// its publishes). 0 (`NONE`): outside cluster mode, QoS 0, wills and the like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct StreamMark(u64);

/// Set in a mark of this node's own message.
const OWN: u64 = 1 << 63;

impl StreamMark {
    pub const NONE: StreamMark = StreamMark(0);

    /// Another node's message at stream sequence `seq` (never 0 in JetStream).
    pub fn stream(seq: u64) -> StreamMark {
        StreamMark(seq & !OWN)
    }

    /// This node's own message with origin sequence `seq`.
    pub fn own(seq: u64) -> StreamMark {
        StreamMark(seq | OWN)
    }

    /// The stream sequence of another node's message.
    pub fn stream_seq(self) -> Option<u64> {
        (self.0 != 0 && self.0 & OWN == 0).then_some(self.0)
    }

    /// The bits as stored (the cluster's bucket of QoS 2 packet ids).
    pub fn to_bits(self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> StreamMark {
        StreamMark(bits)
    }

    /// The origin sequence of this node's own message.
    pub fn own_seq(self) -> Option<u64> {
        (self.0 & OWN != 0).then_some(self.0 & !OWN)
    }
}

/// The oldest marks among what a session's client has not taken yet (see
/// [`SessionState::oldest_untaken`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Untaken {
    /// Lowest stream sequence of another node's message.
    pub stream: Option<u64>,
    /// Lowest origin sequence of this node's own message.
    pub own: Option<u64>,
}

impl Untaken {
    fn add(&mut self, item: &Queued) {
        // A QoS 0 delivery is never acknowledged, so never owed again (at most once).
        if item.qos == QoS::AtMostOnce {
            return;
        }
        let mark = item.msg.mark;
        if let Some(seq) = mark.stream_seq() {
            self.stream = Some(self.stream.map_or(seq, |s| s.min(seq)));
        } else if let Some(seq) = mark.own_seq() {
            self.own = Some(self.own.map_or(seq, |s| s.min(seq)));
        }
    }
}

impl SessionState {
    /// The mark of the message delivered with `pkid`, still in flight.
    pub fn delivery_mark(&self, pkid: u16) -> StreamMark {
        self.acks
            .as_ref()
            .and_then(|acks| acks.window.get(pkid))
            .map_or(StreamMark::NONE, |f| f.item.msg.mark)
    }

    /// The oldest marked QoS 1/2 messages the client has not taken: queued, or sent and
    /// not acknowledged by PUBACK (QoS 1) or PUBREC (QoS 2: from the PUBREC on the message
    /// is the client's, and what is left of the flow, the PUBREL, is resumed from the
    /// cluster's bucket of QoS 2 packet ids, never by sending the message again). One
    /// pass over the queue and the window (cluster mode's checkpoints, about once a
    /// second per session).
    pub fn oldest_untaken(&self) -> Untaken {
        let mut untaken = Untaken::default();
        for item in &self.queue {
            untaken.add(item);
        }
        for f in self.inflight() {
            if f.stage == Stage::AwaitAck {
                untaken.add(&f.item);
            }
        }
        untaken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_tell_stream_and_own_apart() {
        assert_eq!(StreamMark::NONE.stream_seq(), None);
        assert_eq!(StreamMark::NONE.own_seq(), None);
        assert_eq!(StreamMark::stream(7).stream_seq(), Some(7));
        assert_eq!(StreamMark::stream(7).own_seq(), None);
        assert_eq!(StreamMark::own(0).own_seq(), Some(0));
        assert_eq!(StreamMark::own(9).stream_seq(), None);
    }
}
